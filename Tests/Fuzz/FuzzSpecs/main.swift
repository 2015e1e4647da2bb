// libFuzzer target: arbitrary variant specs planned against arbitrary source sizes, the
// arithmetic a processor does from a header before it decodes a pixel.
//
// Input: 8 bytes of source width and height (big-endian UInt32, folded into 1...100000),
// then a serialised prism.v1.VariantSpec. Checked besides "no crash": a spec the rules accept
// and the planner accepts has an output size inside the dimension limit.
import Foundation
@testable import PrismImaging
import PrismProto
import PrismWire
import SwiftProtobuf

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSpecs(_ start: UnsafeRawPointer, _ count: Int) -> CInt {
    guard count >= 8 else { return 0 }
    let bytes = UnsafeRawBufferPointer(start: start, count: count)
    func dimension(_ offset: Int) -> Int {
        let raw = bytes[offset..<offset + 4].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        return Int(raw % 100_000) + 1
    }
    let source = Size(width: dimension(0), height: dimension(4))
    guard let spec = try? Prism_V1_VariantSpec(serializedBytes: Array(bytes[8...])) else { return 0 }
    let limits = ImagingLimits()
    do {
        try VariantPlan.validate(spec, index: 0, limits: limits)
    } catch {
        return 0
    }
    for format in [Prism_V1_Format.jpeg, .png, .webp, .gif] {
        guard let plan = try? VariantPlan(
            spec: spec, index: 0, source: source, orientedSource: source.transposed,
            sourceFormat: format, limits: limits
        ) else { continue }
        precondition(plan.output.width >= 1 && plan.output.height >= 1, "an empty output was planned")
        precondition(plan.output.width <= limits.maxOutputDimension && plan.output.height <= limits.maxOutputDimension,
                     "a plan past the dimension limit was accepted: \(plan.output)")
    }
    return 0
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
exit(LLVMFuzzerRunDriver(&count, &arguments, fuzzSpecs))
