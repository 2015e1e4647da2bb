import Hummingbird
import HummingbirdCore
import Logging
import NIOCore

/// HTTP/1.1 as Hummingbird serves it, plus one handler at the front of each connection's
/// pipeline that closes the connection as soon as the client's side ends.
///
/// Hummingbird keeps half-closed connections open (and NIO's HTTP pipelining handler holds the
/// end-of-input event back until the response is written), so an upload would never learn that
/// its client left. Like nginx and Go's net/http, Prism treats the end of the client's stream as
/// the client leaving: the connection closes, the upload's task is cancelled, its processor calls
/// get Cancel frames and what it stored is removed.
struct DisconnectAwareHTTP1: ServerChildChannel {
    let http1: HTTP1Channel

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<HTTP1Channel.Value> {
        do {
            try channel.pipeline.syncOperations.addHandler(ClientGoneHandler(), position: .first)
        } catch {
            return channel.eventLoop.makeFailedFuture(error)
        }
        return self.http1.setup(channel: channel, logger: logger)
    }

    func handle(value: HTTP1Channel.Value, logger: Logger) async {
        await self.http1.handle(value: value, logger: logger)
    }

    static var builder: HTTPServerBuilder {
        HTTPServerBuilder { responder in
            DisconnectAwareHTTP1(http1: HTTP1Channel(responder: responder))
        }
    }
}

final class ClientGoneHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

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
