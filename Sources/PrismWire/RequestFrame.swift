public import NIOCore
public import PrismProto
import Foundation
import SwiftProtobuf

/// A Request frame whose source image goes on the wire from a buffer of its own.
///
/// Serialising a Request copies its source into the frame: for an upload of tens of megabytes
/// sent to two processors that is two more copies of it in memory while the frames wait to be
/// written. Protobuf lets a message's fields come in any order, so the frame is written as a
/// small head (length prefix, call id, the Request's other fields, the source field's tag and
/// length) followed by the source buffer itself, shared by every call that sends it. A receiver
/// decodes exactly the frame `Prism_V1_Frame.request(callID:request)` would have produced.
public struct RequestFrame: Sendable {
    public var callID: UInt64
    /// The Request without its source (a source set here is replaced by `source`).
    public var request: Prism_V1_Request
    public var source: ByteBuffer

    public init(callID: UInt64, request: Prism_V1_Request, source: ByteBuffer) {
        self.callID = callID
        self.request = request
        self.source = source
    }

    /// Bytes of the frame payload (length prefix excluded), as a receiver checks it against its
    /// `max_frame_size`.
    public func payloadSize() throws -> Int {
        try self.head().payloadSize
    }

    /// The buffers to write, in order: the head, then the source (absent when empty). The
    /// source is a slice of `source`, not a copy.
    public func wireBuffers() throws -> [ByteBuffer] {
        let head = try self.head()
        return self.source.readableBytes == 0 ? [head.buffer] : [head.buffer, self.source]
    }

    private func head() throws -> (buffer: ByteBuffer, payloadSize: Int) {
        var rest = self.request
        rest.source = Data()
        let restBytes: [UInt8] = try rest.serializedBytes()
        let sourceSize = self.source.readableBytes
        // Field 1 of Request (source, length-delimited): tag 0x0A, the length, then the bytes.
        let sourceFieldHead = sourceSize == 0 ? 0 : 1 + Self.varintSize(UInt64(sourceSize))
        let requestSize = restBytes.count + sourceFieldHead + sourceSize
        // Frame field 1 (call_id, varint) when non-zero, then field 3 (request): tag 0x1A.
        let callIDSize = self.callID == 0 ? 0 : 1 + Self.varintSize(self.callID)
        let payloadSize = callIDSize + 1 + Self.varintSize(UInt64(requestSize)) + requestSize

        var buffer = ByteBufferAllocator().buffer(capacity: PrismProtocol.lengthPrefixSize + payloadSize - sourceSize)
        buffer.writeInteger(UInt32(truncatingIfNeeded: payloadSize))
        if self.callID != 0 {
            buffer.writeInteger(UInt8(0x08))
            Self.writeVarint(self.callID, to: &buffer)
        }
        buffer.writeInteger(UInt8(0x1A))
        Self.writeVarint(UInt64(requestSize), to: &buffer)
        buffer.writeBytes(restBytes)
        if sourceSize > 0 {
            buffer.writeInteger(UInt8(0x0A))
            Self.writeVarint(UInt64(sourceSize), to: &buffer)
        }
        return (buffer, payloadSize)
    }

    static func varintSize(_ value: UInt64) -> Int {
        var value = value
        var bytes = 1
        while value >= 0x80 {
            value >>= 7
            bytes += 1
        }
        return bytes
    }

    static func writeVarint(_ value: UInt64, to buffer: inout ByteBuffer) {
        var value = value
        while value >= 0x80 {
            buffer.writeInteger(UInt8(truncatingIfNeeded: value) | 0x80)
            value >>= 7
        }
        buffer.writeInteger(UInt8(value))
    }
}

/// What a client writes on a processor connection: a frame, or a Request whose source travels
/// in its own buffer (`RequestFrame`).
public enum OutboundFrame: Sendable {
    case frame(Prism_V1_Frame)
    case request(RequestFrame)
}

/// Writes `OutboundFrame`s with their length prefix; a Request's source buffer is written as is,
/// after the frame's head, never copied.
public final class OutboundFrameEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = OutboundFrame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        do {
            switch Self.unwrapOutboundIn(data) {
            case .frame(let frame):
                context.write(Self.wrapOutboundOut(try frame.encoded()), promise: promise)
            case .request(let request):
                let buffers = try request.wireBuffers()
                // Back to back on the event loop: nothing can be written between the pieces.
                for (index, buffer) in buffers.enumerated() {
                    context.write(Self.wrapOutboundOut(buffer), promise: index == buffers.count - 1 ? promise : nil)
                }
            }
        } catch {
            promise?.fail(error)
            context.fireErrorCaught(error)
        }
    }
}

@available(*, unavailable)
extension OutboundFrameEncoder: Sendable {}
