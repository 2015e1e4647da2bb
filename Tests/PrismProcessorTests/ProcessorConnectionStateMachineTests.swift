import Foundation
@testable import PrismProcessor
import PrismProto
import PrismWire
import SwiftProtobuf
import Testing

/// Calls are names here ("call-3"): the machine only stores and hands them back.
typealias Machine = ProcessorConnectionStateMachine<String>
typealias Action = Machine.Action

// MARK: Fixtures

func testConfiguration(token: String? = nil) -> ProcessorConfiguration {
    var config = ProcessorConfiguration()
    config.workers = 2
    config.queueCapacity = 4
    config.maxFrameSize = 1 << 20
    config.authToken = token
    return config
}

func clientHello(
    version: UInt32 = PrismProtocol.version,
    maxFrameSize: UInt32 = 65_536,
    token: String = "",
    callID: UInt64 = 0
) -> Prism_V1_Frame {
    var hello = Prism_V1_Hello()
    hello.protocolVersion = version
    hello.maxFrameSize = maxFrameSize
    hello.authToken = token
    hello.agent = "test/1"
    var frame = Prism_V1_Frame.hello(hello)
    frame.callID = callID
    return frame
}

func request(_ callID: UInt64) -> Prism_V1_Frame {
    var request = Prism_V1_Request()
    request.source = Data([0xFF, 0xD8])
    return .request(callID: callID, request)
}

/// A frame of a kind this version does not know: field 15, which prism.proto does not define.
func unknownKindFrame() throws -> Prism_V1_Frame {
    try Prism_V1_Frame(serializedBytes: [0x7A, 0x00] as [UInt8])
}

func clientError(callID: UInt64) -> Prism_V1_Frame {
    .error(callID: callID, PrismRPCError(code: .internal, message: "client gave up"))
}

/// The worker pool, as far as the machine sees it: takes calls or is full, and remembers what
/// it was offered.
final class PoolStub {
    var accepting = true
    private(set) var offers: [(callID: UInt64, imageBudget: Int)] = []

    func admit(_ callID: UInt64, _ request: Prism_V1_Request, _ imageBudget: Int) -> String? {
        self.offers.append((callID, imageBudget))
        return self.accepting ? "call-\(callID)" : nil
    }
}

extension Machine {
    /// Feeds a frame; Requests are offered to `pool` (a fresh accepting one by default).
    mutating func receive(_ frame: Prism_V1_Frame, pool: PoolStub = PoolStub()) -> [Action] {
        self.frameReceived(frame, admit: pool.admit)
    }
}

/// The processor's Hello as `testConfiguration` makes it.
func processorHello() -> Prism_V1_Hello {
    var hello = Prism_V1_Hello()
    hello.protocolVersion = PrismProtocol.version
    hello.maxFrameSize = 1 << 20
    hello.agent = "prism-processor/1"
    hello.workers = 2
    hello.queueCapacity = 4
    return hello
}

func stop(_ callID: UInt64, _ reason: Machine.StopReason) -> Action {
    .stopCall(callID: callID, "call-\(callID)", reason)
}

func goAway(_ lastCallID: UInt64) -> Action {
    .send(.goAway(lastCallID: lastCallID, reason: "processor shutting down"))
}

/// The errors the processor sends, word for word: clients and logs depend on them.
enum Errors {
    static let firstFrame = PrismRPCError(code: .failedPrecondition, reason: .protocolViolation, message: "The first frame on a connection must be a Hello on call 0.")
    static func version(_ sent: UInt32) -> PrismRPCError {
        PrismRPCError(code: .failedPrecondition, reason: .unsupportedVersion, message: "This processor speaks Prism protocol version 1; the client sent version \(sent).")
    }
    static let token = PrismRPCError(code: .unauthenticated, message: "The Hello did not carry this processor's auth token; configure the client with the right token.")
    static let smallFrames = PrismRPCError(code: .invalidArgument, reason: .protocolViolation, message: "max_frame_size must be at least 4096 bytes.")
    static let secondHello = PrismRPCError(code: .failedPrecondition, reason: .protocolViolation, message: "A connection carries one Hello; a second one was received.")
    static func callID(_ id: UInt64) -> PrismRPCError {
        PrismRPCError(code: .invalidArgument, reason: .protocolViolation, message: "Call id \(id) is zero or belongs to a call still open; number calls 1, 2, 3...")
    }
    static let shuttingDown = PrismRPCError(code: .unavailable, reason: .shuttingDown, message: "This processor is shutting down; send the call to another one.", isRetryable: true)
    static let queueFull = PrismRPCError(code: .resourceExhausted, reason: .queueFull, message: "Every worker is busy and the queue of 4 calls is full; retry later or on another processor.", isRetryable: true)
    static let malformed = PrismRPCError(code: .invalidArgument, reason: .protocolViolation, message: "The bytes received are not Prism protocol frames; check that the client speaks the Prism processor protocol, version 1.")
    static let tooLargeBeforeHello = PrismRPCError(code: .resourceExhausted, reason: .frameTooLarge, message: "A frame of 70000 bytes arrived before the Hello; until a valid Hello a connection may send at most 65536 bytes per frame.")
    static let tooLarge = PrismRPCError(code: .resourceExhausted, reason: .frameTooLarge, message: "A frame of 2000000 bytes was announced; this processor accepts at most 1048576 bytes per frame.")
}

