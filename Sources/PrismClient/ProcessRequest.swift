public import Foundation
public import PrismProto

/// One call: a source image and the variants to make of it.
public struct ProcessRequest: Sendable {
    public var source: Data
    public var variants: [Prism_V1_VariantSpec]
    /// When the caller stops waiting. The remaining time is sent with the request, so the
    /// processor stops working when it runs out. Nil means the processor's default.
    public var deadline: ContinuousClock.Instant?
    /// Correlates the processor's log lines with the caller's.
    public var requestID: String

    public init(
        source: Data,
        variants: [Prism_V1_VariantSpec],
        deadline: ContinuousClock.Instant? = nil,
        requestID: String = ""
    ) {
        self.source = source
        self.variants = variants
        self.deadline = deadline
        self.requestID = requestID
    }
}

/// One variant as the processor returned it.
public struct VariantResult: Sendable {
    /// Index of the spec in `ProcessRequest.variants`.
    public var index: Int
    public var name: String
    public var data: Data
    public var width: Int
    public var height: Int
    public var format: Prism_V1_Format
    /// Processor time spent making it.
    public var processDuration: Duration
}

/// A finished call: every variant, in spec order, and what the processor said at the end.
public struct ProcessResult: Sendable {
    public var variants: [VariantResult]
    public var complete: Prism_V1_Complete
    public var source: Prism_V1_SourceInfo { self.complete.source }
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
