import NIOCore
@testable import PrismClient
import PrismProto
import PrismWire
import Testing

/// Calls and waiters are names here: the machine only stores and hands them back.
typealias Machine = ConnectionStateMachine<String, String>

func hello(version: UInt32 = PrismProtocol.version, maxFrameSize: UInt32 = 0, workers: UInt32 = 2) -> Prism_V1_Hello {
    var hello = Prism_V1_Hello()
    hello.protocolVersion = version
    hello.maxFrameSize = maxFrameSize
    hello.workers = workers
    return hello
}

func readyMachine(maxFrameSize: UInt32 = 0, pingTimeout: TimeAmount = .seconds(2)) -> Machine {
    var machine = Machine(remote: "10.0.0.1:7070", pingTimeout: pingTimeout)
    guard case .ready = machine.helloReceived(hello(maxFrameSize: maxFrameSize)) else {
        Issue.record("a v1 Hello did not make the connection ready")
        return machine
    }
    return machine
}

extension Machine.StartCall {
    var callID: UInt64? {
        if case .send(let id) = self { return id }
        return nil
    }

    var refusal: PrismRPCError? {
        if case .refuse(let error) = self { return error }
        return nil
    }
}

@Suite("Connection state machine")
struct ConnectionStateMachineTests {
    // MARK: Handshake

    @Test("a v1 Hello makes the connection ready and resumes every waiter")
    func helloV1() {
        var machine = Machine(remote: "p:1", pingTimeout: .seconds(2))
        #expect(machine.phase == .connecting)
        guard case .waiting = machine.waitForReady(1, "w1"), case .waiting = machine.waitForReady(2, "w2") else {
            Issue.record("waiters were not parked while connecting")
            return
        }
        guard case .ready(let waiters) = machine.helloReceived(hello(workers: 8)) else {
            Issue.record("not ready")
            return
        }
        #expect(Set(waiters) == ["w1", "w2"])
        #expect(machine.phase == .ready)
        #expect(machine.serverHello?.workers == 8)
        guard case .ready = machine.waitForReady(3, "w3") else {
            Issue.record("a waiter after the handshake was parked")
            return
        }
    }

    @Test("another protocol version closes the connection and fails every waiter with a clear error")
    func wrongVersion() {
        var machine = Machine(remote: "p:1", pingTimeout: .seconds(2))
        _ = machine.waitForReady(1, "pool-watcher")
        _ = machine.waitForReady(2, "caller")
        guard case .close(let teardown) = machine.helloReceived(hello(version: 2)) else {
            Issue.record("a v2 Hello did not close the connection")
            return
        }
        #expect(Set(teardown.waiters) == ["pool-watcher", "caller"], "no waiter is left behind")
        #expect(teardown.error.code == .failedPrecondition)
        #expect(teardown.error.reason == .unsupportedVersion)
        #expect(teardown.error.message.contains("version 2") && teardown.error.message.contains("version 1"))
        #expect(teardown.error.isRetryable, "no call was sent; another processor may speak v1")
        #expect(teardown.goodbye?.reason == .unsupportedVersion, "the processor is told why")
        #expect(machine.phase == .closed)
        #expect(machine.closeError == teardown.error)

        // Later callers get the same error at once instead of waiting.
        guard case .failed(let error) = machine.waitForReady(3, "late") else {
            Issue.record("a late waiter was parked on a closed connection")
            return
        }
        #expect(error.reason == .unsupportedVersion)
        let start = machine.startCall("call", requestSize: 10)
        #expect(start.refusal?.reason == .unsupportedVersion)
        let closed = machine.close(.connectionLost("eof"))
        #expect(closed == nil, "the end of the stream changes nothing")
        #expect(machine.closeError?.reason == .unsupportedVersion, "the first reason is kept")
    }

    @Test("a second Hello is a protocol violation; a Hello after the close is ignored")
    func secondHello() {
        var machine = readyMachine()
        guard case .close(let teardown) = machine.helloReceived(hello()) else {
            Issue.record("a second Hello was accepted")
            return
        }
        #expect(teardown.error.reason == .protocolViolation)
        guard case .ignore = machine.helloReceived(hello()) else {
            Issue.record("a Hello on a closed connection was acted on")
            return
        }
    }

