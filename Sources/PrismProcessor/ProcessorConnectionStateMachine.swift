import PrismProto
import PrismWire

/// The life of one client connection on the processor, without sockets, clocks or threads: what
/// each event means and what to do about it.
///
/// `ProcessorConnectionHandler` holds one in a `Mutex`, feeds it events (frames read, the
/// handshake timer, calls ending, the server draining) and performs the actions it returns
/// (write frames, start and stop calls, close) after the lock is released. `Call` is whatever
/// the handler needs to run and stop a call; the machine only stores it and hands it back, so
/// tests use plain values.
///
/// ```
/// awaitingHello --valid Hello--> open --drainStarted--> draining --last call ends--> closed
///       |                         |                        |
///       +-------------------------+------------------------+--> closed: Hello refused, protocol
///           violation, Error on call 0, handshake timeout, bytes that are not frames, peer gone
/// ```
///
/// Every path into `closed` hands back the calls still open as `stopCall` actions, so none is
/// left running for a connection nobody reads; once closed, the machine asks for no more
/// frames to be written.
struct ProcessorConnectionStateMachine<Call> {
    enum Phase: String, Sendable, Equatable {
        case awaitingHello, open, draining, closed
    }

    /// Why a call is being stopped; it decides the call's final Error frame.
    enum StopReason: Sendable, Equatable {
        /// The client sent a Cancel: CANCELLED.
        case cancelledByClient
        /// The connection is closing (peer gone, protocol violation): nobody is left to answer,
        /// the work is cancelled.
        case connectionClosed
        /// The drain deadline passed with the call still open: UNAVAILABLE/SHUTTING_DOWN.
        case drainDeadline
    }

    /// Why the connection closes without a word.
    enum Closing: Equatable {
        /// No Hello came within the handshake time.
        case handshakeTimedOut
        /// The client sent an Error on call 0: it gave up on the connection.
        case clientError(Prism_V1_Error)
    }

    /// What the handler does, in the order given.
    enum Action {
        /// Write the processor's Hello: the handshake passed. `clientAgent` is for the log.
        case sendHello(Prism_V1_Hello, clientAgent: String)
        /// Write this frame (Pong, GoAway).
        case send(Prism_V1_Frame)
        /// Answer the Request on `callID` with this Error; the connection stays open.
        case refuseCall(callID: UInt64, PrismRPCError)
        /// Serve this admitted call: its job is already with the worker pool.
        case startCall(callID: UInt64, Call)
        /// Stop the call's work and end it with the error `reason` calls for. The call stays
        /// open (its id taken) until `callFinished` says its final frame was written.
        case stopCall(callID: UInt64, Call, StopReason)
        /// Write one Error on call 0, then close the connection.
        case closeWithError(PrismRPCError)
        /// Close the connection without writing anything more.
        case close(Closing)
        /// Close the output once every frame written so far has gone out: the client reads
        /// them all, sees the end of the stream and closes its side.
        case halfClose
    }

    /// Methods that change an `Open` first set `.closed` in its place, so the calls dictionary
    /// is changed in place rather than copied, then put the new state back.
    private enum State {
        /// No frame read yet. `drainRequested`: the server began draining before the Hello; a
        /// GoAway goes out right after the processor's Hello, never before it.
        case awaitingHello(drainRequested: Bool)
        case open(Open)
        /// GoAway was sent with `last_call_id` = `highestCallID`; no call is admitted any more.
        case draining(Open)
        /// Nothing more is written: the connection is closed or half-closed.
        case closed
    }

    private struct Open {
        var calls: [UInt64: OpenCall] = [:]
        /// The highest id ever admitted: GoAway's `last_call_id`.
        var highestCallID: UInt64 = 0
        /// What the client's Hello announced (0 there means the default).
        let clientMaxFrameSize: Int
    }

    private struct OpenCall {
        let call: Call
        /// Told to stop (Cancel, drain deadline); its final frame is still to come.
        var stopping = false
    }

    private let configuration: ProcessorConfiguration
    private var state = State.awaitingHello(drainRequested: false)

    init(configuration: ProcessorConfiguration) {
        self.configuration = configuration
    }

    var phase: Phase {
        switch self.state {
        case .awaitingHello: return .awaitingHello
        case .open: return .open
        case .draining: return .draining
        case .closed: return .closed
        }
    }

    /// Ids of the calls admitted and not yet finished.
    var openCallIDs: Set<UInt64> {
        switch self.state {
        case .open(let open), .draining(let open): return Set(open.calls.keys)
        case .awaitingHello, .closed: return []
        }
    }

    /// The largest encoded variant a call on this connection may send back: one Response frame
    /// must fit the client's `max_frame_size`. Nil before the Hello.
    var imageBudget: Int? {
        switch self.state {
        case .open(let open), .draining(let open): return open.clientMaxFrameSize - PrismProtocol.maxResponseOverhead
        case .awaitingHello, .closed: return nil
        }
    }

