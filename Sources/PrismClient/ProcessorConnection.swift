import Foundation
public import Logging
public import NIOCore
public import NIOPosix
public import PrismProto
public import PrismWire
import Synchronization
import NIOSSL
import PrismTLS

/// One TCP connection to a processor, carrying any number of concurrent calls.
///
/// `connect` opens the socket; `run()` performs the handshake and reads frames until the
/// connection ends, and must be running while calls are made (calls made before the handshake
/// finishes wait for it). `withConnection` does both for you:
///
/// ```swift
/// try await ProcessorConnection.withConnection(host: "127.0.0.1", port: 7070) { connection in
///     let result = try await connection.process(ProcessRequest(source: jpeg, variants: specs))
/// }
/// ```
///
/// Cancelling the task that awaits `process` sends a Cancel frame, and the processor stops
/// its computation. Errors are `PrismRPCError`s; `isRetryable` says whether the call may be
/// sent to another processor.
///
/// The connection's rules live in `ConnectionStateMachine`; this class feeds it events and
/// carries out what it decides, outside its lock.
public final class ProcessorConnection: Sendable {
    public let remoteDescription: String
    let channel: NIOAsyncChannel<Prism_V1_Frame, OutboundFrame>
    let configuration: ProcessorClientConfiguration
    let logger: Logger
    let activity: InboundActivity
    let state: Mutex<ConnectionStateMachine<CallSink, Waiter>>

    typealias CallSink = AsyncThrowingStream<CallEvent, any Error>.Continuation
    typealias Waiter = CheckedContinuation<Void, any Error>

    private init(
        channel: NIOAsyncChannel<Prism_V1_Frame, OutboundFrame>,
        remote: String,
        activity: InboundActivity,
        configuration: ProcessorClientConfiguration,
        logger: Logger
    ) {
        self.channel = channel
        self.remoteDescription = remote
        self.activity = activity
        self.configuration = configuration
        var logger = logger
        logger[metadataKey: "processor"] = "\(remote)"
        self.logger = logger
        self.state = Mutex(ConnectionStateMachine(remote: remote, pingTimeout: TimeAmount(configuration.pingTimeout)))
    }

    // MARK: Lifecycle

