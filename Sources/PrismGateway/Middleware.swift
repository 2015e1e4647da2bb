import Foundation
import Hummingbird
import Logging
import PrismWire

/// Gives every request an id (the client's X-Request-Id when it is sane), echoes it in the
/// answer, puts it on every log line and in every processor call.
struct RequestIDMiddleware: RouterMiddleware {
    typealias Context = GatewayContext

    func handle(_ request: Request, context: GatewayContext, next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        var context = context
        let offered = request.headers[.init("X-Request-Id")!] ?? ""
        let sane = !offered.isEmpty && offered.utf8.count <= 128 && offered.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
        context.requestID = sane ? offered : UUID().uuidString.lowercased()
        context.logger[metadataKey: "request_id"] = "\(context.requestID)"
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as GatewayError {
            response = try error.response(from: request, context: context)
        }
        response.headers[.init("X-Request-Id")!] = context.requestID
        return response
    }
}

/// Turns every error into RFC 9457 problem+json; internal errors are logged, never shown.
struct ProblemMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let logger: Logger
    /// True when stored files are served at /files (local storage).
    var servesFiles = true
    /// True when the upload page is served at / (and its files at /assets/).
    var servesUploadPage = true

    func handle(_ request: Request, context: GatewayContext, next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as GatewayError {
            throw error
        } catch let error as HTTPError {
            switch error.status {
            case .notFound:
                if let allowed = Self.allowedMethods(request.uri.path, servesFiles: self.servesFiles, servesUploadPage: self.servesUploadPage) {
                    var problem = GatewayError(.methodNotAllowed, "method-not-allowed", "Method not allowed",
                        detail: "\(request.method) is not allowed on \(request.uri.path); use \(allowed).")
                    problem.allow = allowed
                    throw problem
                }
                throw GatewayError.notFound("No route for \(request.method) \(request.uri.path).")
            case .methodNotAllowed:
                throw GatewayError(.methodNotAllowed, "method-not-allowed", "Method not allowed", detail: "\(request.method) is not allowed on \(request.uri.path).")
            case .badRequest:
                throw GatewayError.badRequest("The request is malformed.")
            default:
                throw GatewayError(error.status, "http-\(error.status.code)", error.status.reasonPhrase, detail: error.status.reasonPhrase)
            }
        } catch let error as RequestReadTimeout {
            throw error.problem
        } catch is CancellationError {
            throw GatewayError(.init(code: 499, reasonPhrase: "Client Closed Request"), "client-closed", "Client closed the request", detail: "The client went away; nothing was kept.")
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            throw GatewayError.internalError
        }
    }
}

extension ProblemMiddleware {
    /// The methods a known path answers, for 405's `Allow`; nil for a path no route serves.
    static func allowedMethods(_ path: String, servesFiles: Bool, servesUploadPage: Bool = true) -> String? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: true)
        switch parts.count {
        case 0 where servesUploadPage:
            return "GET"
        case 1 where ["healthz", "readyz", "metrics", "openapi.json"].contains(parts[0]):
            return "GET"
        case 2 where parts[0] == "assets" && servesUploadPage:
            return "GET"
        case 2 where parts[0] == "v1" && parts[1] == "images":
            return "POST"
        case 2 where parts[0] == "v1" && parts[1] == "recipes":
            return "GET"
        case 3 where parts[0] == "v1" && parts[1] == "images":
            return "GET, DELETE"
        case 2... where parts[0] == "files" && servesFiles:
            return "GET, HEAD"
        default:
            return nil
        }
    }
}

/// Requires `Authorization: Bearer <key>` with one of the configured keys.
struct APIKeyMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let keys: [[UInt8]]

    init(keys: [String]) {
        self.keys = keys.map { Array($0.utf8) }
    }

    func handle(_ request: Request, context: GatewayContext, next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        guard self.authorized(request) else { throw GatewayError.unauthorized }
        return try await next(request, context)
    }

    /// True when the request carries one of the keys.
    func authorized(_ request: Request) -> Bool {
        guard let header = request.headers[.authorization], header.lowercased().hasPrefix("bearer ") else {
            return false
        }
        let offered = Array(header.dropFirst(7).trimmingCharacters(in: .whitespaces).utf8)
        // Compare against every key without stopping early: timing reveals nothing.
        var match = false
        for key in self.keys {
            var difference = UInt8(key.count == offered.count ? 0 : 1)
            for i in 0..<max(key.count, offered.count) {
                difference |= (i < key.count ? key[i] : 0) ^ (i < offered.count ? offered[i] : 0)
            }
            match = match || difference == 0
        }
        return match
    }
}

/// Counts requests by route and status, times them, and writes one access-log line each.
struct MetricsMiddleware: RouterMiddleware {
    typealias Context = GatewayContext
    let metrics: GatewayMetrics

    func handle(_ request: Request, context: GatewayContext, next: (Request, GatewayContext) async throws -> Response) async throws -> Response {
        let start = ContinuousClock.now
        var status = 500
        defer {
            // 499 as nginx logs it: the client left before the answer.
            let duration = ContinuousClock.now - start
            let route = context.endpointPath ?? "unmatched"
            self.metrics.request(route: route, method: request.method.rawValue, status: status, duration: duration)
            // Scrapes and probes are frequent and say nothing: debug only.
            let level: Logger.Level = route == "/metrics" || route == "/healthz" || route == "/readyz" ? .debug : .info
            context.logger.log(level: level, "request", metadata: [
                "method": "\(request.method)", "path": "\(request.uri.path)", "status": "\(status)",
                "ms": "\(duration.nanoseconds / 1_000_000)",
            ])
        }
        do {
            let response = try await next(request, context)
            status = Int(response.status.code)
            return response
        } catch let error as GatewayError {
            status = Int(error.status.code)
            throw error
        } catch is CancellationError {
            status = 499
            throw CancellationError()
        }
    }
}
