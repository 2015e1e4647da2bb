/// The life of one processor address in the pool, without sockets.
///
/// ```
/// idle --> connecting --handshake--> ready --connection ends--> transientFailure --backoff--> connecting
///              |                                                      ^
///              +------------- connect or handshake fails -------------+
/// any state --remove()--> (current connection drained) --> shutdown
/// ```
///
/// `Subchannel` holds one in a `Mutex` and performs what it returns (drain a connection, sleep
/// the backoff) outside the lock. `Connection` is compared by identity, so a late event about a
/// connection that has since been replaced changes nothing.
struct SubchannelStateMachine<Connection: AnyObject> {
    enum Phase: String, CaseIterable, Sendable {
        case idle, connecting, ready
        case transientFailure = "transient_failure"
        case shutdown
    }

    /// Names published in the connections gauge: the phases, plus `draining` for a ready
    /// subchannel whose connection stopped taking calls (go-away).
    static var gaugeNames: [String] {
        ["idle", "connecting", "ready", "transient_failure", "draining", "shutdown"]
    }

    enum AfterConnection: Equatable {
        case reconnect(after: Duration)
        case stop
    }

    let backoff: Backoff
    private(set) var phase = Phase.idle
    private(set) var connection: Connection?
    /// Calls dispatched to the current connection and not yet released.
    private(set) var reserved = 0
    private(set) var removed = false
    /// Consecutive connections that ended without ever becoming ready (or since the last ready
    /// one ended): drives the backoff.
    private(set) var failures = 0

    init(backoff: Backoff) {
        self.backoff = backoff
    }

    /// True while this processor is not ready but might be soon (first connection under way),
    /// so a call is worth waiting for it.
    var mayBecomeReady: Bool {
        !self.removed && (self.phase == .idle || self.phase == .connecting) && self.failures == 0
    }

    /// The name for the connections gauge; `connectionIsReady` tells a draining connection.
    func gaugeName(connectionIsReady: Bool) -> String {
        if self.phase == .ready, !connectionIsReady { return "draining" }
        return self.phase.rawValue
    }

    /// Starts a connection attempt; false when removed (the subchannel is then shut down).
    mutating func startConnecting() -> Bool {
        guard !self.removed else {
            self.phase = .shutdown
            return false
        }
        self.phase = .connecting
        return true
    }

    /// The TCP connection is open. Returns true when the subchannel was removed meanwhile: the
    /// caller must drain the connection (which closes it, as nothing was sent on it yet).
    mutating func connected(_ connection: Connection) -> Bool {
        self.connection = connection
        self.reserved = 0
        return self.removed
    }

    /// The handshake finished; true when that made the subchannel ready.
    mutating func handshakeDone(_ connection: Connection) -> Bool {
        guard !self.removed, self.phase == .connecting, self.connection === connection else { return false }
        self.phase = .ready
        self.failures = 0
        return true
    }

    /// The connection (or the attempt to open one) ended. `jitter` scales the backoff
    /// (0.8...1.2 in production).
    mutating func connectionEnded(jitter: Double) -> AfterConnection {
        self.connection = nil
        self.reserved = 0
        self.failures += 1
        guard !self.removed else {
            self.phase = .shutdown
            return .stop
        }
        self.phase = .transientFailure
        return .reconnect(after: self.backoff.delay(afterFailures: self.failures, jitter: jitter))
    }

    /// Stops reconnecting. Returns the connection to drain (it closes once its calls are done).
    mutating func remove() -> Connection? {
        self.removed = true
        if self.connection == nil { self.phase = .shutdown }
        return self.connection
    }

    /// The task running the subchannel ended.
    mutating func shutDown() {
        self.removed = true
        self.phase = .shutdown
        self.connection = nil
    }

    /// The connection and its load when it can take a call.
    func readyConnection(isUsable: (Connection) -> Bool) -> (Connection, Int)? {
        guard !self.removed, self.phase == .ready, let connection = self.connection, isUsable(connection) else { return nil }
        return (connection, self.reserved)
    }

    /// Counts a call against this processor; false if its connection changed meanwhile.
    mutating func reserve(_ connection: Connection) -> Bool {
        guard !self.removed, self.connection === connection else { return false }
        self.reserved += 1
        return true
    }

    /// A call reserved on `connection` ended. A call on a replaced connection was already
    /// forgotten with it.
    mutating func release(_ connection: Connection) {
        guard self.connection === connection, self.reserved > 0 else { return }
        self.reserved -= 1
    }
}

/// Reconnect delays: doubling from `initial` up to `maximum`, scaled by a jitter factor so that
/// a pool of gateways does not reconnect in lockstep after a processor restarts.
struct Backoff: Sendable, Equatable {
    var initial: Duration
    var maximum: Duration

    /// The delay before the next attempt after `failures` consecutive failures (1 or more).
    func delay(afterFailures failures: Int, jitter: Double) -> Duration {
        let doublings = min(max(failures - 1, 0), 30)
        let base = min(self.initial * (1 << doublings), self.maximum)
        return base * jitter
    }
}
