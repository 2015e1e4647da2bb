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

    public init(source: Data, variants: [Prism_V1_VariantSpec], limits: ImagingLimits = ImagingLimits()) {
        self.source = source
        self.variants = variants
        self.limits = limits
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
private struct JobRun {
    let job: ImageJob
    let bytes: UnsafeRawBufferPointer
    let cancellation: JobCancellation
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
        let shrink = loader.supportsShrink ? Self.shrinkFactor(plans: plans, oriented: oriented) : 1
        let opened = shrink == 1 ? header : try self.open(loader: loader, shrink: shrink)
        let decoded: VImage
        do {
            decoded = try self.normalizeColour(opened).materialized(self.cancellation)
        } catch {
            throw self.failure(error, reason: .corruptImage, message: "The image data is truncated or corrupt and could not be decoded; check the file and upload it again.")
        }
        let decodeDuration = clock.now - decodeStart

        var frames = Frames(raw: decoded, oriented: orientation == 1 ? decoded : nil)
        // Largest first, so each smaller variant can be made from a larger one already made.
        let ordered = plans.sorted { $0.needs.pixels > $1.needs.pixels }
        for (position, plan) in ordered.enumerated() {
            if let stop = self.cancellation.stopError { throw stop }
            let start = clock.now
            let later = ordered[(position + 1)...]
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
        return JobSummary(source: info, decodeDuration: decodeDuration, shrinkOnLoad: shrink)
    }

    // MARK: Loading

    /// Names the loader for the bytes, refusing what Prism does not read.
    private func sniff() throws(ImagingError) -> Loader {
        var loaderName: String? = nil
        if let base = self.bytes.baseAddress, let name = vips_foreign_find_load_buffer(base, self.bytes.count) {
            loaderName = String(cString: name)
        } else {
            vips_error_clear()
        }
        if let loaderName, let loader = Loader(vipsName: loaderName) {
            return loader
        }
        // "Blocked" only on positive evidence of a format: magic bytes, or a loader whose
        // sniffer checks them. Anything else is simply not an image.
        if let format = BlockedFormat.detect(self.bytes) ?? loaderName.flatMap(BlockedFormat.name(ofLoader:)) {
            throw ImagingError(
                code: .invalidArgument,
                reason: .blockedFormat,
                message: "Images in \(format) format are not accepted because their decoders are unsafe for untrusted input; convert to JPEG, PNG, WebP, AVIF or GIF first.",
                detail: loaderName
            )
        }
        throw ImagingError(
            code: .invalidArgument,
            reason: .notAnImage,
            message: "The upload is not an image in a format this server reads (JPEG, PNG, WebP, AVIF, HEIC, GIF, TIFF).",
            detail: loaderName
        )
    }

    /// Opens the source lazily (header only) for one sequential top-to-bottom read.
    ///
    /// JPEG and PNG are read through a stream that checks the cancellation on every read:
    /// decoders do work libvips cannot interrupt (libjpeg absorbs every scan of a progressive
    /// JPEG before it returns the first row, 0.3-1 s for 18 MP; an interlaced PNG is decoded
    /// whole), and a failed read is the one thing they all stop at.
    private func open(loader: Loader, shrink: Int) throws(ImagingError) -> VImage {
        let watchReads: Int32 = loader.kind == .jpeg || loader.kind == .png ? 1 : 0
        do {
            return try VImage.make { out in
                prism_load(
                    self.bytes.baseAddress, self.bytes.count, loader.vipsName, Int32(shrink), 1,
                    self.limits.failOnWarnings ? 1 : 0, watchReads == 1 ? self.cancellation.state : nil, out
                )
            }
        } catch {
            throw self.failure(error, reason: .corruptImage, message: "The image header could not be read: the file is truncated or corrupt.")
        }
    }

    /// The largest JPEG/WebP shrink-on-load factor that still leaves every variant's source at
    /// least as large as it needs.
    static func shrinkFactor(plans: [VariantPlan], oriented: Size) -> Int {
        for factor in [8, 4, 2] {
            let fits = plans.allSatisfy { plan in
                // +1: the loaders round the reduced size; never come out a pixel short.
                (plan.needs.width + 1) * factor <= oriented.width && (plan.needs.height + 1) * factor <= oriented.height
            }
            if fits { return factor }
        }
        return 1
    }

    /// Converts to 8-bit sRGB (or 8-bit greyscale): from the embedded ICC profile when there is
    /// one (CMYK, Adobe RGB, P3...), else by the image's interpretation.
    private func normalizeColour(_ image: VImage) throws(VipsFailure) -> VImage {
        var image = image
        let interpretation = image.interpretation
        if image.hasICCProfile, interpretation != VIPS_INTERPRETATION_B_W, interpretation != VIPS_INTERPRETATION_GREY16 {
            if let converted = try? image.apply({ prism_icc_to_srgb($0, $1) }) {
                image = converted
            } else {
                vips_error_clear()  // a broken profile: fall back to the interpretation
            }
        }
        switch image.interpretation {
        case VIPS_INTERPRETATION_sRGB, VIPS_INTERPRETATION_B_W:
            break
        case VIPS_INTERPRETATION_GREY16:
            image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_B_W) }
        default:
            image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_sRGB) }
        }
        if image.bandFormat != VIPS_FORMAT_UCHAR {
            image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        }
        return image
    }

    // MARK: Variants

    /// The decoded source and the scalings of it made so far.
    struct Frames {
        let raw: VImage
        var oriented: VImage?
        /// Materialized, aspect-preserving scalings, by orientation.
        var scaledOriented: [VImage] = []
        var scaledRaw: [VImage] = []

        init(raw: VImage, oriented: VImage?) {
            self.raw = raw
            self.oriented = oriented
        }
    }

    private func make(_ plan: VariantPlan, frames: inout Frames, later: ArraySlice<VariantPlan>) throws -> VImage {
        var base = frames.raw
        if plan.autoOrient {
            if frames.oriented == nil {
                frames.oriented = try frames.raw.apply { prism_autorot($0, $1) }
            }
            base = frames.oriented!
        }
        var operations = plan.spec.operations[...]
        var image = base
        if let leading = plan.leading, case .resize(let resize) = operations.first?.op {
            operations = operations.dropFirst()
            let available = [base] + (plan.autoOrient ? frames.scaledOriented : frames.scaledRaw)
            // The smallest frame at least as large as needed; the full frame when enlarging.
            let source = available.filter { leading.scaled.fits(in: $0.size) }.min { $0.size.pixels < $1.size.pixels } ?? base
            var scaled = try self.scale(source, to: leading.scaled)
            let feedsLater = leading.uniform && later.contains { other in
                other.autoOrient == plan.autoOrient && other.leading != nil && other.needs.fits(in: leading.scaled)
            }
            if feedsLater {
                scaled = try scaled.materialized(self.cancellation)
                if plan.autoOrient { frames.scaledOriented.append(scaled) } else { frames.scaledRaw.append(scaled) }
            }
            image = try self.finish(scaled, plan: leading, resize: resize)
        }
        for op in operations {
            image = try self.apply(op, to: image, plan: plan)
        }
        return image
    }

    /// Scales to exactly `target` with Lanczos 3, premultiplying alpha so transparent pixels do
    /// not bleed their colour into the edges.
    private func scale(_ image: VImage, to target: Size) throws(VipsFailure) -> VImage {
        if image.size == target { return image }
        let hscale = Double(target.width) / Double(image.width)
        let vscale = Double(target.height) / Double(image.height)
        var out: VImage
        if image.hasAlpha {
            let premultiplied = try image.apply { prism_premultiply($0, $1) }
            let resized = try premultiplied.apply { prism_resize($0, $1, hscale, vscale) }
            let restored = try resized.apply { prism_unpremultiply($0, $1) }
            out = try restored.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        } else {
            out = try image.apply { prism_resize($0, $1, hscale, vscale) }
        }
        // libvips rounds the output size itself; trim a stray row or column.
        if out.size != target, target.fits(in: out.size) {
            out = try out.apply { prism_extract($0, $1, 0, 0, Int32(target.width), Int32(target.height)) }
        } else if out.size != target {
            out = try out.apply { prism_embed($0, $1, 0, 0, Int32(target.width), Int32(target.height), nil, 0) }
        }
        return out
    }

    /// The crop or pad that turns a scaled frame into a COVER or CONTAIN result.
    private func finish(_ scaled: VImage, plan: ResizePlan, resize: Prism_V1_Resize) throws(VipsFailure) -> VImage {
        switch plan.finish {
        case .none:
            return scaled
        case .crop(let gravity):
            return try self.crop(scaled, to: plan.output, gravity: gravity)
        case .pad:
            let x = (plan.output.width - scaled.width) / 2
            let y = (plan.output.height - scaled.height) / 2
            return try self.pad(scaled, to: plan.output, x: x, y: y, colour: resize.hasBackground ? resize.background : nil)
        }
    }

    private func crop(_ image: VImage, to wanted: Size, gravity: Prism_V1_Gravity) throws(VipsFailure) -> VImage {
        let size = Size(width: min(wanted.width, image.width), height: min(wanted.height, image.height))
        if size == image.size { return image }
        switch gravity {
        case .attention, .entropy:
            let interesting = gravity == .attention ? VIPS_INTERESTING_ATTENTION : VIPS_INTERESTING_ENTROPY
            return try image.apply { prism_smartcrop($0, $1, Int32(size.width), Int32(size.height), interesting) }
        default:
            let origin = gravityOrigin(gravity, image: image.size, crop: size)
            return try image.apply { prism_extract($0, $1, Int32(origin.x), Int32(origin.y), Int32(size.width), Int32(size.height)) }
        }
    }

    /// Pads to `size` with `colour` (default: black, or transparent when the image has alpha).
    private func pad(_ image: VImage, to size: Size, x: Int, y: Int, colour: Prism_V1_Color?) throws(VipsFailure) -> VImage {
        var image = image
        if colour?.transparent == true, !image.hasAlpha {
            image = try image.apply { prism_add_alpha($0, $1) }
        }
        var values = Self.colourValues(colour ?? Prism_V1_Color(), bands: image.bands - (image.hasAlpha ? 1 : 0))
        if image.hasAlpha {
            values.append(colour == nil || colour?.transparent == true ? 0 : 255)
        }
        return try image.apply { input, out in
            values.withUnsafeBufferPointer { prism_embed(input, out, Int32(x), Int32(y), Int32(size.width), Int32(size.height), $0.baseAddress, Int32($0.count)) }
        }
    }

    /// A colour as one value per band: grey images get its luminance.
    static func colourValues(_ colour: Prism_V1_Color, bands: Int) -> [Double] {
        let rgb = [Double(colour.r), Double(colour.g), Double(colour.b)]
        if bands >= 3 { return rgb + Array(repeating: 0, count: bands - 3) }
        let luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]).rounded()
        return Array(repeating: luminance, count: max(1, bands))
    }

    private func apply(_ operation: Prism_V1_Operation, to image: VImage, plan: VariantPlan) throws -> VImage {
        switch operation.op {
        case .resize(let resize):
            let resizePlan = ResizePlan(resize, input: image.size)
            return try self.finish(try self.scale(image, to: resizePlan.scaled), plan: resizePlan, resize: resize)
        case .crop(let crop):
            return try self.crop(image, to: Size(width: Int(crop.width), height: Int(crop.height)), gravity: crop.gravity)
        case .extract(let e):
            guard Int(e.left) + Int(e.width) <= image.width, Int(e.top) + Int(e.height) <= image.height else {
                throw ImagingError.impossible("Variant \(plan.label): the extract area is outside the \(image.size) image.", variant: plan.errorName)
            }
            return try image.apply { prism_extract($0, $1, Int32(e.left), Int32(e.top), Int32(e.width), Int32(e.height)) }
        case .blur(let blur):
            return try image.apply { prism_gaussblur($0, $1, Double(blur.sigma)) }
        case .sharpen(let sharpen):
            let sigma = sharpen.sigma == 0 ? 1.0 : Double(sharpen.sigma)
            let sharpened = try image.apply { prism_sharpen($0, $1, sigma) }
            return try self.restoreInterpretation(sharpened, like: image)
        case .rotate(let rotate):
            let angle: VipsAngle
            switch rotate.angle {
            case 90: angle = VIPS_ANGLE_D90
            case 180: angle = VIPS_ANGLE_D180
            case 270: angle = VIPS_ANGLE_D270
            default: return image
            }
            return try image.apply { prism_rot($0, $1, angle) }
        case .flip:
            return try image.apply { prism_flip($0, $1, VIPS_DIRECTION_VERTICAL) }
        case .flop:
            return try image.apply { prism_flip($0, $1, VIPS_DIRECTION_HORIZONTAL) }
        case .grayscale:
            return try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_B_W) }
        case .flatten(let flatten):
            guard image.hasAlpha else { return image }
            var colour = Prism_V1_Color()
            if flatten.hasBackground { colour = flatten.background } else { (colour.r, colour.g, colour.b) = (255, 255, 255) }
            return try self.flatten(image, colour: colour)
        case nil:
            return image
        }
    }

    private func flatten(_ image: VImage, colour: Prism_V1_Color) throws(VipsFailure) -> VImage {
        let values = Self.colourValues(colour, bands: image.bands - 1)
        let flat = try image.apply { input, out in
            values.withUnsafeBufferPointer { prism_flatten(input, out, $0.baseAddress, Int32($0.count)) }
        }
        return flat.bandFormat == VIPS_FORMAT_UCHAR ? flat : try flat.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
    }

    /// Sharpen works in LabS; bring the result back to the interpretation it came in.
    private func restoreInterpretation(_ image: VImage, like original: VImage) throws(VipsFailure) -> VImage {
        var image = image
        let wanted = original.interpretation == VIPS_INTERPRETATION_B_W ? VIPS_INTERPRETATION_B_W : VIPS_INTERPRETATION_sRGB
        if image.interpretation != wanted {
            image = try image.apply { prism_colourspace($0, $1, wanted) }
        }
        if image.bandFormat != VIPS_FORMAT_UCHAR {
            image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        }
        return image
    }

    // MARK: Encoding

    private func encode(_ image: VImage, plan: VariantPlan) throws(ImagingError) -> Data {
        let output = plan.spec.output
        let strip: Int32 = plan.spec.keepMetadata ? 0 : 1
        var buffer: UnsafeMutableRawPointer? = nil
        var length = 0
        do {
            var image = image
            switch plan.format {
            case .jpeg where image.hasAlpha:
                var white = Prism_V1_Color()
                (white.r, white.g, white.b) = (255, 255, 255)
                image = try self.flatten(image, colour: white)
            case .avif where image.bands < 3:
                image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_sRGB) }
            default:
                break
            }
            if image.bandFormat != VIPS_FORMAT_UCHAR {
                image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
            }
            // A private copy to strip, so frames shared with other variants keep their fields.
            image = try image.apply { prism_copy($0, $1) }
            if strip == 1 { prism_remove_metadata(image.pointer) }
            prism_watch(image.pointer, self.cancellation.state)

            let quality = Int32(output.quality)
            let effort = Int32(output.effort)
            let progressive: Int32 = output.progressive ? 1 : 0
            let lossless: Int32 = output.lossless ? 1 : 0
            let status: Int32
            switch plan.format {
            case .png:
                status = prism_pngsave(image.pointer, &buffer, &length, effort == 0 ? 6 : effort, progressive, strip)
            case .webp:
                status = prism_webpsave(image.pointer, &buffer, &length, quality == 0 ? 80 : quality, lossless, effort == 0 ? 4 : min(effort, 6), strip)
            case .avif:
                status = prism_avifsave(image.pointer, &buffer, &length, quality == 0 ? 50 : quality, lossless, effort == 0 ? 4 : effort, strip)
            case .gif:
                status = prism_gifsave(image.pointer, &buffer, &length, progressive, strip)
            default:
                status = prism_jpegsave(image.pointer, &buffer, &length, quality == 0 ? 80 : quality, progressive, strip)
            }
            guard status == 0, let buffer else { throw VipsFailure(detail: takeErrorBuffer()) }
            if plan.format == .webp, strip == 1 {
                // libvips 8.14's webpsave ignores `strip` and writes a fresh EXIF block.
                length = WebPMetadata.strip(buffer, length: length)
            }
            guard length <= self.limits.maxOutputBytes else {
                g_free(buffer)
                throw ImagingError.outputTooLarge(
                    "Variant \(plan.label): the encoded image is \(length) bytes, over the \(self.limits.maxOutputBytes)-byte limit; lower the quality or the size.",
                    variant: plan.errorName
                )
            }
            // Hand libvips' buffer to Data without copying; g_free releases it.
            return Data(bytesNoCopy: buffer, count: length, deallocator: .custom { pointer, _ in g_free(pointer) })
        } catch let error as ImagingError {
            throw error
        } catch {
            throw self.failure(error, reason: .unspecified, message: "Variant \(plan.label) could not be encoded as \(plan.format).", variant: plan.errorName)
        }
    }

    /// Turns a libvips failure into the error to send: a stop when the job was cancelled or ran
    /// out of time, otherwise `message` with the internal text kept for the log only.
    private func failure(_ error: any Error, reason: Prism_V1_Reason, message: String, variant: String? = nil) -> ImagingError {
        if let stop = self.cancellation.stopError { return stop }
        let detail = (error as? VipsFailure)?.detail ?? String(describing: error)
        let code: Prism_V1_Code = reason == .corruptImage ? .invalidArgument : .internal
        return ImagingError(code: code, reason: reason, message: message, variant: variant, detail: detail)
    }
}
