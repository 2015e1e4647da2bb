import NIOCore
import Synchronization

/// When bytes last arrived from the processor.
///
/// Read by the ping timer: a connection that is still receiving (a large Response streaming in,
/// with the Pong queued behind it) is alive even if its Pong is late.
final class InboundActivity: Sendable {
    private let uptimeNanoseconds: Atomic<UInt64>

    init(_ now: NIODeadline = .now()) {
        self.uptimeNanoseconds = Atomic(now.uptimeNanoseconds)
    }

    var last: NIODeadline {
        .uptimeNanoseconds(self.uptimeNanoseconds.load(ordering: .relaxed))
    }

    func record(_ now: NIODeadline = .now()) {
        self.uptimeNanoseconds.store(now.uptimeNanoseconds, ordering: .relaxed)
    }
}

/// Notes every read in an `InboundActivity`, in front of the frame decoder (so partial frames
/// count too), and passes the bytes on untouched.
final class InboundActivityHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let activity: InboundActivity

    init(_ activity: InboundActivity) {
        self.activity = activity
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.activity.record()
        context.fireChannelRead(data)
    }
}

@available(*, unavailable)
extension InboundActivityHandler: Sendable {}