    // MARK: Frames

    /// A frame arrived from the client.
    ///
    /// A Request that passes every check (a fresh non-zero id, the connection not draining) is
    /// offered to the worker pool through `admit`, *inside* this method: `admit` builds the
    /// call's job for `imageBudget` bytes per variant and submits it, returning the call when
    /// the pool took it and nil when every worker is busy and the queue is full. It is called
    /// at most once, only for a Request the connection takes, and must be quick and must not
    /// touch this machine.
    ///
    /// Why a closure rather than a `poolAccepted: Bool` input or a second call: the handler
    /// keeps this machine in a `Mutex`, so the checks, the pool's admission and the call's
    /// registration then happen in one critical section, the same one `drainStarted` takes to
    /// decide GoAway's `last_call_id`. No call can be admitted after GoAway, and
    /// `last_call_id` covers every call that was. A Bool would have to be known before the
    /// checks (submitting jobs for calls then refused), and two steps would leave a
    /// half-admitted call between two lock holds.
    mutating func frameReceived(
        _ frame: Prism_V1_Frame,
        admit: (_ callID: UInt64, _ request: Prism_V1_Request, _ imageBudget: Int) -> Call?
    ) -> [Action] {
        switch self.state {
        case .closed:
            return []
        case .awaitingHello(let drainRequested):
            return self.firstFrameReceived(frame, drainRequested: drainRequested)
        case .open(var open), .draining(var open):
            let draining = self.phase == .draining
            // Moved out while it changes, so the calls are not copied.
            self.state = .closed
            let (actions, closes) = self.callFrameReceived(frame, open: &open, draining: draining, admit: admit)
            if !closes {
                self.state = draining ? .draining(open) : .open(open)
            }
            return actions
        }
    }

    private mutating func firstFrameReceived(_ frame: Prism_V1_Frame, drainRequested: Bool) -> [Action] {
        // The decoder made the same check to decide whether to accept full-size frames.
        if let refusal = ProcessorHandshake.refusal(frame, configuration: self.configuration) {
            self.state = .closed
            return [.closeWithError(refusal)]
        }
        let hello = frame.hello
        let clientMax = hello.maxFrameSize == 0 ? PrismProtocol.defaultMaxFrameSize : Int(hello.maxFrameSize)
        var reply = Prism_V1_Hello()
        reply.protocolVersion = PrismProtocol.version
        reply.maxFrameSize = UInt32(self.configuration.maxFrameSize)
        reply.agent = "prism-processor/1"
        reply.workers = UInt32(self.configuration.workers)
        reply.queueCapacity = UInt32(self.configuration.queueCapacity)
        self.state = .open(Open(clientMaxFrameSize: clientMax))
        var actions: [Action] = [.sendHello(reply, clientAgent: hello.agent)]
        if drainRequested {
            actions += self.drainStarted()
        }
        return actions
    }

    /// A frame after the Hello. `closes`: the connection ends here; otherwise the caller puts
    /// `open` back.
    private func callFrameReceived(
        _ frame: Prism_V1_Frame,
        open: inout Open,
        draining: Bool,
        admit: (_ callID: UInt64, _ request: Prism_V1_Request, _ imageBudget: Int) -> Call?
    ) -> (actions: [Action], closes: Bool) {
        let callID = frame.callID
        switch frame.kind {
        case .request(let request):
            if callID == 0 || open.calls[callID] != nil {
                return (self.close(&open, error: PrismRPCError(
                    code: .invalidArgument,
                    reason: .protocolViolation,
                    message: "Call id \(callID) is zero or belongs to a call still open; number calls 1, 2, 3..."
                )), true)
            }
            if draining {
                return ([.refuseCall(callID: callID, PrismRPCError(
                    code: .unavailable,
                    reason: .shuttingDown,
                    message: "This processor is shutting down; send the call to another one.",
                    isRetryable: true
                ))], false)
            }
            let budget = open.clientMaxFrameSize - PrismProtocol.maxResponseOverhead
            guard let call = admit(callID, request, budget) else {
                return ([.refuseCall(callID: callID, PrismRPCError(
                    code: .resourceExhausted,
                    reason: .queueFull,
                    message: "Every worker is busy and the queue of \(self.configuration.queueCapacity) calls is full; retry later or on another processor.",
                    isRetryable: true
                ))], false)
            }
            open.highestCallID = max(open.highestCallID, callID)
            open.calls[callID] = OpenCall(call: call)
            return ([.startCall(callID: callID, call)], false)
        case .cancel:
            // Unknown, finished or already stopping: nothing to do.
            guard let entry = open.calls[callID], !entry.stopping else { return ([], false) }
            open.calls[callID]?.stopping = true
            return ([.stopCall(callID: callID, entry.call, .cancelledByClient)], false)
        case .ping(let ping):
            return ([.send(.pong(ping.payload))], false)
        case .hello:
            return (self.close(&open, error: PrismRPCError(
                code: .failedPrecondition,
                reason: .protocolViolation,
                message: "A connection carries one Hello; a second one was received."
            )), true)
        case .error(let error) where callID == 0:
            return ([.close(.clientError(error))] + self.closeAll(&open), true)
        case .pong, .response, .complete, .error, .goAway, nil:
            // Nothing to do, or a kind this version does not know: ignored.
            return ([], false)
        }
    }

