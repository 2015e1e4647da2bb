public import Foundation
public import PrismProto
import PrismWire
import SwiftProtobuf

/// A named set of variants made for every upload that asks for it.
public struct Recipe: Sendable {
    public var name: String
    public var description: String
    public var variants: [Prism_V1_VariantSpec]
    /// A BlurHash in every manifest's placeholder, with these components; nil for none.
    public var blurHash: Prism_V1_BlurHashSpec?

    public init(name: String, description: String, variants: [Prism_V1_VariantSpec], blurHash: Prism_V1_BlurHashSpec? = nil) {
        self.name = name
        self.description = description
        self.variants = variants
        self.blurHash = blurHash
    }
}

/// The recipes a gateway knows, by name.
public struct RecipeBook: Sendable {
    public private(set) var recipes: [String: Recipe]
    public static let defaultName = "default"

    /// The built-in recipe: what most apps need for photos.
    public static let builtIn = Recipe(
        name: defaultName,
        description: "thumb 200x200 cover JPEG, small 640 wide WebP, medium and large inside 1280 and 2048 JPEG, blur 640 with sigma 8",
        variants: [
            spec("thumb", [.resize(200, 200, .cover)], .jpeg, quality: 80),
            spec("small", [.resize(640, 0, .inside, withoutEnlargement: true)], .webp, quality: 80),
            spec("medium", [.resize(1280, 1280, .inside, withoutEnlargement: true)], .jpeg, quality: 82),
            spec("large", [.resize(2048, 2048, .inside, withoutEnlargement: true)], .jpeg, quality: 85),
            spec("blur", [.resize(640, 640, .inside, withoutEnlargement: true), .blur(8)], .jpeg, quality: 70),
        ]
    )

    public init(recipes: [Recipe]) throws(RecipeError) {
        var byName: [String: Recipe] = [:]
        for recipe in recipes {
            try Self.validate(recipe)
            guard byName[recipe.name] == nil else { throw RecipeError("recipe \"\(recipe.name)\" is defined twice") }
            byName[recipe.name] = recipe
        }
        self.recipes = byName
    }

    /// The built-in recipe plus those in a JSON file (which may redefine "default"):
    ///
    /// ```json
    /// {"recipes": {"avatar": {"description": "...", "variants": [
    ///     {"name": "small", "operations": [{"resize": {"width": 64, "height": 64}}],
    ///      "output": {"format": "WEBP", "quality": 75}}]}}}
    /// ```
    /// Each variant is a `prism.v1.VariantSpec` in protobuf's JSON mapping (Protos/). A recipe
    /// may add `"blurhash": {"x": 4, "y": 3}` (or `true` for 4 x 3): every manifest's
    /// placeholder then carries a BlurHash with that many components.
    public static func load(file: String?) throws(RecipeError) -> RecipeBook {
        var recipes = [String: Recipe]()
        recipes[defaultName] = builtIn
        if let file {
            guard let data = FileManager.default.contents(atPath: file) else {
                throw RecipeError("cannot read the recipe file \(file)")
            }
            for recipe in try Self.parse(data) { recipes[recipe.name] = recipe }
        }
        return try RecipeBook(recipes: Array(recipes.values))
    }

    static func parse(_ data: Data) throws(RecipeError) -> [Recipe] {
        guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
              let entries = root["recipes"] as? [String: Any] else {
            throw RecipeError("the recipe file must be a JSON object with a \"recipes\" object")
        }
        var recipes: [Recipe] = []
        for (name, value) in entries {
            guard let entry = value as? [String: Any], let variants = entry["variants"] as? [Any] else {
                throw RecipeError("recipe \"\(name)\" needs a \"variants\" array")
            }
            var specs: [Prism_V1_VariantSpec] = []
            for (index, variant) in variants.enumerated() {
                do {
                    let json = try JSONSerialization.data(withJSONObject: variant)
                    specs.append(try Prism_V1_VariantSpec(jsonUTF8Data: json))
                } catch {
                    throw RecipeError("recipe \"\(name)\", variant \(index + 1): not a valid VariantSpec (\(error))")
                }
            }
            recipes.append(Recipe(
                name: name,
                description: entry["description"] as? String ?? "",
                variants: specs,
                blurHash: try Self.parseBlurHash(entry["blurhash"], recipe: name)
            ))
        }
        return recipes
    }

