internal import CVips
import Foundation
@testable import PrismImaging
import PrismProto
import Testing

@Suite("libvips pipeline on real photos")
struct PipelineTests {
    // Garden.jpg is 2560x1600.
    @Test(
        "each fit mode gives sharp's dimensions",
        arguments: [
            (Prism_V1_Fit.cover, 300, 300, false, 300, 300),
            (.contain, 300, 300, false, 300, 300),
            (.fill, 300, 100, false, 300, 100),
            (.inside, 300, 300, false, 300, 188),
            (.outside, 300, 300, false, 480, 300),
            (.inside, 4000, 4000, false, 4000, 2500),
            (.inside, 4000, 4000, true, 2560, 1600),
            (.cover, 3000, 3000, true, 2560, 1600),
            (.cover, 640, 0, false, 640, 400),
            (.fill, 0, 800, false, 1280, 800),
        ]
    )
    func fitModes(fit: Prism_V1_Fit, width: Int, height: Int, withoutEnlargement: Bool, wantWidth: Int, wantHeight: Int) throws {
        let spec = variant("v", [resize(UInt32(width), UInt32(height), fit: fit, withoutEnlargement: withoutEnlargement)], format: .png)
        let (outputs, _) = try runJob(try TestImages.photo("Garden.jpg"), [spec])
        let decoded = try decode(outputs[0].data)
        #expect(decoded.width == wantWidth && decoded.height == wantHeight, "\(fit) \(width)x\(height) gave \(decoded.width)x\(decoded.height)")
        #expect(outputs[0].size == Size(width: wantWidth, height: wantHeight))
    }

    @Test("contain pads with the background and keeps the picture centred")
    func containPads() throws {
        var op = resize(400, 400, fit: .contain)
        op.resize.background.r = 255  // red bars above and below
        let (outputs, _) = try runJob(try TestImages.photo("Garden.jpg"), [variant("v", [op], format: .png)])
        let decoded = try decode(outputs[0].data)
        #expect(decoded.width == 400 && decoded.height == 400)
        // 2560x1600 inside 400x400 is 400x250: bars of 75 px at the top and bottom.
        let bar = try decoded.image.apply { prism_extract($0, $1, 0, 0, 400, 70) }
        var mean = 0.0
        #expect(prism_avg(bar.pointer, &mean) == 0)
        #expect(abs(mean - 85) < 1, "a pure red bar averages 255/3 over three bands, got \(mean)")
    }

    @Test("every output format decodes back at the requested size", arguments: [
        (Prism_V1_Format.jpeg, "VipsForeignLoadJpegBuffer"),
        (.png, "VipsForeignLoadPngBuffer"),
        (.webp, "VipsForeignLoadWebpBuffer"),
        (.avif, "VipsForeignLoadHeifBuffer"),
        (.gif, "VipsForeignLoadNsgifBuffer"),
    ])
    func formats(format: Prism_V1_Format, loader: String) throws {
        let spec = variant("v", [resize(320, 240, fit: .cover)], format: format)
        let (outputs, _) = try runJob(try TestImages.photo("Dune.jpg"), [spec])
        let decoded = try decode(outputs[0].data)
        #expect(decoded.loader == loader)
        #expect(decoded.width == 320 && decoded.height == 240)
        #expect(outputs[0].format == format)
    }

    @Test("progressive JPEG and lossless WebP options reach the encoder")
    func encoderOptions() throws {
        var progressive = variant("p", [resize(640, 0)], format: .jpeg)
        progressive.output.progressive = true
        var lossless = variant("l", [resize(64, 0)], format: .webp)
        lossless.output.lossless = true
        let (outputs, _) = try runJob(try TestImages.photo("Storm.jpg"), [progressive, lossless])
        // A progressive JPEG has an SOF2 marker (FF C2); a baseline one has SOF0 (FF C0).
        #expect(outputs[0].data.range(of: Data([0xFF, 0xC2])) != nil)
        // Lossless WebP uses the VP8L chunk.
        #expect(outputs[1].data.range(of: Data("VP8L".utf8)) != nil)
    }

