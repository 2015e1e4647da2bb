import Foundation
import HTTPTypes
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import Synchronization

/// How long a client may take to send a request, and how many connections may be open.
///
/// These bound what a slow, silent or greedy client costs: a connection that sends part of a
/// header, a body that trickles or never ends, a flood of idle sockets. Defaults follow nginx
/// and imgproxy, stretched for uploads (a 40 MB body over a slow uplink needs more than
/// imgproxy's 10 s).
public struct HTTPServerLimits: Sendable {
    /// From the first byte of a request (or the connection opening) to the end of its header.
    public var headerTimeout: Duration = .seconds(10)
    /// Longest silence between two pieces of a request body.
    public var bodyIdleTimeout: Duration = .seconds(10)
    /// From the end of the header to the end of the body: a body that never ends is cut here.
    public var bodyTimeout: Duration = .seconds(60)
    /// An idle keep-alive connection (no request started) is closed after this.
    public var keepAliveTimeout: Duration = .seconds(60)
    /// Connections open at once; more are answered 503 and closed.
    public var maxConnections: Int = 1024
    /// After an answer sent before the request body ended, how long the rest of the body is
    /// read and discarded before the connection closes (so the client sees the answer, not a
    /// reset).
    public var lingerTimeout: Duration = .seconds(2)

    public init() {}
}

/// Why a request was cut off while it was being read.
struct RequestReadTimeout: Error, CustomStringConvertible {
    enum Kind: String { case header, bodyIdle = "body-idle", body }
    let kind: Kind

    var description: String { "request read timeout (\(self.kind.rawValue))" }

    var problem: GatewayError {
        let detail: String
        switch self.kind {
        case .header:
            detail = "The request header was not received in time; send the whole request without pausing."
        case .bodyIdle:
            detail = "The request body stalled; the upload was stopped. Send the body without long pauses."
        case .body:
            detail = "The request body took longer than this server allows; send a smaller image or use a faster connection."
        }
        var error = GatewayError(.requestTimeout, "request-timeout", "Request timeout", detail: detail)
        error.closeConnection = true
        return error
    }
}

/// What the byte-level and the HTTP-level handlers of one connection share. Both run on the
/// connection's event loop, so no lock is needed.
final class ConnectionActivity {
    /// When the first byte arrived since the connection opened or the last answer ended: a
    /// request is being sent, even if its header is not complete yet. Nil while idle.
    var firstByteAt: NIODeadline?
    /// Called on that first byte (the timeout handler re-arms its header timer).
    var onFirstByte: (() -> Void)?

    func sawBytes() {
        guard self.firstByteAt == nil else { return }
        self.firstByteAt = .now()
        self.onFirstByte?()
    }
}

@available(*, unavailable)
extension ConnectionActivity: Sendable {}

/// Counts open connections against `HTTPServerLimits.maxConnections`.
final class ConnectionLimiter: Sendable {
    let limit: Int
    private let open = Mutex(0)

    init(limit: Int) {
        self.limit = limit
    }

    /// Takes a place; false when every place is taken.
    func acquire() -> Bool {
        self.open.withLock { count in
            guard count < self.limit else { return false }
            count += 1
            return true
        }
    }

    func release() {
        self.open.withLock { $0 -= 1 }
    }

    var current: Int { self.open.withLock { $0 } }
}

