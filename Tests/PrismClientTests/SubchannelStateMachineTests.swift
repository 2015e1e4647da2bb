@testable import PrismClient
import Testing

/// Stands in for a `ProcessorConnection`: the machine only compares identities.
final class FakeConnection {}

typealias Sub = SubchannelStateMachine<FakeConnection>

@Suite("Subchannel state machine")
struct SubchannelStateMachineTests {
    let backoff = Backoff(initial: .milliseconds(100), maximum: .seconds(5))

    @Test("idle, connecting, ready; the ready connection takes calls and counts them")
    func happyPath() {
        var sub = Sub(backoff: self.backoff)
        #expect(sub.phase == .idle)
        #expect(sub.mayBecomeReady)
        let started = sub.startConnecting()
        #expect(started)
        #expect(sub.phase == .connecting)
        let connection = FakeConnection()
        let mustDrain = sub.connected(connection)
        #expect(!mustDrain)
        #expect(sub.readyConnection(isUsable: { _ in true }) == nil, "not before the handshake")
        let becameReady = sub.handshakeDone(connection)
        #expect(becameReady)
        #expect(sub.phase == .ready)
        #expect(!sub.mayBecomeReady)

        let reserved = sub.reserve(connection)
        #expect(reserved)
        let reserved2 = sub.reserve(connection)
        #expect(reserved2)
        #expect(sub.readyConnection(isUsable: { _ in true })?.1 == 2)
        sub.release(connection)
        #expect(sub.readyConnection(isUsable: { _ in true })?.1 == 1)
        #expect(sub.readyConnection(isUsable: { _ in false }) == nil, "a draining connection takes no calls")
        #expect(sub.gaugeName(connectionIsReady: false) == "draining")
        #expect(sub.gaugeName(connectionIsReady: true) == "ready")
    }

    @Test("a lost connection backs off, doubling to the maximum; a ready one resets the count")
    func backoffSchedule() {
        var sub = Sub(backoff: self.backoff)
        var delays: [Duration] = []
        for _ in 0..<8 {
            let started = sub.startConnecting()
            #expect(started)
            guard case .reconnect(let delay) = sub.connectionEnded(jitter: 1.0) else {
                Issue.record("a subchannel that was not removed stopped")
                return
            }
            #expect(sub.phase == .transientFailure)
            #expect(!sub.mayBecomeReady, "calls do not wait for a failing processor")
            delays.append(delay)
        }
        #expect(delays == [.milliseconds(100), .milliseconds(200), .milliseconds(400), .milliseconds(800), .milliseconds(1600), .milliseconds(3200), .seconds(5), .seconds(5)])

        let started2 = sub.startConnecting()
        #expect(started2)
        let connection = FakeConnection()
        _ = sub.connected(connection)
        let becameReady = sub.handshakeDone(connection)
        #expect(becameReady)
        #expect(sub.failures == 0)
        let next = sub.connectionEnded(jitter: 1.0)
        #expect(next == .reconnect(after: .milliseconds(100)), "a healthy connection that dies is retried quickly")
    }

    @Test("jitter scales the delay; huge failure counts do not overflow")
    func jitter() {
        #expect(self.backoff.delay(afterFailures: 1, jitter: 0.8) == .milliseconds(80))
        #expect(self.backoff.delay(afterFailures: 1, jitter: 1.2) == .milliseconds(120))
        #expect(self.backoff.delay(afterFailures: 10_000, jitter: 1.0) == .seconds(5))
    }

    @Test("remove while ready hands back the connection to drain, then stops for good")
    func removeWhileReady() {
        var sub = Sub(backoff: self.backoff)
        _ = sub.startConnecting()
        let connection = FakeConnection()
        _ = sub.connected(connection)
        _ = sub.handshakeDone(connection)
        let removed = sub.remove()
        #expect(removed === connection)
        #expect(sub.readyConnection(isUsable: { _ in true }) == nil)
        let reserved = sub.reserve(connection)
        #expect(!reserved)
        let next = sub.connectionEnded(jitter: 1.0)
        #expect(next == .stop)
        #expect(sub.phase == .shutdown)
        let started = sub.startConnecting()
        #expect(!started)
    }

    @Test("remove during the TCP connect: the new connection is drained at once")
    func removeWhileConnecting() {
        var sub = Sub(backoff: self.backoff)
        _ = sub.startConnecting()
        let removed = sub.remove()
        #expect(removed == nil)
        let connection = FakeConnection()
        let mustDrain = sub.connected(connection)
        #expect(mustDrain, "the caller must drain it")
        let becameReady = sub.handshakeDone(connection)
        #expect(!becameReady, "a removed subchannel never becomes ready")
        let next = sub.connectionEnded(jitter: 1.0)
        #expect(next == .stop)
    }

    @Test("remove during backoff shuts down at once")
    func removeDuringBackoff() {
        var sub = Sub(backoff: self.backoff)
        _ = sub.startConnecting()
        _ = sub.connectionEnded(jitter: 1.0)
        let removed = sub.remove()
        #expect(removed == nil)
        #expect(sub.phase == .shutdown)
        let started = sub.startConnecting()
        #expect(!started)
    }

    @Test("events about a replaced connection change nothing")
    func staleConnection() {
        var sub = Sub(backoff: self.backoff)
        _ = sub.startConnecting()
        let old = FakeConnection()
        _ = sub.connected(old)
        _ = sub.handshakeDone(old)
        let reserved = sub.reserve(old)
        #expect(reserved)
        _ = sub.connectionEnded(jitter: 1.0)
        _ = sub.startConnecting()
        let new = FakeConnection()
        _ = sub.connected(new)
        let becameReady = sub.handshakeDone(old)
        #expect(!becameReady)
        let becameReady2 = sub.handshakeDone(new)
        #expect(becameReady2)
        sub.release(old)  // the call on the old connection ends late
        #expect(sub.reserved == 0, "the late release did not go negative")
        let reserved2 = sub.reserve(old)
        #expect(!reserved2)
        let reserved3 = sub.reserve(new)
        #expect(reserved3)
    }

    @Test("every phase has a gauge name")
    func gaugeNames() {
        for phase in Sub.Phase.allCases {
            #expect(Sub.gaugeNames.contains(phase.rawValue))
        }
    }
}
