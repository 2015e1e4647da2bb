public import PrismProto

/// The rules a variant spec must follow whatever image it is applied to. Shared by the
/// processor (which enforces them per call) and the gateway (which checks recipes at start-up,
/// so a bad recipe fails the deploy rather than every upload).
public enum VariantSpecRules {
    public struct Problem: Sendable, CustomStringConvertible {
        public var message: String
        /// True when the spec is well-formed but asks for more than the limits allow.
        public var exceedsLimits: Bool
        public var description: String { self.message }
    }

    /// The first rule `spec` breaks, or nil.
    public static func problem(
        in spec: Prism_V1_VariantSpec,
        maxOutputDimension: Int = 16_384,
        maxOperations: Int = 32
    ) -> Problem? {
        func bad(_ text: String) -> Problem { Problem(message: text, exceedsLimits: false) }
        if let problem = Self.nameProblem(spec.name) { return bad(problem) }
        guard spec.operations.count <= maxOperations else {
            return bad("it has \(spec.operations.count) operations; at most \(maxOperations) are allowed.")
        }
        for op in spec.operations {
            switch op.op {
            case .resize(let r):
                guard r.width > 0 || r.height > 0 else { return bad("resize needs a width, a height or both.") }
                guard r.width <= maxOutputDimension, r.height <= maxOutputDimension else {
                    return Problem(message: "resize to \(r.width)x\(r.height) exceeds the \(maxOutputDimension)-pixel dimension limit.", exceedsLimits: true)
                }
                if case .UNRECOGNIZED(let v) = r.fit { return bad("unknown fit \(v).") }
                if case .UNRECOGNIZED(let v) = r.position { return bad("unknown position \(v).") }
                if r.hasBackground, let problem = colorProblem(r.background) { return bad(problem) }
            case .crop(let c):
                guard c.width > 0, c.height > 0 else { return bad("crop needs a width and a height.") }
                if case .UNRECOGNIZED(let v) = c.gravity { return bad("unknown gravity \(v).") }
            case .extract(let e):
                guard e.width > 0, e.height > 0 else { return bad("extract needs a width and a height.") }
            case .blur(let b):
                guard b.sigma.isFinite, b.sigma > 0, b.sigma <= 1000 else { return bad("blur sigma must be more than 0 and at most 1000.") }
            case .sharpen(let s):
                guard s.sigma.isFinite, s.sigma >= 0, s.sigma <= 10 else { return bad("sharpen sigma must be between 0 and 10.") }
            case .rotate(let r):
                guard r.angle % 90 == 0, r.angle < 360 else { return bad("rotate angle must be 0, 90, 180 or 270, not \(r.angle).") }
            case .flatten(let f):
                if f.hasBackground, let problem = colorProblem(f.background) { return bad(problem) }
            case .flip, .flop, .grayscale:
                break
            case nil:
                return bad("an operation is empty or of a kind this processor does not know.")
            }
        }
        let output = spec.output
        switch output.format {
        case .unspecified, .jpeg, .png, .webp, .avif, .gif: break
        case .tiff, .heic: return bad("\(output.format) can be read but not written; choose JPEG, PNG, WebP, AVIF or GIF.")
        case .UNRECOGNIZED(let v): return bad("unknown output format \(v).")
        }
        guard output.quality <= 100 else { return bad("quality must be between 1 and 100.") }
        let maxEffort = Self.maxEffort(output.format)
        guard output.effort <= maxEffort else {
            let format = output.format == .unspecified ? "" : " for \(output.format)"
            return bad("effort\(format) must be between 0 and \(maxEffort), not \(output.effort).")
        }
        return nil
    }

    /// Why `name` cannot name a variant, or nil. Names become parts of storage keys and appear
    /// in errors, so they are held to the proto's rule: `[a-z0-9_-]`, at most 64 bytes. An
    /// empty name is allowed; the variant is then named by its position.
    public static func nameProblem(_ name: String) -> String? {
        guard name.utf8.count <= PrismProtocol.maxVariantNameBytes else {
            return "the name is \(name.utf8.count) bytes long; at most \(PrismProtocol.maxVariantNameBytes) are allowed."
        }
        let allowed = name.utf8.allSatisfy { byte in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(byte) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte)
                || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "-")
        }
        return allowed ? nil : "the name may contain only a-z, 0-9, _ and -."
    }

    /// The highest `Output.effort` a format takes. PNG's effort is the zlib level (0-9), WebP's
    /// encoder method 0-6, AVIF's 0-9. JPEG and GIF have no effort setting and ignore it; an
    /// unspecified format may turn out to be any of them, so it allows 0-9 (and WebP then uses
    /// at most 6).
    public static func maxEffort(_ format: Prism_V1_Format) -> UInt32 {
        format == .webp ? 6 : 9
    }

    private static func colorProblem(_ c: Prism_V1_Color) -> String? {
        c.r <= 255 && c.g <= 255 && c.b <= 255 ? nil : "colour components must be 0 to 255."
    }
}