    /// `"blurhash"`: absent or false for none, true for 4 x 3, or `{"x": 1-9, "y": 1-9}`.
    static func parseBlurHash(_ value: Any?, recipe: String) throws(RecipeError) -> Prism_V1_BlurHashSpec? {
        let problem = RecipeError("recipe \"\(recipe)\": \"blurhash\" must be true, false or {\"x\": 1-9, \"y\": 1-9} (components across and down; 4 x 3 is usual)")
        guard let value else { return nil }
        var spec = Prism_V1_BlurHashSpec()
        if !(value is [String: Any]), let flag = value as? Bool {
            guard flag else { return nil }
            (spec.xComponents, spec.yComponents) = (4, 3)
            return spec
        }
        guard let object = value as? [String: Any], Set(object.keys).isSubset(of: ["x", "y"]),
              let x = object["x"] as? Int, let y = object["y"] as? Int,
              (1...9).contains(x), (1...9).contains(y) else { throw problem }
        (spec.xComponents, spec.yComponents) = (UInt32(x), UInt32(y))
        return spec
    }

    static func validate(_ recipe: Recipe) throws(RecipeError) {
        guard Self.isSafeName(recipe.name) else {
            throw RecipeError("recipe name \"\(recipe.name)\" must be 1-64 characters of a-z, 0-9, - and _")
        }
        guard !recipe.variants.isEmpty else { throw RecipeError("recipe \"\(recipe.name)\" has no variants") }
        var seen = Set<String>()
        for spec in recipe.variants {
            guard Self.isSafeName(spec.name), spec.name != "original", spec.name != "manifest" else {
                throw RecipeError("recipe \"\(recipe.name)\": variant name \"\(spec.name)\" must be 1-64 characters of a-z, 0-9, - and _, and not original or manifest")
            }
            guard seen.insert(spec.name).inserted else {
                throw RecipeError("recipe \"\(recipe.name)\": variant \"\(spec.name)\" appears twice")
            }
            if let problem = VariantSpecRules.problem(in: spec) {
                throw RecipeError("recipe \"\(recipe.name)\", variant \"\(spec.name)\": \(problem)")
            }
            switch spec.output.format {
            case .jpeg, .png, .webp, .avif, .gif: break
            default: throw RecipeError("recipe \"\(recipe.name)\", variant \"\(spec.name)\": output.format must be JPEG, PNG, WEBP, AVIF or GIF")
            }
        }
    }

    static func isSafeName(_ name: String) -> Bool {
        !name.isEmpty && name.utf8.count <= 64 && name.utf8.allSatisfy { (0x61...0x7A).contains($0) || (0x30...0x39).contains($0) || $0 == 0x2D || $0 == 0x5F }
    }

    /// The recipes as JSON for GET /v1/recipes, variants in protobuf's JSON mapping.
    public func json() -> Data {
        var options = JSONEncodingOptions()
        options.alwaysPrintEnumsAsInts = false
        let items = self.recipes.values.sorted { $0.name < $1.name }.map { recipe -> String in
            let variants = recipe.variants.map { (try? $0.jsonString(options: options)) ?? "{}" }.joined(separator: ",")
            let blurHash = recipe.blurHash.map { ",\"blurhash\":{\"x\":\($0.xComponents),\"y\":\($0.yComponents)}" } ?? ""
            return "{\"name\":\(jsonQuote(recipe.name)),\"description\":\(jsonQuote(recipe.description)),\"variants\":[\(variants)]\(blurHash)}"
        }
        return Data("{\"recipes\":[\(items.joined(separator: ","))]}".utf8)
    }
}

public struct RecipeError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

func jsonQuote(_ text: String) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: [text], options: [.withoutEscapingSlashes])) ?? Data("[\"\"]".utf8)
    return String(decoding: data.dropFirst().dropLast(), as: UTF8.self)
}

// MARK: Building specs in code

enum Op {
    case resize(UInt32, UInt32, Prism_V1_Fit, withoutEnlargement: Bool = false)
    case blur(Float)
}

func spec(_ name: String, _ ops: [Op], _ format: Prism_V1_Format, quality: UInt32) -> Prism_V1_VariantSpec {
    var spec = Prism_V1_VariantSpec()
    spec.name = name
    spec.operations = ops.map { op in
        var operation = Prism_V1_Operation()
        switch op {
        case .resize(let width, let height, let fit, let withoutEnlargement):
            operation.resize.width = width
            operation.resize.height = height
            operation.resize.fit = fit
            operation.resize.withoutEnlargement = withoutEnlargement
        case .blur(let sigma):
            operation.blur.sigma = sigma
        }
        return operation
    }
    spec.output.format = format
    spec.output.quality = quality
    return spec
}
