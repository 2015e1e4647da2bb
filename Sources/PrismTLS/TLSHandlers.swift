package import NIOCore
import NIOSSL
import NIOTLS

/// Sits right behind a `NIOSSLClientHandler`: tells the connecting code when the handshake is
/// done or why it failed, and turns every TLS error it sees into a `TLSFailure` that says why,
/// so the frame layer and the pool log a reason instead of a BoringSSL error stack.
package final class TLSClientHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer

    private let handshake: EventLoopPromise<Void>
    private let serverName: String?
    private let timeout: TimeAmount
    private var timer: Scheduled<Void>? = nil
    private var done = false

    /// - Parameters:
    ///   - handshake: succeeded when the handshake completes, failed with a `TLSFailure` (or
    ///     the error that ended the connection) otherwise.
    ///   - serverName: the name the certificate is checked against, for messages.
    ///   - timeout: how long the handshake may take once TCP is connected; then the
    ///     connection is closed. A server that accepts TCP and never answers must not hang a
    ///     connect.
    package init(handshake: EventLoopPromise<Void>, serverName: String?, timeout: TimeAmount) {
        self.handshake = handshake
        self.serverName = serverName
        self.timeout = timeout
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.startTimer(context: context) }
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.startTimer(context: context)
        context.fireChannelActive()
    }

    /// The handshake's time starts once TCP is connected (connecting has its own timeout).
    private func startTimer(context: ChannelHandlerContext) {
        guard self.timer == nil, !self.done else { return }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let timeout = self.timeout
        self.timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = loopBound.value
            handler.finish(TLSFailure(
                reason: "the processor did not complete the TLS handshake within \(timeout.nanoseconds / 1_000_000) ms (it may not speak TLS, or is hung)",
                detail: "handshake timeout"
            ))
            context.close(promise: nil)
        }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event, !self.done {
            self.done = true
            self.timer?.cancel()
            self.handshake.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let failure: any Error = TLSFailure(error, role: .client, serverName: self.serverName) ?? error
        self.finish(failure)
        context.fireErrorCaught(failure)
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.finish(TLSFailure(reason: "the connection closed during the TLS handshake", detail: "channel inactive"))
        context.fireChannelInactive()
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.finish(TLSFailure(reason: "the connection closed during the TLS handshake", detail: "handler removed"))
    }

    private func finish(_ error: any Error) {
        self.timer?.cancel()
        guard !self.done else { return }
        self.done = true
        self.handshake.fail(error)
    }
}

@available(*, unavailable)
extension TLSClientHandshakeHandler: Sendable {}

/// Sits right behind a `NIOSSLServerHandler`: reports a failed handshake once, with its reason
/// and the peer (a client from another CA, one without a certificate, one that is not TLS), and
/// passes a `TLSFailure` on instead of the raw error.
package final class TLSServerHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer

    /// Called at most once per connection, on its event loop, when the handshake fails.
    package typealias FailureReport = @Sendable (_ failure: TLSFailure, _ peer: SocketAddress?) -> Void

    private let onFailure: FailureReport
    private var handshakeDone = false
    private var reported = false

    package init(onFailure: @escaping FailureReport) {
        self.onFailure = onFailure
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            self.handshakeDone = true
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let failure = TLSFailure(error, role: .server) else {
            return context.fireErrorCaught(error)
        }
        if !self.handshakeDone, !self.reported {
            self.reported = true
            self.onFailure(failure, context.remoteAddress)
        }
        context.fireErrorCaught(failure)
    }
}

@available(*, unavailable)
extension TLSServerHandshakeHandler: Sendable {}

/// First in a TLS port's pipeline: lets a connection through to TLS if its first byte starts a
/// TLS handshake record (0x16), and otherwise answers with `refusal` in plain bytes and closes.
///
/// A client of the plain frame protocol that reaches a TLS port (it forgot `--tls`) thus reads
/// one ordinary Error frame saying that TLS is required, instead of a TLS alert it would take
/// for an enormous frame length. It adds no exposure: the refusal is a fixed text, sent only to
/// peers that did not try TLS, and nothing they sent is acted on.
package final class PlaintextRefusalHandler: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer

    /// The first byte of every TLS handshake record, ClientHello included.
    static let handshakeRecordType: UInt8 = 0x16

    private let refusal: ByteBuffer
    private let onRefusal: @Sendable (_ peer: SocketAddress?) -> Void
    private var decided = false

    /// - Parameters:
    ///   - refusal: the bytes to send a peer that did not start with TLS (a whole frame).
    ///   - onRefusal: called once per refused peer, for logs and metrics.
    package init(refusal: ByteBuffer, onRefusal: @escaping @Sendable (_ peer: SocketAddress?) -> Void) {
        self.refusal = refusal
        self.onRefusal = onRefusal
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.decided else { return }  // refused: the rest is ignored until the close
        let buffer = Self.unwrapInboundIn(data)
        guard let first = buffer.getInteger(at: buffer.readerIndex, as: UInt8.self) else { return }
        self.decided = true
        if first == Self.handshakeRecordType {
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        self.onRefusal(context.remoteAddress)
        // Written from here, it bypasses the TLS handler behind this one.
        context.writeAndFlush(NIOAny(self.refusal)).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension PlaintextRefusalHandler: Sendable {}

/// First in a plain (non-TLS) client pipeline: if the server's first bytes are a TLS record, the
/// processor speaks TLS and this client does not; say so instead of letting the frame decoder
/// read the record header as a frame length of about 350 MB.
package final class TLSAnswerDetector: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer

    package init() {}

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Only the first read is looked at; a Hello frame or a TLS record is never split before
        // its second byte in practice, and guessing wrong only loses the clearer message.
        let buffer = Self.unwrapInboundIn(data)
        // A TLS record: alert (0x15) or handshake (0x16), then major version 3. A frame length
        // starting 0x15 0x03 or 0x16 0x03 would be over 350 MB, beyond any accepted frame.
        if let bytes = buffer.getBytes(at: buffer.readerIndex, length: 2),
            bytes[0] == 0x15 || bytes[0] == 0x16, bytes[1] == 0x03
        {
            context.fireErrorCaught(TLSFailure(
                reason: "the processor answered with TLS, but this client connects in plain TCP; turn TLS on (--processor-tls or --processor-tls-ca)",
                detail: "TLS record header \(bytes[0]) \(bytes[1]) before the server's Hello"
            ))
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }
}

@available(*, unavailable)
extension TLSAnswerDetector: Sendable {}
