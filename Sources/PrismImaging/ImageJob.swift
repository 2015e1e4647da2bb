internal import CVips
public import Foundation
public import PrismProto

/// One finished variant.
public struct EncodedVariant: Sendable {
    /// Index of the spec in the job's `variants`.
    public var index: Int
    public var data: Data
    public var size: Size
    public var format: Prism_V1_Format
    /// Operations and encoding of this variant.
    public var duration: Duration
    /// The encoding part of `duration` (libvips computes the pixels while it encodes, so this
    /// includes the operations that run lazily in the same pass).
    public var encodeDuration: Duration
}

/// What a job learned about its source, and how long decoding took.
public struct JobSummary: Sendable {
    public var source: Prism_V1_SourceInfo
    public var decodeDuration: Duration
    /// The JPEG/WebP shrink-on-load factor used (1 when decoded at full size).
    public var shrinkOnLoad: Int
}

/// Makes every variant of one source image with libvips.
///
/// The source is decoded once, at the smallest size every variant can still be made from
/// (shrink-on-load for JPEG and WebP), into memory. Each variant that starts with a resize is
/// then made from the smallest already-made scaling of the source that is still large enough,
/// so a 200 px thumbnail comes from the 640 px variant rather than from the 18 MP original.
///
/// `run` blocks for as long as libvips works: call it on a worker thread, never on an event
/// loop or the cooperative pool.
public struct ImageJob: Sendable {
    public var source: Data
    public var variants: [Prism_V1_VariantSpec]
    public var limits: ImagingLimits
    /// Also make the source's placeholder (ThumbHash and dominant colour) into the summary.
    public var placeholder: Bool
    /// Also put a BlurHash with these components into the placeholder (implies `placeholder`).
    public var blurHash: Prism_V1_BlurHashSpec?
    /// Cores this job may keep busy (its caller knows them to be idle). Above 1 the decode runs
    /// on that many libvips threads, and the variants are made in that many independent
    /// chains, all but one on `helpers` (or, without helpers, each on that many libvips
    /// threads).
    public var threads: Int
    /// Where the extra chains run; nil keeps every variant on the calling thread.
    public var helpers: (any JobHelpers)?

    public init(
        source: Data,
        variants: [Prism_V1_VariantSpec],
        limits: ImagingLimits = ImagingLimits(),
        placeholder: Bool = false,
        blurHash: Prism_V1_BlurHashSpec? = nil,
        threads: Int = 1,
        helpers: (any JobHelpers)? = nil
    ) {
        self.source = source
        self.variants = variants
        self.limits = limits
        self.placeholder = placeholder || blurHash != nil
        self.blurHash = blurHash
        self.threads = max(1, threads)
        self.helpers = helpers
    }

    /// Runs the job, handing each variant to `emit` as soon as it is encoded.
    ///
    /// - Parameters:
    ///   - cancellation: stops the job (and the libvips computation under way) when cancelled
    ///     or when its deadline passes.
    ///   - emit: receives each finished variant, on the calling thread.
    /// - Returns: the source's header facts and the decode time.
    /// - Throws: `ImagingError`, with a message safe to show to the sender.
    public func run(
        cancellation: JobCancellation,
        emit: (EncodedVariant) -> Void
    ) throws(ImagingError) -> JobSummary {
        guard self.variants.count <= self.limits.maxVariants else {
            throw .invalidSpec("The call asks for \(self.variants.count) variants; at most \(self.limits.maxVariants) are allowed.", variant: nil)
        }
        for (index, spec) in self.variants.enumerated() {
            try VariantPlan.validate(spec, index: index, limits: self.limits)
        }
        if let blurHash, !BlurHash.componentRange.contains(Int(blurHash.xComponents)) || !BlurHash.componentRange.contains(Int(blurHash.yComponents)) {
            throw .invalidSpec("The BlurHash asks for \(blurHash.xComponents) x \(blurHash.yComponents) components; each count must be 1-9 (4 x 3 is usual).", variant: nil)
        }
        if let stop = cancellation.stopError { throw stop }
        guard !self.source.isEmpty else {
            throw ImagingError(code: .invalidArgument, reason: .notAnImage, message: "The source image is empty.")
        }

        defer { Vips.threadDone() }
        do {
            return try self.source.withUnsafeBytes { (raw: UnsafeRawBufferPointer) throws(ImagingError) -> JobSummary in
                var run = JobRun(job: self, bytes: raw, cancellation: cancellation)
                return try run.execute(emit: emit)
            }
        } catch {
            throw error as! ImagingError  // withUnsafeBytes rethrows only what the body throws
        }
    }
}

