import Foundation
import NIOCore
import NIOPosix
import PrismClient
import PrismProto
@testable import PrismTLS
import PrismWire
import Testing

/// The client's TLS configuration and the failures it must report clearly. The real handshakes
/// (trusted, untrusted, mutual) run against the real binaries in Tests/system/test_tls.py,
/// with certificates made at test time.
@Suite struct TLSTests {
    @Test func theServerNameIsTheHostUnlessSetAndSNINeverCarriesAnAddress() {
        var tls = ClientTLSConfiguration()
        #expect(tls.sniName(connectingTo: "proc1.internal") == "proc1.internal")
        #expect(tls.sniName(connectingTo: "127.0.0.1") == nil)
        #expect(tls.sniName(connectingTo: "::1") == nil)
        tls.serverName = "processor"
        #expect(tls.sniName(connectingTo: "10.0.0.7") == "processor")
        tls.serverName = "10.0.0.7"
        #expect(tls.sniName(connectingTo: "proc1.internal") == nil)
    }

    @Test func handshakeFailuresAreNamedByTheirReason() {
        let unknownCA = "handshakeFailed(NIOSSL.BoringSSLError.sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at ...]))"
        #expect(TLSFailure.reason(unknownCA, role: .client, serverName: nil).contains("unknown CA"))
        #expect(TLSFailure.reason(unknownCA, role: .server, serverName: nil).contains("--tls-client-ca"))
        let mismatch = "NIOSSLExtraError.failedToValidateHostname: Couldn't find images.example.com in certificate from peer"
        let sentence = TLSFailure.reason(mismatch, role: .client, serverName: "images.example.com")
        #expect(sentence.contains("hostname mismatch") && sentence.contains("'images.example.com'"))
        let noCertificate = "sslError([Error: 268436566 error:10000456:SSL routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED at ...])"
        #expect(TLSFailure.reason(noCertificate, role: .client, serverName: nil).contains("requires a client certificate"))
        let notTLS = "handshakeFailed(sslError([Error: 268435708 error:100000fc:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER at ...]))"
        #expect(TLSFailure.reason(notTLS, role: .client, serverName: nil).contains("did not answer with TLS"))
        #expect(TLSFailure(CancellationError(), role: .client) == nil)
    }

    @Test func eachMistakeInAPEMFileIsNamed() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("prism-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let setting = "--tls-cert (PRISM_TLS_CERT)"

        func message(_ path: String) -> String {
            do {
                _ = try PEMFile.certificates(at: path, setting: setting)
                return "no error"
            } catch {
                return error.message
            }
        }

        let missing = directory.appendingPathComponent("missing.pem").path
        #expect(message(missing) == "\(setting): \(missing) does not exist.")
        #expect(message(directory.path).contains("is a directory"))

        let der = directory.appendingPathComponent("cert.der")
        try Data([0x30, 0x82, 0x01, 0x0A, 0x02]).write(to: der)
        #expect(message(der.path).contains("is not PEM") && message(der.path).contains("DER"))

        let key = directory.appendingPathComponent("key.pem")
        try Data("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".utf8).write(to: key)
        #expect(message(key.path).contains("no 'CERTIFICATE' PEM block"))

        let broken = directory.appendingPathComponent("broken.pem")
        try Data("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n".utf8).write(to: broken)
        #expect(message(broken.path).contains("does not parse as PEM certificates"))

        let encrypted = directory.appendingPathComponent("encrypted.pem")
        try Data("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".utf8).write(to: encrypted)
        #expect(throws: TLSSetupError.self) { try PEMFile.privateKey(at: encrypted.path, setting: "--tls-key") }
        do {
            _ = try PEMFile.privateKey(at: encrypted.path, setting: "--tls-key")
        } catch {
            #expect(error.message.contains("passphrase"))
        }
    }

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
        #expect(elapsed < .seconds(3))
        #expect(error?.code == .unavailable)
        #expect(error?.isRetryable == true)
        #expect(error?.message.contains("did not complete the TLS handshake") == true)
    }

    @Test func cancellingAConnectEndsAPendingTLSHandshakeAtOnce() async throws {
        let server = try await RawServer.start(greeting: nil)
        defer { Task { await server.stop() } }
        var configuration = ProcessorClientConfiguration()
        configuration.tls = ClientTLSConfiguration()
        configuration.connectTimeout = .seconds(30)
        let connect = Task {
            try await ProcessorConnection.connect(host: "127.0.0.1", port: server.port, configuration: configuration)
        }
        try await Task.sleep(for: .milliseconds(200))
        let start = ContinuousClock.now
        connect.cancel()
        await #expect(throws: PrismRPCError.self) { _ = try await connect.value }
        #expect(ContinuousClock.now - start < .seconds(2))
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