    /// Opens a TCP connection, and with `configuration.tls` completes the TLS handshake over
    /// it. Call `run()` next.
    ///
    /// - Throws: a retryable `PrismRPCError` UNAVAILABLE when the processor cannot be reached
    ///   or the TLS handshake fails; its message says why (for TLS: unknown CA, hostname
    ///   mismatch, client certificate required, not TLS at all).
    public static func connect(
        host: String,
        port: Int,
        configuration: ProcessorClientConfiguration = ProcessorClientConfiguration(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "prism.client")
    ) async throws -> ProcessorConnection {
        let maxFrameSize = configuration.maxFrameSize
        let activity = InboundActivity()
        let tls: (context: NIOSSLContext, sniName: String?, checkedName: String?)?
        if let settings = configuration.tls {
            do {
                tls = (try settings.makeContext(), settings.sniName(connectingTo: host), settings.serverName ?? host)
            } catch {
                throw PrismRPCError(code: .unavailable, message: "Could not set up TLS for the processor at \(host):\(port): \(error).", isRetryable: true)
            }
        } else {
            tls = nil
        }
        let channel: NIOAsyncChannel<Prism_V1_Frame, OutboundFrame>
        let handshake: EventLoopFuture<Void>?
        do {
            (channel, handshake) = try await ClientBootstrap(group: eventLoopGroup)
                .connectTimeout(TimeAmount(configuration.connectTimeout))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        let pipeline = channel.pipeline.syncOperations
                        var handshake: EventLoopFuture<Void>? = nil
                        if let tls {
                            let limit = TimeAmount(configuration.connectTimeout)
                            // First, so frames go through TLS unchanged.
                            let done = channel.eventLoop.makePromise(of: Void.self)
                            try pipeline.addHandler(NIOSSLClientHandler(context: tls.context, serverHostname: tls.sniName))
                            try pipeline.addHandler(TLSClientHandshakeHandler(handshake: done, serverName: tls.checkedName, timeout: limit))
                            handshake = done.futureResult
                        } else {
                            try pipeline.addHandler(TLSAnswerDetector())
                        }
                        try pipeline.addHandler(InboundActivityHandler(activity))
                        try pipeline.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
                        try pipeline.addHandler(OutboundFrameEncoder())
                        let wrapped = try NIOAsyncChannel<Prism_V1_Frame, OutboundFrame>(wrappingChannelSynchronously: channel)
                        return (wrapped, handshake)
                    }
                }
        } catch {
            throw PrismRPCError(code: .unavailable, message: "Could not connect to the processor at \(host):\(port): \(error).", isRetryable: true)
        }
        if let handshake {
            try await Self.awaitHandshake(handshake, of: channel, host: host, port: port)
        }
        activity.record()
        return ProcessorConnection(channel: channel, remote: "\(host):\(port)", activity: activity, configuration: configuration, logger: logger)
    }

    /// Waits for the TLS handshake (bounded by the handshake handler's own timer, or the
    /// task's cancellation); on failure closes the channel the way an async channel must be
    /// closed, and says why.
    private static func awaitHandshake(
        _ handshake: EventLoopFuture<Void>,
        of channel: NIOAsyncChannel<Prism_V1_Frame, OutboundFrame>,
        host: String,
        port: Int
    ) async throws {
        do {
            // A cancelled connect (the pool shutting down) closes the channel, which ends the
            // handshake at once instead of at its timeout.
            try await withTaskCancellationHandler {
                try await handshake.get()
            } onCancel: {
                channel.channel.close(promise: nil)
            }
        } catch {
            try? await channel.executeThenClose { _, _ in }
            let why = (error as? TLSFailure)?.reason ?? "\(error)"
            throw PrismRPCError(code: .unavailable, message: "TLS handshake with the processor at \(host):\(port) failed: \(why).", isRetryable: true)
        }
    }

    /// Connects, runs the connection while `body` runs, and closes it afterwards.
    public static func withConnection<Result: Sendable>(
        host: String,
        port: Int,
        configuration: ProcessorClientConfiguration = ProcessorClientConfiguration(),
        logger: Logger = Logger(label: "prism.client"),
        _ body: (ProcessorConnection) async throws -> Result
    ) async throws -> Result {
        let connection = try await Self.connect(host: host, port: port, configuration: configuration, logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await connection.run() }
            defer { connection.close() }
            return try await body(connection)
        }
    }

    /// Performs the handshake, then delivers frames to their calls until the connection ends.
    /// When it returns, every call and waiter has been answered: calls in flight with a
    /// retryable UNAVAILABLE (or the error that closed the connection).
    public func run() async {
        let eventLoop = self.channel.channel.eventLoop
        let handshakeTimeout = self.configuration.handshakeTimeout
        let handshakeTimer = eventLoop.scheduleTask(in: TimeAmount(handshakeTimeout)) { [self] in
            if let teardown = self.state.withLock({ $0.handshakeTimedOut(after: handshakeTimeout) }) {
                self.perform(teardown)
            }
        }
        // On the event loop, not in a task: it must fire even when every task that could
        // notice is itself waiting on this connection.
        let keepalive = self.configuration.pingInterval.map { interval in
            eventLoop.scheduleRepeatedTask(initialDelay: TimeAmount(interval), delay: TimeAmount(interval)) { [self] _ in
                self.keepaliveTick()
            }
        }
        var hello = Prism_V1_Hello()
        hello.protocolVersion = PrismProtocol.version
        hello.maxFrameSize = UInt32(self.configuration.maxFrameSize)
        hello.authToken = self.configuration.authToken ?? ""
        hello.agent = self.configuration.agent
        self.send(.hello(hello))

        let failure: PrismRPCError = await withTaskCancellationHandler {
            do {
                return try await self.channel.executeThenClose { inbound, _ -> PrismRPCError in
                    for try await frame in inbound {
                        if self.handle(frame) { break }
                    }
                    return .connectionLost("the processor closed the connection")
                }
            } catch {
                return .connectionLost(String(describing: error))
            }
        } onCancel: {
            self.close()
        }
        handshakeTimer.cancel()
        keepalive?.cancel()
        if let teardown = self.state.withLock({ $0.close(failure) }) {
            self.perform(teardown)
        }
    }

    /// Closes the connection; calls in flight fail with a retryable UNAVAILABLE.
    public func close() {
        self.channel.channel.close(promise: nil)
    }

    /// Takes no new calls and closes the connection once the calls in flight have ended.
    public func drain() {
        if let teardown = self.state.withLock({ $0.drain() }) {
            self.perform(teardown)
        }
    }

    // MARK: State seen by pools

    /// Calls sent and not yet finished.
    public var inFlight: Int {
        self.state.withLock { $0.inFlight }
    }

    /// True after the handshake and until a go-away, a drain or the end of the connection.
    public var isReady: Bool {
        self.state.withLock { $0.phase == .ready }
    }

    /// True once the connection has ended.
    public var isClosed: Bool {
        self.state.withLock { $0.phase == .closed }
    }

    /// The processor's Hello, once the handshake is done.
    public var serverHello: Prism_V1_Hello? {
        self.state.withLock { $0.serverHello }
    }

    /// Why the connection ended, once it has.
    public var closeError: PrismRPCError? {
        self.state.withLock { $0.closeError }
    }

    /// Waits until the connection has ended.
    public func waitUntilClosed() async {
        // The waiter is resumed without an error; the throwing type is shared with the others.
        try? await withCheckedThrowingContinuation { (continuation: Waiter) in
            let parked = self.state.withLock { $0.waitUntilClosed(continuation) }
            if !parked { continuation.resume() }
        }
    }

    /// Waits until the connection is ready for calls (or fails).
    public func waitUntilReady() async throws {
        let id = UInt64.random(in: 1...UInt64.max)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: Waiter) in
                let check = self.state.withLock { state -> ConnectionStateMachine<CallSink, Waiter>.ReadyCheck? in
                    // Checked under the lock: a cancellation handler that ran before the waiter
                    // was parked found nothing to resume, so the waiter must not be parked.
                    if Task.isCancelled { return nil }
                    return state.waitForReady(id, continuation)
                }
                switch check {
                case nil: continuation.resume(throwing: CancellationError())
                case .ready: continuation.resume()
                case .failed(let error): continuation.resume(throwing: error)
                case .waiting: break
                }
            }
        } onCancel: {
            self.state.withLock { $0.cancelReadyWait(id) }?.resume(throwing: CancellationError())
        }
    }

    // MARK: Calls

    /// Makes the request's variants on the processor.
    ///
    /// - Parameters:
    ///   - request: the source, the specs and the deadline.
    ///   - onVariant: called with each variant as soon as it arrives (in finishing order), so a
    ///     caller can store it while the others are still being made. An error it throws
    ///     cancels the call.
    /// - Returns: every variant in spec order.
    /// - Throws: `PrismRPCError` (CancellationError if the calling task was cancelled). A
    ///   request larger than the processor's announced `max_frame_size` fails before anything
    ///   is sent with RESOURCE_EXHAUSTED / FRAME_TOO_LARGE, not retryable.
    public func process(
        _ request: ProcessRequest,
        onVariant: (VariantResult) async throws -> Void = { _ in }
    ) async throws -> ProcessResult {
        try await self.waitUntilReady()
        var message = Prism_V1_Request()
        message.variants = request.variants
        message.requestID = request.requestID
        message.placeholder = request.placeholder || request.blurHash != nil
        if let blurHash = request.blurHash { message.blurhash = blurHash }
        message.threads = UInt32(clamping: max(1, request.threads))
        message.sourceSha256 = request.sourceSHA256
        message.digests = request.digests
        if let deadline = request.deadline {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .milliseconds(1) else {
                throw PrismRPCError(code: .deadlineExceeded, message: "The deadline passed before the call was sent.")
            }
            message.timeoutMs = UInt32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)
        }
        let requestSize = try FrameSize.request(message, sourceBytes: request.sourceBuffer.readableBytes)

        let (events, continuation) = AsyncThrowingStream<CallEvent, any Error>.makeStream()
        let callID: UInt64
        switch self.state.withLock({ $0.startCall(continuation, requestSize: requestSize) }) {
        case .send(let id):
            callID = id
        case .refuse(let error):
            throw error
        }

        var timer: Scheduled<Void>? = nil
        if let deadline = request.deadline {
            let giveUp = ContinuousClock.now.duration(to: deadline) + self.configuration.deadlineGrace
            timer = self.channel.channel.eventLoop.scheduleTask(in: TimeAmount(giveUp)) { [self] in
                self.abandon(callID, with: PrismRPCError(code: .deadlineExceeded, message: "The processor did not answer before the deadline."))
            }
        }
        defer { timer?.cancel() }
        self.channel.channel.writeAndFlush(OutboundFrame.request(RequestFrame(callID: callID, request: message, source: request.sourceBuffer)), promise: nil)

        var finished = false
        defer {
            // Any way out other than the server's own verdict tells the server to stop.
            if !finished { self.abandon(callID, with: CancellationError()) }
        }
        return try await withTaskCancellationHandler {
            var variants: [VariantResult] = []
            for try await event in events {
                switch event {
                case .variant(let response):
                    let index = Int(response.variantIndex)
                    guard index < request.variants.count else { continue }
                    var result = VariantResult(
                        byteCount: response.data.count,
                        index: index,
                        name: request.variants[index].name,
                        data: response.data,
                        width: Int(response.width),
                        height: Int(response.height),
                        format: response.format,
                        processDuration: VariantResult.processDuration(microseconds: response.processUs),
                        // A digest of the wrong length is not one: the caller hashes the bytes.
                        md5: response.md5.count == 16 ? response.md5 : nil,
                        sha256: response.sha256.count == 32 ? response.sha256 : nil
                    )
                    try await onVariant(result)
                    if !request.keepsVariantData { result.data = Data() }
                    variants.append(result)
                case .complete(let complete):
                    finished = true
                    return ProcessResult(variants: variants.sorted { $0.index < $1.index }, complete: complete)
                }
            }
            try Task.checkCancellation()
            throw PrismRPCError.connectionLost("the call ended without an answer")
        } onCancel: {
            self.abandon(callID, with: CancellationError())
        }
    }

    /// Stops waiting for a call and tells the server to stop working on it.
    private func abandon(_ callID: UInt64, with error: any Error) {
        let end = self.state.withLock { $0.callEnded(callID) }
        guard let call = end.call else { return }
        call.finish(throwing: error)
        self.send(.cancel(callID: callID))
        if let teardown = end.teardown { self.perform(teardown) }
    }

    // MARK: Frames

    func send(_ frame: Prism_V1_Frame) {
        // Writes go straight to the channel, so frames leave in the order they were sent
        // (a Cancel never overtakes its Request).
        self.channel.channel.writeAndFlush(OutboundFrame.frame(frame), promise: nil)
    }

    /// Handles one inbound frame; returns true when the connection has closed and reading
    /// should stop.
    private func handle(_ frame: Prism_V1_Frame) -> Bool {
        switch frame.kind {
        case .hello(let hello):
            switch self.state.withLock({ $0.helloReceived(hello) }) {
            case .ready(let waiters):
                waiters.forEach { $0.resume() }
            case .close(let teardown):
                // Debug only: the error reaches every waiter, and a pool logs it once.
                self.logger.debug("processor handshake failed", metadata: ["error": "\(teardown.error)"])
                self.perform(teardown)
                return true
            case .ignore:
                return true
            }
        case .response(let response):
            self.state.withLock { $0.call(frame.callID) }?.yield(.variant(response))
        case .complete(let complete):
            let end = self.state.withLock { $0.callEnded(frame.callID) }
            end.call?.yield(.complete(complete))
            end.call?.finish()
            if let teardown = end.teardown { self.perform(teardown) }
        case .error(let error):
            if frame.callID == 0 {
                if let teardown = self.state.withLock({ $0.connectionErrorReceived(error) }) {
                    self.logger.notice("processor closed the connection with an error", metadata: ["error": "\(PrismRPCError(error))"])
                    self.perform(teardown)
                }
                return true
            }
            let end = self.state.withLock { $0.callEnded(frame.callID) }
            end.call?.finish(throwing: PrismRPCError(error))
            if let teardown = end.teardown { self.perform(teardown) }
        case .ping(let ping):
            self.send(.pong(ping.payload))
        case .pong(let pong):
            self.state.withLock { $0.pongReceived(pong.payload) }?.resume()
        case .goAway(let goAway):
            // Calls the server did not accept fail now, retryably; the rest finish normally.
            let action = self.state.withLock { $0.goAwayReceived(lastCallID: goAway.lastCallID) }
            self.logger.debug("processor is draining", metadata: ["reason": "\(goAway.reason)"])
            let error = ConnectionStateMachine<CallSink, Waiter>.drainingError
            action.refused.forEach { $0.finish(throwing: error) }
            action.waiters.forEach { $0.resume(throwing: error) }
            if let teardown = action.teardown { self.perform(teardown) }
        case .request, .cancel, nil:
            break  // not for clients, or a kind this version does not know: ignored
        }
        return false
    }

    /// Ends every call and waiter a closing connection still had, then closes the channel
    /// (which ends `run()`).
    func perform(_ teardown: ConnectionStateMachine<CallSink, Waiter>.Teardown) {
        if let goodbye = teardown.goodbye {
            self.send(.error(callID: 0, goodbye))
        }
        teardown.calls.forEach { $0.finish(throwing: teardown.error) }
        teardown.waiters.forEach { $0.resume(throwing: teardown.error) }
        teardown.closeWaiters.forEach { $0.resume() }
        self.channel.channel.close(promise: nil)
    }

    enum CallEvent: Sendable {
        case variant(Prism_V1_Response)
        case complete(Prism_V1_Complete)
    }
}
