import CoreMetrics
import Hummingbird
public import Logging
public import NIOCore
import NIOPosix
import NIOSSL
import PrismImaging
import PrismProto
import PrismTLS
import PrismWire
public import Prometheus
public import ServiceLifecycle
import Synchronization

/// The processor service: the frame protocol on one port, health and metrics over HTTP on
/// another, libvips on a bounded worker pool.
///
/// Run it in a `ServiceGroup`. On graceful shutdown it stops accepting connections, sends
/// GoAway on every connection, lets calls in flight finish for up to `drainTimeout`, cancels
/// what is left, and returns.
public final class ProcessorServer: Service, Sendable {
    let configuration: ProcessorConfiguration
    let logger: Logger
    let metrics: ProcessorMetrics
    let pool: WorkerPool
    /// Threads a call borrows for parallel variants when its client says cores are idle.
    let helpers: CountedHelpers
    /// Made once at start from `configuration.tls`; every accepted connection gets a handler
    /// from it.
    private let tlsContext: NIOSSLContext?
    private let bound = AsyncValue<SocketAddress>()
    private let statusBound = AsyncValue<SocketAddress>()
    let draining = AsyncValue<Void>()
    private let liveConnections = Mutex(ConnectionRegistry())

    /// The connections being served, so the drain deadline can reach their calls.
    private struct ConnectionRegistry {
        /// Accepted and not yet ended; counted from accept, before a handler exists.
        var count = 0
        var handlers: [UInt64: ProcessorConnectionHandler] = [:]
        var nextID: UInt64 = 0
    }

    /// - Parameters:
    ///   - configuration: ports, pool sizes, limits, timeouts.
    ///   - registry: where metrics are registered and read from for `/metrics`.
    public init(
        configuration: ProcessorConfiguration,
        logger: Logger = Logger(label: "prism.processor"),
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()
    ) throws {
        try Vips.start(concurrency: configuration.vipsConcurrency)
        self.tlsContext = try configuration.tls?.makeContext()
        self.configuration = configuration
        self.logger = logger
        self.metrics = ProcessorMetrics(registry: registry)
        self.pool = WorkerPool(workers: configuration.workers, queueCapacity: configuration.queueCapacity, metrics: self.metrics)
        self.helpers = CountedHelpers(ThreadHelpers(limit: configuration.jobThreads - 1), started: self.metrics.helperChains)
    }

    /// The address the frame protocol listens on, once bound (useful with port 0).
    public func listeningAddress() async throws -> SocketAddress {
        try await self.bound.get()
    }

    /// The address of the HTTP status server, once bound.
    public func statusAddress() async throws -> SocketAddress {
        try await self.statusBound.get()
    }

    public func run() async throws {
        self.pool.start()
        do {
            try await self.serve()
        } catch {
            try? await self.pool.shutdown()
            throw error
        }
        try await self.pool.shutdown()
        self.logger.info("processor stopped")
    }

