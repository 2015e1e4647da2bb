public import Foundation
public import Logging
public import NIOCore
public import NIOPosix
public import PrismProto
public import PrismWire
import Synchronization

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
public final class ProcessorConnection: Sendable {
    public let remoteDescription: String
    let channel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>
    let configuration: ProcessorClientConfiguration
    let logger: Logger
    private let state = Mutex(State())

    private init(channel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>, remote: String, configuration: ProcessorClientConfiguration, logger: Logger) {
        self.channel = channel
        self.remoteDescription = remote
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: Lifecycle

    /// Opens a TCP connection. Call `run()` next.
    public static func connect(
        host: String,
        port: Int,
        configuration: ProcessorClientConfiguration = ProcessorClientConfiguration(),
        eventLoopGroup: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "prism.client")
    ) async throws -> ProcessorConnection {
        let maxFrameSize = configuration.maxFrameSize
        let channel: NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>
        do {
            channel = try await ClientBootstrap(group: eventLoopGroup)
                .connectTimeout(.nanoseconds(Int64(configuration.connectTimeout.components.seconds * 1_000_000_000 + configuration.connectTimeout.components.attoseconds / 1_000_000_000)))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: host, port: port) { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder(maxFrameSize: maxFrameSize)))
                        try channel.pipeline.syncOperations.addHandler(FrameEncoder())
                        return try NIOAsyncChannel<Prism_V1_Frame, Prism_V1_Frame>(wrappingChannelSynchronously: channel)
                    }
                }
        } catch {
            throw PrismRPCError(code: .unavailable, message: "Could not connect to the processor at \(host):\(port): \(error).", isRetryable: true)
        }
        return ProcessorConnection(channel: channel, remote: "\(host):\(port)", configuration: configuration, logger: logger)
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
    /// When it returns, every call still waiting has failed with a retryable UNAVAILABLE.
    public func run() async {
        let timeout = self.channel.channel.eventLoop.scheduleTask(in: .init(self.configuration.handshakeTimeout)) { [self] in
            if self.state.withLock({ $0.phase == .connecting }) {
                self.shutDown(with: PrismRPCError(code: .unavailable, message: "The processor at \(self.remoteDescription) did not answer the handshake in time.", isRetryable: true))
            }
        }
        var hello = Prism_V1_Hello()
        hello.protocolVersion = PrismProtocol.version
        hello.maxFrameSize = UInt32(self.configuration.maxFrameSize)
        hello.authToken = self.configuration.authToken ?? ""
        hello.agent = self.configuration.agent
        self.send(.hello(hello))

        var failure = PrismRPCError.connectionLost("the processor closed the connection")
        do {
            try await self.channel.executeThenClose { inbound, _ in
                for try await frame in inbound {
                    if let error = self.handle(frame) {
                        failure = error
                        return
                    }
                }
            }
        } catch {
            failure = .connectionLost(String(describing: error))
        }
        timeout.cancel()
        self.shutDown(with: failure)
    }

    /// Closes the connection; calls in flight fail with a retryable UNAVAILABLE.
    public func close() {
        self.channel.channel.close(promise: nil)
    }

    // MARK: State seen by pools

    /// Calls sent and not yet finished.
    public var inFlight: Int {
        self.state.withLock { $0.calls.count }
    }

    /// True after the handshake and until a go-away or the end of the connection.
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

    /// Waits until the connection has ended.
    public func waitUntilClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let closed = self.state.withLock { state -> Bool in
                if state.phase == .closed { return true }
                state.closeWaiters.append(continuation)
                return false
            }
            if closed { continuation.resume() }
        }
    }

    /// Waits until the connection is ready for calls (or fails).
    public func waitUntilReady() async throws {
        let id = UInt64.random(in: 1...UInt64.max)
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let outcome: Result<Void, PrismRPCError>? = self.state.withLock { state in
                    switch state.phase {
                    case .ready: return .success(())
                    case .draining: return .failure(Self.drainingError)
                    case .closed: return .failure(state.closeError ?? .connectionLost("closed"))
                    case .connecting:
                        state.readyWaiters[id] = continuation
                        return nil
                    }
                }
                if let outcome { continuation.resume(with: outcome) }
            }
        } onCancel: {
            let waiter = self.state.withLock { $0.readyWaiters.removeValue(forKey: id) }
            waiter?.resume(throwing: CancellationError())
        }
    }

    /// Sends a Ping and waits for its Pong: a liveness check that does not touch any call.
    public func ping() async throws -> Duration {
        try await self.waitUntilReady()
        let payload = UInt64.random(in: 1...UInt64.max)
        let start = ContinuousClock.now
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let closed = self.state.withLock { state -> PrismRPCError? in
                if state.phase == .closed { return state.closeError ?? .connectionLost("closed") }
                state.pingWaiters[payload] = continuation
                return nil
            }
            if let closed { continuation.resume(throwing: closed) } else { self.send(.ping(payload)) }
        }
        return ContinuousClock.now - start
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
    /// - Throws: `PrismRPCError` (CancellationError if the calling task was cancelled).
    public func process(
        _ request: ProcessRequest,
        onVariant: (VariantResult) async throws -> Void = { _ in }
    ) async throws -> ProcessResult {
        try await self.waitUntilReady()
        var message = Prism_V1_Request()
        message.source = request.source
        message.variants = request.variants
        message.requestID = request.requestID
        if let deadline = request.deadline {
            let remaining = ContinuousClock.now.duration(to: deadline)
            guard remaining > .milliseconds(1) else {
                throw PrismRPCError(code: .deadlineExceeded, message: "The deadline passed before the call was sent.")
            }
            message.timeoutMs = UInt32(clamping: remaining.components.seconds * 1000 + remaining.components.attoseconds / 1_000_000_000_000_000)
        }

        let (events, continuation) = AsyncThrowingStream<CallEvent, any Error>.makeStream()
        let registered: Result<UInt64, PrismRPCError> = self.state.withLock { state in
            switch state.phase {
            case .ready:
                let id = state.nextCallID
                state.nextCallID += 1
                state.calls[id] = continuation
                return .success(id)
            case .draining, .connecting:
                return .failure(Self.drainingError)
            case .closed:
                return .failure(state.closeError ?? .connectionLost("closed"))
            }
        }
        let callID = try registered.get()

        var timer: Scheduled<Void>? = nil
        if let deadline = request.deadline {
            let giveUp = ContinuousClock.now.duration(to: deadline) + self.configuration.deadlineGrace
            timer = self.channel.channel.eventLoop.scheduleTask(in: .init(giveUp)) { [self] in
                self.abandon(callID, with: PrismRPCError(code: .deadlineExceeded, message: "The processor did not answer before the deadline."))
            }
        }
        defer { timer?.cancel() }
        self.send(.request(callID: callID, message))

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
                    let result = VariantResult(
                        index: index,
                        name: request.variants[index].name,
                        data: response.data,
                        width: Int(response.width),
                        height: Int(response.height),
                        format: response.format,
                        processDuration: .microseconds(response.processUs)
                    )
                    variants.append(result)
                    try await onVariant(result)
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
        guard let continuation = self.state.withLock({ $0.calls.removeValue(forKey: callID) }) else { return }
        continuation.finish(throwing: error)
        self.send(.cancel(callID: callID))
    }

    // MARK: Frames

    func send(_ frame: Prism_V1_Frame) {
        // Writes go straight to the channel, so frames leave in the order they were sent
        // (a Cancel never overtakes its Request).
        self.channel.channel.writeAndFlush(frame, promise: nil)
    }

    /// Handles one inbound frame; returns an error when the connection must end.
    private func handle(_ frame: Prism_V1_Frame) -> PrismRPCError? {
        switch frame.kind {
        case .hello(let hello):
            let waiters: [CheckedContinuation<Void, any Error>]? = self.state.withLock { state in
                guard state.phase == .connecting else { return nil }
                state.phase = .ready
                state.serverHello = hello
                defer { state.readyWaiters.removeAll() }
                return Array(state.readyWaiters.values)
            }
            guard let waiters else { return nil }  // a second Hello: ignore
            guard hello.protocolVersion == PrismProtocol.version else {
                return PrismRPCError(code: .failedPrecondition, reason: .unsupportedVersion, message: "The processor speaks protocol version \(hello.protocolVersion); this client speaks \(PrismProtocol.version).")
            }
            waiters.forEach { $0.resume() }
        case .response(let response):
            _ = self.state.withLock { $0.calls[frame.callID] }?.yield(.variant(response))
        case .complete(let complete):
            if let continuation = self.state.withLock({ $0.calls.removeValue(forKey: frame.callID) }) {
                continuation.yield(.complete(complete))
                continuation.finish()
            }
        case .error(let error):
            if frame.callID == 0 {
                return PrismRPCError(error)
            }
            self.state.withLock { $0.calls.removeValue(forKey: frame.callID) }?.finish(throwing: PrismRPCError(error))
        case .ping(let ping):
            self.send(.pong(ping.payload))
        case .pong(let pong):
            self.state.withLock { $0.pingWaiters.removeValue(forKey: pong.payload) }?.resume()
        case .goAway(let goAway):
            // Calls the server did not accept fail now, retryably; the rest finish normally.
            let refused = self.state.withLock { state -> [AsyncThrowingStream<CallEvent, any Error>.Continuation] in
                if state.phase == .ready { state.phase = .draining }
                let ids = state.calls.keys.filter { $0 > goAway.lastCallID }
                return ids.compactMap { state.calls.removeValue(forKey: $0) }
            }
            self.logger.debug("processor is draining", metadata: ["processor": "\(self.remoteDescription)", "reason": "\(goAway.reason)"])
            refused.forEach { $0.finish(throwing: Self.drainingError) }
        case .request, .cancel, nil:
            break  // not for clients, or a kind this version does not know: ignored
        }
        return nil
    }

    /// Ends every call and waiter with `error`.
    private func shutDown(with error: PrismRPCError) {
        let (calls, readyWaiters, pingWaiters, closeWaiters) = self.state.withLock { state in
            state.phase = .closed
            if state.closeError == nil { state.closeError = error }
            defer {
                state.calls.removeAll()
                state.readyWaiters.removeAll()
                state.pingWaiters.removeAll()
                state.closeWaiters.removeAll()
            }
            return (Array(state.calls.values), Array(state.readyWaiters.values), Array(state.pingWaiters.values), state.closeWaiters)
        }
        let reported = self.state.withLock { $0.closeError } ?? error
        calls.forEach { $0.finish(throwing: reported) }
        readyWaiters.forEach { $0.resume(throwing: reported) }
        pingWaiters.forEach { $0.resume(throwing: reported) }
        closeWaiters.forEach { $0.resume() }
        self.channel.channel.close(promise: nil)
    }

    static let drainingError = PrismRPCError(code: .unavailable, reason: .shuttingDown, message: "The processor is shutting down and takes no new calls.", isRetryable: true)

    // MARK: State

    enum CallEvent: Sendable {
        case variant(Prism_V1_Response)
        case complete(Prism_V1_Complete)
    }

    struct State: ~Copyable {
        enum Phase { case connecting, ready, draining, closed }
        var phase = Phase.connecting
        var serverHello: Prism_V1_Hello?
        var closeError: PrismRPCError?
        var nextCallID: UInt64 = 1
        var calls: [UInt64: AsyncThrowingStream<CallEvent, any Error>.Continuation] = [:]
        var readyWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var pingWaiters: [UInt64: CheckedContinuation<Void, any Error>] = [:]
        var closeWaiters: [CheckedContinuation<Void, Never>] = []
    }
}
