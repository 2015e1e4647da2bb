public import Foundation
public import NIOCore
public import PrismProto

/// One call: a source image and the variants to make of it.
public struct ProcessRequest: Sendable {
    /// The encoded source image. It is written to the connection as is, never copied into the
    /// frame: calls that share one buffer (the same upload sent to several processors) share
    /// its memory.
    public var sourceBuffer: ByteBuffer
    public var variants: [Prism_V1_VariantSpec]
    /// When the caller stops waiting. The remaining time is sent with the request, so the
    /// processor stops working when it runs out. Nil means the processor's default.
    public var deadline: ContinuousClock.Instant?
    /// Correlates the processor's log lines with the caller's.
    public var requestID: String
    /// Whether `ProcessResult.variants` keeps each variant's bytes. A caller that stores each
    /// one in `onVariant` turns this off, so the bytes are freed once stored rather than held
    /// until the whole call ends.
    public var keepsVariantData: Bool
    /// Ask the processor for the source's placeholder (`ProcessResult.source.placeholder`).
    public var placeholder = false
    /// Ask for a BlurHash with these components in the placeholder too (implies `placeholder`).
    public var blurHash: Prism_V1_BlurHashSpec?
    /// Cores the caller knows to be idle for this call: the processor may decode and make
    /// variants on that many threads (`Request.threads`).
    public var threads = 1
    /// Ask for the source's SHA-256 (`ProcessResult.sourceSHA256`), so the caller need not read
    /// the source to hash it.
    public var sourceSHA256 = false
    /// Ask for each variant's MD5 and SHA-256 (`VariantResult.md5`, `.sha256`), for a caller
    /// that stores the variants and would otherwise hash them.
    public var digests = false

    public init(
        source: ByteBuffer,
        variants: [Prism_V1_VariantSpec],
        deadline: ContinuousClock.Instant? = nil,
        requestID: String = "",
        keepsVariantData: Bool = true
    ) {
        self.sourceBuffer = source
        self.variants = variants
        self.deadline = deadline
        self.requestID = requestID
        self.keepsVariantData = keepsVariantData
    }

    /// A request for a source held in `Data` (copied once into a buffer here).
    public init(
        source: Data,
        variants: [Prism_V1_VariantSpec],
        deadline: ContinuousClock.Instant? = nil,
        requestID: String = "",
        keepsVariantData: Bool = true
    ) {
        self.init(source: ByteBuffer(bytes: source), variants: variants, deadline: deadline, requestID: requestID, keepsVariantData: keepsVariantData)
    }

    /// The source as `Data` (a copy).
    public var source: Data {
        get { Data(self.sourceBuffer.readableBytesView) }
        set { self.sourceBuffer = ByteBuffer(bytes: newValue) }
    }
}

/// One variant as the processor returned it.
public struct VariantResult: Sendable {
    /// Bytes of the variant, even when `data` was dropped (`ProcessRequest.keepsVariantData`).
    public var byteCount: Int
    /// Index of the spec in `ProcessRequest.variants`.
    public var index: Int
    public var name: String
    public var data: Data
    public var width: Int
    public var height: Int
    public var format: Prism_V1_Format
    /// Processor time spent making it.
    public var processDuration: Duration
    /// MD5 and SHA-256 of `data` as the processor computed them (nil from a processor that does
    /// not send them, or sent something else than a digest).
    public var md5: Data?
    public var sha256: Data?

    public init(
        byteCount: Int, index: Int, name: String, data: Data, width: Int, height: Int,
        format: Prism_V1_Format, processDuration: Duration, md5: Data? = nil, sha256: Data? = nil
    ) {
        self.byteCount = byteCount
        self.index = index
        self.name = name
        self.data = data
        self.width = width
        self.height = height
        self.format = format
        self.processDuration = processDuration
        self.md5 = md5
        self.sha256 = sha256
    }
}

/// A finished call: every variant, in spec order, and what the processor said at the end.
public struct ProcessResult: Sendable {
    public var variants: [VariantResult]
    public var complete: Prism_V1_Complete
    public var source: Prism_V1_SourceInfo { self.complete.source }
    /// The source's SHA-256 when it was asked for (`ProcessRequest.sourceSHA256`) and sent.
    public var sourceSHA256: Data? { self.complete.source.sha256.count == 32 ? self.complete.source.sha256 : nil }
}

extension VariantResult {
    /// The longest processing time believed from a processor: far beyond any call's deadline,
    /// yet small enough that every `Duration` computation downstream (nanoseconds for metrics)
    /// stays in range whatever number a confused or hostile processor sends.
    static let maxReportedProcessTime: UInt64 = 24 * 3600 * 1_000_000

    /// `process_us` from a Response as a `Duration`, clamped to `maxReportedProcessTime`.
    static func processDuration(microseconds: UInt64) -> Duration {
        .microseconds(min(microseconds, Self.maxReportedProcessTime))
    }
}
