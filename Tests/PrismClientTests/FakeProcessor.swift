import Foundation
import NIOCore
import NIOPosix
import PrismClient
import PrismProto
import PrismWire
import Synchronization

/// A processor that speaks just enough of the protocol, and misbehaves on request: another
/// version, a small frame limit, silence (a hung host), absurd numbers.
final class FakeProcessor: Sendable {
    struct Behaviour: Sendable {
        enum Mode: Sendable {
            /// Answers pings and every request (a Response per variant, then Complete).
            case answer
            /// Says Hello, then nothing at all: a SIGSTOPped host keeps its sockets open.
            case silent
            /// Answers the first request's first variant, then nothing at all.
            case oneVariantThenSilent
        }

        var version: UInt32 = PrismProtocol.version
        var maxFrameSize: UInt32 = 0
        var workers: UInt32 = 2
        var mode = Mode.answer
        var processUs: UInt64 = 1_000
    }

    let behaviour: Behaviour
    private let listener: any Channel
    private let children = Mutex<[any Channel]>([])
    private let requestCount = Atomic<Int>(0)
    private let connectionCount = Atomic<Int>(0)

    var port: Int { self.listener.localAddress!.port! }
    var address: String { "127.0.0.1:\(self.port)" }
    var endpoint: ProcessorPoolConfiguration.Endpoint { ProcessorPoolConfiguration.Endpoint(host: "127.0.0.1", port: self.port) }
    /// Requests received, over every connection.
    var requests: Int { self.requestCount.load(ordering: .relaxed) }
    var connections: Int { self.connectionCount.load(ordering: .relaxed) }

    private init(behaviour: Behaviour, listener: any Channel) {
        self.behaviour = behaviour
        self.listener = listener
    }

    static func start(_ behaviour: Behaviour = Behaviour()) async throws -> FakeProcessor {
        let box = Mutex<FakeProcessor?>(nil)
        let listener = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                guard let server = box.withLock({ $0 }) else { return channel.close() }
                server.children.withLock { $0.append(channel) }
                server.connectionCount.add(1, ordering: .relaxed)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
                    try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                    try channel.pipeline.syncOperations.addHandler(FakeProcessorHandler(server: server))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        let server = FakeProcessor(behaviour: behaviour, listener: listener)
        box.withLock { $0 = server }
        return server
    }

    func countRequest() {
        self.requestCount.add(1, ordering: .relaxed)
    }

    /// Closes the listener and every connection.
    func stop() async {
        try? await self.listener.close()
        for child in self.children.withLock({ $0 }) {
            try? await child.close()
        }
    }
}

final class FakeProcessorHandler: ChannelInboundHandler {
    typealias InboundIn = Prism_V1_Frame
    typealias OutboundOut = Prism_V1_Frame

    private let server: FakeProcessor
    private var silent = false

    init(server: FakeProcessor) {
        self.server = server
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = Self.unwrapInboundIn(data)
        let behaviour = self.server.behaviour
        if case .request = frame.kind { self.server.countRequest() }
        guard !self.silent else { return }
        switch frame.kind {
        case .hello:
            var hello = Prism_V1_Hello()
            hello.protocolVersion = behaviour.version
            hello.maxFrameSize = behaviour.maxFrameSize
            hello.workers = behaviour.workers
            hello.agent = "fake-processor"
            self.write(context, .hello(hello))
            if behaviour.mode == .silent { self.silent = true }
        case .ping(let ping):
            self.write(context, .pong(ping.payload))
        case .request(let request):
            for index in request.variants.indices {
                var response = Prism_V1_Response()
                response.variantIndex = UInt32(index)
                response.data = Data([0xFF, 0xD8, 0xFF])
                response.width = 1
                response.height = 1
                response.format = .jpeg
                response.processUs = behaviour.processUs
                self.write(context, .response(callID: frame.callID, response))
                if behaviour.mode == .oneVariantThenSilent {
                    self.silent = true
                    return
                }
            }
            var complete = Prism_V1_Complete()
            complete.source.width = 1
            complete.source.height = 1
            self.write(context, .complete(callID: frame.callID, complete))
        default:
            break
        }
    }

    private func write(_ context: ChannelHandlerContext, _ frame: Prism_V1_Frame) {
        context.writeAndFlush(Self.wrapOutboundOut(frame), promise: nil)
    }
}

@available(*, unavailable)
extension FakeProcessorHandler: Sendable {}
