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
    /// Bytes arrived since the last request started or the last answer ended: a request is
    /// being sent, even if its header is not complete yet.
    var bytesSinceIdle = false
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
/// - waiting for a request: if bytes arrived but no complete header within `headerTimeout`,
///   it answers 408 itself and closes; an idle keep-alive connection is closed silently after
///   `keepAliveTimeout`;
/// - reading a body: a gap longer than `bodyIdleTimeout`, or a body still arriving
///   `bodyTimeout` after its header, fails the body stream with `RequestReadTimeout`; the
///   route reading it answers 408 (so metrics and the access log see the real status) and the
///   connection closes;
/// - an answer that ends before its request body did closes the connection after a short
///   linger, as nginx does, instead of reading a body nobody wants.
final class RequestTimeoutHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart
    typealias OutboundIn = HTTPResponsePart
    typealias OutboundOut = HTTPResponsePart

    private enum Phase {
        /// Between requests. `since`: when the connection opened or the last answer ended.
        case idle(since: NIODeadline)
        /// Header received, body being read.
        case body(headAt: NIODeadline, lastPart: NIODeadline)
        /// Request read; the answer is being made.
        case answering
        /// Cut off (timeout answered, parse error answered, or closing): nothing more to time.
        case closing
    }

    private let limits: HTTPServerLimits
    private let activity: ConnectionActivity
    private let metrics: GatewayMetrics
    private let logger: Logger
    private var phase: Phase = .idle(since: .now())
    private var timer: Scheduled<Void>?
    /// An answer has started while the body was still arriving.
    private var answeredEarly = false

    init(limits: HTTPServerLimits, activity: ConnectionActivity, metrics: GatewayMetrics, logger: Logger) {
        self.limits = limits
        self.activity = activity
        self.metrics = metrics
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.phase = .idle(since: .now())
        self.arm(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        self.phase = .closing
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let now = NIODeadline.now()
        switch (self.unwrapInboundIn(data), self.phase) {
        case (_, .closing):
            break
        case (.head, _):
            self.answeredEarly = false
            self.phase = .body(headAt: now, lastPart: now)
        case (.body, .body(let headAt, _)):
            self.phase = .body(headAt: headAt, lastPart: now)
        case (.end, .body):
            self.phase = .answering
        case (.body, _), (.end, _):
            break
        }
        self.arm(context)
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A parse error before any request of this connection reached the application: nobody
        // else will answer, so answer here with a problem, not a bare 400.
        if let parseError = error as? HTTPParserError, case .idle = self.phase {
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
        let part = self.unwrapOutboundIn(data)
        switch (part, self.phase) {
        case (.head(var head), .body):
            // Answering before the body ended (413, 415, 408, ...): this connection will not be
            // reused, so say so.
            self.answeredEarly = true
            head.headerFields[.connection] = "close"
            context.write(self.wrapOutboundOut(.head(head)), promise: promise)
        case (.head(let head), _) where head.headerFields[.connection] == "close":
            self.answeredEarly = true
            context.write(data, promise: promise)
        case (.end, _):
            if self.answeredEarly {
                // Linger: keep reading (and discarding) for a moment so the client sees the
                // answer, then close whatever it is doing.
                self.phase = .closing
                self.timer?.cancel()
                context.writeAndFlush(data, promise: promise)
                let channel = context.channel
                self.timer = context.eventLoop.scheduleTask(in: .init(self.limits.lingerTimeout)) {
                    channel.close(promise: nil)
                }
                return
            }
            if case .closing = self.phase {} else {
                self.phase = .idle(since: .now())
                self.activity.bytesSinceIdle = false
                self.arm(context)
            }
            context.write(data, promise: promise)
        default:
            context.write(data, promise: promise)
        }
    }

    // MARK: Timers

    /// (Re)schedules the one timer for the current phase.
    private func arm(_ context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        let due: NIODeadline
        switch self.phase {
        case .idle(let since):
            due = since + .init(min(self.limits.headerTimeout, self.limits.keepAliveTimeout))
        case .body(let headAt, let lastPart):
            due = min(headAt + .init(self.limits.bodyTimeout), lastPart + .init(self.limits.bodyIdleTimeout))
        case .answering, .closing:
            return
        }
        let loop = context.eventLoop.assumeIsolated()
        self.timer = loop.scheduleTask(deadline: due) { [self] in
            self.timer = nil
            self.fire(context)
        }
    }

    private func fire(_ context: ChannelHandlerContext) {
        let now = NIODeadline.now()
        switch self.phase {
        case .idle(let since):
            if self.activity.bytesSinceIdle, now >= since + .init(self.limits.headerTimeout) {
                self.metrics.refused(reason: "header-timeout", status: 408)
                self.logger.info("request refused", metadata: ["status": "408", "reason": "header timeout"])
                self.answerAndClose(context, RequestReadTimeout(kind: .header).problem)
            } else if now >= since + .init(self.limits.keepAliveTimeout) {
                self.phase = .closing
                context.close(promise: nil)
            } else {
                // The header timer passed on a connection that sent nothing: wait for the
                // keep-alive timeout instead.
                self.timer = context.eventLoop.assumeIsolated().scheduleTask(deadline: since + .init(self.limits.keepAliveTimeout)) { [self] in
                    self.timer = nil
                    self.fire(context)
                }
            }
        case .body(let headAt, _):
            let kind: RequestReadTimeout.Kind = now >= headAt + .init(self.limits.bodyTimeout) ? .body : .bodyIdle
            self.phase = .closing
            // The route reading the body sees this error and answers 408 itself. If nobody
            // reads (the answer is already out), the linger timer or this close ends it.
            context.fireErrorCaught(RequestReadTimeout(kind: kind))
            let channel = context.channel
            self.timer = context.eventLoop.scheduleTask(in: .init(self.limits.lingerTimeout + .seconds(3))) {
                channel.close(promise: nil)
            }
        case .answering, .closing:
            break
        }
    }

    /// Writes a problem answer below the application and closes once it is out.
    private func answerAndClose(_ context: ChannelHandlerContext, _ problem: GatewayError) {
        self.phase = .closing
        self.timer?.cancel()
        self.timer = nil
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
            channel.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        }
    }
}

@available(*, unavailable)
extension RequestTimeoutHandler: Sendable {}

private func min(_ a: NIODeadline, _ b: NIODeadline) -> NIODeadline {
    a < b ? a : b
}