// MARK: Every state x every event

/// The states a connection can be in, each reached through real events.
enum Start: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case awaitingHello
    /// The server began draining before the client's Hello arrived.
    case awaitingHelloDrainRequested
    case openIdle
    /// Calls 1 and 2 running.
    case openWithCalls
    /// Calls 1 and 2 running, GoAway(2) sent.
    case draining
    case closed

    var testDescription: String { self.rawValue }

    func machine() -> Machine {
        var machine = Machine(configuration: testConfiguration())
        switch self {
        case .awaitingHello:
            break
        case .awaitingHelloDrainRequested:
            _ = machine.drainStarted()
        case .openIdle:
            _ = machine.receive(clientHello())
        case .openWithCalls:
            _ = machine.receive(clientHello())
            _ = machine.receive(request(1))
            _ = machine.receive(request(2))
        case .draining:
            _ = machine.receive(clientHello())
            _ = machine.receive(request(1))
            _ = machine.receive(request(2))
            _ = machine.drainStarted()
        case .closed:
            _ = machine.connectionClosed()
        }
        return machine
    }

    var phase: Machine.Phase {
        switch self {
        case .awaitingHello, .awaitingHelloDrainRequested: return .awaitingHello
        case .openIdle, .openWithCalls: return .open
        case .draining: return .draining
        case .closed: return .closed
        }
    }

    var calls: [UInt64] {
        switch self {
        case .openWithCalls, .draining: return [1, 2]
        default: return []
        }
    }
}

/// Everything that can happen to a connection.
enum Event: String, CaseIterable, CustomTestStringConvertible, Sendable {
    case hello, helloWrongVersion
    case requestNewID, requestQueueFull, requestZeroID, requestOpenID
    case cancelOpenCall, cancelUnknownCall
    case ping, pong, response, complete, errorOnCall0, errorOnCall1, goAway, emptyFrame, unknownKind
    case malformedBytes, frameTooLarge
    case handshakeTimer, drainStarted, drainDeadline
    case callFinished, unknownCallFinished
    case connectionClosed

    var testDescription: String { self.rawValue }

    /// Applies the event; returns what the machine asked for and what the pool was offered.
    func apply(to machine: inout Machine) throws -> (actions: [Action], offers: [UInt64]) {
        let pool = PoolStub()
        let actions: [Action]
        switch self {
        case .hello: actions = machine.receive(clientHello(), pool: pool)
        case .helloWrongVersion: actions = machine.receive(clientHello(version: 2), pool: pool)
        case .requestNewID: actions = machine.receive(request(3), pool: pool)
        case .requestQueueFull:
            pool.accepting = false
            actions = machine.receive(request(3), pool: pool)
        case .requestZeroID: actions = machine.receive(request(0), pool: pool)
        case .requestOpenID: actions = machine.receive(request(1), pool: pool)
        case .cancelOpenCall: actions = machine.receive(.cancel(callID: 1), pool: pool)
        case .cancelUnknownCall: actions = machine.receive(.cancel(callID: 99), pool: pool)
        case .ping: actions = machine.receive(.ping(7), pool: pool)
        case .pong: actions = machine.receive(.pong(7), pool: pool)
        case .response: actions = machine.receive(.response(callID: 1, Prism_V1_Response()), pool: pool)
        case .complete: actions = machine.receive(.complete(callID: 1, Prism_V1_Complete()), pool: pool)
        case .errorOnCall0: actions = machine.receive(clientError(callID: 0), pool: pool)
        case .errorOnCall1: actions = machine.receive(clientError(callID: 1), pool: pool)
        case .goAway: actions = machine.receive(.goAway(lastCallID: 1, reason: "client going"), pool: pool)
        case .emptyFrame: actions = machine.receive(Prism_V1_Frame(), pool: pool)
        case .unknownKind: actions = machine.receive(try unknownKindFrame(), pool: pool)
        case .malformedBytes: actions = machine.undecodableBytes(.malformed)
        case .frameTooLarge:
            let beforeHello = machine.phase == .awaitingHello
            actions = machine.undecodableBytes(beforeHello ? .tooLarge(length: 70_000, limit: 65_536) : .tooLarge(length: 2_000_000, limit: 1 << 20))
        case .handshakeTimer: actions = machine.handshakeTimerFired()
        case .drainStarted: actions = machine.drainStarted()
        case .drainDeadline: actions = machine.drainDeadlinePassed()
        case .callFinished: actions = machine.callFinished(1)
        case .unknownCallFinished: actions = machine.callFinished(99)
        case .connectionClosed: actions = machine.connectionClosed()
        }
        return (actions, pool.offers.map(\.callID))
    }
}