    @Test("the handshake timeout closes only a connection still connecting")
    func handshakeTimeout() {
        var connecting = Machine(remote: "p:1", pingTimeout: .seconds(2))
        _ = connecting.waitForReady(1, "w")
        let teardown = connecting.handshakeTimedOut(after: .seconds(5))
        #expect(teardown?.waiters == ["w"])
        #expect(teardown?.error.code == .unavailable && teardown?.error.isRetryable == true)

        var ready = readyMachine()
        let timedOut = ready.handshakeTimedOut(after: .seconds(5))
        #expect(timedOut == nil)
        #expect(ready.phase == .ready)
    }

    @Test("a cancelled ready waiter is handed back once")
    func cancelReadyWait() {
        var machine = Machine(remote: "p:1", pingTimeout: .seconds(2))
        _ = machine.waitForReady(7, "w")
        let waiter = machine.cancelReadyWait(7)
        #expect(waiter == "w")
        let waiter2 = machine.cancelReadyWait(7)
        #expect(waiter2 == nil)
        guard case .ready(let waiters) = machine.helloReceived(hello()) else { return }
        #expect(waiters.isEmpty)
    }

    @Test("an Error on call 0 during the handshake is the answer; after it, calls fail retryably")
    func connectionError() {
        var error = Prism_V1_Error()
        error.code = .unauthenticated
        error.message = "wrong token"

        var connecting = Machine(remote: "p:1", pingTimeout: .seconds(2))
        _ = connecting.waitForReady(1, "w")
        let refused = connecting.connectionErrorReceived(error)
        #expect(refused?.error.code == .unauthenticated)
        #expect(refused?.waiters == ["w"])

        var ready = readyMachine()
        _ = ready.startCall("a", requestSize: 100)
        error.code = .resourceExhausted
        error.reason = .frameTooLarge
        let lost = ready.connectionErrorReceived(error)
        #expect(lost?.calls == ["a"])
        #expect(lost?.error.code == .unavailable)
        #expect(lost?.error.isRetryable == true, "the processor never answered the call")
    }

    // MARK: Calls

    @Test("calls are numbered 1, 2, 3 and only on a ready connection")
    func callIDs() {
        var machine = Machine(remote: "p:1", pingTimeout: .seconds(2))
        let start = machine.startCall("early", requestSize: 10)
        #expect(start.refusal?.isRetryable == true)
        _ = machine.helloReceived(hello())
        let start2 = machine.startCall("a", requestSize: 10)
        #expect(start2.callID == 1)
        let start3 = machine.startCall("b", requestSize: 10)
        #expect(start3.callID == 2)
        let start4 = machine.startCall("c", requestSize: 10)
        #expect(start4.callID == 3)
        #expect(machine.inFlight == 3)
        #expect(machine.call(2) == "b")
        #expect(machine.call(99) == nil, "frames for unknown calls are ignored")
    }

    @Test("a request over the processor's max_frame_size is refused without touching the connection")
    func frameTooLarge() {
        var machine = readyMachine(maxFrameSize: 4096)
        let limit = 4096
        // The largest request that fits on call 1: tag + call id, tag + length, payload.
        let fits = limit - 2 - 1 - FrameSize.varint(UInt64(limit))
        #expect(FrameSize.requestFrame(callID: 1, requestSize: fits) == limit)

        let refusal = machine.startCall("big", requestSize: fits + 1).refusal
        #expect(refusal?.code == .resourceExhausted)
        #expect(refusal?.reason == .frameTooLarge)
        #expect(refusal?.isRetryable == false)
        #expect(refusal?.message.contains("larger than the image processor accepts") == true)
        #expect(machine.inFlight == 0)
        #expect(machine.phase == .ready, "the connection stays up for other calls")
        let start = machine.startCall("fits", requestSize: fits)
        #expect(start.callID == 1, "no call id was used up")
    }

