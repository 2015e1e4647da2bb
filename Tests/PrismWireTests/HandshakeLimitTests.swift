import Foundation
import NIOCore
import NIOTestUtils
import PrismProto
@testable import PrismWire
import Testing

/// The accepting side's frame limit: small until a Hello it accepts, full-size afterwards.
@Suite("Frame limit before and after the Hello")
struct HandshakeLimitTests {
    static func hello(version: UInt32 = PrismProtocol.version) -> Prism_V1_Frame {
        var hello = Prism_V1_Hello()
        hello.protocolVersion = version
        return .hello(hello)
    }

    static func bigRequest(bytes: Int = 200_000) -> Prism_V1_Frame {
        var request = Prism_V1_Request()
        request.source = Data(repeating: 7, count: bytes)
        return .request(callID: 1, request)
    }

    static func serverDecoder() -> FrameDecoder {
        FrameDecoder(maxFrameSize: 1 << 20) { first in
            if case .hello(let hello) = first.kind { return hello.protocolVersion == PrismProtocol.version }
            return false
        }
    }

    @Test("a first frame over the handshake limit is refused from its length prefix")
    func firstFrameTooLarge() throws {
        var decoder = Self.serverDecoder()
        #expect(decoder.currentLimit == PrismProtocol.handshakeMaxFrameSize)
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt32(60 << 20))  // 60 MB announced, nothing of it sent
        #expect(throws: FrameError.tooLarge(length: 60 << 20, limit: PrismProtocol.handshakeMaxFrameSize)) {
            _ = try decoder.decode(buffer: &buffer)
        }
    }

    @Test("a Request right behind an accepted Hello, in the same bytes, gets the full limit")
    func pipelinedRequest() throws {
        // Fed one byte at a time, in batches and whole: the limit must rise between the two
        // frames however the bytes arrive.
        var bytes = try Self.hello().encoded()
        var request = try Self.bigRequest().encoded()
        bytes.writeBuffer(&request)
        try ByteToMessageDecoderVerifier.verifyDecoder(inputOutputPairs: [(bytes, [Self.hello(), Self.bigRequest()])]) {
            Self.serverDecoder()
        }
    }

    @Test("a refused first frame keeps the small limit for whatever follows")
    func refusedHello() throws {
        var decoder = Self.serverDecoder()
        var bytes = try Self.hello(version: 2).encoded()
        var request = try Self.bigRequest().encoded()
        let requestLength = request.readableBytes - PrismProtocol.lengthPrefixSize
        bytes.writeBuffer(&request)
        #expect(try decoder.decode(buffer: &bytes) == Self.hello(version: 2))
        #expect(decoder.currentLimit == PrismProtocol.handshakeMaxFrameSize)
        #expect(throws: FrameError.tooLarge(length: requestLength, limit: PrismProtocol.handshakeMaxFrameSize)) {
            _ = try decoder.decode(buffer: &bytes)
        }
    }

    @Test("an empty first frame is not a Hello: the limit stays small")
    func emptyFirstFrame() throws {
        var decoder = Self.serverDecoder()
        var bytes = ByteBuffer()
        bytes.writeInteger(UInt32(0))
        #expect(try decoder.decode(buffer: &bytes) == Prism_V1_Frame())
        #expect(decoder.currentLimit == PrismProtocol.handshakeMaxFrameSize)
    }

    @Test("a client's decoder accepts full-size frames from the start")
    func clientDecoder() {
        let decoder = FrameDecoder(maxFrameSize: 1 << 20)
        #expect(decoder.currentLimit == 1 << 20)
    }

    @Test("a Response's fields around its data fit in maxResponseOverhead at their largest")
    func responseOverhead() throws {
        var response = Prism_V1_Response()
        response.variantIndex = .max
        response.data = Data(repeating: 1, count: 70_000)
        response.width = .max
        response.height = .max
        response.format = .heic
        response.processUs = .max
        response.md5 = Data(repeating: 2, count: 16)
        response.sha256 = Data(repeating: 3, count: 32)
        let frame = Prism_V1_Frame.response(callID: .max, response)
        let payload = try frame.encoded().readableBytes - PrismProtocol.lengthPrefixSize
        #expect(payload - response.data.count <= PrismProtocol.maxResponseOverhead)
    }
}

@Suite("Variant spec rules")
struct VariantSpecRuleTests {
    @Test("names follow the proto: a-z, 0-9, _ and -, at most 64 bytes", arguments: [
        ("thumb", true), ("w-640_2x", true), ("", true), (String(repeating: "a", count: 64), true),
        ("a/b", false), ("Bad Name", false), ("ünï", false), ("UPPER", false), ("..", false),
        (String(repeating: "a", count: 65), false),
    ])
    func names(name: String, valid: Bool) {
        var spec = Prism_V1_VariantSpec()
        spec.name = name
        #expect((VariantSpecRules.problem(in: spec) == nil) == valid, "\(name)")
        #expect((VariantSpecRules.nameProblem(name) == nil) == valid)
    }

    @Test("effort ranges per format: WebP 0-6, PNG and AVIF 0-9", arguments: [
        (Prism_V1_Format.webp, UInt32(6), true), (.webp, 7, false), (.png, 9, true), (.png, 10, false),
        (.avif, 9, true), (.avif, 10, false), (.unspecified, 9, true), (.jpeg, 10, false),
    ])
    func effort(format: Prism_V1_Format, effort: UInt32, valid: Bool) {
        var spec = Prism_V1_VariantSpec()
        spec.output.format = format
        spec.output.effort = effort
        #expect((VariantSpecRules.problem(in: spec) == nil) == valid)
    }
}