/// What the machine must do: PROTOCOL.md sections 2 to 5, as a table.
func expected(_ start: Start, _ event: Event) -> (actions: [Action], phase: Machine.Phase, calls: [UInt64]) {
    let stay = start.phase
    let calls = start.calls
    let stopAll = calls.map { stop($0, .connectionClosed) }
    switch start {
    case .closed:
        return ([], .closed, [])

    case .awaitingHello, .awaitingHelloDrainRequested:
        switch event {
        case .hello where start == .awaitingHelloDrainRequested:
            // The Hello first, then GoAway(0), and with no calls nothing keeps it open.
            return ([.sendHello(processorHello(), clientAgent: "test/1"), goAway(0), .halfClose], .closed, [])
        case .hello:
            return ([.sendHello(processorHello(), clientAgent: "test/1")], .open, [])
        case .helloWrongVersion:
            return ([.closeWithError(Errors.version(2))], .closed, [])
        case .requestNewID, .requestQueueFull, .requestZeroID, .requestOpenID, .cancelOpenCall, .cancelUnknownCall,
            .ping, .pong, .response, .complete, .errorOnCall0, .errorOnCall1, .goAway, .emptyFrame, .unknownKind:
            return ([.closeWithError(Errors.firstFrame)], .closed, [])
        case .malformedBytes:
            return ([.closeWithError(Errors.malformed)], .closed, [])
        case .frameTooLarge:
            return ([.closeWithError(Errors.tooLargeBeforeHello)], .closed, [])
        case .handshakeTimer:
            return ([.close(.handshakeTimedOut)], .closed, [])
        case .drainStarted, .callFinished, .unknownCallFinished:
            return ([], .awaitingHello, [])
        case .drainDeadline:
            return ([.halfClose], .closed, [])
        case .connectionClosed:
            return ([], .closed, [])
        }

    case .openIdle, .openWithCalls, .draining:
        let draining = start == .draining
        switch event {
        case .hello, .helloWrongVersion:
            return ([.closeWithError(Errors.secondHello)] + stopAll, .closed, [])
        case .requestNewID where draining, .requestQueueFull where draining:
            return ([.refuseCall(callID: 3, Errors.shuttingDown)], stay, calls)
        case .requestNewID:
            return ([.startCall(callID: 3, "call-3")], stay, calls + [3])
        case .requestQueueFull:
            return ([.refuseCall(callID: 3, Errors.queueFull)], stay, calls)
        case .requestZeroID:
            return ([.closeWithError(Errors.callID(0))] + stopAll, .closed, [])
        case .requestOpenID where calls.contains(1):
            return ([.closeWithError(Errors.callID(1))] + stopAll, .closed, [])
        case .requestOpenID:
            return ([.startCall(callID: 1, "call-1")], stay, [1])
        case .cancelOpenCall where calls.contains(1):
            return ([stop(1, .cancelledByClient)], stay, calls)
        case .cancelOpenCall, .cancelUnknownCall:
            return ([], stay, calls)
        case .ping:
            return ([.send(.pong(7))], stay, calls)
        case .pong, .response, .complete, .errorOnCall1, .goAway, .emptyFrame, .unknownKind, .handshakeTimer:
            return ([], stay, calls)
        case .errorOnCall0:
            return ([.close(.clientError(clientError(callID: 0).error))] + stopAll, .closed, [])
        case .malformedBytes:
            return ([.closeWithError(Errors.malformed)] + stopAll, .closed, [])
        case .frameTooLarge:
            return ([.closeWithError(Errors.tooLarge)] + stopAll, .closed, [])
        case .drainStarted where draining:
            return ([], .draining, calls)
        case .drainStarted where calls.isEmpty:
            return ([goAway(0), .halfClose], .closed, [])
        case .drainStarted:
            return ([goAway(2)], .draining, calls)
        case .drainDeadline where calls.isEmpty:
            return ([goAway(0), .halfClose], .closed, [])
        case .drainDeadline:
            return ((draining ? [] : [goAway(2)]) + calls.map { stop($0, .drainDeadline) }, .draining, calls)
        case .callFinished:
            return ([], stay, calls.filter { $0 != 1 })
        case .unknownCallFinished:
            return ([], stay, calls)
        case .connectionClosed:
            return (stopAll, .closed, [])
        }
    }
}

