import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import PrismClient
@testable import PrismGateway
import Testing

/// The HTTP API through Hummingbird's router test client, with no processor running: what the
/// gateway answers on its own.
@Suite("Gateway routes")
struct RouteTests {
    func withGateway(_ configure: (inout GatewayConfiguration) -> Void = { _ in }, _ body: @Sendable (any TestClientProtocol) async throws -> Void) async throws {
        var config = GatewayConfiguration()
        config.storage = .local(directory: FileManager.default.temporaryDirectory.appendingPathComponent("prism-gw-\(UUID().uuidString)").path, publicBaseURL: nil)
        config.maxUploadBytes = 64 * 1024
        config.processors.readyWait = .milliseconds(50)
        configure(&config)
        var logger = Logger(label: "test.gateway")
        logger.logLevel = .critical
        let gateway = try Gateway(configuration: config, logger: logger)
        let app = gateway.application(onServerRunning: { _ in })
        try await app.test(.router) { client in try await body(client) }
    }

    @Test("recipes are listed")
    func recipes() async throws {
        try await self.withGateway { client in
            try await client.execute(uri: "/v1/recipes", method: .get) { response in
                #expect(response.status == .ok)
                let json = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as! [String: Any]
                let recipes = json["recipes"] as! [[String: Any]]
                #expect(recipes.map { $0["name"] as! String } == ["default"])
                #expect((recipes[0]["variants"] as! [Any]).count == 5)
            }
        }
    }

    @Test("errors are problem+json with the right status", arguments: [
        ("text/plain", "hello", 415, "unsupported-media-type"),
        ("multipart/form-data", "x", 400, "bad-request"),
        ("multipart/form-data; boundary=b", "--b\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", 400, "bad-request"),
        ("image/jpeg", "", 400, "bad-request"),
    ])
    func problems(contentType: String, body: String, status: Int, kind: String) async throws {
        try await self.withGateway { client in
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: contentType], body: ByteBuffer(string: body)) { response in
                #expect(Int(response.status.code) == status)
                #expect(response.headers[.contentType] == "application/problem+json")
                let problem = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as! [String: Any]
                #expect((problem["type"] as! String).hasSuffix(kind))
                #expect(problem["status"] as? Int == status)
                #expect(response.headers[.init("X-Request-Id")!] != nil)
            }
        }
    }

    @Test("a body over the limit is refused from its Content-Length")
    func tooLarge() async throws {
        try await self.withGateway { client in
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: ByteBuffer(repeating: 0, count: 100_000)) { response in
                #expect(response.status == .contentTooLarge)
            }
        }
    }

    @Test("with no processor an upload is 503 with Retry-After, and readyz says not ready")
    func noProcessors() async throws {
        try await self.withGateway { client in
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: ByteBuffer(bytes: [0xFF, 0xD8, 0xFF, 0xE0])) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] != nil)
            }
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
            }
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
    }

    @Test("past the concurrent-upload limit the answer is 429 with Retry-After")
    func overloaded() async throws {
        try await self.withGateway({ $0.maxConcurrentUploads = 0 }) { client in
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: ByteBuffer(string: "x")) { response in
                #expect(response.status == .tooManyRequests)
                #expect(response.headers[.retryAfter] == "1")
            }
        }
    }

    @Test("keys are required on /v1 only, compared exactly")
    func keys() async throws {
        try await self.withGateway({ $0.apiKeys = ["secret-1"] }) { client in
            for header in [nil, "Bearer nope", "Bearer secret-12", "Basic secret-1"] {
                var headers: HTTPFields = [:]
                if let header { headers[.authorization] = header }
                try await client.execute(uri: "/v1/recipes", method: .get, headers: headers) { response in
                    #expect(response.status == .unauthorized, "\(header ?? "none")")
                    #expect(response.headers[.wwwAuthenticate] != nil)
                }
            }
            try await client.execute(uri: "/v1/recipes", method: .get, headers: [.authorization: "Bearer secret-1"]) { response in
                #expect(response.status == .ok)
            }
            try await client.execute(uri: "/metrics", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
    }

    @Test("unknown routes, ids and recipes are clear 404s and 400s")
    func notFound() async throws {
        try await self.withGateway { client in
            try await client.execute(uri: "/nope", method: .get) { response in
                #expect(response.status == .notFound)
                #expect(response.headers[.contentType] == "application/problem+json")
            }
            try await client.execute(uri: "/v1/images/../../etc", method: .get) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/v1/images?recipe=missing", method: .post, headers: [.contentType: "image/jpeg"], body: ByteBuffer(string: "x")) { response in
                #expect(response.status == .badRequest)
            }
            try await client.execute(uri: "/files/../../etc/passwd", method: .get) { response in
                #expect(response.status == .notFound)
            }
        }
    }
}
