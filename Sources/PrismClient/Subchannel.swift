import Logging
import PrismProto
import PrismTLS
import Synchronization

/// One processor address: its connection, kept up with backoff, and its load.
///
/// The rules are in `SubchannelStateMachine`; liveness (pings and their timeout) is the
/// connection's own business, so a hung processor's connection closes by itself and `run()`
/// simply sees it end.
final class Subchannel: Sendable {
    let endpoint: ProcessorPoolConfiguration.Endpoint
    let address: String
    private unowned let pool: ProcessorPool
    private let state: Mutex<SubchannelStateMachine<ProcessorConnection>>

    init(endpoint: ProcessorPoolConfiguration.Endpoint, pool: ProcessorPool) {
        self.endpoint = endpoint
        self.address = endpoint.description
        self.pool = pool
        let backoff = Backoff(initial: pool.configuration.backoffInitial, maximum: pool.configuration.backoffMaximum)
        self.state = Mutex(SubchannelStateMachine(backoff: backoff))
    }

    var gaugeName: String {
        let (machine, connection) = self.state.withLock { ($0, $0.connection) }
        return machine.gaugeName(connectionIsReady: connection?.isReady ?? false)
    }

    /// True while this processor is not ready but might be soon (first connection under way).
    var mayBecomeReady: Bool {
        self.state.withLock { $0.mayBecomeReady }
    }

    /// The connection and its load when it can take a call.
    func readyConnection() -> (ProcessorConnection, Int)? {
        self.state.withLock { $0.readyConnection(isUsable: { $0.isReady }) }
    }

    /// Counts a call against this processor; false if it stopped being ready meanwhile.
    func reserve(_ connection: ProcessorConnection) -> Bool {
        self.state.withLock { $0.reserve(connection) }
    }

    func release(_ connection: ProcessorConnection) {
        self.state.withLock { $0.release(connection) }
    }

    /// Stops reconnecting; the connection closes once its calls are done.
    func remove() {
        let connection = self.state.withLock { $0.remove() }
        connection?.drain()
        self.pool.publishStates()
    }

    /// Connect, serve, and on any loss reconnect with exponential backoff and jitter, until
    /// removed or cancelled.
    func run() async {
        let configuration = self.pool.configuration
        var client = configuration.client
        client.pingInterval = configuration.pingInterval
        client.pingTimeout = configuration.pingTimeout
        if client.tls != nil, client.tls?.serverName == nil {
            // Unless told otherwise, the certificate must carry the name this processor was
            // configured by: its host, or the DNS name its address came from.
            client.tls?.serverName = self.endpoint.serverName ?? self.endpoint.host
        }
        let logger = {
            var logger = self.pool.logger
            logger[metadataKey: "processor"] = "\(self.address)"
            return logger
        }()
        var lastFailure: String? = nil

        while !Task.isCancelled, self.state.withLock({ $0.startConnecting() }) {
            self.pool.publishStates()
            let failure: String
            do {
                let connection = try await ProcessorConnection.connect(host: self.endpoint.host, port: self.endpoint.port, configuration: client, logger: self.pool.logger)
                if self.state.withLock({ $0.connected(connection) }) {
                    connection.drain()
                }
                // Both children end when the connection does: run() on its own, the handshake
                // watcher because a closing connection fails its ready waiters.
                await withDiscardingTaskGroup { group in
                    group.addTask { await connection.run() }
                    group.addTask { await self.awaitHandshake(connection, logger: logger) }
                }
                failure = connection.closeError.map { "\($0)" } ?? "the connection closed"
            } catch {
                failure = "\(error)"
            }

            let next = self.state.withLock { $0.connectionEnded(jitter: Double.random(in: 0.8...1.2)) }
            guard case .reconnect(let delay) = next else { break }
            self.pool.publishStates()
            self.pool.metricsReconnect()
            // Once per distinct failure at warning level, so a processor that stays down (or
            // speaks another version) is reported clearly without a line every backoff.
            let level: Logger.Level = failure == lastFailure ? .debug : .warning
            logger.log(level: level, "processor connection ended; reconnecting", metadata: [
                "error": "\(failure)", "backoff": "\(delay)",
            ])
            lastFailure = failure
            try? await Task.sleep(for: delay)
        }
        self.state.withLock { $0.shutDown() }
        self.pool.publishStates()
    }

    /// Marks the subchannel ready once the connection's handshake is done.
    private func awaitHandshake(_ connection: ProcessorConnection, logger: Logger) async {
        guard (try? await connection.waitUntilReady()) != nil else { return }
        guard self.state.withLock({ $0.handshakeDone(connection) }) else { return }
        self.pool.publishStates()
        logger.info("processor ready", metadata: ["workers": "\(connection.serverHello?.workers ?? 0)"])
    }
}
