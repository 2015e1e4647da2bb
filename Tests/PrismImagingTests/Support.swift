internal import CVips
import Foundation
@testable import PrismImaging
import PrismProto
import Testing
@_exported import PrismTestSupport

/// Decoded facts about an encoded output, read back with libvips.
struct Decoded {
    var width: Int
    var height: Int
    var bands: Int
    var loader: String
    var fields: [String]
    var image: VImage
}

func decode(_ data: Data) throws -> Decoded {
    try #require(startVips())
    let loader: String = try data.withUnsafeBytes { raw in
        guard let name = vips_foreign_find_load_buffer(raw.baseAddress, raw.count) else {
            throw DecodeFailure(detail: "no loader recognises the output")
        }
        return String(cString: name)
    }
    let pointer = data.withUnsafeBytes { prism_decode_copy($0.baseAddress, $0.count) }
    guard let pointer else { throw DecodeFailure(detail: takeErrorBuffer()) }
    let image = VImage(owning: pointer)
    // Force a full decode, so a broken file fails here.
    var mean = 0.0
    guard prism_avg(image.pointer, &mean) == 0 else { throw DecodeFailure(detail: takeErrorBuffer()) }
    var fields: [String] = []
    if let list = vips_image_get_fields(image.pointer) {
        var i = 0
        while let field = list[i] {
            fields.append(String(cString: field))
            i += 1
        }
        g_strfreev(list)
    }
    return Decoded(width: image.width, height: image.height, bands: image.bands, loader: loader, fields: fields, image: image)
}

struct DecodeFailure: Error { var detail: String }

func startVips() -> Bool {
    (try? Vips.start(concurrency: 1)) != nil
}

func meanAbsDifference(_ a: VImage, _ b: VImage) throws -> Double {
    var value = 0.0
    guard prism_mean_abs_difference(a.pointer, b.pointer, &value) == 0 else {
        throw DecodeFailure(detail: takeErrorBuffer())
    }
    return value
}

/// Runs a job to completion and returns its outputs in spec order.
func runJob(_ source: Data, _ variants: [Prism_V1_VariantSpec], limits: ImagingLimits = ImagingLimits()) throws -> (outputs: [EncodedVariant], summary: JobSummary) {
    #expect(startVips())
    var outputs: [EncodedVariant] = []
    let summary = try ImageJob(source: source, variants: variants, limits: limits)
        .run(cancellation: JobCancellation()) { outputs.append($0) }
    return (outputs.sorted { $0.index < $1.index }, summary)
}

/// Runs a job expected to fail and returns its error.
func failingJob(_ source: Data, _ variants: [Prism_V1_VariantSpec], limits: ImagingLimits = ImagingLimits()) throws -> ImagingError {
    do {
        _ = try runJob(source, variants, limits: limits)
    } catch let error as ImagingError {
        return error
    }
    Issue.record("the job succeeded but was expected to fail")
    throw DecodeFailure(detail: "unexpected success")
}
