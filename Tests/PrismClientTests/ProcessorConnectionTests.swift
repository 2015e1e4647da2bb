import Foundation
import NIOCore
import PrismClient
import PrismProto
import PrismWire
import Testing

func spec(_ name: String) -> Prism_V1_VariantSpec {
    var spec = Prism_V1_VariantSpec()
    spec.name = name
    return spec
}

func request(bytes: Int = 100, variants: Int = 1, timeout: Duration = .seconds(30)) -> ProcessRequest {
    ProcessRequest(
        source: Data(repeating: 0x42, count: bytes),
        variants: (0..<variants).map { spec("v\($0)") },
        deadline: .now + timeout
    )
}

/// Connects to `server` with fast pings, runs the connection while `body` runs.
func withFakeConnection<T: Sendable>(
    _ server: FakeProcessor,
    _ body: (ProcessorConnection) async throws -> T
) async throws -> T {
    var configuration = ProcessorClientConfiguration()
    configuration.pingInterval = .milliseconds(200)
    configuration.pingTimeout = .seconds(1)  // long enough that a stalled machine does not fail a healthy peer
    return try await ProcessorConnection.withConnection(host: "127.0.0.1", port: server.port, configuration: configuration, body)
}

@Suite("Processor connection against misbehaving processors")
struct ProcessorConnectionTests {
    @Test("a silent processor fails the call in flight, retryably, by the ping and not the deadline")
    func silentProcessor() async throws {
        let server = try await FakeProcessor.start(.init(mode: .silent))
        try await withFakeConnection(server) { connection in
            try await connection.waitUntilReady()
            // The call's own deadline is two minutes away: only the unanswered ping can end it
            // sooner. No tighter timing is asserted (shared machines stall for seconds).
            let start = ContinuousClock.now
            do {
                _ = try await connection.process(request(timeout: .seconds(120)))
                Issue.record("a call to a silent processor succeeded")
            } catch let error as PrismRPCError {
                #expect(error.code == .unavailable)
                #expect(error.isRetryable)
                #expect(error.message.contains("after a ping"), "\(error.message)")
            }
            let elapsed = ContinuousClock.now - start
            #expect(elapsed < .seconds(60), "detected in \(elapsed), not at the call's deadline")
            #expect(connection.isClosed)
        }
        #expect(server.requests == 1)
        await server.stop()
    }

    @Test("another protocol version fails waiters and calls at once with a clear error")
    func otherVersion() async throws {
        let server = try await FakeProcessor.start(.init(version: 2))
        let start = ContinuousClock.now
        let connection = try await ProcessorConnection.connect(host: "127.0.0.1", port: server.port)
        async let running: Void = connection.run()
        await #expect(throws: PrismRPCError.self) { try await connection.waitUntilReady() }
        do {
            _ = try await connection.process(request())
            Issue.record("a call on a v2 connection succeeded")
        } catch let error as PrismRPCError {
            #expect(error.reason == .unsupportedVersion)
            #expect(error.message.contains("version 2"))
        }
        await running
        await connection.waitUntilClosed()
        #expect(ContinuousClock.now - start < .seconds(30), "failed, not hung")
        #expect(server.requests == 0)
        await server.stop()
    }

    @Test("a request over the processor's max_frame_size fails before it is sent; the connection lives on")
    func oversizeRequest() async throws {
        let server = try await FakeProcessor.start(.init(maxFrameSize: 4096))
        try await withFakeConnection(server) { connection in
            do {
                _ = try await connection.process(request(bytes: 10_000))
                Issue.record("an oversize request was sent")
            } catch let error as PrismRPCError {
                #expect(error.code == .resourceExhausted)
                #expect(error.reason == .frameTooLarge)
                #expect(!error.isRetryable)
            }
            #expect(connection.isReady)
            let small = try await connection.process(request(bytes: 1_000))
            #expect(small.variants.count == 1)
        }
        #expect(server.requests == 1, "only the small request reached the processor")
        await server.stop()
    }

    @Test("an absurd process_us is clamped")
    func hugeProcessTime() async throws {
        let server = try await FakeProcessor.start(.init(processUs: .max))
        let result = try await withFakeConnection(server) { connection in
            try await connection.process(request())
        }
        #expect(result.variants[0].processDuration == .seconds(24 * 3600))
        #expect(result.variants[0].processDuration.nanoseconds > 0)
        await server.stop()
    }

    @Test("a healthy processor answers pings and keepalives keep it up")
    func healthyKeepalive() async throws {
        let server = try await FakeProcessor.start()
        try await withFakeConnection(server) { connection in
            let latency = try await connection.ping()
            #expect(latency > .zero)
            try await Task.sleep(for: .seconds(1))  // several keepalive rounds
            #expect(connection.isReady)
            _ = try await connection.process(request())
        }
        await server.stop()
    }
}