/// The state of one `ImageJob.run`. Every `VImage` made here is released before `run` returns,
/// so none outlives the source bytes that libvips reads without copying.
///
/// Its stages live in their own files: loading and colour normalisation
/// (`ImageJob+Load.swift`), operations (`ImageJob+Operations.swift`), encoding
/// (`ImageJob+Encode.swift`).
struct JobRun {
    let job: ImageJob
    let bytes: UnsafeRawBufferPointer
    let cancellation: JobCancellation
    /// libvips threads for each variant's pipeline: the job's threads that its parallel
    /// chains leave over.
    var concurrency = 1
    var limits: ImagingLimits { self.job.limits }

    init(job: ImageJob, bytes: UnsafeRawBufferPointer, cancellation: JobCancellation) {
        self.job = job
        self.bytes = bytes
        self.cancellation = cancellation
    }

    mutating func execute(emit: (EncodedVariant) -> Void) throws(ImagingError) -> JobSummary {
        let clock = ContinuousClock()
        let decodeStart = clock.now
        let loader = try self.sniff()
        let header = try self.open(loader: loader, shrink: 1)

        let size = header.size
        guard size.pixels <= self.limits.maxInputPixels else {
            throw ImagingError(
                code: .failedPrecondition,
                reason: .tooManyPixels,
                message: "The image is \(size) (\(size.pixels) pixels), more than this server's limit of \(self.limits.maxInputPixels) pixels; send a smaller image."
            )
        }
        let orientation = header.orientation
        let oriented = orientation >= 5 ? size.transposed : size
        var info = Prism_V1_SourceInfo()
        info.width = UInt32(oriented.width)
        info.height = UInt32(oriented.height)
        info.format = loader.format(header)
        info.pages = UInt32(max(1, header.pages))
        info.alpha = header.hasAlpha

        let plans = try self.job.variants.enumerated().map { (index, spec) throws(ImagingError) in
            try VariantPlan(
                spec: spec,
                index: index,
                source: size,
                orientedSource: oriented,
                sourceFormat: info.format,
                limits: self.limits
            )
        }
        guard !plans.isEmpty else {
            return JobSummary(source: info, decodeDuration: clock.now - decodeStart, shrinkOnLoad: 1)
        }

        // Decode once, as small as the most demanding variant allows.
        let shrink = loader.supportsShrink ? Self.shrinkFactor(plans: plans, oriented: oriented, stored: size) : 1
        let opened = shrink == 1 ? header : try self.open(loader: loader, shrink: shrink)
        let decoded: VImage
        do {
            // When every variant starts by scaling down to at most the largest one's frame,
            // decode straight into that frame in one streaming pass (as vips_thumbnail does):
            // the full-size image is never held in memory, and an ICC transform runs on the
            // smaller frame. The largest variant then uses it as is, the others start from it.
            let target = Self.decodeTarget(plans: plans, decoded: opened.size, transposed: orientation >= 5)
            let frame: VImage
            if let target, opened.bandFormat == VIPS_FORMAT_UCHAR {
                frame = try self.normalizeColour(try self.scale(opened, to: target))
            } else if let target {
                // Deeper than 8 bits: to 8-bit sRGB first, as scaling casts to 8 bits.
                frame = try self.scale(try self.normalizeColour(opened), to: target)
            } else {
                frame = try self.normalizeColour(opened)
            }
            decoded = try frame.materialized(self.cancellation, threads: self.job.threads)
        } catch {
            throw self.failure(error, reason: .corruptImage, message: "The image data is truncated or corrupt and could not be decoded; check the file and upload it again.")
        }
        let decodeDuration = clock.now - decodeStart

        var frames = Frames(raw: decoded, oriented: orientation == 1 ? decoded : nil)
        // Largest first, so each smaller variant can be made from a larger one already made.
        let ordered = plans.sorted { $0.needs.pixels > $1.needs.pixels }
        let chains = self.job.helpers == nil ? [ordered] : Self.chains(ordered, count: self.job.threads)
        // Threads the job may use and chains do not: libvips' own threads inside each pipeline.
        self.concurrency = max(1, self.job.threads / chains.count)
        if chains.count > 1, let helpers = self.job.helpers {
            try self.runChains(chains, helpers: helpers, frames: &frames, emit: emit)
        } else {
            try self.runChain(ordered, frames: &frames, stop: { false }, emit: emit)
        }
        if self.job.placeholder {
            if let stop = self.cancellation.stopError { throw stop }
            do {
                info.placeholder = try self.placeholder(frames: &frames)
            } catch {
                throw self.failure(error, reason: .unspecified, message: "The image's placeholder could not be made.")
            }
        }
        return JobSummary(source: info, decodeDuration: decodeDuration, shrinkOnLoad: shrink)
    }

