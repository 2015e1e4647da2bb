public import CoreMetrics
public import Logging
import PrismProto
public import PrismWire
public import ServiceLifecycle
import Synchronization

/// Connections to every processor, kept up, and the choice of processor for each call.
///
/// Per address a `Subchannel`: connection state (idle, connecting, ready, transient failure,
/// draining), reconnection with exponential backoff and jitter, go-away respected. Each
/// connection pings its processor and closes itself when the processor goes silent, failing its
/// calls retryably. A call goes to the less loaded of two random ready processors (power of two
/// choices); a call whose connection failed before any answer (or that was refused as draining
/// or full) is retried once on another processor; a call that failed on the image, or that
/// already delivered a variant, is not.
public final class ProcessorPool: Service, Sendable {
    let configuration: ProcessorPoolConfiguration
    let logger: Logger
    private let state = Mutex(PoolState())
    /// Held from reading the states to recording the gauges, so two subchannels changing
    /// state at once cannot record their snapshots out of order (the gauge could stay at an
    /// older count while /readyz already saw the new one).
    private let publishing = Mutex(())
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
                // Shutting down: stop the resolver and any backoff sleep. Connections were
                // drained by shutDown(); cancelling closes what is left.
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

    func add(_ endpoint: ProcessorPoolConfiguration.Endpoint) {
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

    /// Forgets the subchannels whose address matches; the caller removes them.
    func removeSubchannels(where matches: (String) -> Bool) -> [Subchannel] {
        self.state.withLock { state in
            let stale = state.subchannels.values.filter { matches($0.address) }
            stale.forEach { state.subchannels.removeValue(forKey: $0.address) }
            return stale
        }
    }

    // MARK: Calls

    /// Makes the request's variants on a processor, retrying once elsewhere when the first
    /// processor failed without judging the image and before any variant was delivered.
    ///
    /// - Throws: `PrismRPCError`. A request larger than the processor accepts fails with
    ///   RESOURCE_EXHAUSTED / FRAME_TOO_LARGE and is not retried.
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
            defer { subchannel.release(connection) }
            // A call may be retried only before any answer: once a variant has been handed to
            // the caller (and stored), a second call would make it again.
            var delivered = false
            do {
                return try await connection.process(request) { variant in
                    delivered = true
                    try await onVariant(variant)
                }
            } catch let error as PrismRPCError where error.isRetryable && attempt == 0 && !delivered {
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
        self.publishing.withLock { _ in
            let subchannels = self.state.withLock { Array($0.subchannels.values) }
            let names = subchannels.map(\.gaugeName)
            for name in SubchannelStateMachine<ProcessorConnection>.gaugeNames {
                self.metrics.connections(name).record(names.filter { $0 == name }.count)
            }
        }
    }

    func metricsReconnect() {
        self.metrics.reconnects.increment()
    }
}
