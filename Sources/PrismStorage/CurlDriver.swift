internal import CCurl
public import Foundation
public import ServiceLifecycle
import Synchronization

/// Runs every HTTP transfer of the process on one libcurl multi handle, driven by one dedicated
/// thread: no thread is ever blocked per transfer, and nothing blocks an event loop or the
/// cooperative pool.
///
/// It is a `Service`: `run()` owns the thread. On graceful shutdown it finishes the transfers
/// under way and then stops; transfers submitted after that fail at once.
public final class CurlDriver: Service, Sendable {
    /// One HTTP exchange.
    public struct Request: Sendable {
        public var method: String
        public var url: String
        public var headers: [String]
        public var body: Data?
        /// AWS SigV4 signing: `provider` ("aws:amz:REGION:s3") and "ACCESS:SECRET".
        public var sigV4: (provider: String, credentials: String)?
        public var timeout: Duration
        public var maxResponseBytes: Int

        public init(method: String, url: String, headers: [String] = [], body: Data? = nil,
                    sigV4: (provider: String, credentials: String)? = nil, timeout: Duration = .seconds(30),
                    maxResponseBytes: Int = 64 << 20) {
            self.method = method
            self.url = url
            self.headers = headers
            self.body = body
            self.sigV4 = sigV4
            self.timeout = timeout
            self.maxResponseBytes = maxResponseBytes
        }
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: Data
        public var etag: String?
    }

    public struct TransferError: Error, CustomStringConvertible {
        public var description: String
    }

    private let state = Mutex(State())
    nonisolated(unsafe) private let multi: UnsafeMutableRawPointer

    private struct State {
        var pending: [Transfer] = []
        /// Transfers whose task was cancelled: the curl thread removes them from the multi handle.
        var cancelled: [Transfer] = []
        var accepting = true
        var running = false
    }

    public init() {
        curl_global_init(Int(CURL_GLOBAL_DEFAULT))
        self.multi = curl_multi_init()
    }

    deinit {
        curl_multi_cleanup(self.multi)
    }

    /// Performs one request.
    ///
    /// Cancelling the calling task stops the transfer: its handle is taken off the multi handle
    /// (the connection is dropped) and this throws `CancellationError`.
    public func perform(_ request: Request) async throws -> Response {
        let transfer = try Transfer(request)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                transfer.continuation = continuation
                enum Admission { case accepted, shuttingDown, cancelled }
                let admission = self.state.withLock { state -> Admission in
                    // Checked under the lock the cancellation handler takes: a cancel either
                    // came before (seen here) or finds the transfer pending or active.
                    if Task.isCancelled { return .cancelled }
                    guard state.accepting else { return .shuttingDown }
                    state.pending.append(transfer)
                    return .accepted
                }
                switch admission {
                case .accepted: curl_multi_wakeup(self.multi)
                case .cancelled: transfer.finish(.failure(CancellationError()))
                case .shuttingDown: transfer.finish(.failure(TransferError(description: "the HTTP client is shutting down")))
                }
            }
        } onCancel: {
            self.state.withLock { $0.cancelled.append(transfer) }
            curl_multi_wakeup(self.multi)
        }
    }

    public func run() async throws {
        self.state.withLock { $0.running = true }
        let finished = AsyncStream<Void>.makeStream()
        let thread = Thread { [self] in
            self.loop()
            finished.continuation.yield()
            finished.continuation.finish()
        }
        thread.name = "prism-curl"
        thread.start()
        // Stop taking transfers on graceful shutdown (or cancellation); the thread then drains.
        await withGracefulShutdownHandler {
            await withTaskCancellationHandler {
                for await _ in finished.stream { break }
            } onCancel: {
                self.stopAccepting()
            }
        } onGracefulShutdown: {
            self.stopAccepting()
        }
    }

    private func stopAccepting() {
        self.state.withLock { $0.accepting = false }
        curl_multi_wakeup(self.multi)
    }

    /// The curl thread: add new transfers, let curl work, hand back finished ones, sleep in
    /// curl_multi_poll until a socket is ready, a timer fires or `perform` wakes it.
    private func loop() {
        var active: [UnsafeMutableRawPointer: Transfer] = [:]
        while true {
            let (incoming, cancelled, accepting) = self.state.withLock { state -> ([Transfer], [Transfer], Bool) in
                defer {
                    state.pending.removeAll()
                    state.cancelled.removeAll()
                }
                return (state.pending, state.cancelled, state.accepting)
            }
            let stopped = Set(cancelled.map { ObjectIdentifier($0) })
            for transfer in incoming where !stopped.contains(ObjectIdentifier(transfer)) {
                active[transfer.easy] = transfer
                curl_multi_add_handle(self.multi, transfer.easy)
            }
            for transfer in cancelled {
                if active.removeValue(forKey: transfer.easy) != nil {
                    curl_multi_remove_handle(self.multi, transfer.easy)
                }
                transfer.finish(.failure(CancellationError()))
            }
            if !accepting && active.isEmpty { return }

            var running: Int32 = 0
            curl_multi_perform(self.multi, &running)
            var result = CURLE_OK
            while let easy = prism_curl_done(self.multi, &result) {
                curl_multi_remove_handle(self.multi, easy)
                guard let transfer = active.removeValue(forKey: easy) else { continue }
                transfer.complete(result)
            }
            var ready: Int32 = 0
            curl_multi_poll(self.multi, nil, 0, 1000, &ready)
        }
    }
}

/// libcurl's read callback: the transfer (alive while its handle is in use) fills the buffer.
private let transferReadBody: curl_read_callback = { buffer, size, count, user in
    guard let buffer, let user else { return 0 }
    let transfer = Unmanaged<Transfer>.fromOpaque(user).takeUnretainedValue()
    return transfer.readBody(into: UnsafeMutableRawBufferPointer(start: buffer, count: size * count))
}