    /// The frame to decode into, in the source's own (unrotated) orientation: the largest
    /// variant's scaled frame, when every variant starts with a resize whose frame fits in it
    /// and it is clearly smaller than the decoded image; nil decodes at the decoded size.
    ///
    /// Only with several variants, whose largest frame is kept in memory for the others
    /// anyway. A lone variant is better resized inside its encode: libvips computes the
    /// pixels on a worker thread while its write thread compresses, so the two overlap (15-20
    /// ms less for a 2048 px JPEG from 19 MP, for the same CPU).
    static func decodeTarget(plans: [VariantPlan], decoded: Size, transposed: Bool) -> Size? {
        guard plans.count > 1, let largest = plans.max(by: { $0.needs.pixels < $1.needs.pixels }), largest.leading?.uniform == true else {
            return nil
        }
        let shareFrame = plans.allSatisfy { plan in
            plan.leading != nil && plan.autoOrient == largest.autoOrient && plan.needs.fits(in: largest.needs)
        }
        guard shareFrame else { return nil }
        let target = largest.autoOrient && transposed ? largest.needs.transposed : largest.needs
        // A pass that barely shrinks would only add a resample.
        guard target.fits(in: decoded), Double(target.pixels) < 0.8 * Double(decoded.pixels) else { return nil }
        return target
    }

    /// Makes `plans` one after another, each from the smallest frame already made that is still
    /// large enough, and hands each to `emit` as soon as it is encoded.
    ///
    /// - Parameter stop: checked before each variant; true ends the chain early, without error
    ///   (another chain of the job failed).
    func runChain(_ plans: [VariantPlan], frames: inout Frames, stop: () -> Bool, emit: (EncodedVariant) -> Void) throws(ImagingError) {
        let clock = ContinuousClock()
        for (position, plan) in plans.enumerated() {
            if let stop = self.cancellation.stopError { throw stop }
            if stop() { return }
            let start = clock.now
            let later = plans[(position + 1)...]
            let image: VImage
            do {
                image = try self.make(plan, frames: &frames, later: later)
            } catch let error as ImagingError {
                throw error
            } catch {
                throw self.failure(error, reason: .unspecified, message: "Variant \(plan.label) could not be made.", variant: plan.errorName)
            }
            let encodeStart = clock.now
            let data = try self.encode(image, plan: plan)
            let end = clock.now
            emit(EncodedVariant(index: plan.index, data: data, size: image.size, format: plan.format, duration: end - start, encodeDuration: end - encodeStart))
        }
    }

    /// Turns a libvips failure into the error to send: a stop when the job was cancelled or ran
    /// out of time, otherwise `message` with the internal text kept for the log only.
    func failure(_ error: any Error, reason: Prism_V1_Reason, message: String, variant: String? = nil) -> ImagingError {
        if let stop = self.cancellation.stopError { return stop }
        let detail = (error as? VipsFailure)?.detail ?? String(describing: error)
        let code: Prism_V1_Code = reason == .corruptImage ? .invalidArgument : .internal
        return ImagingError(code: code, reason: reason, message: message, variant: variant, detail: detail)
    }
}
