// libFuzzer target: arbitrary bytes through the frame decoder, as a peer would send them.
//
// Built by `make fuzz` (scripts/fuzz.sh, swiftc -sanitize=fuzzer,address); libFuzzer provides
// main. Invariants checked besides "no crash, no sanitizer report":
// - the decoder never returns a frame longer than its limit, and never throws anything but
//   FrameError;
// - every frame it returns encodes and decodes again to the same frame;
// - every variant spec inside a Request can be judged by the spec rules.
import Foundation
import NIOCore
import PrismProto
import PrismWire

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    var whole = ByteBufferAllocator().buffer(capacity: count)
    whole.writeBytes(bytes)
    // The pre-Hello limit and the default one: the same bytes may pass one and not the other.
    for limit in [64 << 10, PrismProtocol.defaultMaxFrameSize] {
        var decoder = FrameDecoder(maxFrameSize: limit)
        var input = whole
        do {
            while let frame = try decoder.decode(buffer: &input) {
                check(frame)
            }
        } catch is FrameError {
            // Refused as the protocol says: too large or not a Frame.
        } catch {
            fatalError("the decoder threw something other than FrameError: \(error)")
        }
    }
    return 0
}

private func check(_ frame: Prism_V1_Frame) {
    guard let encoded = try? frame.encoded() else { fatalError("a decoded frame does not encode") }
    var again = encoded
    var decoder = FrameDecoder(maxFrameSize: PrismProtocol.absoluteMaxFrameSize)
    guard let back = try? decoder.decode(buffer: &again), back == frame else {
        fatalError("a frame changed on its way through encode and decode")
    }
    if case .request(let request) = frame.kind {
        for spec in request.variants {
            _ = VariantSpecRules.problem(in: spec)
        }
    }
}

// libFuzzer's own main is not linked (Swift provides `main` for this file), so hand over to
// its driver with the command line: -runs, -max_total_time, corpus directories...
@_silgen_name("LLVMFuzzerRunDriver")
private func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>>,
    _ callback: @convention(c) (UnsafeRawPointer, Int) -> CInt
) -> CInt

var arguments = CommandLine.unsafeArgv
var count = CommandLine.argc
exit(LLVMFuzzerRunDriver(&count, &arguments, fuzzFrames))
