public import PrismProto

/// Why a job could not make its variants.
///
/// `message` is written for the people who sent the image and is safe to return to them;
/// `detail` carries internal text (libvips' error buffer) for the server's own log only.
public struct ImagingError: Error, Sendable, CustomStringConvertible {
    public var code: Prism_V1_Code
    public var reason: Prism_V1_Reason
    public var message: String
    /// The name of the variant the error is about, when it is about one.
    public var variant: String?
    /// Internal diagnostics: never sent to a client.
    public var detail: String?

    public init(
        code: Prism_V1_Code,
        reason: Prism_V1_Reason = .unspecified,
        message: String,
        variant: String? = nil,
        detail: String? = nil
    ) {
        self.code = code
        self.reason = reason
        self.message = message
        self.variant = variant
        self.detail = detail
    }

    public var description: String {
        var text = "\(self.code) (\(self.reason)): \(self.message)"
        if let variant = self.variant { text += " [variant \(variant)]" }
        if let detail = self.detail { text += " {\(detail)}" }
        return text
    }

    static func invalidSpec(_ message: String, variant: String?) -> ImagingError {
        ImagingError(code: .invalidArgument, reason: .invalidSpec, message: message, variant: variant)
    }

    static func impossible(_ message: String, variant: String?) -> ImagingError {
        ImagingError(code: .failedPrecondition, reason: .impossibleVariant, message: message, variant: variant)
    }

    static func outputTooLarge(_ message: String, variant: String?) -> ImagingError {
        ImagingError(code: .outOfRange, reason: .outputTooLarge, message: message, variant: variant)
    }

    static let cancelled = ImagingError(
        code: .cancelled,
        message: "The call was cancelled before its variants were finished."
    )

    static let deadlineExceeded = ImagingError(
        code: .deadlineExceeded,
        message: "The call ran out of time before its variants were finished; allow a longer deadline or ask for fewer or smaller variants."
    )
}
