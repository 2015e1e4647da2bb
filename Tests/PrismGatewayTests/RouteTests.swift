import Foundation
#if canImport(Glibc)
import Glibc
#endif
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
    /// Runs `body` against a gateway on a fresh local store, whose directory it is given and
    /// which is removed afterwards. With processors configured, the pool runs too (it connects).
    func withGateway(
        _ configure: (inout GatewayConfiguration) -> Void = { _ in },
        _ body: @Sendable (any TestClientProtocol, URL) async throws -> Void
    ) async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("prism-gw-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        var config = GatewayConfiguration()
        config.storage = .local(directory: directory.path, publicBaseURL: nil)
        config.maxUploadBytes = 64 * 1024
        config.processors.readyWait = .milliseconds(50)
        configure(&config)
        var logger = Logger(label: "test.gateway")
        logger.logLevel = .critical
        let gateway = try Gateway(configuration: config, logger: logger)
        let app = gateway.application(onServerRunning: { _ in })
        let runsPool = !config.processors.endpoints.isEmpty
        try await withThrowingTaskGroup(of: Void.self) { group in
            if runsPool {
                group.addTask { try await gateway.pool.run() }
            }
            defer { group.cancelAll() }
            try await app.test(.router) { client in try await body(client, directory) }
        }
    }

    @Test("recipes are listed")
    func recipes() async throws {
        try await self.withGateway { client, _ in
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
        try await self.withGateway { client, _ in
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
        try await self.withGateway { client, _ in
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: ByteBuffer(repeating: 0, count: 100_000)) { response in
                #expect(response.status == .contentTooLarge)
            }
        }
    }

    @Test("with no processor an upload is 503 with Retry-After, and readyz says not ready")
    func noProcessors() async throws {
        try await self.withGateway { client, store in
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: Self.jpeg) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] != nil)
            }
            #expect(Self.files(in: store) == [])
            try await client.execute(uri: "/readyz", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
            }
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
    }

    @Test("an upload that waited in vain for a processor is 503 and removes the original it stored")
    func noProcessorRemovesOriginal() async throws {
        let silent = try SilentProcessor()
        defer { silent.close() }
        try await self.withGateway({
            $0.processors.endpoints = [silent.endpoint]
            // Long enough that the poll below sees the original on a busy machine.
            $0.processors.readyWait = .seconds(4)
            $0.processors.client.handshakeTimeout = .seconds(60)
        }) { client, store in
            try await withThrowingTaskGroup(of: TestResponse.self) { group in
                group.addTask { try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: Self.jpeg) }
                // The original is stored while the upload waits for a processor...
                try await waitUntil("the original to be stored") {
                    Self.files(in: store).contains { $0.hasSuffix("/original.jpg") }
                }
                let response = try #require(try await group.next())
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] != nil)
            }
            // ...and removed when it fails.
            #expect(Self.files(in: store) == [])
        }
    }

    @Test("past the concurrent-upload limit the next upload is 429 with Retry-After, until a slot frees")
    func overloaded() async throws {
        let silent = try SilentProcessor()
        defer { silent.close() }
        try await self.withGateway({
            $0.maxConcurrentUploads = 2
            $0.processors.endpoints = [silent.endpoint]
            // Each upload holds its slot this long, waiting for a processor that never answers.
            $0.processors.readyWait = .seconds(2)
            $0.processors.client.handshakeTimeout = .seconds(60)
        }) { client, _ in
            let upload: @Sendable () async throws -> TestResponse = {
                try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "image/jpeg"], body: Self.jpeg)
            }
            try await withThrowingTaskGroup(of: TestResponse.self) { group in
                group.addTask { try await upload() }
                group.addTask { try await upload() }
                try await waitUntil("two uploads to hold both slots") { try await Self.uploadsInFlight(client) == 2 }
                let third = try await upload()
                #expect(third.status == .tooManyRequests)
                #expect(third.headers[.retryAfter] == "1")
                let problem = try JSONSerialization.jsonObject(with: Data(third.body.readableBytesView)) as! [String: Any]
                #expect((problem["type"] as! String).hasSuffix("too-many-uploads"))
                for try await held in group {
                    #expect(held.status == .serviceUnavailable, "the held uploads were admitted")
                }
            }
            // Finished uploads give their slots back.
            #expect(try await Self.uploadsInFlight(client) == 0)
            #expect(try await upload().status == .serviceUnavailable)
        }
    }

    @Test("keys are required on /v1 only, compared exactly")
    func keys() async throws {
        try await self.withGateway({ $0.apiKeys = ["secret-1"] }) { client, _ in
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
        try await self.withGateway { client, store in
            try await client.execute(uri: "/nope", method: .get) { response in
                #expect(response.status == .notFound)
                #expect(response.headers[.contentType] == "application/problem+json")
                let detail = try Self.problemDetail(response)
                #expect(detail.hasPrefix("No route"), "\(detail)")
            }
            // A manifest stored under a name that is not an id: only the id check stands between
            // it and the client. The same file under a real id shows the store would serve it.
            let id = UploadID.make()
            for name in [id, "not-an-id"] {
                let folder = store.appendingPathComponent("images/\(name)")
                try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
                try Data("{}".utf8).write(to: folder.appendingPathComponent("manifest.json"))
            }
            try await client.execute(uri: "/v1/images/\(id)", method: .get) { response in
                #expect(response.status == .ok)
            }
            for method in [HTTPRequest.Method.get, .delete] {
                try await client.execute(uri: "/v1/images/not-an-id", method: method) { response in
                    #expect(response.status == .notFound, "\(method)")
                    let detail = try Self.problemDetail(response)
                    #expect(detail == "No image with id not-an-id.")
                }
            }
            #expect(FileManager.default.fileExists(atPath: store.appendingPathComponent("images/not-an-id/manifest.json").path))
            try await client.execute(uri: "/v1/images?recipe=missing", method: .post, headers: [.contentType: "image/jpeg"], body: ByteBuffer(string: "x")) { response in
                #expect(response.status == .badRequest)
                let detail = try Self.problemDetail(response)
                #expect(detail.contains("no recipe named 'missing'"), "\(detail)")
            }
            try await client.execute(uri: "/files/../../etc/passwd", method: .get) { response in
                #expect(response.status == .notFound)
            }
        }
    }

    // MARK: Helpers

    /// The start of a JPEG: enough for an upload to be accepted and sent to a processor.
    static let jpeg = ByteBuffer(bytes: [0xFF, 0xD8, 0xFF, 0xE0])

    static func problemDetail(_ response: TestResponse) throws -> String {
        let problem = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any]
        return try #require(problem?["detail"] as? String, "not a problem: \(String(buffer: response.body))")
    }

    /// Files under the store's directory, relative to it.
    static func files(in store: URL) -> [String] {
        let all = (try? FileManager.default.subpathsOfDirectory(atPath: store.path)) ?? []
        return all.filter { path in
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: store.appendingPathComponent(path).path, isDirectory: &isDirectory) && !isDirectory.boolValue
        }.sorted()
    }

    static func uploadsInFlight(_ client: any TestClientProtocol) async throws -> Double {
        let text = try await client.execute(uri: "/metrics", method: .get) { String(buffer: $0.body) }
        let line = text.split(separator: "\n").first { $0.hasPrefix("prism_gateway_uploads_in_flight ") }
        return try #require(line.flatMap { Double($0.split(separator: " ").last ?? "") }, "no uploads_in_flight in /metrics")
    }
}

/// Polls `condition` until it holds; throws after `timeout`.
func waitUntil(_ what: String, timeout: Duration = .seconds(30), _ condition: () async throws -> Bool) async throws {
    let limit = ContinuousClock.now + timeout
    while try await !condition() {
        guard ContinuousClock.now < limit else { throw TestFailure(description: "timed out waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
}

/// A processor address that accepts connections (the kernel completes them into the listen
/// backlog) and never says a word: its handshake never finishes, so the pool keeps waiting.
final class SilentProcessor: Sendable {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, length) == 0 && listen(fd, 16) == 0 && getsockname(fd, $0, &length) == 0
            }
        }
        guard fd >= 0, bound else { throw TestFailure(description: "cannot listen on 127.0.0.1: errno \(errno)") }
        self.fd = fd
        self.port = Int(UInt16(bigEndian: address.sin_port))
    }

    var endpoint: ProcessorPoolConfiguration.Endpoint { .init(host: "127.0.0.1", port: self.port) }

    func close() {
        _ = Glibc.close(self.fd)
    }
}
