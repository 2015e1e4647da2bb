// libFuzzer target: the processor's connection state machine (handshake, call admission,
// Cancel, drain) driven by frames a peer could send, interleaved with the events the rest of the
// processor produces (pool full, calls ending, drain, its deadline, timers, the peer leaving).
//
// Input: one byte of settings (bit 0: the processor requires a token), then records. A record
// is a control byte:
// - below 0x80: the next frame, decoded from the following bytes by the real FrameDecoder with
//   the processor's handshake check (bit 0 set: the worker pool is full for it);
// - 0x80 and above, by the low 4 bits: 0 handshake timer, 1 drain started, 2 drain deadline,
//   3 to 5 an open call finishes (the next byte picks which), 6 a call id from the next byte
//   finishes (often unknown), 7 the peer is gone, others: a call told to stop finishes.
// At the end of the input the peer is gone and every call still running finishes.
//
// Every action is checked against an independent model with precondition (so a violation
// crashes, in release too): the Hello goes first and once; no call is admitted after GoAway and
// last_call_id covers every admitted call; no two open calls share an id; calls are stopped at
// most once and only while open; the pool is asked only for calls the connection may take, with
// the client's frame budget; nothing is asked for after a close or half-close; a half-close
// leaves no call without its answer; a closed machine holds no calls.
import Foundation
import NIOCore
@testable import PrismProcessor
import PrismProto
import PrismWire

/// Calls are their ids, so a stop can be checked against the id it names.
typealias Machine = ProcessorConnectionStateMachine<UInt64>

struct Model {
    var machine: Machine
    let configuration: ProcessorConfiguration
    /// Admitted calls whose final frame has not been written (their serve loops still run, even
    /// after the connection closed).
    var running: Set<UInt64> = []
    /// Running calls the machine asked to stop.
    var stopped: Set<UInt64> = []
    var helloSent = false
    var goAway: UInt64?
    var highestAdmitted: UInt64 = 0
    /// A close, error close or half-close was asked for: nothing more may be.
    var finished = false
    /// A close or error close: the handler's read loop stops, so no more frames are fed.
    var stopsReading = false
    var clientMaxFrameSize: Int?

    init(configuration: ProcessorConfiguration) {
        self.configuration = configuration
        self.machine = Machine(configuration: configuration)
    }

    mutating func frame(_ frame: Prism_V1_Frame, poolAccepts: Bool) {
        let phase = self.machine.phase
        let running = self.running
        let clientMax = self.clientMaxFrameSize
        var offered: UInt64? = nil
        let actions = self.machine.frameReceived(frame) { callID, _, budget in
            precondition(offered == nil, "the pool was asked twice for one frame")
            precondition(phase == .open, "the pool was asked while \(phase)")
            precondition(callID != 0 && !running.contains(callID), "the pool was asked for call \(callID), which is 0 or open")
            precondition(budget == (clientMax ?? -1) - PrismProtocol.maxResponseOverhead, "wrong image budget \(budget)")
            precondition(budget >= PrismProtocol.minimumMaxFrameSize - PrismProtocol.maxResponseOverhead)
            offered = callID
            return poolAccepts ? callID : nil
        }
        if phase == .awaitingHello, case .hello(let hello) = frame.kind, actions.first.map(isHello) == true {
            self.clientMaxFrameSize = hello.maxFrameSize == 0 ? PrismProtocol.defaultMaxFrameSize : Int(hello.maxFrameSize)
        }
        if let offered {
            let started = actions.contains { action in
                guard case .startCall(let callID, let call) = action else { return false }
                return callID == offered && call == offered
            }
            precondition(started == poolAccepts, "pool answered \(poolAccepts) for call \(offered) but the actions were \(actions)")
        }
        if case .ping(let ping) = frame.kind, phase == .open || phase == .draining {
            precondition(actions.count == 1, "a Ping got \(actions)")
        }
        self.apply(actions, frame: frame)
    }

    mutating func event(_ kind: UInt8, _ argument: UInt8) {
        switch kind {
        case 0:
            let before = self.machine.phase
            let actions = self.machine.handshakeTimerFired()
            precondition(actions.isEmpty || before == .awaitingHello, "the handshake timer acted while \(before)")
            self.apply(actions)
        case 1:
            self.apply(self.machine.drainStarted())
        case 2:
            self.apply(self.machine.drainDeadlinePassed())
        case 3, 4, 5:
            guard !self.running.isEmpty else { return }
            let ids = self.running.sorted()
            self.finish(ids[Int(argument) % ids.count])
        case 6:
            self.finish(UInt64(argument))
        case 7:
            self.apply(self.machine.connectionClosed())
            precondition(self.machine.phase == .closed)
        default:
            guard let id = self.stopped.sorted().first else { return }
            self.finish(id)
        }
    }

    /// A call's serve loop ended and wrote its final frame (only for calls that run).
    mutating func finish(_ callID: UInt64) {
        let actions = self.machine.callFinished(callID)
        if self.running.remove(callID) == nil {
            precondition(actions.isEmpty, "an unknown call's end did \(actions)")
        }
        self.stopped.remove(callID)
        self.apply(actions)
    }

