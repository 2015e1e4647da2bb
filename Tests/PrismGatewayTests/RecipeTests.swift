import Foundation
@testable import PrismGateway
import PrismClient
import PrismProto
import PrismTestSupport
import Testing

@Suite("Recipes, plans and manifests")
struct RecipeTests {
    @Test("the built-in default recipe is valid, has the documented names, and is listed as it runs")
    func builtIn() throws {
        let book = try RecipeBook.load(file: nil)
        let recipe = try #require(book.recipes["default"])
        // The names clients build URLs from (README.md, docs/configuration.md). What each variant
        // makes of a real photo, sizes and formats, is checked in Tests/system/test_gateway.py.
        #expect(recipe.variants.map(\.name) == ["thumb", "small", "medium", "large", "blur"])
        // GET /v1/recipes shows what runs: the listing reads back as the very same specs.
        let listing = try JSONSerialization.jsonObject(with: book.json()) as! [String: Any]
        let listed = try #require((listing["recipes"] as! [[String: Any]]).first { $0["name"] as? String == "default" })
        let file = try JSONSerialization.data(withJSONObject: ["recipes": ["default": ["variants": listed["variants"]!]]])
        let reread = try #require(try RecipeBook.parse(file).first)
        #expect(reread.variants == recipe.variants)
    }

    @Test("a recipe file is read in protobuf's JSON mapping")
    func file() throws {
        let json = #"{"recipes":{"avatar":{"description":"tiny","variants":[{"name":"s64","operations":[{"resize":{"width":64,"height":64,"fit":"COVER","position":"ATTENTION"}}],"output":{"format":"WEBP","quality":70}}]}}}"#
        let recipes = try RecipeBook.parse(Data(json.utf8))
        let avatar = try #require(recipes.first)
        #expect(avatar.name == "avatar" && avatar.description == "tiny")
        #expect(avatar.variants[0].operations[0].resize.position == .attention)
        #expect(avatar.variants[0].output.format == .webp)
        let book = try RecipeBook(recipes: recipes)
        let listed = try JSONSerialization.jsonObject(with: book.json()) as! [String: Any]
        #expect((listed["recipes"] as! [[String: Any]]).first?["name"] as? String == "avatar")
    }