    private func serve() async throws {
        let config = self.configuration
        let maxFrameSize = config.maxFrameSize
        // Answers a peer does not take pile up in the channel; past the high mark the channel
        // turns unwritable and BackPressureHandler stops reading it (no new calls) until the
        // pile is back under the low mark.
        let pendingOutput = ChannelOptions.Types.WriteBufferWaterMark(
            low: max(1, config.maxPendingOutputBytes / 2),
            high: max(1, config.maxPendingOutputBytes)
        )
        let tls = self.tlsContext.map { context in (context: context, refusal: Self.plaintextRefusal) }
        let metrics = self.metrics
        let logger = self.logger
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: pendingOutput)
            .bind(host: config.host, port: config.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    let decoder = FrameDecoder(maxFrameSize: maxFrameSize) { first in
                        ProcessorHandshake.refusal(first, configuration: config) == nil
                    }
                    if let tls {
                        // First, so frames go through TLS unchanged. The pre-Hello timer of the
                        // connection handler runs from accept, so it bounds the TLS handshake too.
                        try channel.pipeline.syncOperations.addHandler(PlaintextRefusalHandler(refusal: tls.refusal) { peer in
                            metrics.tlsHandshakeFailures.increment()
                            logger.notice("connection refused: plain TCP on the TLS port", metadata: ["peer": "\(peer?.hostPort ?? "?")"])
                        })
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tls.context))
                        try channel.pipeline.syncOperations.addHandler(TLSServerHandshakeHandler { failure, peer in
                            metrics.tlsHandshakeFailures.increment()
                            // The reason names the problem; BoringSSL's own text only helps a developer.
                            logger.notice("TLS handshake failed", metadata: ["peer": "\(peer?.hostPort ?? "?")", "reason": "\(failure.reason)"])
                            logger.debug("TLS handshake failure detail", metadata: ["peer": "\(peer?.hostPort ?? "?")", "detail": "\(failure.detail)"])
                        })
                    }
                    try channel.pipeline.syncOperations.addHandler(BackPressureHandler())
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(decoder))
                    try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                    // Few decoded frames wait for the read loop: each may be a whole upload.
                    return try NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 1, highWatermark: 2))
                    )
                }
            }
        let address = server.channel.localAddress!
        self.bound.set(address)
        self.logger.info("processor listening", metadata: [
            "address": "\(address.hostPort)", "workers": "\(config.workers)", "queue": "\(config.queueCapacity)",
            "job_threads": "\(config.jobThreads)",
            "tls": "\(config.tls?.summary ?? "off")",
            "libvips": "\(Vips.version)",
        ])

        try await withThrowingTaskGroup(of: Void.self) { group in
            if let statusPort = config.statusPort {
                // Stops by itself on graceful shutdown (Hummingbird's application is a Service).
                group.addTask { try await self.runStatusServer(host: config.statusHost, port: statusPort) }
            }
            group.addTask {
                // Graceful shutdown: stop accepting; connections drain themselves.
                do { try await gracefulShutdown() } catch { return }
                self.logger.info("draining: no new connections or calls", metadata: ["calls": "\(self.pool.load)"])
                self.draining.set(())
                server.channel.close(promise: nil)
            }
            do {
                try await self.acceptConnections(server)
            } catch {
                group.cancelAll()
                throw error
            }
            if self.draining.current == nil {
                group.cancelAll()  // the listener stopped for another reason: stop the rest
            }
            try await group.waitForAll()
        }
    }

    /// Serves each connection in a child task until the listener closes, then gives them the
    /// drain time to finish. Calls still running at the drain deadline are answered
    /// UNAVAILABLE/SHUTTING_DOWN before their connections close.
    private func acceptConnections(_ server: NIOAsyncChannel<NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>, Never>) async throws {
        let config = self.configuration
        try await withThrowingDiscardingTaskGroup { connections in
            try await server.executeThenClose { inbound in
                for try await channel in inbound {
                    let id = self.liveConnections.withLock { registry -> UInt64? in
                        guard registry.count < config.maxConnections else { return nil }
                        registry.count += 1
                        registry.nextID += 1
                        return registry.nextID
                    }
                    guard let id else {
                        connections.addTask { await self.refuse(channel) }
                        continue
                    }
                    connections.addTask {
                        let connection = ProcessorConnectionHandler(channel: channel, server: self)
                        self.liveConnections.withLock { $0.handlers[id] = connection }
                        defer {
                            self.liveConnections.withLock { registry in
                                registry.handlers.removeValue(forKey: id)
                                registry.count -= 1
                            }
                        }
                        await connection.run()
                    }
                }
            }
            let live = { self.liveConnections.withLock { $0.count } }
            let limit = ContinuousClock.now + config.drainTimeout
            while live() > 0, ContinuousClock.now < limit {
                try? await Task.sleep(for: .milliseconds(20))
            }
            guard live() > 0 else { return }
            self.logger.warning("drain timeout: ending the calls still running", metadata: ["calls": "\(self.pool.load)"])
            let handlers = self.liveConnections.withLock { Array($0.handlers.values) }
            for handler in handlers { await handler.endCallsAtDrainDeadline() }
            // Time for those last frames to be written; then whatever is left is cut off.
            let grace = ContinuousClock.now + .seconds(1)
            while live() > 0, ContinuousClock.now < grace {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if live() > 0 {
                connections.cancelAll()
            }
        }
    }

    /// What a TLS port answers, in plain bytes, to a peer whose first byte is not a TLS
    /// handshake: one Error frame on call 0 that a plain client of the protocol can read.
    static let plaintextRefusal: ByteBuffer = {
        let error = PrismRPCError(
            code: .failedPrecondition,
            reason: .protocolViolation,
            message: "This processor port requires TLS; connect with TLS (prism-gateway --processor-tls-ca, prism-call --tls)."
        )
        // A fixed, small message: encoding cannot fail.
        return (try? Prism_V1_Frame.error(callID: 0, error).encoded()) ?? ByteBuffer()
    }()

    /// Answers a connection over `maxConnections` with one Error on call 0, then closes it.
    private func refuse(_ channel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>) async {
        self.metrics.connectionsRefused.increment()
        self.logger.notice("connection refused: too many connections", metadata: [
            "peer": "\(channel.channel.remoteAddress?.hostPort ?? "?")", "limit": "\(self.configuration.maxConnections)",
        ])
        let error = PrismRPCError(
            code: .resourceExhausted,
            message: "This processor already serves its limit of \(self.configuration.maxConnections) connections; retry later or connect to another processor.",
            isRetryable: true
        )
        // With TLS the frame waits for a handshake the peer may never finish: the handshake
        // timeout bounds that wait as it bounds a served connection's.
        let giveUp = channel.channel.eventLoop.scheduleTask(in: .init(self.configuration.handshakeTimeout)) { [channel] in
            channel.channel.close(promise: nil)
        }
        defer { giveUp.cancel() }
        try? await channel.executeThenClose { _, _ in
            // Awaited: the frame must reach the socket before the close.
            try await channel.channel.writeAndFlush(Prism_V1_Frame.error(callID: 0, error)).get()
        }
    }

    /// `/healthz` (alive), `/readyz` (taking calls) and `/metrics` (Prometheus text format).
    private func runStatusServer(host: String, port: Int) async throws {
        let router = Router()
        router.get("/healthz") { _, _ in
            "ok\n"
        }
        router.get("/readyz") { _, _ -> Response in
            if self.draining.current != nil {
                return Response(status: .serviceUnavailable, headers: [.retryAfter: "1"], body: .init(byteBuffer: ByteBuffer(string: "draining\n")))
            }
            return Response(status: .ok, body: .init(byteBuffer: ByteBuffer(string: "ready\n")))
        }
        let registry = self.metrics.registry
        router.get("/metrics") { _, _ -> Response in
            var bytes: [UInt8] = []
            bytes.reserveCapacity(16_384)
            registry.emit(into: &bytes)
            return Response(
                status: .ok,
                headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: .init(byteBuffer: ByteBuffer(bytes: bytes))
            )
        }
        var logger = self.logger
        logger.logLevel = max(logger.logLevel, .notice)  // no line per scrape
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: "prism-processor"),
            onServerRunning: { channel in self.statusBound.set(channel.localAddress!) },
            logger: logger
        )
        // A Service in our task: it stops by itself when graceful shutdown begins.
        try await app.run()
    }
}

/// Helper threads that count the chains they start.
struct CountedHelpers: JobHelpers {
    let inner: ThreadHelpers
    let started: CoreMetrics.Counter

    init(_ inner: ThreadHelpers, started: CoreMetrics.Counter) {
        self.inner = inner
        self.started = started
    }

    func tryRun(_ work: @escaping @Sendable () -> Void) -> Bool {
        guard self.inner.tryRun(work) else { return false }
        self.started.increment()
        return true
    }
}
