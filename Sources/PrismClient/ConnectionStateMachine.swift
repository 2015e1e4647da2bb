import NIOCore
import PrismProto
import PrismWire

/// The life of one processor connection, without sockets: what each event means and what to do
/// about it.
///
/// `ProcessorConnection` holds one in a `Mutex`, feeds it events (frames received, calls
/// started, timers fired) and performs the actions it returns (resume waiters, fail calls, send
/// frames, close the channel) after the lock is released. `Call` and `Waiter` are whatever gets
/// resumed: stream and checked continuations in production, plain values in tests.
///
/// ```
/// connecting --Hello v1--> ready --GoAway or drain()--> draining --last call ends--> closed
///     |                      |                             |
///     +----------------------+-----------------------------+--> closed: wrong version, Error on
///         call 0, handshake timeout, unanswered ping, end of stream
/// ```
///
/// Every path into `closed` goes through `close(_:)`, which hands back every call and waiter
/// still registered in a `Teardown`, so nothing is left waiting on a dead connection.
struct ConnectionStateMachine<Call, Waiter> {
    enum Phase: String, Sendable, Equatable {
        case connecting, ready, draining, closed
    }

    /// Everything still waiting when the connection closes, and the error to end it with.
    struct Teardown {
        var error: PrismRPCError
        /// Calls in flight: fail with `error`.
        var calls: [Call]
        /// Ready and ping waiters: fail with `error`.
        var waiters: [Waiter]
        /// `waitUntilClosed` callers: resume normally.
        var closeWaiters: [Waiter]
        /// Sent on call 0 before closing when the processor broke the protocol, so its log says
        /// why the client left.
        var goodbye: PrismRPCError?
    }

    enum HelloAction {
        /// The handshake is done: resume these waiters.
        case ready([Waiter])
        case close(Teardown)
        /// The connection already closed; frames still buffered are of no interest.
        case ignore
    }

    enum ReadyCheck {
        case ready
        case failed(PrismRPCError)
        /// The waiter was parked; `helloReceived` or `close` resumes it.
        case waiting
    }

    enum StartCall: Equatable {
        case send(callID: UInt64)
        case refuse(PrismRPCError)
    }

    /// A call that ended (its continuation, if it was still registered) and, when that was the
    /// last call of a draining connection, the teardown that closes it.
    struct CallEnd {
        var call: Call?
        var teardown: Teardown?
    }

    struct GoAway {
        /// Calls the server did not accept: fail with `drainingError`, retryably.
        var refused: [Call]
        /// Connecting callers that will never see this connection ready.
        var waiters: [Waiter]
        var teardown: Teardown?
    }

    enum StartPing {
        case send
        case refuse(PrismRPCError)
    }

    enum PingCheck: Equatable {
        /// The Pong came (or the connection already closed): nothing to do.
        case answered
        /// No Pong yet, but bytes arrived since the ping: the processor is alive and the Pong
        /// is behind them. Check again at this deadline.
        case recheck(at: NIODeadline)
        /// Nothing arrived for the whole ping timeout: the processor is gone.
        case dead(Teardown)

        static func == (lhs: PingCheck, rhs: PingCheck) -> Bool {
            switch (lhs, rhs) {
            case (.answered, .answered): return true
            case (.recheck(let a), .recheck(let b)): return a == b
            case (.dead(let a), .dead(let b)): return a.error == b.error
            default: return false
            }
        }
    }

    private struct Ping {
        /// Nil for the connection's own keepalive pings.
        var waiter: Waiter?
        var sentAt: NIODeadline
    }

    /// Names the processor in error messages.
    let remote: String
    let pingTimeout: TimeAmount

    private(set) var phase = Phase.connecting
    private(set) var serverHello: Prism_V1_Hello?
    /// Why the connection closed; what later callers are told.
    private(set) var closeError: PrismRPCError?
    private var nextCallID: UInt64 = 1
    private var calls: [UInt64: Call] = [:]
    private var readyWaiters: [UInt64: Waiter] = [:]
    private var pings: [UInt64: Ping] = [:]
    private var closeWaiters: [Waiter] = []

    init(remote: String, pingTimeout: TimeAmount) {
        self.remote = remote
        self.pingTimeout = pingTimeout
    }

    var inFlight: Int { self.calls.count }

    /// The largest frame the processor accepts, from its Hello (0 there means the default).
    var serverMaxFrameSize: Int {
        guard let announced = self.serverHello?.maxFrameSize, announced > 0 else { return PrismProtocol.defaultMaxFrameSize }
        return Int(announced)
    }

    // MARK: Handshake