    private mutating func apply(_ actions: [Machine.Action], frame: Prism_V1_Frame? = nil) {
        if self.finished {
            precondition(actions.isEmpty, "asked for \(actions) after the connection closed")
        }
        var closing = false
        for action in actions {
            if closing {
                // After an error close only the calls' stops may follow.
                guard case .stopCall = action else { preconditionFailure("\(action) after a close in one batch") }
            }
            switch action {
            case .sendHello(let hello, _):
                precondition(!self.helloSent, "a second Hello was sent")
                precondition(hello.protocolVersion == PrismProtocol.version)
                self.helloSent = true
            case .send(let sent):
                precondition(self.helloSent, "\(sent) before the Hello")
                switch sent.kind {
                case .goAway(let goAway):
                    precondition(self.goAway == nil, "a second GoAway")
                    precondition(goAway.lastCallID >= self.highestAdmitted, "GoAway(\(goAway.lastCallID)) does not cover call \(self.highestAdmitted)")
                    precondition(goAway.lastCallID == self.highestAdmitted, "GoAway(\(goAway.lastCallID)) names a call never admitted")
                    self.goAway = goAway.lastCallID
                case .pong(let pong):
                    guard case .ping(let ping) = frame?.kind, ping.payload == pong.payload else { preconditionFailure("a Pong that answers no Ping") }
                default:
                    preconditionFailure("unexpected frame \(sent)")
                }
            case .refuseCall(let callID, let error):
                precondition(self.helloSent)
                guard case .request = frame?.kind, frame?.callID == callID else { preconditionFailure("refused call \(callID) that was not just requested") }
                precondition(error.isRetryable && (error.reason == .shuttingDown || error.reason == .queueFull), "refused with \(error)")
                precondition(error.reason != .shuttingDown || self.goAway != nil, "refused as shutting down before GoAway")
            case .startCall(let callID, let call):
                precondition(self.helloSent)
                precondition(self.goAway == nil, "call \(callID) admitted after GoAway")
                precondition(callID != 0 && call == callID)
                precondition(!self.running.contains(callID), "two open calls with id \(callID)")
                self.running.insert(callID)
                self.highestAdmitted = max(self.highestAdmitted, callID)
            case .stopCall(let callID, let call, _):
                precondition(call == callID)
                precondition(self.running.contains(callID), "stopped call \(callID), which is not running")
                precondition(!self.stopped.contains(callID), "call \(callID) stopped twice")
                self.stopped.insert(callID)
            case .closeWithError(let error):
                precondition(error.code != .ok)
                closing = true
                self.finished = true
                self.stopsReading = true
            case .close(let why):
                if case .handshakeTimedOut = why { precondition(!self.helloSent, "the handshake timer closed an open connection") }
                closing = true
                self.finished = true
                self.stopsReading = true
            case .halfClose:
                // Every call must have had its final frame written first.
                precondition(self.running.isEmpty, "half-closed with calls \(self.running) unanswered")
                closing = true
                self.finished = true
            }
        }
        self.checkState()
    }

    private func checkState() {
        switch self.machine.phase {
        case .closed:
            precondition(self.machine.openCallIDs.isEmpty, "a closed machine holds calls")
            precondition(self.machine.imageBudget == nil)
        case .open, .draining:
            precondition(!self.finished, "the machine is \(self.machine.phase) after a close")
            precondition(self.machine.openCallIDs == self.running, "the machine's calls \(self.machine.openCallIDs) are not the running ones \(self.running)")
            precondition((self.machine.phase == .draining) == (self.goAway != nil))
        case .awaitingHello:
            precondition(!self.helloSent && self.running.isEmpty && self.goAway == nil)
        }
    }
}

private func isHello(_ action: Machine.Action) -> Bool {
    if case .sendHello = action { return true }
    return false
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConnection(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    var input = ByteBufferAllocator().buffer(capacity: count)
    input.writeBytes(UnsafeRawBufferPointer(start: start, count: count))
    guard let settings = input.readInteger(as: UInt8.self) else { return 0 }
    var config = ProcessorConfiguration()
    config.workers = 2
    config.queueCapacity = 4
    config.maxFrameSize = 1 << 20
    config.authToken = settings & 1 == 1 ? "token" : nil
    let handshake = config
    var decoder = FrameDecoder(maxFrameSize: config.maxFrameSize) { ProcessorHandshake.refusal($0, configuration: handshake) == nil }
    var model = Model(configuration: config)
    var reading = true

    while let control = input.readInteger(as: UInt8.self) {
        if control < 0x80 {
            guard reading else { continue }
            do {
                guard let frame = try decoder.decode(buffer: &input) else {
                    // Cut short: the peer sends no more frames; what is left drives events.
                    reading = false
                    continue
                }
                model.frame(frame, poolAccepts: control & 1 == 0)
                if model.stopsReading { reading = false }
            } catch let error as FrameError {
                // The handler stops reading here, as it does in production.
                reading = false
                model.undecodable(error)
            } catch {
                fatalError("the decoder threw something other than FrameError: \(error)")
            }
        } else {
            let argument = input.readInteger(as: UInt8.self) ?? 0
            model.event(control & 0x0F, argument)
            if control & 0x0F == 7 { reading = false }
        }
    }
    // The peer is gone; every call's serve loop ends.
    model.event(7, 0)
    for id in model.running.sorted() { model.finish(id) }
    precondition(model.machine.phase == .closed && model.machine.openCallIDs.isEmpty)
    return 0
}

extension Model {
    mutating func undecodable(_ error: FrameError) {
        let actions = self.machine.undecodableBytes(error)
        if !self.finished {
            guard case .closeWithError = actions.first else { preconditionFailure("undecodable bytes did \(actions)") }
        }
        self.apply(actions)
    }
}

// libFuzzer's own main is not linked (Swift provides `main` for this file), so hand over to
// its driver with the command line: -runs, -max_total_time, corpus directories...
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

var arguments = CommandLine.unsafeArgv
var count = CommandLine.argc
exit(LLVMFuzzerRunDriver(&count, &arguments, fuzzConnection))
