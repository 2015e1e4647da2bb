import Foundation
import NIOCore
import NIOPosix
import PrismClient
import PrismProto
import PrismTLS
import PrismWire
import Testing

/// Connecting with TLS: a handshake that never ends, a cancelled connect, a plain client
/// answered with TLS. The real handshakes (trusted, untrusted, mutual) run against the real
/// binaries in Tests/system/test_tls.py, with certificates made at test time.
@Suite struct TLSConnectTests {
    @Test func aServerThatNeverAnswersTheTLSHandshakeFailsTheConnectInTime() async throws {
        let server = try await RawServer.start(greeting: nil)
        defer { Task { await server.stop() } }
        var configuration = ProcessorClientConfiguration()
        configuration.tls = ClientTLSConfiguration()
        configuration.connectTimeout = .milliseconds(300)
        let start = ContinuousClock.now
        let error = await #expect(throws: PrismRPCError.self) {
            _ = try await ProcessorConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        }
        let elapsed = ContinuousClock.now - start
        #expect(elapsed < .seconds(30), "failed by the connect timeout, not hung")
        #expect(error?.code == .unavailable)
        #expect(error?.isRetryable == true)
        #expect(error?.message.contains("did not complete the TLS handshake") == true)
    }

    @Test func cancellingAConnectEndsAPendingTLSHandshakeAtOnce() async throws {
        let server = try await RawServer.start(greeting: nil)
        defer { Task { await server.stop() } }
        var configuration = ProcessorClientConfiguration()
        configuration.tls = ClientTLSConfiguration()
        configuration.connectTimeout = .seconds(120)
        let connect = Task {
            try await ProcessorConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        }
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        connect.cancel()
        await #expect(throws: PrismRPCError.self) { _ = try await connect.value }
        #expect(ContinuousClock.now - start < .seconds(60), "ended by the cancel, not the 120 s connect timeout")
    }

    @Test func aPlainClientAnsweredWithTLSSaysSo() async throws {
        // A TLS alert record: what a TLS server sends a client whose first bytes are not TLS.
        let server = try await RawServer.start(greeting: [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x46])
        defer { Task { await server.stop() } }
        try await ProcessorConnection.withConnection(host: "127.0.0.1", port: server.port) { connection in
            await #expect(throws: PrismRPCError.self) { try await connection.waitUntilReady() }
            await connection.waitUntilClosed()
            let closeError = try #require(connection.closeError)
            #expect(closeError.message.contains("answered with TLS"), "\(closeError)")
        }
    }
}

/// A TCP server that writes `greeting` to each connection and then says nothing.
final class RawServer: Sendable {
    let channel: any Channel
    var port: Int { self.channel.localAddress!.port! }

    private init(channel: any Channel) {
        self.channel = channel
    }

    static func start(greeting: [UInt8]?) async throws -> RawServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(Greeter(greeting: greeting))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        return RawServer(channel: channel)
    }

    func stop() async {
        try? await self.channel.close()
    }
}

/// Writes its greeting once the connection is up, then ignores everything.
private final class Greeter: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let greeting: [UInt8]?

    init(greeting: [UInt8]?) {
        self.greeting = greeting
    }

    func channelActive(context: ChannelHandlerContext) {
        if let greeting = self.greeting {
            context.writeAndFlush(NIOAny(ByteBuffer(bytes: greeting)), promise: nil)
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}
}