    @Test("an EXIF orientation 6 photo comes out turned upright")
    func autoOrient() throws {
        let source = try TestImages.edge("orient6-gps.jpg")  // stored 2560x1600, shown 1600x2560
        let (outputs, summary) = try runJob(source, [variant("full", [], format: .png), variant("small", [resize(0, 640)], format: .jpeg)])
        #expect(summary.source.width == 1600 && summary.source.height == 2560)
        let full = try decode(outputs[0].data)
        #expect(full.width == 1600 && full.height == 2560)
        let small = try decode(outputs[1].data)
        #expect(small.width == 400 && small.height == 640)

        // Pixel for pixel, the result is the stored image turned 90 degrees clockwise.
        let reference = try decode(try TestImages.photo("Garden.jpg")).image.apply { prism_rot($0, $1, VIPS_ANGLE_D90) }
        #expect(try meanAbsDifference(full.image, reference) < 3)
        let unturned = try decode(try TestImages.photo("Garden.jpg")).image.apply { prism_extract($0, $1, 0, 0, 1600, 1600) }
        let fullSquare = try full.image.apply { prism_extract($0, $1, 0, 0, 1600, 1600) }
        #expect(try meanAbsDifference(fullSquare, unturned) > 10, "the comparison must be able to tell orientations apart")
    }

    @Test("a variant that keeps the stored orientation shrinks on load by the stored size, not the upright one")
    func storedOrientationShrink() throws {
        let source = try TestImages.edge("orient6-gps.jpg")  // stored 2560x1600, shown 1600x2560
        // 100x1200 as stored: a half-size decode (1280x800) would be too short. Measured against
        // the upright 1600x2560 it would seem to fit.
        var stored = variant("stored", [resize(100, 1200, fit: .fill)])
        stored.noAutoOrient = true
        let (outputs, summary) = try runJob(source, [stored])
        #expect(summary.shrinkOnLoad == 1)
        #expect(outputs.map(\.size) == [Size(width: 100, height: 1200)])
        // Upright, the same box fits a half-size decode (800x1280).
        let (_, upright) = try runJob(source, [variant("upright", [resize(100, 1200, fit: .fill)])])
        #expect(upright.shrinkOnLoad == 2)
    }

    @Test("EXIF and GPS are stripped from every format unless kept", arguments: [Prism_V1_Format.jpeg, .png, .webp, .avif])
    func metadataStripped(format: Prism_V1_Format) throws {
        let source = try TestImages.edge("orient6-gps.jpg")
        #expect(source.range(of: Data("PrismTestCam".utf8)) != nil)
        var kept = variant("kept", [resize(320, 0)], format: format)
        kept.keepMetadata = true
        let (outputs, _) = try runJob(source, [variant("stripped", [resize(320, 0)], format: format), kept])
        let stripped = try decode(outputs[0].data)
        #expect(outputs[0].data.range(of: Data("PrismTestCam".utf8)) == nil, "camera make survived in \(format)")
        #expect(outputs[0].data.range(of: Data("Exif\0\0".utf8)) == nil, "an EXIF block survived in \(format)")
        // Outside the pixel data: compressed pixels can hold any four bytes (a 350 KB PNG of
        // this photo does hold "EXIF" once in an IDAT chunk).
        #expect(metadataBytes(outputs[0].data, format: format).range(of: Data("EXIF".utf8)) == nil, "an EXIF chunk survived in \(format)")
        #expect(!stripped.fields.contains { $0.hasPrefix("exif-") || $0 == "xmp-data" }, "\(stripped.fields)")
        if format == .jpeg || format == .webp {
            // The formats that carry EXIF keep it when asked: the check above can fail.
            #expect(outputs[1].data.range(of: Data("PrismTestCam".utf8)) != nil)
        }
    }

