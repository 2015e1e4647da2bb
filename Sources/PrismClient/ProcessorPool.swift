public import CoreMetrics
import PrismProto
public import Foundation
public import Logging
import NIOCore
import NIOPosix
public import PrismWire
public import ServiceLifecycle
import Synchronization

/// Where to find processors.
public struct ProcessorPoolConfiguration: Sendable {
    /// Fixed addresses.
    public var endpoints: [Endpoint] = []
    /// Names re-resolved every `resolveInterval`; every address a name has becomes a processor
    /// (compose `--scale` and Kubernetes headless services give one name many addresses).
    public var dnsNames: [Endpoint] = []
    public var resolveInterval: Duration = .seconds(5)
    /// Each connection's settings (frame size, token, timeouts).
    public var client = ProcessorClientConfiguration()
    /// Idle connections are pinged this often; one that does not answer within
    /// `pingTimeout` is closed and reconnected.
    public var pingInterval: Duration = .seconds(10)
    public var pingTimeout: Duration = .seconds(5)
    /// Reconnect backoff: doubles from `initial` up to `maximum`, with +/-20% jitter.
    public var backoffInitial: Duration = .milliseconds(100)
    public var backoffMaximum: Duration = .seconds(5)
    /// How long a call waits for a processor when none is ready but some are connecting.
    public var readyWait: Duration = .seconds(2)

    public init() {}

    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int

        public init(host: String, port: Int) {
            self.host = host
            self.port = port
        }

        /// Parses `host:port` (or `[v6]:port`).
        public init?(_ text: String) {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { return nil }
            self.init(host: host, port: port)
        }

        public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
    }
}

/// How busy one ready processor is, for planning.
public struct ProcessorLoad: Sendable {
    public var address: String
    /// Calls this gateway has in flight on it.
    public var inFlight: Int
    /// Images it works on at once (from its Hello).
    public var workers: Int

    public init(address: String, inFlight: Int, workers: Int) {
        self.address = address
        self.inFlight = inFlight
        self.workers = workers
    }
}

/// Connections to every processor, kept up, and the choice of processor for each call.
///
/// Per address: connection state (idle, connecting, ready, transient failure, draining),
/// reconnection with exponential backoff and jitter, pings, go-away respected. A call goes to
/// the less loaded of two random ready processors (power of two choices); a call whose
/// connection failed before any answer (or that was refused as draining or full) is retried
/// once on another processor; a call that failed on the image is not.
public final class ProcessorPool: Service, Sendable {
    let configuration: ProcessorPoolConfiguration
    let logger: Logger
    private let state = Mutex(PoolState())
    private let commands: AsyncStream<Subchannel>.Continuation
    private let commandStream: AsyncStream<Subchannel>
    private let metrics: PoolMetrics

    private struct PoolState {
        var subchannels: [String: Subchannel] = [:]
        var shuttingDown = false
    }

    public init(configuration: ProcessorPoolConfiguration, logger: Logger = Logger(label: "prism.pool"), metricsFactory: (any MetricsFactory)? = nil) {
        self.configuration = configuration
        self.logger = logger
        (self.commandStream, self.commands) = AsyncStream<Subchannel>.makeStream()
        self.metrics = PoolMetrics(factory: metricsFactory)
    }

    // MARK: Running

    public func run() async throws {
        for endpoint in self.configuration.endpoints {
            self.add(endpoint)
        }
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                if !self.configuration.dnsNames.isEmpty {
                    group.addTask { await self.resolveLoop() }
                }
                for await subchannel in self.commandStream {
                    group.addTask { await subchannel.run() }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.shutDown()
        }
    }

    private func shutDown() {
        let all = self.state.withLock { state -> [Subchannel] in
            state.shuttingDown = true
            return Array(state.subchannels.values)
        }
        all.forEach { $0.remove() }
        self.commands.finish()
    }

