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
/// What each event means is decided by a `ProcessorConnectionStateMachine` held in a `Mutex`;
/// this class feeds it (frames, timers, calls ending, the drain) and performs the actions it
/// returns once the lock is released: writing frames, running and stopping calls, closing.
///
/// Protocol errors (garbage, oversized frames, a wrong version, a bad token) get one Error
/// frame on call 0 and a close; they never affect other connections.
final class ProcessorConnectionHandler: Sendable {
    private typealias StateMachine = ProcessorConnectionStateMachine<Call>

    private let asyncChannel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>
    private let server: ProcessorServer
    private let logger: Logger
    private let state: Mutex<StateMachine>

    /// What the connection keeps of an admitted call: how to stop it and where its events go.
    private struct Call: Sendable {
        let request: Prism_V1_Request
        let cancellation: JobCancellation
        let events: AsyncStream<CallEvent>.Continuation
        let stream: AsyncStream<CallEvent>
        let job: WorkerPool.Job
        let timeout: Duration
    }

    private enum CallEvent: Sendable {
        case variant(EncodedVariant, ContentDigests?)
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
        self.state = Mutex(StateMachine(configuration: server.configuration))
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
                        await self.perform(self.state.withLock { $0.drainStarted() })
                    }
                    defer { group.cancelAll() }
                    do {
                        try await self.serve(inbound, group: &group)
                    } catch let error as FrameError {
                        await self.perform(self.state.withLock { $0.undecodableBytes(error) }, detail: "\(error)")
                    }
                    // The peer is gone or broke the protocol: nobody is left to answer.
                    await self.perform(self.state.withLock { $0.connectionClosed() })
                }
            }
        } catch {
            self.logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// The frame loop, from the Hello on, until the peer or the state machine ends it.
    private func serve(
        _ inbound: NIOAsyncChannelInboundStream<Prism_V1_Frame>,
        group: inout ThrowingDiscardingTaskGroup<any Error>
    ) async throws {
        let handshakeTimer = self.channel.eventLoop.scheduleTask(in: .init(self.server.configuration.handshakeTimeout)) {
            for action in self.state.withLock({ $0.handshakeTimerFired() }) {
                _ = self.performAtOnce(action)
            }
        }
        defer { handshakeTimer.cancel() }
        var awaitingHello = true
        for try await frame in inbound {
            if awaitingHello {
                // Answered or refused: either way the timer has nothing left to do.
                handshakeTimer.cancel()
                awaitingHello = false
            }
            let actions = self.state.withLock { machine in
                machine.frameReceived(frame) { callID, request, budget in
                    let call = self.makeCall(request, imageBudget: budget)
                    return self.server.pool.submit(call.job) ? call : nil
                }
            }
            let keepReading = await self.perform(actions) { callID, call in
                group.addTask { await self.serveCall(callID, call) }
            }
            guard keepReading else { return }
        }
    }

    // MARK: Performing the state machine's actions

    /// Performs `actions` in order, outside the state machine's lock.
    ///
    /// - Parameters:
    ///   - detail: what to log about a connection-level error, when it is not its message.
    ///   - startCall: runs an admitted call; only the read loop admits calls.
    /// - Returns: false when the connection is closed and its read loop should stop.
    @discardableResult
    private func perform(
        _ actions: [StateMachine.Action],
        detail: String? = nil,
        startCall: (UInt64, Call) -> Void = { _, _ in assertionFailure("a call was admitted outside the read loop") }
    ) async -> Bool {
        var keepReading = true
        for action in actions {
            switch action {
            case .startCall(let callID, let call):
                startCall(callID, call)
            case .closeWithError(let error):
                // Awaited: the Error frame must reach the socket before the close, and before
                // the calls are stopped (their own Error frames would go out first otherwise).
                self.logClosing(error, detail: detail)
                try? await self.channel.writeAndFlush(Prism_V1_Frame.error(callID: 0, error)).get()
                try? await self.channel.close()
                keepReading = false
            default:
                keepReading = self.performAtOnce(action) && keepReading
            }
        }
        return keepReading
    }

    /// Performs one action without waiting for it. Returns false when it closes the connection.
    private func performAtOnce(_ action: StateMachine.Action) -> Bool {
        switch action {
        case .sendHello(let hello, let clientAgent):
            self.send(.hello(hello))
            self.logger.debug("client connected", metadata: ["agent": "\(clientAgent)"])
        case .send(let frame):
            self.send(frame)
        case .refuseCall(let callID, let error):
            self.server.metrics.callFailed(code: error.code, reason: error.reason)
            self.send(.error(callID: callID, error))
        case .stopCall(_, let call, let reason):
            call.cancellation.cancel()
            switch reason {
            case .cancelledByClient, .connectionClosed: call.events.yield(.cancelledByPeer)
            case .drainDeadline: call.events.yield(.shutDown)
            }
        case .halfClose:
            // Once every frame written so far has gone out.
            self.channel.close(mode: .output, promise: nil)
        case .close(let closing):
            if case .clientError(let error) = closing {
                self.logger.info("client closed the connection with an error", metadata: ["code": "\(error.code)", "message": "\(error.message)"])
            }
            self.channel.close(promise: nil)
            return false
        case .closeWithError(let error):
            self.logClosing(error, detail: nil)
            let channel = self.channel
            channel.writeAndFlush(Prism_V1_Frame.error(callID: 0, error)).whenComplete { _ in channel.close(promise: nil) }
            return false
        case .startCall:
            assertionFailure("a call was admitted outside the read loop")
        }
        return true
    }

    private func logClosing(_ error: PrismRPCError, detail: String?) {
        self.server.metrics.protocolError(error.reason)
        self.logger.info("closing connection", metadata: ["code": "\(error.code.label)", "reason": "\(error.reason.label)", "detail": "\(detail ?? error.message)"])
    }

    // MARK: Calls

    /// A call's job, its cancellation and its event stream, ready to submit to the worker pool.
    private func makeCall(_ request: Prism_V1_Request, imageBudget: Int) -> Call {
        let config = self.server.configuration
        let timeout = request.timeoutMs == 0 ? config.defaultTimeout : min(.milliseconds(Int64(request.timeoutMs)), config.maxTimeout)
        let cancellation = JobCancellation(deadline: ContinuousClock.now + timeout)
        let (stream, events) = AsyncStream<CallEvent>.makeStream()
        let job = self.makeJob(request, imageBudget: imageBudget, cancellation: cancellation, events: events)
        return Call(request: request, cancellation: cancellation, events: events, stream: stream, job: job, timeout: timeout)
    }

    /// The worker-pool job of one call: runs the image job and reports through `events`.
    private func makeJob(
        _ request: Prism_V1_Request,
        imageBudget: Int,
        cancellation: JobCancellation,
        events: AsyncStream<CallEvent>.Continuation
    ) -> WorkerPool.Job {
        let metrics = self.server.metrics
        var limits = self.server.configuration.limits
        // Each answer must fit in one frame the client accepts, with the Response's own fields.
        limits.maxOutputBytes = min(limits.maxOutputBytes, imageBudget)
        let job = ImageJob(
            source: request.source,
            variants: request.variants,
            limits: limits,
            placeholder: request.placeholder,
            blurHash: request.hasBlurhash ? request.blurhash : nil,
            threads: min(max(1, Int(request.threads)), self.server.configuration.jobThreads),
            helpers: self.server.helpers
        )
        let sourceSHA256 = request.sourceSha256
        let digests = request.digests
        let source = request.source
        return WorkerPool.Job(isAbandoned: { cancellation.isStopped }) { queued in
            let clock = ContinuousClock()
            let jobStart = clock.now
            let ending: CallEvent
            let outcome: String
            do throws(ImagingError) {
                // The source's hash runs beside the decode, not after the last variant.
                let sourceDigest = sourceSHA256 ? BackgroundSHA256(source) : nil
                var summary = try job.run(cancellation: cancellation) { variant in
                    // Hashed here, on the worker, while the bytes are still in cache: the client
                    // then stores them without reading them again (S3 ETag and signature).
                    events.yield(.variant(variant, digests ? ContentDigests(of: variant.data) : nil))
                }
                if let sourceDigest { summary.source.sha256 = sourceDigest.value() }
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
    private func serveCall(_ callID: UInt64, _ call: Call) async {
        let request = call.request
        let metrics = self.server.metrics
        let clock = ContinuousClock()
        let start = clock.now
        var logger = self.logger
        logger[metadataKey: "call"] = "\(callID)"
        if !request.requestID.isEmpty { logger[metadataKey: "request_id"] = "\(request.requestID.prefix(128))" }
        metrics.callsStarted.increment()
        metrics.sourceBytes.increment(by: Int64(request.source.count))

        let cancellation = call.cancellation
        let events = call.events
        // Answer at the deadline even if the job is still queued or in an encoder that cannot
        // be interrupted; the job itself sees the same deadline and stops at its next check.
        let timer = self.channel.eventLoop.scheduleTask(in: .init(call.timeout)) {
            events.yield(.timedOut)
        }
        defer { timer.cancel() }

        var ending: (code: Prism_V1_Code, reason: Prism_V1_Reason) = (.ok, .unspecified)
        var last: Prism_V1_Frame? = nil
        await withTaskCancellationHandler {
            loop: for await event in call.stream {
                switch event {
                case .variant(let variant, let digests):
                    var response = Prism_V1_Response()
                    response.variantIndex = UInt32(variant.index)
                    response.data = variant.data
                    response.width = UInt32(variant.size.width)
                    response.height = UInt32(variant.size.height)
                    response.format = variant.format
                    response.processUs = variant.duration.microseconds
                    if let digests {
                        response.md5 = digests.md5
                        response.sha256 = digests.sha256
                    }
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
        self.server.pool.withdraw(call.job)

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
        // Only now is the id free: the final frame is on its way first.
        await self.perform(self.state.withLock { $0.callFinished(callID) })
    }

    /// Ends every call still open with UNAVAILABLE/SHUTTING_DOWN and stops its work: the drain
    /// deadline has passed. The connection half-closes once their last frames are written.
    func endCallsAtDrainDeadline() async {
        await self.perform(self.state.withLock { $0.drainDeadlinePassed() })
    }

    // MARK: Writing

    private func send(_ frame: Prism_V1_Frame) {
        // Straight to the channel: writes from calls and the read loop keep their order.
        self.channel.writeAndFlush(frame, promise: nil)
    }
}