    @Test("a 30000x30000 PNG bomb is refused from its header, before any pixel is decoded")
    func pixelBomb() async throws {
        let error = try failingJob(try TestImages.edge("bomb-30000.png"), [variant("v", [resize(200, 200)])])
        #expect(error.reason == .tooManyPixels)
        #expect(error.code == .failedPrecondition)
        #expect(error.message.contains("30000x30000"))

        // Peak memory belongs to the whole process, and other tests decode images alongside this
        // one: the bomb is refused again in a child process that does nothing else, and that
        // child reports how far its own peak moved.
        let child = await #expect(processExitsWith: .success, observing: [\.standardOutputContent]) {
            do {
                let before = try peakResidentBytes()
                let error = try failingJob(try TestImages.edge("bomb-30000.png"), [variant("v", [resize(200, 200)])])
                guard error.reason == .tooManyPixels else { throw error }
                print("peak-growth \(try peakResidentBytes() - before)")
            } catch {
                print("no measurement: \(error)")
                exit(1)
            }
        }
        let output = String(decoding: child?.standardOutputContent ?? [], as: UTF8.self)
        let growth = try #require(
            output.split(separator: "\n").last { $0.hasPrefix("peak-growth ") }.flatMap { Int($0.dropFirst(12)) },
            "the child printed no measurement: \(output)"
        )
        // Decoding would need 2.7 GB (30000 x 30000 x 3 bands); the peak must not move by anything like it.
        #expect(growth < 200 << 20, "the child's peak grew by \(growth >> 20) MiB")
    }

    @Test("the pixel limit is configurable")
    func pixelLimit() throws {
        var limits = ImagingLimits()
        limits.maxInputPixels = 1_000_000
        let error = try failingJob(try TestImages.photo("Dune.jpg"), [variant("v", [resize(100, 100)])], limits: limits)
        #expect(error.reason == .tooManyPixels)
    }

    @Test("SVG, PDF and text are refused with distinct reasons", arguments: [
        ("drawing.svg", Prism_V1_Reason.blockedFormat),
        ("document.pdf", .blockedFormat),
        ("not-an-image.txt", .notAnImage),
    ])
    func refusedFormats(file: String, reason: Prism_V1_Reason) throws {
        let error = try failingJob(try TestImages.edge(file), [variant("v", [resize(100, 100)])])
        #expect(error.reason == reason)
        #expect(error.code == .invalidArgument)
    }

    @Test("bytes no reader recognises are NOT_AN_IMAGE, whatever loose sniffer claims them", arguments: [
        Data(count: 1000), Data(repeating: 0xFF, count: 1000), Data("just text, no image".utf8),
    ])
    func notAnImage(bytes: Data) throws {
        let error = try failingJob(bytes, [variant("v", [resize(100, 100)])])
        #expect(error.reason == .notAnImage)
        #expect(error.code == .invalidArgument)
        for word in ["magick", "vips", "/"] {
            #expect(!error.message.lowercased().contains(word), "\(error.message)")
        }
    }

    @Test("a variant name outside a-z, 0-9, _ and - is an INVALID_SPEC naming the variant by position", arguments: ["a/b", "Bad Name", "ünï"])
    func badNames(name: String) throws {
        let error = try failingJob(try TestImages.photo("Dune.jpg"), [variant("ok", [resize(10, 10)]), variant(name, [resize(10, 10)])])
        #expect(error.reason == .invalidSpec)
        #expect(error.variant == name)
        #expect(error.message.hasPrefix("Variant #1:"))
        #expect(!error.message.contains(name))
    }

    @Test("truncated and corrupt JPEGs fail with CORRUPT_IMAGE and no internal text", arguments: ["truncated.jpg", "corrupt.jpg"])
    func brokenJPEGs(file: String) throws {
        let error = try failingJob(try TestImages.edge(file), [variant("a", [resize(640, 0)]), variant("b", [resize(200, 200)])])
        #expect(error.reason == .corruptImage)
        #expect(error.code == .invalidArgument)
        #expect(!error.message.lowercased().contains("vips"))
        #expect(error.detail?.isEmpty == false, "the internal cause is kept for the log")
    }

    @Test("a source with alpha keeps it in PNG and is flattened onto white for JPEG")
    func alpha() throws {
        let source = try TestImages.edge("alpha.png")
        var transparentPad = resize(800, 800, fit: .contain)
        transparentPad.resize.background.transparent = true
        let (outputs, summary) = try runJob(source, [
            variant("png", [resize(320, 0)], format: .png),
            variant("jpeg", [resize(320, 0)], format: .jpeg),
            variant("webp", [resize(320, 0)], format: .webp),
            variant("pad", [transparentPad], format: .png),
        ])
        #expect(summary.source.alpha)
        #expect(try decode(outputs[0].data).bands == 4)
        #expect(try decode(outputs[1].data).bands == 3)
        #expect(try decode(outputs[2].data).bands == 4)
        let pad = try decode(outputs[3].data)
        #expect(pad.bands == 4 && pad.width == 800 && pad.height == 800)
    }

    @Test("CMYK, 16-bit and greyscale sources come out as 8-bit sRGB or grey", arguments: [
        ("cmyk.jpg", 3), ("rgb16.png", 3), ("grey.jpg", 1),
    ])
    func colour(file: String, bands: Int) throws {
        let (outputs, _) = try runJob(try TestImages.edge(file), [variant("v", [resize(200, 0)], format: .jpeg)])
        let decoded = try decode(outputs[0].data)
        #expect(decoded.bands == bands)
        #expect(decoded.image.bandFormat == VIPS_FORMAT_UCHAR)
    }

    @Test("an animated GIF gives its first frame")
    func animated() throws {
        let (outputs, summary) = try runJob(try TestImages.edge("animated.gif"), [variant("v", [], format: .gif)])
        #expect(summary.source.pages == 3)
        let decoded = try decode(outputs[0].data)
        #expect(decoded.width == 256 && decoded.height == 160)
    }

    @Test("WebP and progressive JPEG sources work")
    func otherSources() throws {
        let specs = [variant("a", [resize(1280, 0)]), variant("b", [resize(200, 200)], format: .webp)]
        for file in ["photo.webp", "progressive-13mp.jpg"] {
            let (outputs, _) = try runJob(try TestImages.edge(file), specs)
            #expect(try decode(outputs[0].data).width == 1280)
            #expect(try decode(outputs[1].data).width == 200)
        }
    }

    @Test("crop with every gravity gives the requested size; north and south differ")
    func cropGravity() throws {
        let source = try TestImages.photo("Garden.jpg")
        let gravities: [Prism_V1_Gravity] = [.centre, .north, .northEast, .east, .southEast, .south, .southWest, .west, .northWest, .attention, .entropy]
        let specs = gravities.map { variant("\($0)".lowercased(), [resize(640, 0), crop(300, 200, gravity: $0)], format: .png) }
        let (outputs, _) = try runJob(source, specs)
        let decoded = try outputs.map { try decode($0.data) }
        for (gravity, image) in zip(gravities, decoded) {
            #expect(image.width == 300 && image.height == 200, "\(gravity)")
        }
        #expect(try meanAbsDifference(decoded[1].image, decoded[5].image) > 5)
        // North-west is the top-left corner of the 640x400 frame.
        let frame = try decode(try runJob(source, [variant("f", [resize(640, 0)], format: .png)]).outputs[0].data)
        let corner = try frame.image.apply { prism_extract($0, $1, 0, 0, 300, 200) }
        #expect(try meanAbsDifference(decoded[8].image, corner) < 1)
    }

    @Test("a crop larger than the image is clamped; an extract outside it is refused")
    func cropBounds() throws {
        let source = try TestImages.photo("Dune.jpg")  // 1680x1050
        let (outputs, _) = try runJob(source, [variant("v", [crop(5000, 500, gravity: .centre)], format: .png)])
        let decoded = try decode(outputs[0].data)
        #expect(decoded.width == 1680 && decoded.height == 500)
        let error = try failingJob(source, [variant("bad", [extract(1600, 0, 200, 200)])])
        #expect(error.reason == .impossibleVariant)
        #expect(error.variant == "bad")
    }

    @Test("rotate, flip, flop, grayscale, sharpen, blur and flatten all run and keep sizes right")
    func otherOperations() throws {
        var flip = Prism_V1_Operation(); flip.flip = Prism_V1_Flip()
        var flop = Prism_V1_Operation(); flop.flop = Prism_V1_Flop()
        var grey = Prism_V1_Operation(); grey.grayscale = Prism_V1_Grayscale()
        var sharpen = Prism_V1_Operation(); sharpen.sharpen.sigma = 1.5
        var flatten = Prism_V1_Operation(); flatten.flatten.background.g = 255
        let source = try TestImages.edge("alpha.png")  // 1280x800
        let (outputs, _) = try runJob(source, [
            variant("rot90", [resize(320, 0), rotate(90)], format: .png),
            variant("rot180", [resize(320, 0), rotate(180)], format: .png),
            variant("flip", [resize(320, 0), flip], format: .png),
            variant("flop", [resize(320, 0), flop], format: .png),
            variant("grey", [resize(320, 0), grey], format: .jpeg),
            variant("sharp", [resize(320, 0), sharpen], format: .jpeg),
            variant("blur", [resize(320, 0), blur(4)], format: .jpeg),
            variant("flat", [resize(320, 0), flatten], format: .png),
        ])
        let d = try outputs.map { try decode($0.data) }
        #expect(d[0].width == 200 && d[0].height == 320)
        #expect(d[1].width == 320 && d[1].height == 200)
        #expect(d[4].bands == 1)
        #expect(d[5].bands == 3 && d[6].bands == 3)
        #expect(d[7].bands == 3, "flatten removes alpha")
        // rot180 = flip + flop, so flopping the rot180 result gives the flip result...
        let rotatedThenFlopped = try d[1].image.apply { prism_flip($0, $1, VIPS_DIRECTION_HORIZONTAL) }
        #expect(try meanAbsDifference(rotatedThenFlopped, d[2].image) < 1)
        // ...and flip and flop really differ.
        #expect(try meanAbsDifference(d[2].image, d[3].image) > 5)
    }

    @Test("bad specs are refused before any decoding", arguments: [
        (rotate(45), "rotate angle"),
        (blur(0), "blur sigma"),
        (resize(0, 0), "resize needs"),
    ])
    func badSpecs(op: Prism_V1_Operation, text: String) throws {
        let error = try failingJob(try TestImages.photo("Dune.jpg"), [variant("bad", [op])])
        #expect(error.reason == .invalidSpec)
        #expect(error.message.contains(text))
    }

    @Test("AVIF output is capped in size; other limits are enforced from the plan")
    func outputLimits() throws {
        var limits = ImagingLimits()
        limits.maxAVIFPixels = 500_000
        let error = try failingJob(try TestImages.photo("Dune.jpg"), [variant("big", [resize(1280, 0)], format: .avif)], limits: limits)
        #expect(error.reason == .outputTooLarge)
        let tooWide = try failingJob(try TestImages.photo("Dune.jpg"), [variant("wide", [resize(20_000, 0)])])
        #expect(tooWide.reason == .outputTooLarge)
    }

    @Test("several variants decode once, shrinking on load as far as the largest allows")
    func decodeOnce() throws {
        let source = try TestImages.edge("large-19mp.jpg")  // 5120x3840
        let specs = [
            variant("thumb", [resize(200, 200, fit: .cover)]),
            variant("small", [resize(640, 0, fit: .inside)], format: .webp),
            variant("large", [resize(2048, 2048, fit: .inside)]),
        ]
        let (outputs, summary) = try runJob(source, specs)
        #expect(summary.shrinkOnLoad == 2)
        #expect(outputs.map(\.size) == [Size(width: 200, height: 200), Size(width: 640, height: 480), Size(width: 2048, height: 1536)])
        let (thumbOnly, thumbSummary) = try runJob(source, [specs[0]])
        #expect(thumbSummary.shrinkOnLoad == 8)
        // A variant that needs exactly a quarter of the source is the 1/4 scaled decode itself.
        let (quarter, quarterSummary) = try runJob(source, [variant("medium", [resize(1280, 1280, fit: .inside)])])
        #expect(quarterSummary.shrinkOnLoad == 4)
        #expect(quarter.map(\.size) == [Size(width: 1280, height: 960)])
        // Made from the 640 px frame or straight from the source, the thumbnail looks the same.
        #expect(try meanAbsDifference(try decode(outputs[0].data).image, try decode(thumbOnly[0].data).image) < 4)
    }

    @Test("when every variant scales down, the decode goes straight to the largest one's frame")
    func decodeTarget() throws {
        let source = Size(width: 5120, height: 2880)
        func plans(_ specs: [Prism_V1_VariantSpec], oriented: Size = source) throws -> [VariantPlan] {
            try specs.enumerated().map { index, spec in
                try VariantPlan(spec: spec, index: index, source: source, orientedSource: oriented, sourceFormat: .png, limits: ImagingLimits())
            }
        }
        let recipe = [
            variant("thumb", [resize(200, 200, fit: .cover)]),
            variant("small", [resize(640, 640, fit: .inside)], format: .webp),
            variant("large", [resize(2048, 2048, fit: .inside)]),
        ]
        #expect(JobRun.decodeTarget(plans: try plans(recipe), decoded: source, transposed: false) == Size(width: 2048, height: 1152))
        // EXIF orientation 6: the frame is decoded unrotated, then turned.
        let upright = try plans(recipe, oriented: source.transposed)
        #expect(JobRun.decodeTarget(plans: upright, decoded: source, transposed: true) == Size(width: 2048, height: 1152))
        // A variant of the whole source, or a frame barely smaller than the decode: no extra pass.
        #expect(JobRun.decodeTarget(plans: try plans(recipe + [variant("full", [])]), decoded: source, transposed: false) == nil)
        #expect(JobRun.decodeTarget(plans: try plans([variant("big", [resize(5000, 5000, fit: .inside)]), recipe[0]]), decoded: source, transposed: false) == nil)
        // A lone variant resizes inside its encode, overlapping the encoder.
        #expect(JobRun.decodeTarget(plans: try plans([recipe[2]]), decoded: source, transposed: false) == nil)
        // Shrink-on-load already made the decode as small as the frame.
        #expect(JobRun.decodeTarget(plans: try plans(recipe), decoded: Size(width: 2048, height: 1152), transposed: false) == nil)
    }

    @Test("a PNG decoded straight to the largest frame gives the same variants")
    func pngDecodedToFrame() throws {
        let source = try TestImages.edge("large-photo.png")
        let specs = [
            variant("thumb", [resize(200, 200, fit: .cover)]),
            variant("large", [resize(2048, 2048, fit: .inside)]),
        ]
        let (outputs, _) = try runJob(source, specs)
        // The same variant made alone from the full decode (a whole-source variant in the job
        // keeps the full frame).
        let (full, _) = try runJob(source, specs + [variant("copy", [])])
        #expect(outputs.map(\.size) == Array(full.prefix(2)).map(\.size))
        for (a, b) in zip(outputs, full) {
            #expect(try meanAbsDifference(try decode(a.data).image, try decode(b.data).image) < 1, "variant \(a.index)")
        }
    }
}

