public import NIOCore
public import PrismProto
import SwiftProtobuf

/// Splits a byte stream into frames: a 4-byte big-endian length, then that many bytes of a
/// serialised `Prism_V1_Frame`.
///
/// The length is checked against `maxFrameSize` as soon as its 4 bytes arrive, before any of
/// the payload is buffered, so a hostile or confused peer cannot make the receiver allocate
/// what it announces.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Prism_V1_Frame

    public let maxFrameSize: Int

    public init(maxFrameSize: Int = PrismProtocol.defaultMaxFrameSize) {
        self.maxFrameSize = maxFrameSize
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Prism_V1_Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else {
            return nil
        }
        guard Int(length) <= self.maxFrameSize else {
            throw FrameError.tooLarge(length: Int(length), limit: self.maxFrameSize)
        }
        guard buffer.readableBytes >= PrismProtocol.lengthPrefixSize + Int(length) else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: PrismProtocol.lengthPrefixSize)
        let payload = buffer.readSlice(length: Int(length))!
        do {
            return try Prism_V1_Frame(serializedBytes: ProtobufBytes(payload))
        } catch {
            throw FrameError.malformed
        }
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> Prism_V1_Frame? {
        // A frame cut short by the peer closing is simply dropped: there is nobody to answer.
        try self.decode(buffer: &buffer)
    }
}

/// Writes frames with their length prefix, serialising straight into the outgoing buffer.
public final class FrameEncoder: ChannelOutboundHandler, RemovableChannelHandler {
    public typealias OutboundIn = Prism_V1_Frame
    public typealias OutboundOut = ByteBuffer

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = Self.unwrapOutboundIn(data)
        do {
            let bytes: ProtobufBytes = try frame.serializedBytes()
            context.write(Self.wrapOutboundOut(bytes.buffer), promise: promise)
        } catch {
            promise?.fail(error)
            context.fireErrorCaught(error)
        }
    }
}

@available(*, unavailable)
extension FrameEncoder: Sendable {}

extension Prism_V1_Frame {
    /// This frame with its length prefix, as it goes on the wire.
    public func encoded() throws -> ByteBuffer {
        let bytes: ProtobufBytes = try self.serializedBytes()
        return bytes.buffer
    }
}

/// Why the byte stream could not be read as frames.
public enum FrameError: Error, Equatable, CustomStringConvertible {
    /// The length prefix announced more than the receiver accepts.
    case tooLarge(length: Int, limit: Int)
    /// The payload is not a valid `Frame`.
    case malformed

    public var description: String {
        switch self {
        case .tooLarge(let length, let limit):
            return "frame of \(length) bytes exceeds the \(limit)-byte limit"
        case .malformed:
            return "frame payload is not a valid prism.v1.Frame"
        }
    }
}

/// Lets swift-protobuf parse from and serialise into a `ByteBuffer` without an extra copy.
///
/// When swift-protobuf creates one to serialise into, 4 bytes are reserved in front of the
/// message for the frame's length prefix, so the result is ready to write.
struct ProtobufBytes: SwiftProtobufContiguousBytes {
    private(set) var buffer: ByteBuffer
    private let prefix: Int

    init(_ buffer: ByteBuffer) {
        self.buffer = buffer
        self.prefix = 0
    }

    init(repeating: UInt8, count: Int) {
        var buffer = ByteBufferAllocator().buffer(capacity: count + PrismProtocol.lengthPrefixSize)
        buffer.writeInteger(UInt32(count))
        buffer.writeRepeatingByte(repeating, count: count)
        self.buffer = buffer
        self.prefix = PrismProtocol.lengthPrefixSize
    }

    init<S: Sequence>(_ sequence: S) where S.Element == UInt8 {
        var buffer = ByteBufferAllocator().buffer(capacity: 0)
        buffer.writeBytes(Array(sequence))
        self.buffer = buffer
        self.prefix = 0
    }

    var count: Int { self.buffer.readableBytes - self.prefix }

    func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try self.buffer.withUnsafeReadableBytes { try body(UnsafeRawBufferPointer(rebasing: $0[self.prefix...])) }
    }

    mutating func withUnsafeMutableBytes<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        let prefix = self.prefix
        return try self.buffer.withUnsafeMutableReadableBytes { try body(UnsafeMutableRawBufferPointer(rebasing: $0[prefix...])) }
    }
}