    @Test("max_frame_size 0 means the 64 MiB default")
    func defaultFrameLimit() {
        var machine = readyMachine(maxFrameSize: 0)
        #expect(machine.serverMaxFrameSize == PrismProtocol.defaultMaxFrameSize)
        let start = machine.startCall("over", requestSize: PrismProtocol.defaultMaxFrameSize)
        #expect(start.refusal?.reason == .frameTooLarge)
        let start2 = machine.startCall("under", requestSize: PrismProtocol.defaultMaxFrameSize - 16)
        #expect(start2.callID == 1)
    }

    @Test("a call ends once: the second end (a late Cancel, a duplicate Complete) finds nothing")
    func callEndsOnce() {
        var machine = readyMachine()
        let id = machine.startCall("a", requestSize: 10).callID!
        let end = machine.callEnded(id)
        #expect(end.call == "a")
        let end2 = machine.callEnded(id)
        #expect(end2.call == nil)
        #expect(machine.inFlight == 0)
        #expect(machine.phase == .ready, "an idle ready connection stays open")
    }

    // MARK: Draining

    @Test("GoAway refuses the calls the server did not accept and closes after the last one")
    func goAway() {
        var machine = readyMachine()
        let first = machine.startCall("accepted", requestSize: 10).callID!
        _ = machine.startCall("refused", requestSize: 10)
        let action = machine.goAwayReceived(lastCallID: first)
        #expect(action.refused == ["refused"])
        #expect(action.teardown == nil)
        #expect(machine.phase == .draining)
        let start = machine.startCall("new", requestSize: 10)
        #expect(start.refusal?.reason == .shuttingDown)
        let start2 = machine.startCall("new", requestSize: 10)
        #expect(start2.refusal?.isRetryable == true)

        let end = machine.callEnded(first)
        #expect(end.call == "accepted")
        #expect(end.teardown != nil, "the last call ended: close")
        #expect(machine.phase == .closed)
    }

    @Test("drain closes at once when idle or still connecting, else after the last call")
    func drain() {
        var idle = readyMachine()
        let drained = idle.drain()
        #expect(drained != nil)
        #expect(idle.phase == .closed)

        var connecting = Machine(remote: "p:1", pingTimeout: .seconds(2))
        _ = connecting.waitForReady(1, "w")
        let drained2 = connecting.drain()
        #expect(drained2?.waiters == ["w"])

        var busy = readyMachine()
        let id = busy.startCall("a", requestSize: 10).callID!
        let drained3 = busy.drain()
        #expect(drained3 == nil)
        #expect(busy.phase == .draining)
        let end = busy.callEnded(id)
        #expect(end.teardown != nil)
        let drained4 = busy.drain()
        #expect(drained4 == nil, "draining a closed connection does nothing")
    }

    // MARK: Liveness

    @Test("keepalives: one at a time, only on an open connection, answered by their Pong")
    func keepalive() {
        var connecting = Machine(remote: "p:1", pingTimeout: .seconds(2))
        let t0 = NIODeadline.uptimeNanoseconds(1_000_000_000)
        let due = connecting.keepaliveDue(1, at: t0)
        #expect(!due)

        var machine = readyMachine()
        let due2 = machine.keepaliveDue(1, at: t0)
        #expect(due2)
        let due3 = machine.keepaliveDue(2, at: t0 + .seconds(2))
        #expect(!due3, "the first is still being timed")
        let answered = machine.pongReceived(1)
        #expect(answered == nil, "a keepalive has no waiter")
        let timer = machine.pingTimerFired(1, lastInbound: t0, now: t0 + .seconds(2))
        #expect(timer == .answered)
        let due4 = machine.keepaliveDue(3, at: t0 + .seconds(2))
        #expect(due4)
    }