/// The calls the worker pool is offered: only Requests that pass every other check.
func expectedOffers(_ start: Start, _ event: Event) -> [UInt64] {
    guard start.phase == .open else { return [] }
    switch event {
    case .requestNewID, .requestQueueFull: return [3]
    case .requestOpenID where !start.calls.contains(1): return [1]
    default: return []
    }
}

@Suite("Processor connection state machine")
struct ProcessorConnectionStateMachineTests {
    @Test("every state x every event", arguments: Start.allCases, Event.allCases)
    func matrix(start: Start, event: Event) throws {
        var machine = start.machine()
        #expect(machine.phase == start.phase, "the fixture reached the state it names")
        let (actions, offers) = try event.apply(to: &machine)
        let want = expected(start, event)
        #expect(actions == want.actions)
        #expect(machine.phase == want.phase)
        #expect(machine.openCallIDs == Set(want.calls))
        #expect(offers == expectedOffers(start, event), "the pool is asked only for a call the connection takes")
        if machine.phase == .closed {
            #expect(machine.openCallIDs.isEmpty, "a closed connection keeps no calls")
            #expect(machine.imageBudget == nil)
        }
    }

    // MARK: Handshake faults

    @Test("junk before the Hello is refused with one Error on call 0, and nothing more is sent")
    func preHelloJunk() throws {
        let junk: [Prism_V1_Frame] = [request(1), .ping(1), Prism_V1_Frame(), clientHello(callID: 5), .cancel(callID: 1), try unknownKindFrame()]
        for first in junk {
            var machine = Machine(configuration: testConfiguration())
            let pool = PoolStub()
            #expect(machine.receive(first, pool: pool) == [.closeWithError(Errors.firstFrame)], "\(first)")
            #expect(pool.offers.isEmpty, "no job for a connection that never said Hello")
            #expect(machine.phase == .closed)
            #expect(machine.receive(clientHello()).isEmpty, "a Hello after the refusal is not answered")
            #expect(machine.receive(request(2)).isEmpty)
            #expect(machine.drainStarted().isEmpty)
            #expect(machine.handshakeTimerFired().isEmpty)
        }
    }

    @Test("another protocol version is refused as UNSUPPORTED_VERSION, naming both versions")
    func wrongVersion() {
        var machine = Machine(configuration: testConfiguration())
        let actions = machine.receive(clientHello(version: 2))
        #expect(actions == [.closeWithError(Errors.version(2))])
        #expect(Errors.version(2).message.contains("version 1") && Errors.version(2).message.contains("version 2"))
        #expect(machine.phase == .closed)
    }

    @Test("a missing, wrong or prefix token is refused as UNAUTHENTICATED; the right one opens", arguments: ["", "guess", "s3cre", "s3cret!", "S3CRET"])
    func badToken(token: String) {
        var machine = Machine(configuration: testConfiguration(token: "s3cret"))
        #expect(machine.receive(clientHello(token: token)) == [.closeWithError(Errors.token)])
        #expect(machine.phase == .closed)
    }

    @Test("the right token opens the connection")
    func rightToken() {
        var machine = Machine(configuration: testConfiguration(token: "s3cret"))
        #expect(machine.receive(clientHello(token: "s3cret")) == [.sendHello(processorHello(), clientAgent: "test/1")])
        #expect(machine.phase == .open)
    }

