public import PrismProto

/// A call or connection failure as either end of the protocol sees it.
///
/// `message` is the text a server chose to send (written to be safe for end users) or a
/// description of a local failure; `reason` lets programs branch without parsing text.
public struct PrismRPCError: Error, Sendable, Hashable, CustomStringConvertible {
    public var code: Prism_V1_Code
    public var reason: Prism_V1_Reason
    public var message: String
    /// The variant the error is about, when it is about one.
    public var variant: String?
    /// True when the failure happened before the server could have worked on the image
    /// (the connection broke, the server was draining or full): the same call may be sent to
    /// another server. False for any verdict about the image itself.
    public var isRetryable: Bool

    public init(
        code: Prism_V1_Code,
        reason: Prism_V1_Reason = .unspecified,
        message: String,
        variant: String? = nil,
        isRetryable: Bool = false
    ) {
        self.code = code
        self.reason = reason
        self.message = message
        self.variant = variant
        self.isRetryable = isRetryable
    }

    /// An error a peer sent in an Error frame.
    public init(_ frame: Prism_V1_Error) {
        self.init(
            code: frame.code,
            reason: frame.reason,
            message: frame.message,
            variant: frame.variant.isEmpty ? nil : frame.variant,
            isRetryable: frame.code == .unavailable || frame.reason == .queueFull || frame.reason == .shuttingDown
        )
    }

    public var description: String {
        var text = "\(self.code)"
        if self.reason != .unspecified { text += "/\(self.reason)" }
        text += ": \(self.message)"
        if let variant = self.variant { text += " (variant \(variant))" }
        return text
    }

    /// The Error frame body for this error.
    public var frame: Prism_V1_Error {
        var error = Prism_V1_Error()
        error.code = self.code
        error.reason = self.reason
        error.message = self.message
        error.variant = self.variant ?? ""
        return error
    }

    public static func connectionLost(_ detail: String) -> PrismRPCError {
        PrismRPCError(code: .unavailable, message: "The connection to the processor was lost: \(detail).", isRetryable: true)
    }
}
