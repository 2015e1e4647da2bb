import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1

/// HTTP/1.1 as Hummingbird serves it, guarded against clients that are gone, slow or too many.
///
/// - At the front of each connection's pipeline, `ClientGoneHandler` closes the connection as
///   soon as the client's side ends. Hummingbird keeps half-closed connections open (and NIO's
///   HTTP pipelining handler holds the end-of-input event back until the response is written),
///   so an upload would never learn that its client left. Like nginx and Go's net/http, Prism
///   treats the end of the client's stream as the client leaving: the connection closes, the
///   upload's task is cancelled, its processor calls get Cancel frames and what it stored is
///   removed.
/// - After the HTTP codec, `RequestTimeoutHandler` bounds the time a request may take to
///   arrive (header, body gaps, whole body) and answers parse errors as problem+json.
/// - Past `maxConnections` open connections, a new one is answered 503 and closed at once.
struct DisconnectAwareHTTP1: ServerChildChannel {
    let http1: HTTP1Channel
    let limits: HTTPServerLimits
    let limiter: ConnectionLimiter
    let metrics: GatewayMetrics

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<HTTP1Channel.Value> {
        guard self.limiter.acquire() else {
            // Set up as usual (a failed setup would leave the socket open with nobody to close
            // it), but with a handler in front that answers 503, reads nothing and closes.
            self.metrics.refused(reason: "too-many-connections", status: 503)
            do {
                try channel.pipeline.syncOperations.addHandler(RefuseConnectionHandler(), position: .first)
            } catch {
                channel.close(promise: nil)
                return channel.eventLoop.makeFailedFuture(error)
            }
            return self.http1.setup(channel: channel, logger: logger)
        }
        let limiter = self.limiter
        channel.closeFuture.whenComplete { _ in limiter.release() }
        let activity = ConnectionActivity()
        do {
            try channel.pipeline.syncOperations.addHandler(ClientGoneHandler(activity: activity), position: .first)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        let timeouts = RequestTimeoutHandler(limits: self.limits, activity: activity, metrics: self.metrics, logger: logger)
        // HTTP1Channel sets its pipeline up synchronously on the event loop; the guard goes in
        // right after the HTTP codec (before Hummingbird's own state handler) in the same tick,
        // before any byte is read.
        return self.http1.setup(channel: channel, logger: logger).flatMapThrowing { value in
            let state = try channel.pipeline.syncOperations.handler(type: HTTPConnectionStateHandler.self)
            try channel.pipeline.syncOperations.addHandler(timeouts, position: .before(state))
            let decoder = try channel.pipeline.syncOperations.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(LastRequestMarker(), position: .after(decoder))
            return value
        }
    }

    func handle(value: HTTP1Channel.Value, logger: Logger) async {
        // From here on a request on this connection will be served: a shutdown may wait for it
        // (RequestTimeoutHandler). A connection accepted as the server stopped gets no handler
        // task at all, so it must be closed at once instead.
        let channel = value.channel
        channel.eventLoop.execute {
            (try? channel.pipeline.syncOperations.handler(type: RequestTimeoutHandler.self))?.served()
        }
        await self.http1.handle(value: value, logger: logger)
    }

    static func builder(limits: HTTPServerLimits, metrics: GatewayMetrics) -> HTTPServerBuilder {
        let limiter = ConnectionLimiter(limit: limits.maxConnections)
        return HTTPServerBuilder { responder in
            DisconnectAwareHTTP1(http1: HTTP1Channel(responder: responder), limits: limits, limiter: limiter, metrics: metrics)
        }
    }
}

final class ClientGoneHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    private let activity: ConnectionActivity

    init(activity: ConnectionActivity) {
        self.activity = activity
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.activity.sawBytes()
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}

@available(*, unavailable)
extension ClientGoneHandler: Sendable {}

/// Answers 503 on a connection over the cap and closes it; nothing it sends is read.
final class RefuseConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    private var answered = false

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.refuse(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.refuse(context)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Discarded: this connection is refused.
    }

    private func refuse(_ context: ChannelHandlerContext) {
        guard !self.answered else { return }
        self.answered = true
        let body = GatewayError(.serviceUnavailable, "too-many-connections", "Too many connections",
            detail: "This server has as many open connections as it allows; retry shortly.", retryAfter: 1).jsonBody(instance: nil)
        var buffer = context.channel.allocator.buffer(capacity: 256 + body.readableBytes)
        buffer.writeString("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/problem+json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: \(body.readableBytes)\r\n\r\n")
        buffer.writeImmutableBuffer(body)
        let channel = context.channel
        context.writeAndFlush(self.wrapOutboundOut(buffer)).whenComplete { _ in
            channel.close(mode: .output, promise: nil)
        }
        // Whatever the client does, the socket is gone a moment later.
        context.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
    }
}

@available(*, unavailable)
extension RefuseConnectionHandler: Sendable {}

/// Marks a request that ends its connection (`Connection: close` in any form, or HTTP/1.0
/// without keep-alive) with exactly `Connection: close`: the one form Hummingbird checks before
/// it stops reading, and what `RequestTimeoutHandler` echoes in the answer (RFC 9112 9.6).
/// Without it an HTTP/1.0 client waited for a close that never came.
final class LastRequestMarker: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(var head) = self.unwrapInboundIn(data), !head.isKeepAlive else {
            context.fireChannelRead(data)
            return
        }
        head.headers.replaceOrAdd(name: "connection", value: "close")
        context.fireChannelRead(self.wrapInboundOut(.head(head)))
    }
}

@available(*, unavailable)
extension LastRequestMarker: Sendable {}
