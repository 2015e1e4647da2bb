import PrismProto
import PrismWire

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

    /// A rough relative cost of making this variant, to balance parallel chains: the pixels
    /// it is made at, weighted by its encoder (WebP and PNG take 2-3x JPEG's time per pixel,
    /// AVIF far more) and its blur or sharpen.
    var cost: Double {
        var weight: Double
        switch self.format {
        case .webp: weight = 2.5
        case .png: weight = 2
        case .avif: weight = 8
        default: weight = 1
        }
        for op in self.spec.operations {
            switch op.op {
            case .blur(let blur): weight += Double(blur.sigma) / 4
            case .sharpen: weight += 0.5
            default: break
            }
        }
        return Double(self.needs.pixels) * weight
    }
}

extension VariantPlan {
    /// Checks a spec on its own: everything that does not depend on the source.
    static func validate(_ spec: Prism_V1_VariantSpec, index: Int, limits: ImagingLimits) throws(ImagingError) {
        guard let problem = VariantSpecRules.problem(in: spec, maxOutputDimension: limits.maxOutputDimension, maxOperations: limits.maxOperations) else {
            return
        }
        // A name that breaks the rules is not repeated in the message (it may hold anything);
        // the variant field carries it back when it is short enough to be harmless in a frame.
        let nameIsValid = VariantSpecRules.nameProblem(spec.name) == nil
        let label = spec.name.isEmpty || !nameIsValid ? "#\(index)" : spec.name
        let variant = spec.name.isEmpty || spec.name.utf8.count > PrismProtocol.maxVariantNameBytes ? nil : spec.name
        let message = "Variant \(label): \(problem.message)"
        throw problem.exceedsLimits ? .outputTooLarge(message, variant: variant) : .invalidSpec(message, variant: variant)
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