    mutating func helloReceived(_ hello: Prism_V1_Hello) -> HelloAction {
        if self.phase == .closed { return .ignore }
        guard self.phase == .connecting else {
            let error = PrismRPCError(
                code: .failedPrecondition,
                reason: .protocolViolation,
                message: "The processor at \(self.remote) sent a second Hello; a connection carries one.",
                isRetryable: true
            )
            return .close(self.close(error, goodbye: error) ?? self.emptyTeardown(error))
        }
        guard hello.protocolVersion == PrismProtocol.version else {
            // Retryable: no call was sent, and another processor may speak our version.
            let error = PrismRPCError(
                code: .failedPrecondition,
                reason: .unsupportedVersion,
                message: "The processor at \(self.remote) speaks Prism protocol version \(hello.protocolVersion); this client speaks version \(PrismProtocol.version). Run matching versions of the gateway and the processors.",
                isRetryable: true
            )
            return .close(self.close(error, goodbye: error) ?? self.emptyTeardown(error))
        }
        self.phase = .ready
        self.serverHello = hello
        defer { self.readyWaiters.removeAll() }
        return .ready(Array(self.readyWaiters.values))
    }

    /// The processor's Hello did not come in time.
    mutating func handshakeTimedOut(after timeout: Duration) -> Teardown? {
        guard self.phase == .connecting else { return nil }
        return self.close(PrismRPCError(
            code: .unavailable,
            message: "The processor at \(self.remote) did not answer the handshake within \(timeout).",
            isRetryable: true
        ))
    }

    mutating func waitForReady(_ id: UInt64, _ waiter: Waiter) -> ReadyCheck {
        switch self.phase {
        case .ready:
            return .ready
        case .draining:
            return .failed(Self.drainingError)
        case .closed:
            return .failed(self.closeErrorOrLost)
        case .connecting:
            self.readyWaiters[id] = waiter
            return .waiting
        }
    }

    /// The waiter, if it is still parked (its task was cancelled).
    mutating func cancelReadyWait(_ id: UInt64) -> Waiter? {
        self.readyWaiters.removeValue(forKey: id)
    }

    // MARK: Calls

    /// Opens a call whose Request payload is `requestSize` bytes, or says why not. A refusal
    /// leaves the connection untouched: no id is used and nothing is sent.
    mutating func startCall(_ call: Call, requestSize: Int) -> StartCall {
        switch self.phase {
        case .ready:
            break
        case .connecting:
            return .refuse(PrismRPCError(code: .unavailable, message: "The connection to the processor at \(self.remote) is not ready yet.", isRetryable: true))
        case .draining:
            return .refuse(Self.drainingError)
        case .closed:
            return .refuse(self.closeErrorOrLost)
        }
        let frameSize = FrameSize.requestFrame(callID: self.nextCallID, requestSize: requestSize)
        let limit = self.serverMaxFrameSize
        guard frameSize <= limit else {
            // A frame over the limit would make the processor close the connection, failing
            // every other call on it; and no processor with the same limit would take it.
            return .refuse(Self.frameTooLarge(frameSize: frameSize, limit: limit))
        }
        let id = self.nextCallID
        self.nextCallID += 1
        self.calls[id] = call
        return .send(callID: id)
    }

    /// The call a Response belongs to; nil for ids this connection does not know (ignored).
    func call(_ id: UInt64) -> Call? {
        self.calls[id]
    }

    /// A Complete or Error ended the call (or the client gave up on it: the caller then sends a
    /// Cancel if `call` is non-nil, so the processor stops working on it).
    mutating func callEnded(_ id: UInt64) -> CallEnd {
        guard let call = self.calls.removeValue(forKey: id) else { return CallEnd(call: nil, teardown: nil) }
        return CallEnd(call: call, teardown: self.closeIfDrained())
    }

    // MARK: Draining

    mutating func goAwayReceived(lastCallID: UInt64) -> GoAway {
        switch self.phase {
        case .closed:
            return GoAway(refused: [], waiters: [], teardown: nil)
        case .connecting, .ready, .draining:
            self.phase = .draining
        }
        let refusedIDs = self.calls.keys.filter { $0 > lastCallID }
        let refused = refusedIDs.compactMap { self.calls.removeValue(forKey: $0) }
        let waiters = Array(self.readyWaiters.values)
        self.readyWaiters.removeAll()
        return GoAway(refused: refused, waiters: waiters, teardown: self.closeIfDrained())
    }

    /// Takes no new calls and closes once the calls in flight have ended (now, if there are
    /// none, or if the handshake has not finished).
    mutating func drain() -> Teardown? {
        switch self.phase {
        case .closed:
            return nil
        case .connecting:
            // Nothing was ever sent on it: close at once.
            return self.close(Self.drainingError)
        case .ready, .draining:
            self.phase = .draining
            return self.closeIfDrained()
        }
    }

    private mutating func closeIfDrained() -> Teardown? {
        guard self.phase == .draining, self.calls.isEmpty else { return nil }
        return self.close(Self.drainingError)
    }

    // MARK: Liveness

