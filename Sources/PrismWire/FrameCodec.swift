public import NIOCore
public import PrismProto
import SwiftProtobuf

/// Splits a byte stream into frames: a 4-byte big-endian length, then that many bytes of a
/// serialised `Prism_V1_Frame`.
///
/// The length is checked against the limit as soon as its 4 bytes arrive, before any of the
/// payload is buffered, so a hostile or confused peer cannot make the receiver allocate what it
/// announces.
///
/// A server decoder starts with a small limit that covers only a Hello (`handshake`) and raises
/// it to `maxFrameSize` once the first frame is a Hello the server accepts: a peer that has not
/// authenticated can never make it buffer a large frame.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = Prism_V1_Frame

    /// The limit once the connection is open.
    public let maxFrameSize: Int
    private var stage: Stage

    /// Decides whether a connection's first frame opens it (a Hello the server accepts).
    public typealias HandshakeCheck = @Sendable (Prism_V1_Frame) -> Bool

    private enum Stage {
        /// Before the first frame: at most `limit` bytes; `check` decides what comes next.
        case handshake(limit: Int, check: HandshakeCheck)
        /// The first frame was refused: the connection is closing, keep the small limit.
        case refused(limit: Int)
        case open
    }

    /// A decoder that accepts frames up to `maxFrameSize` from the first byte (a client: the
    /// server it chose to connect to is trusted with its own limit).
    public init(maxFrameSize: Int = PrismProtocol.defaultMaxFrameSize) {
        self.maxFrameSize = maxFrameSize
        self.stage = .open
    }

    /// A decoder for the accepting side: the first frame may be at most `handshakeLimit` bytes,
    /// later ones `maxFrameSize` once `opens` accepted the first.
    public init(
        maxFrameSize: Int,
        handshakeLimit: Int = PrismProtocol.handshakeMaxFrameSize,
        opens: @escaping HandshakeCheck
    ) {
        self.maxFrameSize = maxFrameSize
        self.stage = .handshake(limit: min(handshakeLimit, maxFrameSize), check: opens)
    }

    /// The largest frame accepted right now.
    public var currentLimit: Int {
        switch self.stage {
        case .handshake(let limit, _), .refused(let limit): return limit
        case .open: return self.maxFrameSize
        }
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> Prism_V1_Frame? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else {
            return nil
        }
        let limit = self.currentLimit
        guard Int(length) <= limit else {
            throw FrameError.tooLarge(length: Int(length), limit: limit)
        }
        guard buffer.readableBytes >= PrismProtocol.lengthPrefixSize + Int(length) else {
            return nil
        }
        buffer.moveReaderIndex(forwardBy: PrismProtocol.lengthPrefixSize)
        let payload = buffer.readSlice(length: Int(length))!
        let frame: Prism_V1_Frame
        do {
            frame = try Prism_V1_Frame(serializedBytes: ProtobufBytes(payload))
        } catch {
            throw FrameError.malformed
        }
        if case .handshake(let limit, let check) = self.stage {
            // Decided here, in the same decode loop, because a client may send its first Request
            // right behind its Hello: waiting for the connection handler would refuse it as too
            // large.
            self.stage = check(frame) ? .open : .refused(limit: limit)
        }
        return frame
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
