import Foundation
@testable import PrismImaging
import PrismProto
import PrismTestSupport
import Testing

/// ThumbHash and the dominant colour against independent implementations: the PyPI
/// `thumbhash-python` port of the author's encoder, and a histogram written in Python, both fed
/// the same RGBA pixels (Pillow's 100 px scaling of real photos, some given an alpha ramp).
@Suite("Placeholders")
struct PlaceholderTests {
    struct Reference: Decodable {
        let w: Int
        let h: Int
        let rgba: String
        let hash: String
        let dominant: [Int]?
    }

    static let script = #"""
    import base64, json, sys
    from PIL import Image, ImageOps
    from thumbhash.encode import rgba_to_thumbhash
    out = []
    for path in sys.argv[2:]:
        im = ImageOps.exif_transpose(Image.open(path)).convert("RGBA")
        im.thumbnail((100, 100))
        w, h = im.size
        px = bytearray(im.tobytes())
        if sys.argv[1] == "alpha":
            for y in range(h):
                for x in range(w):
                    px[(y * w + x) * 4 + 3] = (x * 255) // max(1, w - 1)
        counts = {}
        for i in range(0, len(px), 4):
            if px[i + 3] >= 128:
                cell = (px[i] >> 4, px[i + 1] >> 4, px[i + 2] >> 4)
                counts[cell] = counts.get(cell, 0) + 1
        best = min(counts, key=lambda c: (-counts[c], c)) if counts else None
        out.append({"w": w, "h": h, "rgba": base64.b64encode(bytes(px)).decode(),
                    "hash": base64.b64encode(rgba_to_thumbhash(w, h, list(px))).decode(),
                    "dominant": [c * 16 + 8 for c in best] if best else None})
    print(json.dumps(out))
    """#

    static func references(alpha: Bool) async throws -> [Reference] {
        let paths = (TestImages.photoNames.map { "photos/\($0)" } + ["edge/orient6-gps.jpg", "edge/grey.jpg", "edge/alpha.png", "edge/cmyk.jpg"])
            .map { TestImages.root.appendingPathComponent($0).path }
        let output = try await onThread { () throws -> Data in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-c", Self.script, alpha ? "alpha" : "opaque"] + paths
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw CocoaError(.executableLoad) }
            return data
        }
        return try JSONDecoder().decode([Reference].self, from: output)
    }

    @Test("ThumbHash bytes equal the reference encoder's on real photos", arguments: [false, true])
    func thumbHashMatchesReference(alpha: Bool) async throws {
        let references = try await Self.references(alpha: alpha)
        #expect(references.count == 13)
        for reference in references {
            let rgba = try #require(Data(base64Encoded: reference.rgba))
            let hash = rgba.withUnsafeBytes { ThumbHash.encode(width: reference.w, height: reference.h, rgba: $0) }
            #expect(Data(hash).base64EncodedString() == reference.hash, "\(reference.w)x\(reference.h) alpha: \(alpha)")
            let colour = rgba.withUnsafeBytes { dominantColour(width: reference.w, height: reference.h, rgba: $0) }
            #expect(colour.map { [Int($0.r), Int($0.g), Int($0.b)] } == reference.dominant)
        }
    }

    @Test("a job asked for a placeholder describes the oriented source, and only then")
    func jobPlaceholder() throws {
        #expect(startVips())
        var spec = Prism_V1_VariantSpec()
        spec.name = "small"
        var op = Prism_V1_Operation()
        op.resize.width = 640
        spec.operations = [op]
        spec.output.format = .jpeg
        // Stored landscape with EXIF orientation 6: the placeholder must be portrait.
        let source = try TestImages.edge("orient6-gps.jpg")
        var job = ImageJob(source: source, variants: [spec])
        let plain = try job.run(cancellation: JobCancellation()) { _ in }
        #expect(!plain.source.hasPlaceholder)
        job.placeholder = true
        let summary = try job.run(cancellation: JobCancellation()) { _ in }
        let placeholder = summary.source.placeholder
        #expect(summary.source.height > summary.source.width)
        // Byte 4 bit 7 of a ThumbHash is "landscape".
        #expect(placeholder.thumbhash.count >= 5 && placeholder.thumbhash.count <= 25)
        #expect(placeholder.thumbhash[4] & 0x80 == 0, "a portrait image hashes as portrait")
        #expect(!placeholder.color.transparent)
        #expect(JobRun.placeholderSize(Size(width: 4000, height: 3000)) == Size(width: 100, height: 75))
        #expect(JobRun.placeholderSize(Size(width: 40, height: 30)) == Size(width: 40, height: 30))
    }
}

/// BlurHash against the `blurhash` package on PyPI (a port of the author's Swift encoder), fed
/// the same RGB pixels: Pillow's 100 px scaling of real photos.
@Suite("BlurHash")
struct BlurHashTests {
    struct Reference: Decodable {
        let w: Int
        let h: Int
        let rgba: String
        let hashes: [String: String]
    }

    /// Component counts tried: the usual 4 x 3 on every photo, the extremes and an odd shape on
    /// the first few.
    static let script = #"""
    import base64, json, sys
    import blurhash
    from PIL import Image, ImageOps
    out = []
    for n, path in enumerate(sys.argv[1:]):
        im = ImageOps.exif_transpose(Image.open(path)).convert("RGBA")
        im.thumbnail((100, 100))
        w, h = im.size
        px = im.tobytes()
        rows = [[list(px[(y * w + x) * 4:(y * w + x) * 4 + 3]) for x in range(w)] for y in range(h)]
        shapes = [(4, 3)] + ([(1, 1), (9, 9), (5, 2)] if n < 3 else [])
        out.append({"w": w, "h": h, "rgba": base64.b64encode(px).decode(),
                    "hashes": {f"{x}x{y}": blurhash.encode(rows, components_x=x, components_y=y) for x, y in shapes}})
    print(json.dumps(out))
    """#

    @Test("BlurHash strings equal the reference encoder's on real photos")
    func matchesReference() async throws {
        let paths = (TestImages.photoNames.map { "photos/\($0)" } + ["edge/orient6-gps.jpg", "edge/grey.jpg", "edge/alpha.png"])
            .map { TestImages.root.appendingPathComponent($0).path }
        let output = try await onThread { () throws -> Data in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = ["python3", "-c", Self.script] + paths
            let pipe = Pipe()
            process.standardOutput = pipe
            try process.run()
            let data = pipe.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else { throw CocoaError(.executableLoad) }
            return data
        }
        let references = try JSONDecoder().decode([Reference].self, from: output)
        #expect(references.count == 12)
        var compared = 0
        for reference in references {
            let rgba = try #require(Data(base64Encoded: reference.rgba))
            for (shape, expected) in reference.hashes {
                let counts = shape.split(separator: "x").compactMap { Int($0) }
                let hash = rgba.withUnsafeBytes {
                    BlurHash.encode(width: reference.w, height: reference.h, rgba: $0, xComponents: counts[0], yComponents: counts[1])
                }
                #expect(hash == expected, "\(reference.w)x\(reference.h), \(shape) components")
                #expect(hash.count == 4 + 2 * counts[0] * counts[1])
                compared += 1
            }
        }
        #expect(compared == 12 + 9)
    }

    @Test("a job asked for a BlurHash puts it in the placeholder; bad component counts are refused")
    func jobBlurHash() throws {
        #expect(startVips())
        var spec = Prism_V1_VariantSpec()
        spec.name = "small"
        var op = Prism_V1_Operation()
        op.resize.width = 320
        spec.operations = [op]
        spec.output.format = .jpeg
        let source = try TestImages.photo("Dune.jpg")
        var job = ImageJob(source: source, variants: [spec], placeholder: true)
        #expect(try job.run(cancellation: JobCancellation()) { _ in }.source.placeholder.blurhash.isEmpty, "only when asked")
        var components = Prism_V1_BlurHashSpec()
        (components.xComponents, components.yComponents) = (5, 4)
        job = ImageJob(source: source, variants: [spec], blurHash: components)
        let placeholder = try job.run(cancellation: JobCancellation()) { _ in }.source.placeholder
        #expect(placeholder.blurhash.count == 4 + 2 * 5 * 4)
        #expect(placeholder.blurhash.first == "V", "the first character encodes 5 x 4: (5 - 1) + (4 - 1) x 9 = 31")
        #expect(!placeholder.thumbhash.isEmpty, "a BlurHash implies the rest of the placeholder")
        for bad in [(0, 3), (4, 10)] {
            (components.xComponents, components.yComponents) = (UInt32(bad.0), UInt32(bad.1))
            job.blurHash = components
            do {
                _ = try job.run(cancellation: JobCancellation()) { _ in }
                Issue.record("\(bad) components were accepted")
            } catch {
                #expect(error.reason == .invalidSpec)
                #expect(error.message.contains("1-9"))
            }
        }
    }
}
