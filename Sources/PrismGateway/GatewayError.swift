import Foundation
public import Hummingbird
import PrismProto
import PrismWire

/// An API error, answered as RFC 9457 `application/problem+json`.
///
/// Every error the gateway answers goes through this type: `detail` is written for the API
/// client; internal causes are logged, never sent.
public struct GatewayError: Error, HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    /// A short, stable identifier, part of the `type` URI: "not-an-image".
    public var kind: String
    public var title: String
    public var detail: String
    public var retryAfterSeconds: Int?
    /// The variant concerned, when one is.
    public var variant: String?
    /// The connection cannot be reused after this answer (the request was not read whole).
    public var closeConnection = false
    /// `Allow` for a 405.
    public var allow: String?
    /// `Content-Range` for a 416 (`bytes */size`).
    public var contentRange: String?

    public init(_ status: HTTPResponse.Status, _ kind: String, _ title: String, detail: String, retryAfter: Int? = nil, variant: String? = nil) {
        self.status = status
        self.kind = kind
        self.title = title
        self.detail = detail
        self.retryAfterSeconds = retryAfter
        self.variant = variant
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var headers: HTTPFields = [.contentType: "application/problem+json"]
        if let retry = self.retryAfterSeconds { headers[.retryAfter] = "\(retry)" }
        if self.status == .unauthorized { headers[.wwwAuthenticate] = "Bearer realm=\"prism\"" }
        if self.closeConnection { headers[.connection] = "close" }
        if let allow = self.allow { headers[.allow] = allow }
        if let contentRange = self.contentRange { headers[.contentRange] = contentRange }
        return Response(status: self.status, headers: headers, body: .init(byteBuffer: self.jsonBody(instance: request.uri.path)))
    }

    /// The RFC 9457 document.
    func jsonBody(instance: String?) -> ByteBuffer {
        var body: [String: Any] = [
            "type": "https://prism.dev/problems/\(self.kind)",
            "title": self.title,
            "status": Int(self.status.code),
            "detail": self.detail,
        ]
        if let instance { body["instance"] = instance }
        if let variant = self.variant { body["variant"] = variant }
        let data = (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        return ByteBuffer(bytes: data)
    }

    // MARK: The errors the API answers

    static func badRequest(_ detail: String) -> GatewayError {
        GatewayError(.badRequest, "bad-request", "Malformed request", detail: detail)
    }

    static let unauthorized = GatewayError(.unauthorized, "unauthorized", "Missing or wrong API key",
        detail: "Send a valid API key as 'Authorization: Bearer <key>'.")

    static func notFound(_ detail: String) -> GatewayError {
        GatewayError(.notFound, "not-found", "Not found", detail: detail)
    }

    static func tooLarge(limit: Int) -> GatewayError {
        GatewayError(.contentTooLarge, "too-large", "Upload too large",
            detail: "The upload is larger than this server's limit of \(limit) bytes; send a smaller image.")
    }

    static func unsupportedMediaType(_ detail: String) -> GatewayError {
        GatewayError(.unsupportedMediaType, "unsupported-media-type", "Not an accepted image", detail: detail)
    }

    static let overloaded = GatewayError(.tooManyRequests, "too-many-uploads", "Too many uploads at once",
        detail: "This gateway is processing as many uploads as it allows; retry shortly.", retryAfter: 1)

    static let memoryBusy = GatewayError(.serviceUnavailable, "uploads-busy", "Too many upload bytes at once",
        detail: "This gateway is receiving as many upload bytes as it holds at once; retry shortly.", retryAfter: 1)

    static let noProcessors = GatewayError(.serviceUnavailable, "no-processors", "No image processors available",
        detail: "No image processor is reachable right now; retry shortly.", retryAfter: 2)

    static let storageUnavailable = GatewayError(.serviceUnavailable, "storage-unavailable", "Storage unavailable",
        detail: "The image store did not accept the files; nothing was kept. Retry shortly.", retryAfter: 2)

    static let deadline = GatewayError(.gatewayTimeout, "deadline-exceeded", "Processing took too long",
        detail: "The variants were not ready within this server's time limit; nothing was kept. Retry with a smaller image or a lighter recipe.")

    static func rangeNotSatisfiable(size: Int) -> GatewayError {
        var error = GatewayError(.rangeNotSatisfiable, "range-not-satisfiable", "Range not satisfiable",
            detail: "The requested byte range starts beyond the file's \(size) bytes; ask for a range within them, or omit Range for the whole file.")
        error.contentRange = "bytes */\(size)"
        return error
    }

    static let invalidIdempotencyKey = GatewayError(.badRequest, "invalid-idempotency-key", "Invalid Idempotency-Key",
        detail: "Idempotency-Key must be 1 to 255 printable ASCII characters without spaces, e.g. a UUID.")

    static let idempotencyKeyInUse = GatewayError(.conflict, "idempotency-key-in-use", "Upload with this Idempotency-Key still running",
        detail: "An upload with this Idempotency-Key is still being processed; retry after a moment to get its answer.", retryAfter: 2)

    static let idempotencyKeyReused = GatewayError(.unprocessableContent, "idempotency-key-reused", "Idempotency-Key reused for another request",
        detail: "This Idempotency-Key was already used with a different image or recipe; use a new key for a new upload.")

    static let internalError = GatewayError(.internalServerError, "internal", "Internal error",
        detail: "Something went wrong on our side; nothing was kept. Retry, and report it if it persists.")

    /// The answer for a processor's verdict on one upload.
    static func from(_ error: PrismRPCError) -> GatewayError {
        switch (error.code, error.reason) {
        case (_, .notAnImage):
            return .unsupportedMediaType(error.message)
        case (_, .blockedFormat):
            return .unsupportedMediaType(error.message)
        case (_, .corruptImage):
            return GatewayError(.unprocessableContent, "corrupt-image", "Corrupt image", detail: error.message)
        case (_, .tooManyPixels):
            return GatewayError(.unprocessableContent, "too-many-pixels", "Image too large", detail: error.message)
        case (_, .impossibleVariant), (_, .outputTooLarge), (_, .invalidSpec):
            return GatewayError(.unprocessableContent, "variant-refused", "A variant cannot be made", detail: error.message, variant: error.variant)
        case (_, .frameTooLarge):
            // Refused before sending: the processors take smaller requests than this upload.
            return GatewayError(.contentTooLarge, "too-large", "Upload too large",
                detail: "The image is larger than the image processors accept; send a smaller image.")
        case (.deadlineExceeded, _):
            return .deadline
        case (.resourceExhausted, _):
            return GatewayError(.serviceUnavailable, "processors-busy", "Image processors are busy",
                detail: "Every image processor is at capacity; retry shortly.", retryAfter: 1)
        case (.unavailable, _):
            return .noProcessors
        default:
            return .internalError
        }
    }
}