    @Test("the version is checked before the token, the token before max_frame_size")
    func refusalOrder() {
        var machine = Machine(configuration: testConfiguration(token: "s3cret"))
        #expect(machine.receive(clientHello(version: 3, maxFrameSize: 10, token: "x")) == [.closeWithError(Errors.version(3))])
        machine = Machine(configuration: testConfiguration(token: "s3cret"))
        #expect(machine.receive(clientHello(maxFrameSize: 10, token: "x")) == [.closeWithError(Errors.token)])
    }

    @Test("max_frame_size below 4096 is a protocol violation; 4096 and 0 (the default) open", arguments: [
        (UInt32(1), false), (UInt32(4095), false), (UInt32(4096), true), (UInt32(0), true), (UInt32.max, true),
    ] as [(UInt32, Bool)])
    func smallMaxFrameSize(maxFrameSize: UInt32, opens: Bool) {
        var machine = Machine(configuration: testConfiguration())
        let actions = machine.receive(clientHello(maxFrameSize: maxFrameSize))
        if opens {
            #expect(actions == [.sendHello(processorHello(), clientAgent: "test/1")])
            #expect(machine.phase == .open)
        } else {
            #expect(actions == [.closeWithError(Errors.smallFrames)])
            #expect(machine.phase == .closed)
        }
    }

    @Test("each call's image budget is the client's max_frame_size minus the Response overhead", arguments: [
        (UInt32(4096), 4096 - 128), (UInt32(65_536), 65_536 - 128), (UInt32(0), (64 << 20) - 128),
    ] as [(UInt32, Int)])
    func imageBudget(announced: UInt32, budget: Int) {
        var machine = Machine(configuration: testConfiguration())
        _ = machine.receive(clientHello(maxFrameSize: announced))
        #expect(machine.imageBudget == budget)
        let pool = PoolStub()
        _ = machine.receive(request(1), pool: pool)
        #expect(pool.offers.map(\.imageBudget) == [budget])
        #expect(budget == Int(announced == 0 ? UInt32(PrismProtocol.defaultMaxFrameSize) : announced) - PrismProtocol.maxResponseOverhead)
    }

    @Test("the handshake timer closes a connection still waiting for its Hello, and only that")
    func handshakeTimer() {
        var waiting = Machine(configuration: testConfiguration())
        #expect(waiting.handshakeTimerFired() == [.close(.handshakeTimedOut)])
        #expect(waiting.receive(clientHello()).isEmpty, "a Hello after the timeout is not answered")

        var open = Start.openWithCalls.machine()
        #expect(open.handshakeTimerFired().isEmpty)
        #expect(open.phase == .open && open.openCallIDs == [1, 2])
    }

    @Test("a second Hello is a protocol violation that stops every call")
    func secondHello() {
        var machine = Start.openWithCalls.machine()
        #expect(machine.receive(clientHello()) == [.closeWithError(Errors.secondHello), stop(1, .connectionClosed), stop(2, .connectionClosed)])
        #expect(machine.phase == .closed)
    }

    // MARK: Calls

    @Test("a Request on call 0 or on a call still open closes the connection; a finished id may be served again")
    func duplicateAndZeroIDs() {
        var machine = Start.openIdle.machine()
        #expect(machine.receive(request(4)) == [.startCall(callID: 4, "call-4")])
        #expect(machine.callFinished(4).isEmpty)
        #expect(machine.receive(request(4)) == [.startCall(callID: 4, "call-4")], "an id whose call ended is a new call")

        let pool = PoolStub()
        #expect(machine.receive(request(4), pool: pool) == [.closeWithError(Errors.callID(4)), stop(4, .connectionClosed)])
        #expect(pool.offers.isEmpty, "no job for a call refused as a violation")
        #expect(machine.phase == .closed)

        var zero = Start.openIdle.machine()
        #expect(zero.receive(request(0)) == [.closeWithError(Errors.callID(0))])
    }

    @Test("ids out of order are served; GoAway's last_call_id is the highest one admitted")
    func outOfOrderIDs() {
        var machine = Start.openIdle.machine()
        _ = machine.receive(request(5))
        _ = machine.receive(request(3))
        _ = machine.callFinished(5)
        #expect(machine.drainStarted() == [goAway(5)], "a finished call still counts")
    }