    @Test("a silent processor is declared dead at ping timeout, failing its calls retryably")
    func silentProcessor() {
        var machine = readyMachine(pingTimeout: .seconds(2))
        let t0 = NIODeadline.uptimeNanoseconds(10_000_000_000)
        _ = machine.startCall("a", requestSize: 10)
        _ = machine.startCall("b", requestSize: 10)
        let due = machine.keepaliveDue(42, at: t0)
        #expect(due)
        guard case .send = machine.pingStarted(43, waiter: "explicit ping", at: t0) else {
            Issue.record("an explicit ping was refused")
            return
        }
        // Nothing arrived since before the ping.
        let check = machine.pingTimerFired(42, lastInbound: t0 - .seconds(1), now: t0 + .seconds(2))
        guard case .dead(let teardown) = check else {
            Issue.record("a silent processor was not declared dead: \(check)")
            return
        }
        #expect(Set(teardown.calls) == ["a", "b"])
        #expect(teardown.waiters == ["explicit ping"])
        #expect(teardown.error.code == .unavailable)
        #expect(teardown.error.isRetryable)
        #expect(teardown.error.message.contains("2 call(s)"))
        #expect(machine.phase == .closed)
        let timer = machine.pingTimerFired(43, lastInbound: t0, now: t0 + .seconds(2))
        #expect(timer == .answered, "the other timer finds nothing")
    }

    @Test("bytes arriving after a ping keep the connection alive: the check moves on")
    func busyProcessor() {
        var machine = readyMachine(pingTimeout: .seconds(2))
        let t0 = NIODeadline.uptimeNanoseconds(10_000_000_000)
        _ = machine.startCall("a", requestSize: 10)
        let due = machine.keepaliveDue(42, at: t0)
        #expect(due)
        // A large Response is streaming in; the Pong is queued behind it.
        let streaming = t0 + .milliseconds(1500)
        let timer = machine.pingTimerFired(42, lastInbound: streaming, now: t0 + .seconds(2))
        #expect(timer == .recheck(at: streaming + .seconds(2)))
        #expect(machine.phase == .ready)
        // Then silence for a whole timeout.
        guard case .dead = machine.pingTimerFired(42, lastInbound: streaming, now: streaming + .seconds(2)) else {
            Issue.record("silence after the stream was not noticed")
            return
        }
    }

    @Test("explicit pings: refused before the handshake, cancellable, answered by payload")
    func explicitPing() {
        var connecting = Machine(remote: "p:1", pingTimeout: .seconds(2))
        guard case .refuse = connecting.pingStarted(1, waiter: "w", at: .now()) else {
            Issue.record("a ping before the handshake was accepted")
            return
        }
        var machine = readyMachine()
        _ = machine.pingStarted(1, waiter: "one", at: .now())
        _ = machine.pingStarted(2, waiter: "two", at: .now())
        let answered = machine.pongReceived(2)
        #expect(answered == "two")
        let answered2 = machine.pongReceived(2)
        #expect(answered2 == nil)
        let cancelled = machine.cancelPing(1)
        #expect(cancelled == "one")
        let answered3 = machine.pongReceived(77)
        #expect(answered3 == nil, "an unknown Pong is ignored")
    }

    // MARK: Closing

    @Test("close hands back everything once; close waiters resume")
    func close() {
        var machine = readyMachine()
        _ = machine.startCall("call", requestSize: 10)
        _ = machine.pingStarted(5, waiter: "ping", at: .now())
        let parked = machine.waitUntilClosed("closer")
        #expect(parked)
        let teardown = machine.close(.connectionLost("eof"))
        #expect(teardown?.calls == ["call"])
        #expect(teardown?.waiters == ["ping"])
        #expect(teardown?.closeWaiters == ["closer"])
        #expect(teardown?.goodbye == nil)
        let closed = machine.close(.connectionLost("again"))
        #expect(closed == nil)
        let parked2 = machine.waitUntilClosed("late")
        #expect(!parked2, "a late close waiter resumes at once")
        let goAway = machine.goAwayReceived(lastCallID: 0)
        #expect(goAway.refused.isEmpty)
        guard case .refuse = machine.pingStarted(6, waiter: "p", at: .now()) else {
            Issue.record("a ping on a closed connection was accepted")
            return
        }
    }
}
