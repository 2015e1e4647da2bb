import CoreMetrics
import Foundation
import Logging
import NIOCore
import PrismImaging
import PrismProto
import PrismWire
import ServiceLifecycle
import Synchronization

/// Serves one client connection: the handshake, then calls multiplexed by id, each run as a
/// job on the worker pool with its answers streamed back as they are made.
///
/// Protocol errors (garbage, oversized frames, a wrong version, a bad token) get one Error
/// frame on call 0 and a close; they never affect other connections.
final class ProcessorConnectionHandler: Sendable {
    private let asyncChannel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>
    private let server: ProcessorServer
    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var calls: [UInt64: Call] = [:]
        var draining = false
        var highestCallID: UInt64 = 0
        var clientMaxFrameSize = PrismProtocol.defaultMaxFrameSize
    }

    private struct Call {
        let cancellation: JobCancellation
        let events: AsyncStream<CallEvent>.Continuation
        let job: WorkerPool.Job
    }

    private enum CallEvent: Sendable {
        case variant(EncodedVariant)
        case done(JobSummary, queued: Duration)
        case failed(ImagingError)
        case timedOut
        case cancelledByPeer
        /// The drain deadline passed with the call still running.
        case shutDown
    }

    private var channel: any Channel { self.asyncChannel.channel }

    init(channel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>, server: ProcessorServer) {
        self.asyncChannel = channel
        self.server = server
        var logger = server.logger
        logger[metadataKey: "peer"] = "\(channel.channel.remoteAddress?.hostPort ?? "?")"
        self.logger = logger
    }

    func run() async {
        let metrics = self.server.metrics
        metrics.connections.increment()
        defer { metrics.connections.decrement() }
        do {
            try await self.asyncChannel.executeThenClose { inbound, _ in
                try await withThrowingDiscardingTaskGroup { group in
                    group.addTask {
                        // Cancelled (below) when the connection ends first.
                        guard (try? await self.server.draining.get()) != nil else { return }
                        self.drain()
                    }
                    defer { group.cancelAll() }
                    do {
                        try await self.serve(inbound, group: &group)
                    } catch let error as FrameError {
                        await self.closeWithError(self.refusal(for: error), detail: "\(error)")
                    }
                    // The peer is gone or broke the protocol: nobody is left to answer.
                    self.cancelAllCalls()
                }
            }
        } catch {
            self.logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// The handshake, then the frame loop.
    private func serve(
        _ inbound: NIOAsyncChannelInboundStream<Prism_V1_Frame>,
        group: inout ThrowingDiscardingTaskGroup<any Error>
    ) async throws {
        let config = self.server.configuration
        let channel = self.channel
        let handshakeTimer = channel.eventLoop.scheduleTask(in: .init(config.handshakeTimeout)) {
            channel.close(promise: nil)
        }
        var frames = inbound.makeAsyncIterator()
        guard let first = try await frames.next() else { return }
        handshakeTimer.cancel()
        // The decoder made the same check to decide whether to accept full-size frames.
        if let refusal = Self.handshakeRefusal(first, configuration: config) {
            return await self.closeWithError(refusal)
        }
        let hello = first.hello
        let clientMax = hello.maxFrameSize == 0 ? PrismProtocol.defaultMaxFrameSize : Int(hello.maxFrameSize)
        self.state.withLock { $0.clientMaxFrameSize = clientMax }

        var reply = Prism_V1_Hello()
        reply.protocolVersion = PrismProtocol.version
        reply.maxFrameSize = UInt32(config.maxFrameSize)
        reply.agent = "prism-processor/1"
        reply.workers = UInt32(config.workers)
        reply.queueCapacity = UInt32(config.queueCapacity)
        self.send(.hello(reply))
        self.logger.debug("client connected", metadata: ["agent": "\(hello.agent)"])

        while let frame = try await frames.next() {
            switch frame.kind {
            case .request(let request):
                switch self.admit(frame.callID, request) {
                case .success(let admitted):
                    group.addTask { await self.serveCall(frame.callID, request, admitted) }
                case .failure(let error) where error.reason == .protocolViolation:
                    return await self.closeWithError(error)
                case .failure(let error):
                    self.server.metrics.callFailed(code: error.code, reason: error.reason)
                    self.send(.error(callID: frame.callID, error))
                }
            case .cancel:
                let call = self.state.withLock { $0.calls[frame.callID] }
                if let call {
                    call.cancellation.cancel()
                    call.events.yield(.cancelledByPeer)
                }
            case .ping(let ping):
                self.send(.pong(ping.payload))
            case .hello:
                return await self.closeWithError(PrismRPCError(code: .failedPrecondition, reason: .protocolViolation, message: "A connection carries one Hello; a second one was received."))
            case .error(let error) where frame.callID == 0:
                self.logger.info("client closed the connection with an error", metadata: ["code": "\(error.code)", "message": "\(error.message)"])
                return
            case .pong, .response, .complete, .error, .goAway, nil:
                break  // nothing to do, or a kind this version does not know: ignored
            }
        }
    }

    /// Why a connection's first frame does not open it, or nil when it is a Hello this
    /// processor accepts. Also run by the frame decoder, which raises its size limit only for a
    /// first frame that passes.
    static func handshakeRefusal(_ first: Prism_V1_Frame, configuration config: ProcessorConfiguration) -> PrismRPCError? {
        guard case .hello(let hello) = first.kind, first.callID == 0 else {
            return PrismRPCError(code: .failedPrecondition, reason: .protocolViolation, message: "The first frame on a connection must be a Hello on call 0.")
        }
        guard hello.protocolVersion == PrismProtocol.version else {
            return PrismRPCError(
                code: .failedPrecondition,
                reason: .unsupportedVersion,
                message: "This processor speaks Prism protocol version \(PrismProtocol.version); the client sent version \(hello.protocolVersion)."
            )
        }
        if let token = config.authToken, !constantTimeEquals(token, hello.authToken) {
            return PrismRPCError(code: .unauthenticated, message: "The Hello did not carry this processor's auth token; configure the client with the right token.")
        }
        guard hello.maxFrameSize == 0 || hello.maxFrameSize >= PrismProtocol.minimumMaxFrameSize else {
            return PrismRPCError(code: .invalidArgument, reason: .protocolViolation, message: "max_frame_size must be at least \(PrismProtocol.minimumMaxFrameSize) bytes.")
        }
        return nil
    }

    /// The Error frame for bytes that cannot be read as frames.
    private func refusal(for error: FrameError) -> PrismRPCError {
        switch error {
        case .tooLarge(let length, let limit) where limit < self.server.configuration.maxFrameSize:
            return PrismRPCError(
                code: .resourceExhausted,
                reason: .frameTooLarge,
                message: "A frame of \(length) bytes arrived before the Hello; until a valid Hello a connection may send at most \(limit) bytes per frame."
            )
        case .tooLarge(let length, let limit):
            return PrismRPCError(
                code: .resourceExhausted,
                reason: .frameTooLarge,
                message: "A frame of \(length) bytes was announced; this processor accepts at most \(limit) bytes per frame."
            )
        case .malformed:
            return PrismRPCError(
                code: .invalidArgument,
                reason: .protocolViolation,
                message: "The bytes received are not Prism protocol frames; check that the client speaks the Prism processor protocol, version \(PrismProtocol.version)."
            )
        }
    }

    /// Decides whether a new call may start; when it may, registers it and hands its job to the
    /// worker pool.
    ///
    /// The checks, the pool's admission and the registration happen under the lock `drain`
    /// takes to send GoAway, so no call is admitted after GoAway and `last_call_id` covers every
    /// call that was.
    private func admit(_ callID: UInt64, _ request: Prism_V1_Request) -> Result<AdmittedCall, PrismRPCError> {
        let config = self.server.configuration
        let timeout = request.timeoutMs == 0 ? config.defaultTimeout : min(.milliseconds(Int64(request.timeoutMs)), config.maxTimeout)
        let deadline = ContinuousClock.now + timeout
        let cancellation = JobCancellation(deadline: deadline)
        let (events, continuation) = AsyncStream<CallEvent>.makeStream()
        let clientMax = self.state.withLock { $0.clientMaxFrameSize }
        let job = self.makeJob(request, clientMaxFrameSize: clientMax, cancellation: cancellation, events: continuation)
        let call = Call(cancellation: cancellation, events: continuation, job: job)

        return self.state.withLock { state -> Result<AdmittedCall, PrismRPCError> in
            if callID == 0 || state.calls[callID] != nil {
                return .failure(PrismRPCError(code: .invalidArgument, reason: .protocolViolation, message: "Call id \(callID) is zero or belongs to a call still open; number calls 1, 2, 3..."))
            }
            if state.draining {
                return .failure(PrismRPCError(code: .unavailable, reason: .shuttingDown, message: "This processor is shutting down; send the call to another one.", isRetryable: true))
            }
            guard self.server.pool.submit(job) else {
                return .failure(PrismRPCError(
                    code: .resourceExhausted,
                    reason: .queueFull,
                    message: "Every worker is busy and the queue of \(config.queueCapacity) calls is full; retry later or on another processor.",
                    isRetryable: true
                ))
            }
            state.highestCallID = max(state.highestCallID, callID)
            state.calls[callID] = call
            return .success(AdmittedCall(call: call, events: events, timeout: timeout))
        }
    }

    private struct AdmittedCall: Sendable {
        let call: Call
        let events: AsyncStream<CallEvent>
        let timeout: Duration
    }

    /// The worker-pool job of one call: runs the image job and reports through `events`.
    private func makeJob(
        _ request: Prism_V1_Request,
        clientMaxFrameSize: Int,
        cancellation: JobCancellation,
        events: AsyncStream<CallEvent>.Continuation
    ) -> WorkerPool.Job {
        let metrics = self.server.metrics
        var limits = self.server.configuration.limits
        // Each answer must fit in one frame the client accepts, with the Response's own fields.
        limits.maxOutputBytes = min(limits.maxOutputBytes, clientMaxFrameSize - PrismProtocol.maxResponseOverhead)
        let job = ImageJob(source: request.source, variants: request.variants, limits: limits, placeholder: request.placeholder)
        return WorkerPool.Job(isAbandoned: { cancellation.isStopped }) { queued in
            let clock = ContinuousClock()
            let jobStart = clock.now
            let ending: CallEvent
            let outcome: String
            do throws(ImagingError) {
                let summary = try job.run(cancellation: cancellation) { events.yield(.variant($0)) }
                ending = .done(summary, queued: queued)
                outcome = "ok"
            } catch {
                ending = .failed(error)
                switch error.code {
                case .cancelled: outcome = "cancelled"
                case .deadlineExceeded: outcome = "deadline"
                default: outcome = "error"
                }
            }
            // Metrics first: whoever sees the answer also sees the job counted.
            metrics.queueWait.recordNanoseconds(queued.nanoseconds)
            metrics.jobFinished(outcome: outcome, duration: clock.now - jobStart)
            if cancellation.killedComputation { metrics.jobsKilled.increment() }
            events.yield(ending)
            events.finish()
        }
    }

    /// Runs one call: the job on a worker thread, its results streamed back as frames.
    private func serveCall(_ callID: UInt64, _ request: Prism_V1_Request, _ admitted: AdmittedCall) async {
        let metrics = self.server.metrics
        let clock = ContinuousClock()
        let start = clock.now
        var logger = self.logger
        logger[metadataKey: "call"] = "\(callID)"
        if !request.requestID.isEmpty { logger[metadataKey: "request_id"] = "\(request.requestID.prefix(128))" }
        metrics.callsStarted.increment()
        metrics.sourceBytes.increment(by: Int64(request.source.count))

        let cancellation = admitted.call.cancellation
        let events = admitted.call.events
        // Answer at the deadline even if the job is still queued or in an encoder that cannot
        // be interrupted; the job itself sees the same deadline and stops at its next check.
        let timer = self.channel.eventLoop.scheduleTask(in: .init(admitted.timeout)) {
            events.yield(.timedOut)
        }
        defer { timer.cancel() }

        var ending: (code: Prism_V1_Code, reason: Prism_V1_Reason) = (.ok, .unspecified)
        var last: Prism_V1_Frame? = nil
        await withTaskCancellationHandler {
            loop: for await event in admitted.events {
                switch event {
                case .variant(let variant):
                    var response = Prism_V1_Response()
                    response.variantIndex = UInt32(variant.index)
                    response.data = variant.data
                    response.width = UInt32(variant.size.width)
                    response.height = UInt32(variant.size.height)
                    response.format = variant.format
                    response.processUs = variant.duration.microseconds
                    self.send(.response(callID: callID, response))
                    metrics.variantDuration.recordNanoseconds(variant.duration.nanoseconds)
                    metrics.encodeDuration.recordNanoseconds(variant.encodeDuration.nanoseconds)
                    metrics.outputBytes.increment(by: Int64(variant.data.count))
                case .done(let summary, let queued):
                    var complete = Prism_V1_Complete()
                    complete.source = summary.source
                    complete.decodeUs = summary.decodeDuration.microseconds
                    complete.queueUs = queued.microseconds
                    complete.totalUs = (clock.now - start).microseconds
                    metrics.decodeDuration.recordNanoseconds(summary.decodeDuration.nanoseconds)
                    last = .complete(callID: callID, complete)
                    break loop
                case .failed(let error):
                    ending = (error.code, error.reason)
                    last = .error(callID: callID, PrismRPCError(code: error.code, reason: error.reason, message: error.message, variant: error.variant))
                    if error.code != .cancelled, error.code != .deadlineExceeded {
                        logger.info("call refused", metadata: ["code": "\(error.code.label)", "reason": "\(error.reason.label)", "detail": "\(error.detail ?? "")"])
                    }
                    break loop
                case .timedOut:
                    ending = (.deadlineExceeded, .unspecified)
                    last = .error(callID: callID, PrismRPCError(code: .deadlineExceeded, message: "The call's deadline passed before its variants were finished."))
                    break loop
                case .cancelledByPeer:
                    ending = (.cancelled, .unspecified)
                    last = .error(callID: callID, PrismRPCError(code: .cancelled, message: "The call was cancelled by the client."))
                    break loop
                case .shutDown:
                    ending = (.unavailable, .shuttingDown)
                    last = .error(callID: callID, PrismRPCError(
                        code: .unavailable,
                        reason: .shuttingDown,
                        message: "The processor shut down before the call finished; send it to another processor.",
                        isRetryable: true
                    ))
                    break loop
                }
            }
        } onCancel: {
            cancellation.cancel()
            events.yield(.cancelledByPeer)
        }
        // A call that ended before its job started gives its place in the queue back now, not
        // when a worker would have reached it.
        self.server.pool.withdraw(admitted.call.job)

        // Count the call before its last frame goes out: whoever sees the answer sees the count.
        let duration = clock.now - start
        metrics.callDuration.recordNanoseconds(duration.nanoseconds)
        switch ending.code {
        case .ok: metrics.callsSucceeded.increment()
        case .cancelled: metrics.callsCancelled.increment()
        default: metrics.callFailed(code: ending.code, reason: ending.reason)
        }
        if let last { self.send(last) }
        logger.info("call finished", metadata: [
            "code": "\(ending.code.label)", "variants": "\(request.variants.count)",
            "bytes_in": "\(request.source.count)", "ms": "\(duration.microseconds / 1000)",
        ])
        self.finishCall(callID)
    }

    /// Forgets a finished call; closes the connection when it was the last one of a drain.
    private func finishCall(_ callID: UInt64) {
        let closeNow = self.state.withLock { state -> Bool in
            state.calls.removeValue(forKey: callID)
            return state.draining && state.calls.isEmpty
        }
        if closeNow { self.closeAfterWrites() }
    }

    /// Sends GoAway; the connection closes once its calls have finished.
    private func drain() {
        let (lastCallID, idle) = self.state.withLock { state -> (UInt64, Bool) in
            state.draining = true
            return (state.highestCallID, state.calls.isEmpty)
        }
        self.send(.goAway(lastCallID: lastCallID, reason: "processor shutting down"))
        if idle { self.closeAfterWrites() }
    }

    /// Ends every call still open with UNAVAILABLE/SHUTTING_DOWN and stops its work: the drain
    /// deadline has passed. The connection closes once their last frames are written.
    func endCallsAtDrainDeadline() {
        let calls = self.state.withLock { state -> [Call] in
            state.draining = true
            return Array(state.calls.values)
        }
        for call in calls {
            call.cancellation.cancel()
            call.events.yield(.shutDown)
        }
        if calls.isEmpty { self.closeAfterWrites() }
    }

    /// Stops every call of this connection (the peer is gone).
    private func cancelAllCalls() {
        let calls = self.state.withLock { Array($0.calls.values) }
        for call in calls {
            call.cancellation.cancel()
            call.events.yield(.cancelledByPeer)
        }
    }

    // MARK: Writing

    private func send(_ frame: Prism_V1_Frame) {
        // Straight to the channel: writes from calls and the read loop keep their order.
        self.channel.writeAndFlush(frame, promise: nil)
    }

    /// Half-closes once every frame written so far has gone out: the client reads them all, sees
    /// the end of the stream, and closes its side.
    private func closeAfterWrites() {
        self.channel.close(mode: .output, promise: nil)
    }

    /// Sends one connection-level Error frame and closes once it is written.
    private func closeWithError(_ error: PrismRPCError, detail: String? = nil) async {
        self.server.metrics.protocolError(error.reason)
        self.logger.info("closing connection", metadata: ["code": "\(error.code.label)", "reason": "\(error.reason.label)", "detail": "\(detail ?? error.message)"])
        try? await self.channel.writeAndFlush(Prism_V1_Frame.error(callID: 0, error)).get()
        try? await self.channel.close()
    }
}

/// Compares secrets without an early exit, so response timing does not reveal a prefix.
private func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8)
    let y = Array(b.utf8)
    var difference = UInt8(x.count == y.count ? 0 : 1)
    for i in 0..<max(x.count, y.count) {
        difference |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
    }
    return difference == 0
}
