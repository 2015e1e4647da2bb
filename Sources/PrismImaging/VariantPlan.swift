import PrismProto

/// A variant spec checked and worked out against one source, before any pixel is decoded.
struct VariantPlan {
    let index: Int
    let spec: Prism_V1_VariantSpec
    /// The name used in messages: the spec's, or its position.
    let label: String
    let autoOrient: Bool
    /// The first operation's plan when it is a Resize: the variant can then start from any
    /// already-made scaling of the source that is at least `leading.scaled`.
    let leading: ResizePlan?
    /// The smallest source frame this variant can be made from without losing detail.
    let needs: Size
    let output: Size
    let format: Prism_V1_Format

    var errorName: String? { self.spec.name.isEmpty ? nil : self.spec.name }
}

extension VariantPlan {
    /// Checks a spec on its own: everything that does not depend on the source.
    static func validate(_ spec: Prism_V1_VariantSpec, index: Int, limits: ImagingLimits) throws(ImagingError) {
        let label = spec.name.isEmpty ? "#\(index)" : spec.name
        let variant = spec.name.isEmpty ? nil : spec.name
        func fail(_ text: String) -> ImagingError {
            .invalidSpec("Variant \(label): \(text)", variant: variant)
        }
        guard spec.name.utf8.count <= 64 else { throw fail("the name is longer than 64 bytes.") }
        guard spec.operations.count <= limits.maxOperations else {
            throw fail("it has \(spec.operations.count) operations; at most \(limits.maxOperations) are allowed.")
        }
        for op in spec.operations {
            switch op.op {
            case .resize(let r):
                guard r.width > 0 || r.height > 0 else { throw fail("resize needs a width, a height or both.") }
                guard r.width <= limits.maxOutputDimension, r.height <= limits.maxOutputDimension else {
                    throw ImagingError.outputTooLarge(
                        "Variant \(label): resize to \(r.width)x\(r.height) exceeds the \(limits.maxOutputDimension)-pixel dimension limit.",
                        variant: variant
                    )
                }
                if case .UNRECOGNIZED(let v) = r.fit { throw fail("unknown fit \(v).") }
                if case .UNRECOGNIZED(let v) = r.position { throw fail("unknown position \(v).") }
                if r.hasBackground { try checkColor(r.background, fail) }
            case .crop(let c):
                guard c.width > 0, c.height > 0 else { throw fail("crop needs a width and a height.") }
                if case .UNRECOGNIZED(let v) = c.gravity { throw fail("unknown gravity \(v).") }
            case .extract(let e):
                guard e.width > 0, e.height > 0 else { throw fail("extract needs a width and a height.") }
            case .blur(let b):
                guard b.sigma.isFinite, b.sigma > 0, b.sigma <= 1000 else {
                    throw fail("blur sigma must be more than 0 and at most 1000.")
                }
            case .sharpen(let s):
                guard s.sigma.isFinite, s.sigma >= 0, s.sigma <= 10 else {
                    throw fail("sharpen sigma must be between 0 and 10.")
                }
            case .rotate(let r):
                guard r.angle % 90 == 0, r.angle < 360 else {
                    throw fail("rotate angle must be 0, 90, 180 or 270, not \(r.angle).")
                }
            case .flatten(let f):
                if f.hasBackground { try checkColor(f.background, fail) }
            case .flip, .flop, .grayscale:
                break
            case nil:
                throw fail("an operation is empty or of a kind this processor does not know.")
            }
        }
        let output = spec.output
        switch output.format {
        case .unspecified, .jpeg, .png, .webp, .avif, .gif: break
        case .tiff, .heic: throw fail("\(output.format) can be read but not written; choose JPEG, PNG, WebP, AVIF or GIF.")
        case .UNRECOGNIZED(let v): throw fail("unknown output format \(v).")
        }
        guard output.quality <= 100 else { throw fail("quality must be between 1 and 100.") }
        guard output.effort <= 9 else { throw fail("effort must be between 0 and 9.") }
    }

    private static func checkColor(_ c: Prism_V1_Color, _ fail: (String) -> ImagingError) throws(ImagingError) {
        guard c.r <= 255, c.g <= 255, c.b <= 255 else { throw fail("colour components must be 0 to 255.") }
    }

    /// Works out the variant against the source's header: sizes after each operation, the
    /// output format, and whether the result is possible within the limits.
    init(
        spec: Prism_V1_VariantSpec,
        index: Int,
        source: Size,
        orientedSource: Size,
        sourceFormat: Prism_V1_Format,
        limits: ImagingLimits
    ) throws(ImagingError) {
        self.index = index
        self.spec = spec
        self.label = spec.name.isEmpty ? "#\(index)" : spec.name
        self.autoOrient = !spec.noAutoOrient
        let variant = spec.name.isEmpty ? nil : spec.name
        let label = self.label

        let start = self.autoOrient ? orientedSource : source
        var size = start
        var leading: ResizePlan? = nil
        for (position, op) in spec.operations.enumerated() {
            switch op.op {
            case .resize(let r):
                let plan = ResizePlan(r, input: size)
                guard plan.scaled.pixels <= max(limits.maxInputPixels, plan.output.pixels) else {
                    throw ImagingError.outputTooLarge(
                        "Variant \(label): the resize would scale the image to \(plan.scaled) before cropping, more than the \(limits.maxInputPixels)-pixel limit.",
                        variant: variant
                    )
                }
                if position == 0 { leading = plan }
                size = plan.output
            case .crop(let c):
                size = Size(width: min(Int(c.width), size.width), height: min(Int(c.height), size.height))
            case .extract(let e):
                guard Int(e.left) + Int(e.width) <= size.width, Int(e.top) + Int(e.height) <= size.height else {
                    throw ImagingError.impossible(
                        "Variant \(label): the extract area \(e.width)x\(e.height) at (\(e.left), \(e.top)) is outside the \(size) image; ask for an area inside it.",
                        variant: variant
                    )
                }
                size = Size(width: Int(e.width), height: Int(e.height))
            case .rotate(let r):
                if r.angle == 90 || r.angle == 270 { size = size.transposed }
            default:
                break
            }
        }
        self.leading = leading
        self.needs = leading?.scaled ?? start
        self.output = size

        var format = spec.output.format
        if format == .unspecified {
            switch sourceFormat {
            case .jpeg, .png, .webp, .avif, .gif: format = sourceFormat
            default: format = .jpeg
            }
        }
        self.format = format

        guard size.width <= limits.maxOutputDimension, size.height <= limits.maxOutputDimension else {
            throw ImagingError.outputTooLarge(
                "Variant \(label): the result would be \(size), over the \(limits.maxOutputDimension)-pixel dimension limit.",
                variant: variant
            )
        }
        if format == .webp, size.width > 16_383 || size.height > 16_383 {
            throw ImagingError.outputTooLarge(
                "Variant \(label): WebP images are at most 16383 pixels a side and the result would be \(size); choose another format or a smaller size.",
                variant: variant
            )
        }
        if format == .avif, size.pixels > limits.maxAVIFPixels {
            throw ImagingError.outputTooLarge(
                "Variant \(label): AVIF output is limited to \(limits.maxAVIFPixels) pixels and the result would be \(size); resize it first or choose WebP or JPEG.",
                variant: variant
            )
        }
    }
}