    private func add(_ endpoint: ProcessorPoolConfiguration.Endpoint) {
        let subchannel = Subchannel(endpoint: endpoint, pool: self)
        let added = self.state.withLock { state -> Bool in
            guard !state.shuttingDown, state.subchannels[subchannel.address] == nil else { return false }
            state.subchannels[subchannel.address] = subchannel
            return true
        }
        if added {
            self.logger.info("processor added", metadata: ["processor": "\(subchannel.address)"])
            self.commands.yield(subchannel)
            self.publishStates()
        }
    }

    /// Re-resolves the DNS names and adds or retires processors to match.
    private func resolveLoop() async {
        while !Task.isCancelled {
            var wanted = Set<String>()
            var found: [ProcessorPoolConfiguration.Endpoint] = []
            for name in self.configuration.dnsNames {
                let addresses = await Self.resolve(name.host)
                if addresses.isEmpty {
                    self.logger.warning("processor name resolves to nothing", metadata: ["name": "\(name.host)"])
                }
                for address in addresses {
                    let endpoint = ProcessorPoolConfiguration.Endpoint(host: address, port: name.port)
                    wanted.insert(endpoint.description)
                    found.append(endpoint)
                }
            }
            found.forEach { self.add($0) }
            let statics = Set(self.configuration.endpoints.map(\.description))
            let gone = self.state.withLock { state -> [Subchannel] in
                let stale = state.subchannels.values.filter { !wanted.contains($0.address) && !statics.contains($0.address) }
                stale.forEach { state.subchannels.removeValue(forKey: $0.address) }
                return stale
            }
            for subchannel in gone {
                self.logger.info("processor no longer in DNS", metadata: ["processor": "\(subchannel.address)"])
                subchannel.remove()
            }
            if !gone.isEmpty { self.publishStates() }
            try? await Task.sleep(for: self.configuration.resolveInterval)
        }
    }

    /// getaddrinfo on a thread pool thread (it blocks).
    static func resolve(_ host: String) async -> [String] {
        (try? await NIOThreadPool.singleton.runIfActive {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>? = nil
            guard getaddrinfo(host, nil, &hints, &result) == 0 else { return [String]() }
            defer { freeaddrinfo(result) }
            var addresses: [String] = []
            var cursor = result
            while let info = cursor {
                var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                if getnameinfo(info.pointee.ai_addr, info.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
                    let address = String(cString: buffer)
                    if !addresses.contains(address) { addresses.append(address) }
                }
                cursor = info.pointee.ai_next
            }
            return addresses.sorted()
        }) ?? []
    }

    // MARK: Calls

    /// Makes the request's variants on a processor, retrying once elsewhere when the first
    /// processor failed without judging the image.
    public func process(
        _ request: ProcessRequest,
        onVariant: (VariantResult) async throws -> Void = { _ in }
    ) async throws -> ProcessResult {
        var tried = Set<String>()
        var lastError: PrismRPCError? = nil
        for attempt in 0..<2 {
            let choosing = ContinuousClock.now
            guard let (subchannel, connection) = try await self.pickWaiting(excluding: tried, deadline: request.deadline) else {
                throw lastError ?? Self.noProcessors
            }
            self.metrics.dispatch.recordNanoseconds((ContinuousClock.now - choosing).nanoseconds)
            defer { subchannel.release() }
            do {
                return try await connection.process(request, onVariant: onVariant)
            } catch let error as PrismRPCError where error.isRetryable && attempt == 0 {
                self.metrics.retries.increment()
                self.logger.notice("retrying call on another processor", metadata: [
                    "processor": "\(subchannel.address)", "error": "\(error)", "request_id": "\(request.requestID)",
                ])
                tried.insert(subchannel.address)
                lastError = error
            }
        }
        throw lastError ?? Self.noProcessors
    }

    public static let noProcessors = PrismRPCError(code: .unavailable, message: "No image processor is available right now.", isRetryable: true)