/// Times each request as it is read and answers the clients that are too slow; also turns HTTP
/// parse errors into problem+json answers.
///
/// It sits after the HTTP codec, so it sees request heads, body parts and ends, and the
/// answer's parts on their way out:
/// - waiting for a request: a header not complete `headerTimeout` after its first byte is
///   answered 408 here (no request reached the application) and the connection closed; a new
///   connection that sends nothing is closed silently after `headerTimeout`, an idle
///   keep-alive one after `keepAliveTimeout`;
/// - reading a body: a gap longer than `bodyIdleTimeout`, or a body still arriving
///   `bodyTimeout` after its header, fails the body stream with `RequestReadTimeout`; the
///   route reading it answers 408 (so metrics and the access log see the real status) and the
///   connection closes;
/// - an answer that ends before its request body did closes the connection after a short
///   linger, as nginx does, instead of reading a body nobody wants;
/// - at graceful shutdown (`ChannelShouldQuiesceEvent`), a connection Hummingbird already serves
///   that is sending its first request, or has sent nothing yet, is not closed under the client:
///   the event is held until that request's header arrives, and its answer (like every answer
///   from then on) says `Connection: close`. If no request comes, the header timeout ends the
///   connection as usual. Idle keep-alive connections close at once, as in Go's net/http.
final class RequestTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    /// Where reading the newest request stands.
    private enum Reading {
        /// No request started. `since`: the connection opened (`fresh`) or the last answer
        /// ended; a fresh connection gets the header timeout, an idle one the keep-alive.
        case waiting(since: NIODeadline, fresh: Bool)
        /// Header received, body being read.
        case body(headAt: NIODeadline, lastPart: NIODeadline)
        /// Read whole; its answer (and maybe earlier ones, pipelined) is being made.
        case read
    }

    private let limits: HTTPServerLimits
    private let activity: ConnectionActivity
    private let metrics: GatewayMetrics
    private let logger: Logger
    private var reading: Reading = .waiting(since: .now(), fresh: true)
    /// Requests whose header was read and whose answer has not ended (more than one when
    /// pipelined).
    private var outstanding = 0
    /// The connection is being closed: nothing more is timed, reads are passed on untouched.
    private var closing = false
    /// The answer being written ends the connection (answered early, or `Connection: close`).
    private var closeAfterAnswer = false
    private var readTimer: Scheduled<Void>?
    private var closeTimer: Scheduled<Void>?
    /// The server is shutting down: answers say `Connection: close`.
    private var quiescing = false
    /// A shutdown event held back until the request being sent has its header read.
    private var quiesceHeld = false
    /// Hummingbird runs a task for this connection: its requests are read and answered.
    private var isServed = false
    /// The newest request ends the connection (`LastRequestMarker` set `Connection: close`).
    private var lastRequest = false

    init(limits: HTTPServerLimits, activity: ConnectionActivity, metrics: GatewayMetrics, logger: Logger) {
        self.limits = limits
        self.activity = activity
        self.metrics = metrics
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.reading = .waiting(since: .now(), fresh: true)
        let loop = context.eventLoop
        self.activity.onFirstByte = { [weak self] in
            loop.assertInEventLoop()
            guard let self, case .waiting = self.reading else { return }
            self.arm(context)
        }
        self.arm(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimers()
        self.activity.onFirstByte = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimers()
        self.closing = true
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.closing else {
            // Lingering or cut off: the rest is discarded by whoever reads it; the close timer
            // ends the connection whatever the client keeps sending.
            context.fireChannelRead(data)
            return
        }
        let now = NIODeadline.now()
        switch (self.unwrapInboundIn(data), self.reading) {
        case (.head(let head), _):
            self.outstanding += 1
            if head.headerFields[.connection] == "close" { self.lastRequest = true }
            self.reading = .body(headAt: now, lastPart: now)
        case (.body, .body(let headAt, _)):
            self.reading = .body(headAt: headAt, lastPart: now)
        case (.end, _):
            self.reading = .read
        case (.body, _):
            break
        }
        self.arm(context)
        context.fireChannelRead(data)
        if self.quiesceHeld, self.outstanding > 0 {
            // The request is with the application now: Hummingbird answers it, then closes.
            self.quiesceHeld = false
            context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        }
    }

    /// Called on the event loop once Hummingbird's task for this connection has started.
    func served() {
        self.isServed = true
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is ChannelShouldQuiesceEvent else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        self.quiescing = true
        if self.isServed, !self.closing, self.outstanding == 0, case .waiting(_, let fresh) = self.reading,
           fresh || self.activity.firstByteAt != nil {
            // A client that connected (or began a request) just before the shutdown began.
            self.quiesceHeld = true
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A parse error while no request of this connection is with the application: nobody
        // else will answer, so answer here with a problem, not a bare 400.
        if let parseError = error as? HTTPParserError, self.outstanding == 0, !self.closing {
            let status: HTTPResponse.Status
            let detail: String
            switch parseError {
            case .headerOverflow:
                status = .requestHeaderFieldsTooLarge
                detail = "The request header is larger than this server accepts (80 KiB, 1000 fields)."
            case .invalidContentLength, .unexpectedContentLength:
                status = .badRequest
                detail = "The request's Content-Length is invalid or conflicts with Transfer-Encoding."
            default:
                status = .badRequest
                detail = "The request is not valid HTTP/1.1."
            }
            self.metrics.refused(reason: "parse-error", status: Int(status.code))
            self.logger.info("request refused", metadata: ["status": "\(status.code)", "reason": "parse error", "detail": "\(parseError)"])
            self.answerAndClose(context, GatewayError(status, status == .badRequest ? "bad-request" : "header-too-large",
                status == .badRequest ? "Malformed request" : "Request header too large", detail: detail))
            return
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.unwrapOutboundIn(data) {
        case .head(var head):
            // The answer to the request whose body is still arriving (413, 415, 408...): this
            // connection will not be reused, so say so. With pipelining, an answer to an
            // earlier request (outstanding > 1) is not early.
            var early = false
            if self.outstanding == 1, case .body = self.reading { early = true }
            if early || head.headerFields[.connection] == "close" {
                self.closeAfterAnswer = true
            }
            if early || self.quiescing || (self.lastRequest && self.outstanding == 1) {
                head.headerFields[.connection] = "close"
                context.write(self.wrapOutboundOut(.head(head)), promise: promise)
            } else {
                context.write(data, promise: promise)
            }
        case .end:
            self.outstanding = max(0, self.outstanding - 1)
            if self.closeAfterAnswer {
                // Linger: the rest of the body is read and discarded for a moment so the client
                // sees the answer rather than a reset, then the connection closes.
                self.closing = true
                self.cancelTimers()
                context.writeAndFlush(data, promise: promise)
                let channel = context.channel
                self.closeTimer = context.eventLoop.scheduleTask(in: .init(self.limits.lingerTimeout)) {
                    channel.close(promise: nil)
                }
                return
            }
            if self.outstanding == 0, case .read = self.reading, !self.closing {
                self.reading = .waiting(since: .now(), fresh: false)
                self.activity.firstByteAt = nil
                self.arm(context)
            }
            context.write(data, promise: promise)
        case .body:
            context.write(data, promise: promise)
        }
    }

    // MARK: Timers

    private func cancelTimers() {
        self.readTimer?.cancel()
        self.readTimer = nil
        self.closeTimer?.cancel()
        self.closeTimer = nil
    }

    /// (Re)schedules the read timer for where reading stands.
    private func arm(_ context: ChannelHandlerContext) {
        self.readTimer?.cancel()
        self.readTimer = nil
        guard !self.closing else { return }
        let due: NIODeadline
        switch self.reading {
        case .waiting(let since, let fresh):
            if let first = self.activity.firstByteAt {
                due = first + .init(self.limits.headerTimeout)
            } else {
                due = since + .init(fresh ? self.limits.headerTimeout : self.limits.keepAliveTimeout)
            }
        case .body(let headAt, let lastPart):
            due = min(headAt + .init(self.limits.bodyTimeout), lastPart + .init(self.limits.bodyIdleTimeout))
        case .read:
            return
        }
        self.readTimer = context.eventLoop.assumeIsolated().scheduleTask(deadline: due) { [self] in
            self.readTimer = nil
            self.fire(context)
        }
    }

    private func fire(_ context: ChannelHandlerContext) {
        guard !self.closing else { return }
        let now = NIODeadline.now()
        switch self.reading {
        case .waiting(let since, let fresh):
            if let first = self.activity.firstByteAt {
                if now >= first + .init(self.limits.headerTimeout) {
                    self.metrics.refused(reason: "header-timeout", status: 408)
                    self.logger.info("request refused", metadata: ["status": "408", "reason": "header timeout"])
                    self.answerAndClose(context, RequestReadTimeout(kind: .header).problem)
                    return
                }
            } else if now >= since + .init(fresh ? self.limits.headerTimeout : self.limits.keepAliveTimeout) {
                // Nothing was sent: an idle connection, closed without an answer (as nginx does).
                self.closing = true
                context.close(promise: nil)
                return
            }
            self.arm(context)
        case .body(let headAt, _):
            let kind: RequestReadTimeout.Kind = now >= headAt + .init(self.limits.bodyTimeout) ? .body : .bodyIdle
            self.closing = true
            // The route reading the body sees this error and answers 408 itself (so metrics
            // and the access log see it). If nobody reads any more, the close timer ends it.
            context.fireErrorCaught(RequestReadTimeout(kind: kind))
            let channel = context.channel
            self.closeTimer = context.eventLoop.scheduleTask(in: .init(self.limits.lingerTimeout + .seconds(3))) {
                channel.close(promise: nil)
            }
        case .read:
            break
        }
    }

    /// Writes a problem answer below the application and closes once it is out.
    private func answerAndClose(_ context: ChannelHandlerContext, _ problem: GatewayError) {
        self.closing = true
        self.cancelTimers()
        let body = problem.jsonBody(instance: nil)
        var headers: HTTPFields = [
            .contentType: "application/problem+json",
            .contentLength: "\(body.readableBytes)",
            .connection: "close",
        ]
        if let retry = problem.retryAfterSeconds { headers[.retryAfter] = "\(retry)" }
        context.write(self.wrapOutboundOut(.head(HTTPResponse(status: problem.status, headerFields: headers))), promise: nil)
        context.write(self.wrapOutboundOut(.body(body)), promise: nil)
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(.end(nil))).whenComplete { _ in
            // Half-close first: the client reads the answer before it sees the reset a full
            // close with unread input would cause.
            channel.close(mode: .output, promise: nil)
        }
        self.closeTimer = context.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension RequestTimeoutHandler: Sendable {}

private func min(_ a: NIODeadline, _ b: NIODeadline) -> NIODeadline {
    a < b ? a : b
}