/// libcurl's seek callback: only a rewind to the start is needed (a retried request).
private let transferSeekBody: curl_seek_callback = { user, offset, origin in
    guard let user, origin == SEEK_SET, offset >= 0 else { return Int32(CURL_SEEKFUNC_CANTSEEK) }
    let transfer = Unmanaged<Transfer>.fromOpaque(user).takeUnretainedValue()
    guard Int(offset) <= transfer.request.body?.count ?? 0 else { return Int32(CURL_SEEKFUNC_FAIL) }
    transfer.bodyOffset = Int(offset)
    return Int32(CURL_SEEKFUNC_OK)
}

/// One easy handle and everything it points at, kept alive until libcurl is done with it.
private final class Transfer: @unchecked Sendable {
    let easy: UnsafeMutableRawPointer
    let request: CurlDriver.Request
    private var headers: UnsafeMutablePointer<curl_slist>?
    private let response: UnsafeMutablePointer<PrismCurlResponse>
    /// Resumed exactly once: by the curl thread, or by `perform` when refused before starting;
    /// a cancellation may race with either, so taking it is locked.
    private let continuationBox = Mutex<CheckedContinuation<CurlDriver.Response, any Error>?>(nil)

    var continuation: CheckedContinuation<CurlDriver.Response, any Error>? {
        get { self.continuationBox.withLock { $0 } }
        set { self.continuationBox.withLock { $0 = newValue } }
    }

    init(_ request: CurlDriver.Request) throws {
        guard let easy = curl_easy_init() else { throw CurlDriver.TransferError(description: "curl_easy_init failed") }
        self.easy = easy
        self.request = request
        self.response = .allocate(capacity: 1)
        self.response.initialize(to: PrismCurlResponse())
        self.response.pointee.limit = request.maxResponseBytes

        prism_curl_set_str(easy, CURLOPT_URL, request.url)
        prism_curl_set_long(easy, CURLOPT_NOSIGNAL, 1)
        prism_curl_set_long(easy, CURLOPT_TIMEOUT_MS, Int(request.timeout.components.seconds * 1000 + request.timeout.components.attoseconds / 1_000_000_000_000_000))
        prism_curl_set_long(easy, CURLOPT_CONNECTTIMEOUT_MS, 5000)
        prism_curl_set_long(easy, CURLOPT_EXPECT_100_TIMEOUT_MS, 300)
        switch request.method {
        case "GET": break
        case "HEAD": prism_curl_set_long(easy, CURLOPT_NOBODY, 1)
        default: prism_curl_set_str(easy, CURLOPT_CUSTOMREQUEST, request.method)
        }
        if let body = request.body {
            if request.method == "PUT" {
                // Read from the body by callback: libcurl never holds a copy of an upload of
                // tens of megabytes.
                prism_curl_set_long(easy, CURLOPT_UPLOAD, 1)
                prism_curl_set_off(easy, CURLOPT_INFILESIZE_LARGE, curl_off_t(body.count))
            } else {
                // Small bodies of other methods: libcurl copies them.
                prism_curl_set_off(easy, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
                body.withUnsafeBytes { raw in
                    _ = prism_curl_set_ptr(easy, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: raw.baseAddress ?? UnsafeRawPointer(("" as StaticString).utf8Start)))
                }
            }
        }
        for header in request.headers {
            self.headers = curl_slist_append(self.headers, header)
        }
        if let headers = self.headers {
            prism_curl_set_ptr(easy, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(headers))
        }
        if let sig = request.sigV4 {
            prism_curl_set_str(easy, CURLOPT_AWS_SIGV4, sig.provider)
            prism_curl_set_str(easy, CURLOPT_USERPWD, sig.credentials)
        }
        prism_curl_capture(easy, self.response)
        if request.method == "PUT", request.body != nil {
            prism_curl_read_from(easy, transferReadBody, transferSeekBody, Unmanaged.passUnretained(self).toOpaque())
        }
    }

    /// How far libcurl has read the body. Touched only on the curl thread.
    fileprivate var bodyOffset = 0

    /// Copies the next part of the body into libcurl's buffer.
    fileprivate func readBody(into target: UnsafeMutableRawBufferPointer) -> Int {
        guard let body = self.request.body else { return 0 }
        let count = min(target.count, body.count - self.bodyOffset)
        guard count > 0 else { return 0 }
        body.withUnsafeBytes { raw in
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[self.bodyOffset..<(self.bodyOffset + count)]))
        }
        self.bodyOffset += count
        return count
    }

    deinit {
        curl_easy_cleanup(self.easy)
        curl_slist_free_all(self.headers)
        prism_curl_response_free(self.response)
        self.response.deallocate()
    }

    func complete(_ result: CURLcode) {
        if result == CURLE_OK {
            let r = self.response.pointee
            let data = r.length > 0 ? Data(bytes: r.data, count: r.length) : Data()
            let etag = withUnsafeBytes(of: r.etag) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            self.finish(.success(CurlDriver.Response(status: prism_curl_response_code(self.easy), body: data, etag: etag.isEmpty ? nil : etag)))
        } else {
            let reason = self.response.pointee.overflow != 0
                ? "response larger than \(self.request.maxResponseBytes) bytes"
                : String(cString: curl_easy_strerror(result))
            self.finish(.failure(CurlDriver.TransferError(description: "\(self.request.method) \(self.request.url): \(reason)")))
        }
    }

    func finish(_ result: Result<CurlDriver.Response, any Error>) {
        let continuation = self.continuationBox.withLock { box in
            defer { box = nil }
            return box
        }
        continuation?.resume(with: result)
    }
}
