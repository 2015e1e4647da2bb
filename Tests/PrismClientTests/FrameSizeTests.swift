import Foundation
import NIOCore
@testable import PrismClient
import PrismProto
import PrismWire
import Testing

@Suite("Frame sizes and processor-supplied numbers")
struct FrameSizeTests {
    @Test("varint sizes at the 7-bit boundaries", arguments: [
        (UInt64(0), 1), (127, 1), (128, 2), (16_383, 2), (16_384, 3), (UInt64(1) << 28, 5), (UInt64.max, 10),
    ])
    func varints(value: UInt64, bytes: Int) {
        #expect(FrameSize.varint(value) == bytes)
    }

    @Test("the computed request frame size is the encoded size", arguments: [
        (0, UInt64(1)), (1, 1), (100, 127), (127, 128), (16_000, 300), (200_000, 1 << 20), (3 << 20, UInt64.max),
    ])
    func matchesEncoder(sourceBytes: Int, callID: UInt64) throws {
        var request = Prism_V1_Request()
        request.source = Data(repeating: 0xAB, count: sourceBytes)
        var spec = Prism_V1_VariantSpec()
        spec.name = "thumb"
        spec.output.format = .webp
        request.variants = [spec, spec]
        request.timeoutMs = 29_500
        request.requestID = "req-123"
        let computed = FrameSize.requestFrame(callID: callID, requestSize: try FrameSize.request(request))
        let encoded = try Prism_V1_Frame.request(callID: callID, request).encoded().readableBytes - PrismProtocol.lengthPrefixSize
        #expect(computed == encoded)
    }

    @Test("an absurd process_us is clamped instead of trapping the gateway")
    func processDurationClamp() {
        let huge = VariantResult.processDuration(microseconds: .max)
        #expect(huge == .seconds(24 * 3600))
        #expect(huge.nanoseconds > 0, "Duration.nanoseconds no longer overflows")
        #expect(VariantResult.processDuration(microseconds: 1500) == .microseconds(1500))
    }
}
