import Hummingbird
public import Logging
public import NIOCore
import NIOPosix
import PrismImaging
import PrismProto
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
    private let bound = AsyncValue<SocketAddress>()
    private let statusBound = AsyncValue<SocketAddress>()
    let draining = AsyncValue<Void>()
    private let liveConnections = Mutex(0)

    /// - Parameters:
    ///   - configuration: ports, pool sizes, limits, timeouts.
    ///   - registry: where metrics are registered and read from for `/metrics`.
    public init(
        configuration: ProcessorConfiguration,
        logger: Logger = Logger(label: "prism.processor"),
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()
    ) throws {
        try Vips.start(concurrency: configuration.vipsConcurrency)
        self.configuration = configuration
        self.logger = logger
        self.metrics = ProcessorMetrics(registry: registry)
        self.pool = WorkerPool(workers: configuration.workers, queueCapacity: configuration.queueCapacity, metrics: self.metrics)
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
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: config.host, port: config.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
                    try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                    return try NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>(wrappingChannelSynchronously: channel)
                }
            }
        let address = server.channel.localAddress!
        self.bound.set(address)
        self.logger.info("processor listening", metadata: [
            "address": "\(address.hostPort)", "workers": "\(config.workers)", "queue": "\(config.queueCapacity)",
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
    /// drain time to finish before cutting them off.
    private func acceptConnections(_ server: NIOAsyncChannel<NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>, Never>) async throws {
        let config = self.configuration
        try await withThrowingDiscardingTaskGroup { connections in
            try await server.executeThenClose { inbound in
                for try await channel in inbound {
                    connections.addTask {
                        self.liveConnections.withLock { $0 += 1 }
                        defer { self.liveConnections.withLock { $0 -= 1 } }
                        let connection = ProcessorConnectionHandler(channel: channel, server: self)
                        await connection.run()
                    }
                }
            }
            let limit = ContinuousClock.now + config.drainTimeout
            while self.liveConnections.withLock({ $0 }) > 0, ContinuousClock.now < limit {
                try? await Task.sleep(for: .milliseconds(20))
            }
            if self.liveConnections.withLock({ $0 }) > 0 {
                self.logger.warning("drain timeout: cancelling calls still running", metadata: ["calls": "\(self.pool.load)"])
                connections.cancelAll()
            }
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