    @Test("a full queue refuses the call RESOURCE_EXHAUSTED/QUEUE_FULL, retryably, and keeps the id free")
    func queueFull() {
        var machine = Start.openWithCalls.machine()
        let full = PoolStub()
        full.accepting = false
        #expect(machine.receive(request(3), pool: full) == [.refuseCall(callID: 3, Errors.queueFull)])
        #expect(Errors.queueFull.isRetryable)
        #expect(machine.openCallIDs == [1, 2])
        #expect(machine.receive(request(3)) == [.startCall(callID: 3, "call-3")], "the refused id was never taken")
        #expect(machine.drainStarted() == [goAway(3)])
    }

    @Test("a Cancel stops an open call once; for an unknown or finished call it is ignored")
    func cancel() {
        var machine = Start.openWithCalls.machine()
        #expect(machine.receive(.cancel(callID: 99)).isEmpty, "unknown")
        #expect(machine.receive(.cancel(callID: 1)) == [stop(1, .cancelledByClient)])
        #expect(machine.receive(.cancel(callID: 1)).isEmpty, "already stopping")
        #expect(machine.openCallIDs == [1, 2], "the id stays taken until the call's final frame is written")
        #expect(machine.receive(request(1)) != [.startCall(callID: 1, "call-1")])

        var again = Start.openWithCalls.machine()
        _ = again.callFinished(2)
        #expect(again.receive(.cancel(callID: 2)).isEmpty, "finished")
        #expect(again.receive(.cancel(callID: 0)).isEmpty, "call 0 is never a call")
    }

    @Test("a Cancel for a call still queued stops it like a running one (its serve loop then withdraws the job)")
    func cancelQueued() {
        var machine = Start.openIdle.machine()
        _ = machine.receive(request(1))
        _ = machine.receive(request(2))  // behind 1 in the pool
        #expect(machine.receive(.cancel(callID: 2)) == [stop(2, .cancelledByClient)])
        #expect(machine.callFinished(2).isEmpty)
        #expect(machine.openCallIDs == [1])
    }

    // MARK: Draining

    @Test("drain with no calls: GoAway with the highest id, then a half-close at once")
    func drainIdle() {
        var machine = Start.openIdle.machine()
        _ = machine.receive(request(1))
        _ = machine.receive(request(2))
        _ = machine.callFinished(1)
        _ = machine.callFinished(2)
        #expect(machine.drainStarted() == [goAway(2), .halfClose])
        #expect(machine.phase == .closed)
        #expect(machine.receive(request(3)).isEmpty, "nothing is written after the half-close")
        #expect(machine.receive(.ping(1)).isEmpty)
        #expect(machine.connectionClosed().isEmpty)
    }