/// The bytes of an encoded image that can carry metadata: for PNG every chunk but the pixel
/// data (IDAT), with its type; for other formats all of it.
func metadataBytes(_ data: Data, format: Prism_V1_Format) -> Data {
    guard format == .png else { return data }
    let bytes = [UInt8](data)
    var out = Data()
    var offset = 8  // the PNG signature
    while offset + 8 <= bytes.count {
        let length = bytes[offset..<(offset + 4)].reduce(0) { $0 << 8 | Int($1) }
        let end = min(bytes.count, offset + 12 + length)
        if bytes[(offset + 4)..<(offset + 8)] != [0x49, 0x44, 0x41, 0x54] {  // IDAT
            out.append(contentsOf: bytes[(offset + 4)..<end])
        }
        offset = end
    }
    return out
}

/// The process's peak resident set so far (Linux VmHWM), in bytes.
///
/// - Throws: where /proc/self/status is missing or has no VmHWM line: a check built on a
///   measurement that cannot be made must fail, not pass on a zero.
func peakResidentBytes() throws -> Int {
    let path = "/proc/self/status"
    guard let status = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw DecodeFailure(detail: "cannot read \(path): peak memory cannot be measured on this machine")
    }
    guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kilobytes = line.split(separator: " ").compactMap({ Int($0) }).first else {
        throw DecodeFailure(detail: "\(path) has no VmHWM line: peak memory cannot be measured on this machine")
    }
    return kilobytes * 1024
}
