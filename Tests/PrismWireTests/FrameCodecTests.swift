import NIOCore
import NIOEmbedded
import NIOTestUtils
import PrismProto
@testable import PrismWire
import Testing
import Foundation

@Suite("Frame codec")
struct FrameCodecTests {
    static func sampleFrames() -> [Prism_V1_Frame] {
        var hello = Prism_V1_Hello()
        hello.protocolVersion = 1
        hello.maxFrameSize = 1 << 20
        hello.authToken = "secret"
        var request = Prism_V1_Request()
        request.source = Data((0..<5_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
        var spec = Prism_V1_VariantSpec()
        spec.name = "thumb"
        var op = Prism_V1_Operation()
        op.resize.width = 200
        op.resize.height = 200
        spec.operations = [op]
        spec.output.format = .webp
        request.variants = [spec]
        request.timeoutMs = 1500
        return [
            .hello(hello),
            .request(callID: 7, request),
            .cancel(callID: 7),
            .ping(42),
            .goAway(lastCallID: 9, reason: "bye"),
            .error(callID: 3, PrismRPCError(code: .invalidArgument, reason: .notAnImage, message: "no")),
            Prism_V1_Frame(),  // an empty frame is still a frame
        ]
    }

    @Test("frames survive encode then decode")
    func roundTrip() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(FrameDecoder()))
        try channel.pipeline.syncOperations.addHandler(FrameEncoder())
        for frame in Self.sampleFrames() {
            try channel.writeOutbound(frame)
            let bytes = try #require(try channel.readOutbound(as: ByteBuffer.self))
            #expect(bytes.getInteger(at: 0, as: UInt32.self) == UInt32(bytes.readableBytes - 4))
            try channel.writeInbound(bytes)
            let decoded = try #require(try channel.readInbound(as: Prism_V1_Frame.self))
            #expect(decoded == frame)
        }
        #expect(try channel.finish().isClean)
    }

    @Test("bytes arriving one at a time, in batches or whole decode to the same frames")
    func byteByByte() throws {
        let pairs = try Self.sampleFrames().map { frame in (try frame.encoded(), [frame]) }
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: pairs) {
            FrameDecoder()
        }
    }

    @Test("a length over the limit is refused from the 4-byte prefix alone")
    func oversized() throws {
        var decoder = FrameDecoder(maxFrameSize: 1024)
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(1 << 30))  // announces 1 GiB; nothing of it follows
        #expect(throws: FrameError.tooLarge(length: 1 << 30, limit: 1024)) {
            _ = try decoder.decode(buffer: &buffer)
        }
        // Just under the limit waits for the payload instead.
        var fits = ByteBuffer()
        fits.writeInteger(UInt32(1024))
        #expect(try decoder.decode(buffer: &fits) == nil)
    }

    @Test("garbage of the right length is refused as malformed")
    func garbage() throws {
        var decoder = FrameDecoder()
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(6))
        buffer.writeBytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])
        #expect(throws: FrameError.malformed) {
            _ = try decoder.decode(buffer: &buffer)
        }
    }

    @Test("an HTTP request sent to the frame port reads as an oversized frame")
    func http() throws {
        var decoder = FrameDecoder()
        var buffer = ByteBuffer(string: "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        // "GET " read as a big-endian length: 0x47455420, about 1.1 GB, far over any limit.
        let announced = 0x4745_5420
        #expect(Array("GET ".utf8) == [0x47, 0x45, 0x54, 0x20])
        #expect(announced > decoder.maxFrameSize)
        #expect(throws: FrameError.tooLarge(length: announced, limit: decoder.maxFrameSize)) {
            _ = try decoder.decode(buffer: &buffer)
        }
    }
}
