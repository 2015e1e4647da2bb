import Logging
import NIOCore
import PrismWire
import Synchronization

/// Liveness: pings whose timeout is a timer on the event loop.
///
/// A processor that stops answering (a SIGSTOPped or wedged host keeps its TCP connections
/// open) would otherwise hold every call sent to it until the call's deadline. The timer closes
/// the connection instead, which fails those calls with a retryable UNAVAILABLE at once, so a
/// pool sends them elsewhere. The timer does not depend on any task being scheduled: it fails
/// the ping's waiter itself.
extension ProcessorConnection {
    /// Sends a Ping and waits for its Pong: a liveness check that does not touch any call.
    ///
    /// - Returns: the round-trip time.
    /// - Throws: `PrismRPCError` when the connection closes first, including because nothing
    ///   came back within `configuration.pingTimeout` (the connection is then closed and its
    ///   calls fail retryably); `CancellationError` if the task is cancelled.
    public func ping() async throws -> Duration {
        try await self.waitUntilReady()
        let payload = UInt64.random(in: 1...UInt64.max)
        let start = ContinuousClock.now
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: Waiter) in
                let started = self.state.withLock { state -> ConnectionStateMachine<CallSink, Waiter>.StartPing? in
                    // Under the lock, as in waitUntilReady: never park a cancelled task's waiter.
                    if Task.isCancelled { return nil }
                    return state.pingStarted(payload, waiter: continuation, at: .now())
                }
                switch started {
                case nil: continuation.resume(throwing: CancellationError())
                case .refuse(let error): continuation.resume(throwing: error)
                case .send: self.sendPing(payload)
                }
            }
        } onCancel: {
            self.state.withLock { $0.cancelPing(payload) }?.resume(throwing: CancellationError())
        }
        return ContinuousClock.now - start
    }

    /// One tick of `configuration.pingInterval`: pings unless the previous keepalive is still
    /// unanswered (its timer is then running).
    func keepaliveTick() {
        let payload = UInt64.random(in: 1...UInt64.max)
        guard self.state.withLock({ $0.keepaliveDue(payload, at: .now()) }) else { return }
        self.sendPing(payload)
    }

    /// Sends a ping already registered with the state machine and starts its timer.
    func sendPing(_ payload: UInt64) {
        self.send(.ping(payload))
        self.schedulePingCheck(payload, at: .now() + TimeAmount(self.configuration.pingTimeout))
    }

    private func schedulePingCheck(_ payload: UInt64, at deadline: NIODeadline) {
        self.channel.channel.eventLoop.scheduleTask(deadline: deadline) { [self] in
            self.checkPing(payload)
        }
    }

    private func checkPing(_ payload: UInt64) {
        let check = self.state.withLock {
            $0.pingTimerFired(payload, lastInbound: self.activity.last, now: .now())
        }
        switch check {
        case .answered:
            break
        case .recheck(let deadline):
            self.schedulePingCheck(payload, at: deadline)
        case .dead(let teardown):
            self.logger.warning("processor stopped answering; closing the connection so its calls go elsewhere", metadata: [
                "calls": "\(teardown.calls.count)", "error": "\(teardown.error)",
            ])
            self.perform(teardown)
        }
    }
}