    @Test("a recipe's blurhash option: true is 4 x 3, an object gives the counts, false or absent is none; it is listed")
    func blurHashOption() throws {
        func recipe(_ option: String) throws -> Recipe {
            let json = ##"{"recipes":{"r":{"## + option + ##""variants":[{"name":"a","output":{"format":"JPEG"}}]}}}"##
            return try #require(try RecipeBook.parse(Data(json.utf8)).first)
        }
        #expect(try recipe("").blurHash == nil)
        #expect(try recipe(#""blurhash":false,"#).blurHash == nil)
        let usual = try #require(try recipe(#""blurhash":true,"#).blurHash)
        #expect((usual.xComponents, usual.yComponents) == (4, 3))
        let chosen = try recipe(#""blurhash":{"x":9,"y":1},"#)
        #expect((chosen.blurHash?.xComponents, chosen.blurHash?.yComponents) == (9, 1))
        let listing = try JSONSerialization.jsonObject(with: try RecipeBook(recipes: [chosen]).json()) as! [String: Any]
        let listed = try #require((listing["recipes"] as! [[String: Any]]).first)
        #expect(listed["blurhash"] as? [String: Int] == ["x": 9, "y": 1])
    }

    @Test("bad recipes are refused at start-up with the reason", arguments: [
        (#"{"recipes":{"Bad Name":{"variants":[{"name":"a","operations":[],"output":{"format":"JPEG"}}]}}}"#, "recipe name"),
        (#"{"recipes":{"r":{"variants":[{"name":"original","output":{"format":"JPEG"}}]}}}"#, "variant name"),
        (#"{"recipes":{"r":{"variants":[{"name":"a","output":{"format":"JPEG"}},{"name":"a","output":{"format":"PNG"}}]}}}"#, "appears twice"),
        (#"{"recipes":{"r":{"variants":[{"name":"a","operations":[{"blur":{"sigma":0}}],"output":{"format":"JPEG"}}]}}}"#, "blur sigma"),
        (#"{"recipes":{"r":{"variants":[{"name":"a","output":{}}]}}}"#, "output.format"),
        (#"{"recipes":{"r":{"variants":[{"name":"a","operations":[{"spin":{}}]}]}}}"#, "not a valid VariantSpec"),
        (#"{"recipes":{"r":{"variants":[]}}}"#, "no variants"),
        (#"{"recipes":{"r":{"blurhash":{"x":0,"y":3},"variants":[{"name":"a","output":{"format":"JPEG"}}]}}}"#, "1-9"),
        (#"{"recipes":{"r":{"blurhash":{"x":4},"variants":[{"name":"a","output":{"format":"JPEG"}}]}}}"#, "blurhash"),
        (#"{"recipes":{"r":{"blurhash":{"x":4,"y":3,"punch":2},"variants":[{"name":"a","output":{"format":"JPEG"}}]}}}"#, "blurhash"),
        (#"{"recipes":{"r":{"blurhash":"4x3","variants":[{"name":"a","output":{"format":"JPEG"}}]}}}"#, "blurhash"),
    ])
    func badRecipes(json: String, reason: String) {
        do {
            _ = try RecipeBook(recipes: try RecipeBook.parse(Data(json.utf8)))
            Issue.record("accepted: \(json)")
        } catch {
            #expect(error.description.contains(reason), "\(error)")
        }
    }

    @Test("idle processors: JPEG is spread over them, PNG gets one call using them as threads")
    func planning() throws {
        let variants = RecipeBook.builtIn.variants
        let all = Array(variants.indices)
        let idle = [ProcessorLoad(address: "a", inFlight: 0, workers: 1), ProcessorLoad(address: "b", inFlight: 0, workers: 1)]
        let spread = VariantPlanner.calls(variants, loads: idle, split: .auto, shrinksOnLoad: true)
        #expect(spread.count == 2)
        #expect(spread.allSatisfy { $0.threads == 1 })
        #expect(Set(spread.flatMap(\.members)) == Set(all))
        // The 2048 px variant (index 3) is the most expensive: it gets a call of its own.
        #expect(spread.contains { $0.members == [3] })
        #expect(VariantPlanner.calls(variants, loads: idle, split: .auto, shrinksOnLoad: false) == [PlannedCall(members: all, threads: 2)])
        // One processor with two idle workers: nothing to spread over, so threads.
        let one = [ProcessorLoad(address: "a", inFlight: 0, workers: 2)]
        #expect(VariantPlanner.calls(variants, loads: one, split: .auto, shrinksOnLoad: true) == [PlannedCall(members: all, threads: 2)])
        let half = [ProcessorLoad(address: "a", inFlight: 1, workers: 2), ProcessorLoad(address: "b", inFlight: 3, workers: 2)]
        #expect(VariantPlanner.calls(variants, loads: half, split: .auto, shrinksOnLoad: true) == [PlannedCall(members: all, threads: 1)])
        let busy = [ProcessorLoad(address: "a", inFlight: 2, workers: 2), ProcessorLoad(address: "b", inFlight: 5, workers: 2)]
        for shrinks in [true, false] {
            #expect(VariantPlanner.calls(variants, loads: busy, split: .auto, shrinksOnLoad: shrinks) == [PlannedCall(members: all, threads: 1)])
            #expect(VariantPlanner.calls(variants, loads: [], split: .auto, shrinksOnLoad: shrinks) == [PlannedCall(members: all, threads: 1)])
            #expect(VariantPlanner.calls(variants, loads: idle, split: .never, shrinksOnLoad: shrinks) == [PlannedCall(members: all, threads: 1)])
        }
        #expect(VariantPlanner.calls([variants[0]], loads: idle, split: .auto, shrinksOnLoad: true) == [PlannedCall(members: [0], threads: 2)])
    }

    @Test("with the source's size known, the split is chosen by estimated cost")
    func costedSplit() throws {
        let variants = RecipeBook.builtIn.variants  // thumb, small, medium, large, blur
        let idle = [ProcessorLoad(address: "a", inFlight: 0, workers: 1), ProcessorLoad(address: "b", inFlight: 0, workers: 1)]
        func plan(_ width: Int, _ height: Int, bytes: Int) -> [PlannedCall] {
            let source = SourceHeader(width: width, height: height, bytes: bytes, format: .sequentialJPEG)
            let calls = VariantPlanner.calls(variants, loads: idle, split: .auto, shrinksOnLoad: true, source: source)
            #expect(calls.flatMap(\.members).sorted() == Array(variants.indices), "each variant in exactly one call")
            return calls
        }
        // 1920x1200: the 1280 px variant needs a full decode anyway, so it goes with the 2048 px
        // one; the 640 and 200 px ones decode at half size. The placeholder goes with them
        // (first): their frames are the small ones.
        #expect(plan(1920, 1200, bytes: 1_150_000) == [PlannedCall(members: [0, 1, 4], threads: 1), PlannedCall(members: [2, 3], threads: 1)])
        // 2560x1600: the 1280 px variant is exactly half, so everything but the 2048 px one
        // decodes at half size; the 2048 px call is clearly the longer and gets a second thread.
        #expect(plan(2560, 1600, bytes: 880_000) == [PlannedCall(members: [0, 1, 2, 4], threads: 1), PlannedCall(members: [3], threads: 2)])
        // Not busy enough to split, or a format that does not shrink on load: as before.
        let source = SourceHeader(width: 2560, height: 1600, bytes: 880_000, format: .sequentialJPEG)
        let busy = [ProcessorLoad(address: "a", inFlight: 1, workers: 1), ProcessorLoad(address: "b", inFlight: 0, workers: 1)]
        #expect(VariantPlanner.calls(variants, loads: busy, split: .auto, shrinksOnLoad: true, source: source) == [PlannedCall(members: Array(variants.indices), threads: 1)])
        #expect(VariantPlanner.calls(variants, loads: idle, split: .auto, shrinksOnLoad: false, source: nil) == [PlannedCall(members: Array(variants.indices), threads: 2)])
        // The placeholder's call comes first whatever the recipe's order: the 2048 px variant
        // listed first still gets the second call, the placeholder goes with the small frames.
        let reordered = [variants[3], variants[0], variants[1], variants[2], variants[4]]
        #expect(
            VariantPlanner.calls(reordered, loads: idle, split: .auto, shrinksOnLoad: true, source: source)
                == [PlannedCall(members: [1, 2, 3, 4], threads: 1), PlannedCall(members: [0], threads: 2)]
        )
        // Three idle processors: up to three calls, still every variant once.
        let three = idle + [ProcessorLoad(address: "c", inFlight: 0, workers: 1)]
        let spread = VariantPlanner.calls(variants, loads: three, split: .auto, shrinksOnLoad: true, source: source)
        #expect(spread.count >= 2 && spread.count <= 3)
        #expect(spread.flatMap(\.members).sorted() == Array(variants.indices))
        // A recipe too large to try every grouping falls back to the fixed per-variant cost.
        let many = Array(repeating: variants[0], count: 9)
        #expect(VariantPlanner.cheapestGroups(many, into: 2, source: source) == nil)
    }

    @Test("the planner reads the size from baseline JPEG and WebP headers")
    func headers() throws {
        let photo = try TestImages.photo("Blinds.jpg")
        #expect(ImageFormat.header(photo, sniffed: "jpeg") == SourceHeader(width: 1920, height: 1200, bytes: photo.count, format: .sequentialJPEG))
        // A progressive JPEG is never split, so it needs no estimate.
        var progressive = Data([0xFF, 0xD8, 0xFF, 0xC2, 0x00, 0x11, 0x08, 0x06, 0x40, 0x0A, 0x00, 0x03])
        #expect(ImageFormat.header(progressive, sniffed: "jpeg") == nil)
        progressive[3] = 0xC0
        #expect(ImageFormat.header(progressive, sniffed: "jpeg") == SourceHeader(width: 2560, height: 1600, bytes: 12, format: .sequentialJPEG))
        // WebP: lossy (VP8), lossless (VP8L) and extended (VP8X) first chunks.
        func riff(_ chunk: String, _ payload: [UInt8]) -> Data {
            Data(Array("RIFF".utf8) + [0, 0, 0, 0] + Array("WEBP".utf8) + Array(chunk.utf8) + [0, 0, 0, 0] + payload)
        }
        let lossy = riff("VP8 ", [0, 0, 0, 0x9D, 0x01, 0x2A, 0x00, 0x0A, 0x40, 0x06])
        #expect(ImageFormat.webpSize(lossy)! == (2560, 1600))
        // VP8L: 0x2F, then width-1 and height-1 in 14 bits each: 639 and 399.
        let bits = 639 | 399 << 14
        let lossless = riff("VP8L", [0x2F] + (0..<4).map { UInt8(bits >> (8 * $0) & 0xFF) } + [0, 0, 0, 0, 0])
        #expect(ImageFormat.webpSize(lossless)! == (640, 400))
        let extended = riff("VP8X", [0, 0, 0, 0, 0xFF, 0x07, 0x00, 0x3F, 0x06, 0x00, 0, 0])
        #expect(ImageFormat.webpSize(extended)! == (2048, 1600))
        #expect(ImageFormat.webpSize(riff("VP8 ", [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])) == nil)  // no start code
        #expect(ImageFormat.header(Data([0x89, 0x50, 0x4E, 0x47]), sniffed: "png") == nil)
        // What cannot be read gives no estimate (the split falls back to fixed costs), never a
        // crash: a frame header cut short, a zero height, a short WebP, a bad VP8L signature,
        // an unknown first chunk.
        #expect(ImageFormat.header(Data([0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x06]), sniffed: "jpeg") == nil)
        #expect(ImageFormat.header(Data([0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x00, 0x00, 0x0A, 0x00, 0x03]), sniffed: "jpeg") == nil)
        #expect(ImageFormat.header(lossy.prefix(29), sniffed: "webp") == nil)
        var badSignature = lossless
        badSignature[20] = 0x2E
        #expect(ImageFormat.webpSize(badSignature) == nil)
        #expect(ImageFormat.webpSize(riff("ALPH", Array(repeating: 0, count: 10))) == nil)
        // A body of fill bytes after SOI is given up on after a bounded walk, not read to its end.
        let fill = Data([0xFF, 0xD8] + Array(repeating: 0xFF, count: 8 << 20) + [0xC0, 0x00, 0x11, 0x08, 0x06, 0x40, 0x0A, 0x00, 0x03])
        #expect(ImageFormat.jpegFrame(fill) == nil)
        // A few fill bytes, as real files have, are fine.
        let fewFill = Data([0xFF, 0xD8, 0xFF, 0xFF, 0xFF, 0xC0, 0x00, 0x11, 0x08, 0x06, 0x40, 0x0A, 0x00, 0x03])
        #expect(ImageFormat.header(fewFill, sniffed: "jpeg") == SourceHeader(width: 2560, height: 1600, bytes: fewFill.count, format: .sequentialJPEG))
    }

    @Test("baseline JPEG and WebP shrink cheaply on load; progressive JPEG and PNG do not")
    func cheapShrink() throws {
        // SOI, an APP0 segment, a fill byte, then the frame header.
        func jpeg(_ frame: UInt8) -> Data {
            Data([0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10] + Array(repeating: 0x4A, count: 14) + [0xFF, 0xFF, frame, 0x00, 0x11, 0x08])
        }
        #expect(ImageFormat.jpegFrameType(jpeg(0xC0)) == .sequential)
        #expect(ImageFormat.jpegFrameType(jpeg(0xC2)) == .progressive)
        #expect(ImageFormat.jpegFrameType(jpeg(0xC3)) == .other)
        #expect(ImageFormat.jpegFrameType(jpeg(0xDA)) == nil)
        #expect(ImageFormat.jpegFrameType(Data([0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF])) == nil)  // a length past the end
        #expect(ImageFormat.shrinksCheaplyOnLoad(jpeg(0xC0), sniffed: ImageFormat.sniff(jpeg(0xC0))))
        #expect(!ImageFormat.shrinksCheaplyOnLoad(jpeg(0xC2), sniffed: "jpeg"))
        #expect(ImageFormat.shrinksCheaplyOnLoad(Data(), sniffed: "webp"))
        #expect(!ImageFormat.shrinksCheaplyOnLoad(Data([0x89, 0x50, 0x4E, 0x47]), sniffed: "png"))
    }

    @Test("split always spreads over every processor, the 2048 px variant in a call of its own")
    func splitAlways() throws {
        let variants = RecipeBook.builtIn.variants
        let busy = [ProcessorLoad(address: "a", inFlight: 2, workers: 2), ProcessorLoad(address: "b", inFlight: 5, workers: 2)]
        let calls = VariantPlanner.calls(variants, loads: busy, split: .always, shrinksOnLoad: false)
        #expect(calls.count == 2)
        #expect(calls.allSatisfy { $0.threads == 1 })
        #expect(Set(calls.flatMap(\.members)) == Set(variants.indices))
        #expect(calls.contains { $0.members == [3] })
        #expect(VariantPlanner.calls([variants[0]], loads: busy, split: .always, shrinksOnLoad: true) == [PlannedCall(members: [0], threads: 1)])
    }

    @Test("ids are UUIDv7, in time order; anything else is not an id")
    func ids() throws {
        let a = UploadID.make()
        Thread.sleep(forTimeInterval: 0.002)
        let b = UploadID.make()
        #expect(UploadID.isValid(a) && UploadID.isValid(b))
        #expect(a < b)
        #expect(!UploadID.isValid("../../etc/passwd"))
        #expect(!UploadID.isValid(a.uppercased()))
        #expect(!UploadID.isValid(String(a.dropLast())))
    }

    @Test("the manifest is snake_case JSON that reads back the same")
    func manifest() throws {
        let manifest = Manifest(
            id: "x", recipe: "default", createdAt: "2026-01-01T00:00:00Z",
            original: .init(key: "images/x/original.jpg", url: "u", width: 1, height: 2, format: "jpeg", bytes: 3, sha256: "s"),
            variants: [.init(name: "thumb", key: "images/x/thumb.jpg", url: "u", width: 1, height: 1, format: "jpeg", bytes: 1, etag: "\"e\"")]
        )
        let json = String(decoding: manifest.encoded(), as: UTF8.self)
        #expect(json.contains("\"created_at\":\"2026-01-01T00:00:00Z\""))
        #expect(try JSONDecoder().decode(Manifest.self, from: manifest.encoded()) == manifest)
    }

    @Test("formats are recognised from their first bytes")
    func sniffing() throws {
        #expect(ImageFormat.sniff(Data([0xFF, 0xD8, 0xFF, 0xE0])) == "jpeg")
        #expect(ImageFormat.sniff(Data([0x89, 0x50, 0x4E, 0x47, 0x0D])) == "png")
        #expect(ImageFormat.sniff(Data("RIFF\0\0\0\0WEBPVP8 ".utf8)) == "webp")
        #expect(ImageFormat.sniff(Data("\0\0\0\u{1c}ftypavif".utf8)) == "avif")
        #expect(ImageFormat.sniff(Data("hello".utf8)) == "unknown")
    }

    @Test("header parameters, quoted or not")
    func parameters() {
        #expect(parameter("boundary", in: "multipart/form-data; boundary=abc") == "abc")
        #expect(parameter("name", in: "form-data; name=\"file\"; filename=\"a b.jpg\"") == "file")
        #expect(parameter("filename", in: "form-data; name=\"file\"; filename=\"a b.jpg\"") == "a b.jpg")
        #expect(parameter("boundary", in: "multipart/form-data") == nil)
    }
}
