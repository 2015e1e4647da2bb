import Foundation
import NIOCore
import PrismProto
import PrismWire

/// Exact sizes of frames on the wire, computed without serialising the source image.
///
/// A processor closes the connection on a frame over its `max_frame_size`, failing every call on
/// it; so the client measures each Request before sending it. Serialising it just to measure
/// would copy an upload of tens of megabytes, so the source's bytes are counted, not encoded.
enum FrameSize {
    /// Bytes of `value` as a protobuf varint.
    static func varint(_ value: UInt64) -> Int {
        var value = value
        var bytes = 1
        while value >= 0x80 {
            value >>= 7
            bytes += 1
        }
        return bytes
    }

    /// Bytes of the serialised Request, with a source of `sourceBytes` bytes when given (one
    /// sent from its own buffer, see `RequestFrame`) or else the request's own.
    static func request(_ request: Prism_V1_Request, sourceBytes: Int? = nil) throws -> Int {
        let source = sourceBytes ?? request.source.count
        // Field 1 (bytes): one tag byte, the length as a varint, the bytes; absent when empty.
        let sourceBytes = source == 0 ? 0 : 1 + Self.varint(UInt64(source)) + source
        var rest = request
        rest.source = Data()
        // Everything but the source, measured through the frame encoder: on call 0 the payload
        // is one tag byte, the request's length as a varint, then the request.
        let framed = try Prism_V1_Frame.request(callID: 0, rest).encoded().readableBytes - PrismProtocol.lengthPrefixSize
        for lengthBytes in 1...5 {
            let restBytes = framed - 1 - lengthBytes
            if restBytes >= 0, Self.varint(UInt64(restBytes)) == lengthBytes {
                return restBytes + sourceBytes
            }
        }
        return framed + sourceBytes  // unreachable; an overestimate is the safe side
    }

    /// Bytes of the Frame payload (length prefix excluded) carrying a Request of `requestSize`
    /// bytes on call `callID`: what the processor compares with its `max_frame_size`.
    static func requestFrame(callID: UInt64, requestSize: Int) -> Int {
        // Field 1 (call_id, varint), absent when 0; field 3 (request, a message): always present
        // once set, as one tag byte, the length as a varint, the message.
        let callIDBytes = callID == 0 ? 0 : 1 + Self.varint(callID)
        return callIDBytes + 1 + Self.varint(UInt64(requestSize)) + requestSize
    }
}