    /// A ready processor, waiting up to `readyWait` when none is ready yet but some may become so.
    private func pickWaiting(excluding: Set<String>, deadline: ContinuousClock.Instant?) async throws -> (Subchannel, ProcessorConnection)? {
        var limit = ContinuousClock.now + self.configuration.readyWait
        if let deadline { limit = min(limit, deadline) }
        while true {
            if let picked = self.pick(excluding: excluding) { return picked }
            let hope = self.state.withLock { state in
                state.subchannels.values.contains { !excluding.contains($0.address) && $0.mayBecomeReady }
            }
            guard hope, ContinuousClock.now < limit else { return nil }
            try await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Power of two choices on the calls each processor has in flight from here. Choosing and
    /// reserving happen under one lock, so calls dispatched together see each other's picks.
    func pick(excluding: Set<String>) -> (Subchannel, ProcessorConnection)? {
        self.state.withLock { state in
            let ready = state.subchannels.values.compactMap { sub -> (Subchannel, ProcessorConnection, Int)? in
                guard !excluding.contains(sub.address), let (connection, load) = sub.readyConnection() else { return nil }
                return (sub, connection, load)
            }
            guard !ready.isEmpty else { return nil }
            var choice = ready[Int.random(in: 0..<ready.count)]
            if ready.count > 1 {
                var other = ready[Int.random(in: 0..<(ready.count - 1))]
                if other.0 === choice.0 { other = ready[ready.count - 1] }
                if other.2 < choice.2 { choice = other }
            }
            guard choice.0.reserve(choice.1) else { return nil }
            return (choice.0, choice.1)
        }
    }

    // MARK: Observing

    /// Ready processors and their load, for deciding how to split an upload.
    public func readyLoads() -> [ProcessorLoad] {
        self.state.withLock { state in
            state.subchannels.values.compactMap { sub in
                guard let (connection, load) = sub.readyConnection() else { return nil }
                return ProcessorLoad(address: sub.address, inFlight: load, workers: Int(connection.serverHello?.workers ?? 1))
            }
        }
    }

    /// Recomputes the per-state connection gauges.
    func publishStates() {
        let phases = self.state.withLock { state in state.subchannels.values.map(\.phaseName) }
        for name in Subchannel.phaseNames {
            self.metrics.connections(name).record(phases.filter { $0 == name }.count)
        }
    }
}

/// swift-metrics handles for the pool, on the factory the gateway owns.
struct PoolMetrics: Sendable {
    let retries: CoreMetrics.Counter
    let reconnects: CoreMetrics.Counter
    /// Time to choose a processor for a call (including waiting for one to be ready).
    let dispatch: CoreMetrics.Timer
    let factory: any MetricsFactory

    init(factory: (any MetricsFactory)?) {
        let factory = factory ?? MetricsSystem.factory
        self.factory = factory
        self.retries = CoreMetrics.Counter(label: "prism_gateway_call_retries_total", factory: factory)
        self.reconnects = CoreMetrics.Counter(label: "prism_gateway_processor_reconnects_total", factory: factory)
        self.dispatch = CoreMetrics.Timer(label: "prism_gateway_dispatch_seconds", factory: factory)
    }

    func connections(_ state: String) -> CoreMetrics.Gauge {
        CoreMetrics.Gauge(label: "prism_gateway_processor_connections", dimensions: [("state", state)], factory: self.factory)
    }
}

/// One processor address: its connection, kept up with backoff, and its load.
final class Subchannel: Sendable {
    let endpoint: ProcessorPoolConfiguration.Endpoint
    let address: String
    private unowned let pool: ProcessorPool
    private let state = Mutex(State())

    enum Phase: String {
        case idle, connecting, ready, transientFailure = "transient_failure", draining, shutdown
    }

    static let phaseNames = ["idle", "connecting", "ready", "transient_failure", "draining", "shutdown"]

    private struct State {
        var phase = Phase.idle
        var connection: ProcessorConnection?
        var reserved = 0
        var removed = false
        var failures = 0
    }

    init(endpoint: ProcessorPoolConfiguration.Endpoint, pool: ProcessorPool) {
        self.endpoint = endpoint
        self.address = endpoint.description
        self.pool = pool
    }

    var phaseName: String {
        let (phase, connection) = self.state.withLock { ($0.phase, $0.connection) }
        if phase == .ready, connection?.isReady == false { return Phase.draining.rawValue }
        return phase.rawValue
    }

    /// True while this processor is not ready but might be soon (first connection under way).
    var mayBecomeReady: Bool {
        self.state.withLock { !$0.removed && ($0.phase == .idle || $0.phase == .connecting) && $0.failures == 0 }
    }

    /// The connection and its load when it can take a call.
    func readyConnection() -> (ProcessorConnection, Int)? {
        self.state.withLock { state in
            guard !state.removed, state.phase == .ready, let connection = state.connection, connection.isReady else { return nil }
            return (connection, state.reserved)
        }
    }

    /// Counts a call against this processor; false if it stopped being ready meanwhile.
    func reserve(_ connection: ProcessorConnection) -> Bool {
        self.state.withLock { state in
            guard !state.removed, state.connection === connection else { return false }
            state.reserved += 1
            return true
        }
    }

    func release() {
        self.state.withLock { $0.reserved -= 1 }
    }

    /// Stops reconnecting; closes the connection once its calls are done.
    func remove() {
        let connection = self.state.withLock { state -> ProcessorConnection? in
            state.removed = true
            return state.connection
        }
        if let connection, connection.inFlight == 0 { connection.close() }
    }

    private func set(_ phase: Phase, connection: ProcessorConnection? = nil) {
        self.state.withLock { state in
            state.phase = phase
            state.connection = connection
        }
        self.pool.publishStates()
    }

    /// Connect, serve, and on any loss reconnect with exponential backoff and jitter, until
    /// removed or cancelled.
    func run() async {
        let config = self.pool.configuration
        let logger = self.pool.logger
        while !Task.isCancelled, !self.state.withLock({ $0.removed }) {
            self.set(.connecting)
            do {
                let connection = try await ProcessorConnection.connect(host: self.endpoint.host, port: self.endpoint.port, configuration: config.client, logger: logger)
                await withTaskGroup(of: Void.self) { group in
                    group.addTask { await connection.run() }
                    group.addTask { await self.watch(connection) }
                    await group.next()
                    group.cancelAll()
                    connection.close()
                }
            } catch {
                logger.debug("processor connection failed", metadata: ["processor": "\(self.address)", "error": "\(error)"])
            }
            let (removed, failures) = self.state.withLock { state -> (Bool, Int) in
                state.failures += 1
                state.connection = nil
                return (state.removed, state.failures)
            }
            if removed { break }
            self.set(.transientFailure)
            self.pool.metricsReconnect()
            let base = config.backoffInitial * (1 << min(failures - 1, 16))
            let capped = min(base, config.backoffMaximum)
            let jittered = capped * Double.random(in: 0.8...1.2)
            try? await Task.sleep(for: jittered)
        }
        self.set(.shutdown)
    }

    /// Waits for the handshake, marks ready, then pings while the connection lasts.
    private func watch(_ connection: ProcessorConnection) async {
        let config = self.pool.configuration
        do {
            try await connection.waitUntilReady()
        } catch {
            return
        }
        self.state.withLock { $0.failures = 0 }
        self.set(.ready, connection: connection)
        self.pool.logger.info("processor ready", metadata: ["processor": "\(self.address)", "workers": "\(connection.serverHello?.workers ?? 0)"])
        while !Task.isCancelled, !connection.isClosed {
            try? await Task.sleep(for: config.pingInterval)
            if Task.isCancelled || connection.isClosed { return }
            if self.state.withLock({ $0.removed }), connection.inFlight == 0 {
                connection.close()
                return
            }
            let answered = await withTaskGroup(of: Bool.self) { group in
                group.addTask { (try? await connection.ping()) != nil }
                group.addTask {
                    try? await Task.sleep(for: config.pingTimeout)
                    return false
                }
                let first = await group.next() ?? false
                group.cancelAll()
                return first
            }
            if !answered, !connection.isClosed {
                self.pool.logger.warning("processor did not answer a ping; reconnecting", metadata: ["processor": "\(self.address)"])
                connection.close()
                return
            }
        }
    }
}

extension ProcessorPool {
    func metricsReconnect() {
        self.metrics.reconnects.increment()
    }
}
