import Foundation
import NIOCore
import NIOEmbedded
import PrismProto
@testable import PrismWire
import Testing

@Suite("Request frame with its own source buffer")
struct RequestFrameTests {
    static func request(sourceBytes: Int) -> (Prism_V1_Request, ByteBuffer) {
        var request = FrameCodecTests.sampleFrames()[1].request
        let source = Data((0..<sourceBytes).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 7) })
        request.source = source
        request.requestID = "req-1"
        return (request, ByteBuffer(bytes: source))
    }

    @Test("decodes to the frame a whole serialisation gives", arguments: [0, 1, 127, 128, 16_383, 16_384, 300_000])
    func sameFrame(sourceBytes: Int) throws {
        for callID: UInt64 in [0, 1, 300, .max] {
            let (request, source) = Self.request(sourceBytes: sourceBytes)
            let whole = Prism_V1_Frame.request(callID: callID, request)
            let split = RequestFrame(callID: callID, request: request, source: source)

            var wire = ByteBuffer()
            for var piece in try split.wireBuffers() { wire.writeBuffer(&piece) }
            #expect(wire.readableBytes == (try whole.encoded()).readableBytes)
            #expect(try split.payloadSize() == wire.readableBytes - PrismProtocol.lengthPrefixSize)

            var decoder = FrameDecoder(maxFrameSize: 1 << 20)
            let decoded = try #require(try decoder.decode(buffer: &wire))
            #expect(decoded == whole)
            #expect(wire.readableBytes == 0)
        }
    }

    @Test("the source goes out as the caller's buffer, not a copy")
    func sharesTheSource() throws {
        let (request, source) = Self.request(sourceBytes: 100_000)
        let channel = EmbeddedChannel(handler: OutboundFrameEncoder())
        try channel.writeOutbound(OutboundFrame.request(RequestFrame(callID: 5, request: request, source: source)))
        let head = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let body = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(head.readableBytes < 200)
        #expect(body == source)
        // Same storage: the written buffer points at the caller's bytes.
        let sameBytes = body.withUnsafeReadableBytes { a in source.withUnsafeReadableBytes { b in a.baseAddress == b.baseAddress } }
        #expect(sameBytes)
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil)

        try channel.writeOutbound(OutboundFrame.frame(.ping(9)))
        var ping = try #require(try channel.readOutbound(as: ByteBuffer.self))
        var decoder = FrameDecoder()
        #expect(try decoder.decode(buffer: &ping) == .ping(9))
    }
}