    @Test("drain with calls: they finish normally, later Requests are refused UNAVAILABLE, the last one half-closes")
    func drainWithCalls() {
        var machine = Start.openWithCalls.machine()
        #expect(machine.drainStarted() == [goAway(2)])
        #expect(machine.drainStarted().isEmpty, "one GoAway")

        let pool = PoolStub()
        #expect(machine.receive(request(3), pool: pool) == [.refuseCall(callID: 3, Errors.shuttingDown)])
        #expect(Errors.shuttingDown.isRetryable)
        _ = machine.callFinished(1)
        // Below last_call_id, sent out of order: still refused, never admitted.
        #expect(machine.receive(request(1), pool: pool) == [.refuseCall(callID: 1, Errors.shuttingDown)])
        #expect(pool.offers.isEmpty, "no call is admitted after GoAway")
        #expect(machine.receive(.ping(9)) == [.send(.pong(9))], "pings are still answered")
        #expect(machine.phase == .draining)
        #expect(machine.callFinished(2) == [.halfClose])
        #expect(machine.phase == .closed)
        #expect(machine.callFinished(2).isEmpty)

        var draining = Start.draining.machine()
        #expect(
            draining.receive(request(1)) == [.closeWithError(Errors.callID(1)), stop(1, .connectionClosed), stop(2, .connectionClosed)],
            "an id still open is a violation even while draining"
        )
    }

    @Test("drain deadline: each open call is stopped to answer UNAVAILABLE/SHUTTING_DOWN, then a half-close after the last")
    func drainDeadline() {
        var machine = Start.openWithCalls.machine()
        _ = machine.receive(request(3))
        _ = machine.receive(.cancel(callID: 3))  // already stopping: keeps its CANCELLED answer
        _ = machine.drainStarted()
        #expect(machine.drainDeadlinePassed() == [stop(1, .drainDeadline), stop(2, .drainDeadline)])
        #expect(machine.drainDeadlinePassed().isEmpty, "each call is stopped once")
        #expect(machine.callFinished(1).isEmpty)
        #expect(machine.callFinished(3).isEmpty)
        #expect(machine.callFinished(2) == [.halfClose])
        #expect(machine.phase == .closed)
    }

    @Test("drain before the Hello: the processor's Hello goes first, then GoAway(0) and a half-close")
    func drainBeforeHello() {
        var machine = Machine(configuration: testConfiguration())
        #expect(machine.drainStarted().isEmpty, "a server's first frame is its Hello, never a GoAway")
        let pool = PoolStub()
        #expect(machine.receive(clientHello(), pool: pool) == [.sendHello(processorHello(), clientAgent: "test/1"), goAway(0), .halfClose])
        #expect(machine.receive(request(1), pool: pool).isEmpty)
        #expect(pool.offers.isEmpty)

        var refused = Machine(configuration: testConfiguration())
        _ = refused.drainStarted()
        #expect(refused.receive(clientHello(version: 2)) == [.closeWithError(Errors.version(2))], "a bad Hello is still refused as such")
    }

    // MARK: Closing

    @Test("peer gone: every open call is stopped; their later ends change nothing")
    func peerGone() {
        var machine = Start.openWithCalls.machine()
        _ = machine.receive(.cancel(callID: 2))
        #expect(machine.connectionClosed() == [stop(1, .connectionClosed)], "call 2 is already stopping")
        #expect(machine.phase == .closed)
        #expect(machine.callFinished(1).isEmpty)
        #expect(machine.callFinished(2).isEmpty)
        #expect(machine.drainDeadlinePassed().isEmpty)
        #expect(machine.connectionClosed().isEmpty)
    }

    @Test("an Error on call 0 from the client closes the connection and stops its calls")
    func clientErrorOnCall0() {
        var machine = Start.draining.machine()
        let error = clientError(callID: 0)
        #expect(machine.receive(error) == [.close(.clientError(error.error)), stop(1, .connectionClosed), stop(2, .connectionClosed)])
        #expect(machine.phase == .closed)
    }

    @Test("bytes that are not frames: one Error on call 0 that says whether the Hello had come")
    func undecodable() {
        var early = Machine(configuration: testConfiguration())
        #expect(early.undecodableBytes(.tooLarge(length: 70_000, limit: 65_536)) == [.closeWithError(Errors.tooLargeBeforeHello)])
        var late = Start.openIdle.machine()
        #expect(late.undecodableBytes(.tooLarge(length: 2_000_000, limit: 1 << 20)) == [.closeWithError(Errors.tooLarge)])
        #expect(late.undecodableBytes(.malformed).isEmpty, "once closed, nothing more")
    }

    @Test("unknown frame kinds and frames a server does not expect are ignored")
    func ignored() throws {
        var machine = Start.openWithCalls.machine()
        for frame in [try unknownKindFrame(), Prism_V1_Frame(), .pong(1), .goAway(lastCallID: 0, reason: ""), clientError(callID: 2), .response(callID: 1, Prism_V1_Response()), .complete(callID: 9, Prism_V1_Complete())] {
            #expect(machine.receive(frame).isEmpty)
        }
        #expect(machine.phase == .open && machine.openCallIDs == [1, 2])
    }

    @Test("the pool is only asked for calls the connection takes")
    func poolAskedOnlyWhenTaking() {
        let pool = PoolStub()
        var machine = Machine(configuration: testConfiguration())
        _ = machine.receive(request(1), pool: pool)  // before the Hello
        machine = Start.openWithCalls.machine()
        _ = machine.receive(request(0), pool: pool)  // zero id
        machine = Start.openWithCalls.machine()
        _ = machine.receive(request(2), pool: pool)  // open id
        machine = Start.draining.machine()
        _ = machine.receive(request(3), pool: pool)  // draining
        machine = Start.closed.machine()
        _ = machine.receive(request(3), pool: pool)  // closed
        #expect(pool.offers.isEmpty)
        machine = Start.openWithCalls.machine()
        _ = machine.receive(request(3), pool: pool)
        #expect(pool.offers.map(\.callID) == [3])
    }
}
