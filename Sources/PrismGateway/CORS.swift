import Foundation
import HTTPTypes
import Hummingbird

/// Which other origins' pages may call this gateway from a browser (`--cors-origins`).
public struct CORSPolicy: Sendable, Equatable {
    /// Lowercased origins (`https://app.example.com`), or `*` for any.
    public var origins: [String]

    /// - Parameter origins: `scheme://host[:port]` values, or `*`; empty turns CORS off.
    public init(origins: [String] = []) {
        self.origins = origins.map { Self.normalized($0) }
    }

    public var isEnabled: Bool { !self.origins.isEmpty }
    var allowsAny: Bool { self.origins.contains("*") }

    /// What `Access-Control-Allow-Origin` says to a request from `origin`; nil: nothing.
    func allowOrigin(_ origin: String) -> String? {
        if self.allowsAny { return "*" }
        let origin = Self.normalized(origin)
        return self.origins.contains(origin) ? origin : nil
    }

    /// The problem with an origin as configured, or nil when it is one.
    public static func problem(_ origin: String) -> String? {
        if origin == "*" { return nil }
        guard let url = URL(string: origin), let scheme = url.scheme?.lowercased(), ["http", "https"].contains(scheme),
              url.host != nil, url.path.isEmpty || url.path == "/", url.query == nil, url.fragment == nil, url.user == nil
        else {
            return "'\(origin)' is not an origin; write scheme://host[:port], e.g. https://app.example.com, or *."
        }
        return nil
    }

    static func normalized(_ origin: String) -> String {
        var text = origin.trimmingCharacters(in: .whitespaces).lowercased()
        if text.hasSuffix("/") { text.removeLast() }
        return text
    }

    static let allowMethods = "GET, HEAD, POST, DELETE, OPTIONS"
    static let allowHeaders = "Authorization, Content-Type, Idempotency-Key, X-Request-Id, Range, If-None-Match, If-Modified-Since"
    /// What a page's script may read beyond the safelisted headers.
    static let exposeHeaders = "Location, X-Request-Id, Retry-After, Idempotent-Replayed, ETag, Content-Range, Accept-Ranges, Last-Modified"
    /// Browsers cap it (Chromium at 2 h); longer buys nothing.
    static let maxAge = "7200"
}

/// Cross-origin resource sharing (Fetch standard) for the configured origins.
///
/// A preflight (OPTIONS with `Access-Control-Request-Method`) from an allowed origin is answered
/// 204 here; from any other origin it goes on to the router like any OPTIONS (405) and gets no
/// allow header. Every other answer to an allowed origin, problem+json errors and `/files`
/// included, carries `Access-Control-Allow-Origin` and `-Expose-Headers`.
///
/// Hummingbird's `CORSMiddleware` is not used: it sends `Expose-Headers` on preflights only
/// (browsers read it on actual responses), answers preflights from any origin, and wraps
/// errors in a type the problem and metrics middleware would not recognise. This one sits
/// inside the metrics middleware and turns errors into their problem answers itself, so the
/// access log and metrics keep the real status.
struct CORSMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let policy: CORSPolicy

    func handle(_ request: Request, context: GatewayContext, next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        let allowed = request.headers[.origin].flatMap { self.policy.allowOrigin($0) }
        if let allowed, request.method == .options, request.headers[.accessControlRequestMethod] != nil {
            var headers: HTTPFields = [
                .accessControlAllowOrigin: allowed,
                .accessControlAllowMethods: CORSPolicy.allowMethods,
                .accessControlAllowHeaders: CORSPolicy.allowHeaders,
                .accessControlMaxAge: CORSPolicy.maxAge,
            ]
            headers[.vary] = "Origin"
            return Response(status: .noContent, headers: headers)
        }
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as GatewayError {
            response = try error.response(from: request, context: context)
        }
        if let allowed {
            response.headers[.accessControlAllowOrigin] = allowed
            response.headers[.accessControlExposeHeaders] = CORSPolicy.exposeHeaders
        }
        self.vary(&response.headers)
        return response
    }

    /// With a list of origins the answer depends on Origin: a cache must not give one origin's
    /// answer to another (with `*` it does not depend on it).
    private func vary(_ headers: inout HTTPFields) {
        guard !self.policy.allowsAny, !headers[values: .vary].contains(where: { $0.lowercased().contains("origin") }) else { return }
        headers.append(HTTPField(name: .vary, value: "Origin"))
    }
}