    /// A ping the caller is about to send (`waiter` nil for a keepalive).
    mutating func pingStarted(_ payload: UInt64, waiter: Waiter?, at now: NIODeadline) -> StartPing {
        switch self.phase {
        case .ready, .draining:
            // A draining connection still carries calls, so it is still worth watching.
            self.pings[payload] = Ping(waiter: waiter, sentAt: now)
            return .send
        case .connecting:
            return .refuse(PrismRPCError(code: .unavailable, message: "The connection to the processor at \(self.remote) is not ready yet.", isRetryable: true))
        case .closed:
            return .refuse(self.closeErrorOrLost)
        }
    }

    /// True when a keepalive ping should go out now: the connection is up and the previous
    /// keepalive was answered (an unanswered one is still being timed).
    mutating func keepaliveDue(_ payload: UInt64, at now: NIODeadline) -> Bool {
        guard self.phase == .ready || self.phase == .draining else { return false }
        guard !self.pings.values.contains(where: { $0.waiter == nil }) else { return false }
        self.pings[payload] = Ping(waiter: nil, sentAt: now)
        return true
    }

    /// The waiter of the ping this Pong answers, if it has one (keepalives have none).
    mutating func pongReceived(_ payload: UInt64) -> Waiter? {
        self.pings.removeValue(forKey: payload)?.waiter
    }

    /// A ping's task was cancelled: stop waiting for its Pong.
    mutating func cancelPing(_ payload: UInt64) -> Waiter? {
        self.pings.removeValue(forKey: payload)?.waiter
    }

    /// The ping timeout has passed since `payload` was sent (or since the last re-check).
    ///
    /// A processor is judged dead only when nothing at all arrived for a whole ping timeout
    /// after the ping: bytes of a large Response still streaming in prove it alive even though
    /// its Pong is queued behind them.
    mutating func pingTimerFired(_ payload: UInt64, lastInbound: NIODeadline, now: NIODeadline) -> PingCheck {
        guard self.phase != .closed, let ping = self.pings[payload] else { return .answered }
        let heardFrom = max(ping.sentAt, lastInbound)
        let silentUntil = heardFrom + self.pingTimeout
        if now < silentUntil { return .recheck(at: silentUntil) }
        let calls = self.calls.count
        let error = PrismRPCError(
            code: .unavailable,
            message: "The processor at \(self.remote) sent nothing for \(Duration(self.pingTimeout)) after a ping; the connection was closed with \(calls) call(s) in flight.",
            isRetryable: true
        )
        return .dead(self.close(error) ?? self.emptyTeardown(error))
    }

    // MARK: Closing

    /// An Error frame on call 0: the processor gave up on the connection.
    mutating func connectionErrorReceived(_ frame: Prism_V1_Error) -> Teardown? {
        let error: PrismRPCError
        if self.phase == .connecting {
            // The handshake was refused (token, version): that is the answer callers need.
            error = PrismRPCError(frame)
        } else {
            // Calls in flight were never answered, so they may go elsewhere.
            error = PrismRPCError(
                code: .unavailable,
                reason: frame.reason,
                message: "The processor at \(self.remote) closed the connection: \(frame.message)",
                isRetryable: true
            )
        }
        return self.close(error)
    }

    /// Ends the connection: hands back everything still waiting. Nil when already closed.
    mutating func close(_ error: PrismRPCError, goodbye: PrismRPCError? = nil) -> Teardown? {
        guard self.phase != .closed else { return nil }
        self.phase = .closed
        self.closeError = error
        var waiters = Array(self.readyWaiters.values)
        waiters.append(contentsOf: self.pings.values.compactMap(\.waiter))
        let teardown = Teardown(error: error, calls: Array(self.calls.values), waiters: waiters, closeWaiters: self.closeWaiters, goodbye: goodbye)
        self.calls.removeAll()
        self.readyWaiters.removeAll()
        self.pings.removeAll()
        self.closeWaiters.removeAll()
        return teardown
    }

    /// Parks a `waitUntilClosed` caller; false when the connection is already closed.
    mutating func waitUntilClosed(_ waiter: Waiter) -> Bool {
        guard self.phase != .closed else { return false }
        self.closeWaiters.append(waiter)
        return true
    }

    private var closeErrorOrLost: PrismRPCError {
        self.closeError ?? .connectionLost("the connection is closed")
    }

    private func emptyTeardown(_ error: PrismRPCError) -> Teardown {
        Teardown(error: error, calls: [], waiters: [], closeWaiters: [], goodbye: nil)
    }

    static var drainingError: PrismRPCError {
        PrismRPCError(code: .unavailable, reason: .shuttingDown, message: "The processor is shutting down and takes no new calls.", isRetryable: true)
    }

    /// What a request too large for the processor fails with. Not retryable: the image itself
    /// is too large, whichever processor gets it.
    static func frameTooLarge(frameSize: Int, limit: Int) -> PrismRPCError {
        PrismRPCError(
            code: .resourceExhausted,
            reason: .frameTooLarge,
            message: "The image is larger than the image processor accepts: the request is \(frameSize) bytes and the processor takes at most \(limit).",
            isRetryable: false
        )
    }
}