    /// The bytes received cannot be read as frames (too large, or not a Frame).
    mutating func undecodableBytes(_ error: FrameError) -> [Action] {
        switch self.state {
        case .closed:
            return []
        case .awaitingHello:
            self.state = .closed
            return [.closeWithError(self.refusal(for: error))]
        case .open(var open), .draining(var open):
            self.state = .closed
            return self.close(&open, error: self.refusal(for: error))
        }
    }

    private func refusal(for error: FrameError) -> PrismRPCError {
        ProcessorHandshake.refusal(for: error, maxFrameSize: self.configuration.maxFrameSize)
    }

    // MARK: Timers and the server

    /// The time to send a Hello is up.
    mutating func handshakeTimerFired() -> [Action] {
        guard case .awaitingHello = self.state else { return [] }
        self.state = .closed
        return [.close(.handshakeTimedOut)]
    }

    /// The server began its graceful shutdown: GoAway now, and a half-close once the calls in
    /// flight have ended (at once when there are none).
    mutating func drainStarted() -> [Action] {
        switch self.state {
        case .awaitingHello:
            // A server's first frame is its Hello: the GoAway follows it.
            self.state = .awaitingHello(drainRequested: true)
            return []
        case .open(let open):
            self.state = .draining(open)
            let goAway = Action.send(.goAway(lastCallID: open.highestCallID, reason: "processor shutting down"))
            if open.calls.isEmpty {
                self.state = .closed
                return [goAway, .halfClose]
            }
            return [goAway]
        case .draining, .closed:
            return []
        }
    }

    /// The server's drain time is up: every call still open is stopped (each answers
    /// UNAVAILABLE/SHUTTING_DOWN), and the connection half-closes after the last one.
    mutating func drainDeadlinePassed() -> [Action] {
        switch self.state {
        case .awaitingHello:
            self.state = .closed
            return [.halfClose]
        case .open:
            // Normally drainStarted came long before; if not, GoAway first all the same.
            return self.drainStarted() + self.drainDeadlinePassed()
        case .draining(var open):
            self.state = .closed
            let stops = self.stopAll(&open, reason: .drainDeadline)
            if open.calls.isEmpty {
                return [.halfClose]
            }
            self.state = .draining(open)
            return stops
        case .closed:
            return []
        }
    }

    // MARK: Calls and the connection

    /// A call's final frame (Complete or Error) was written: its id is free, and a draining
    /// connection half-closes after its last call.
    mutating func callFinished(_ callID: UInt64) -> [Action] {
        switch self.state {
        case .open(var open):
            self.state = .closed
            open.calls.removeValue(forKey: callID)
            self.state = .open(open)
            return []
        case .draining(var open):
            self.state = .closed
            open.calls.removeValue(forKey: callID)
            if open.calls.isEmpty {
                return [.halfClose]
            }
            self.state = .draining(open)
            return []
        case .awaitingHello, .closed:
            return []
        }
    }

    /// The read side ended: the peer closed or reset the connection, or the handler stopped
    /// reading. Every call still open is stopped: nobody is left to answer.
    mutating func connectionClosed() -> [Action] {
        switch self.state {
        case .awaitingHello, .closed:
            self.state = .closed
            return []
        case .open(var open), .draining(var open):
            self.state = .closed
            return self.closeAll(&open)
        }
    }

    // MARK: Helpers

    /// An Error on call 0, then every call stopped. The caller sets `state` to `.closed`.
    private func close(_ open: inout Open, error: PrismRPCError) -> [Action] {
        [.closeWithError(error)] + self.closeAll(&open)
    }

    /// Stops every call and forgets them all. The caller sets `state` to `.closed`.
    private func closeAll(_ open: inout Open) -> [Action] {
        let stops = self.stopAll(&open, reason: .connectionClosed)
        open.calls.removeAll()
        return stops
    }

    /// Marks every call not yet told to stop as stopping and returns the stop actions, lowest
    /// id first so the order does not depend on hashing.
    private func stopAll(_ open: inout Open, reason: StopReason) -> [Action] {
        var stops: [Action] = []
        for callID in open.calls.keys.sorted() where open.calls[callID]?.stopping == false {
            open.calls[callID]?.stopping = true
            stops.append(.stopCall(callID: callID, open.calls[callID]!.call, reason))
        }
        return stops
    }
}

extension ProcessorConnectionStateMachine.Action: Sendable where Call: Sendable {}
extension ProcessorConnectionStateMachine.Closing: Sendable {}
extension ProcessorConnectionStateMachine.Action: Equatable where Call: Equatable {}
