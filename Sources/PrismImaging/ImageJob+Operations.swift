internal import CVips
import Foundation
import PrismProto

extension JobRun {
    /// The decoded source and the scalings of it made so far.
    struct Frames {
        let raw: VImage
        var oriented: VImage?
        /// Materialized, aspect-preserving scalings, by orientation.
        var scaledOriented: [VImage] = []
        var scaledRaw: [VImage] = []

        init(raw: VImage, oriented: VImage?) {
            self.raw = raw
            self.oriented = oriented
        }
    }

    func make(_ plan: VariantPlan, frames: inout Frames, later: ArraySlice<VariantPlan>) throws -> VImage {
        var base = frames.raw
        if plan.autoOrient {
            if frames.oriented == nil {
                frames.oriented = try frames.raw.apply { prism_autorot($0, $1) }
            }
            base = frames.oriented!
        }
        var operations = plan.spec.operations[...]
        var image = base
        if let leading = plan.leading, case .resize(let resize) = operations.first?.op {
            operations = operations.dropFirst()
            let available = [base] + (plan.autoOrient ? frames.scaledOriented : frames.scaledRaw)
            // The smallest frame at least as large as needed; the full frame when enlarging.
            let source = available.filter { leading.scaled.fits(in: $0.size) }.min { $0.size.pixels < $1.size.pixels } ?? base
            var scaled = try self.scale(source, to: leading.scaled)
            let feedsLater = leading.uniform && later.contains { other in
                other.autoOrient == plan.autoOrient && other.leading != nil && other.needs.fits(in: leading.scaled)
            }
            if feedsLater {
                scaled = try scaled.materialized(self.cancellation, threads: self.concurrency)
                if plan.autoOrient { frames.scaledOriented.append(scaled) } else { frames.scaledRaw.append(scaled) }
            }
            image = try self.finish(scaled, plan: leading, resize: resize)
        }
        for op in operations {
            image = try self.apply(op, to: image, plan: plan)
        }
        return image
    }

    /// Scales to exactly `target` with Lanczos 3, premultiplying alpha so transparent pixels do
    /// not bleed their colour into the edges.
    func scale(_ image: VImage, to target: Size) throws(VipsFailure) -> VImage {
        if image.size == target { return image }
        let hscale = Double(target.width) / Double(image.width)
        let vscale = Double(target.height) / Double(image.height)
        var out: VImage
        if image.hasAlpha {
            let premultiplied = try image.apply { prism_premultiply($0, $1) }
            let resized = try premultiplied.apply { prism_resize($0, $1, hscale, vscale) }
            let restored = try resized.apply { prism_unpremultiply($0, $1) }
            out = try restored.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        } else {
            out = try image.apply { prism_resize($0, $1, hscale, vscale) }
        }
        // libvips rounds the output size itself; trim a stray row or column.
        if out.size != target, target.fits(in: out.size) {
            out = try out.apply { prism_extract($0, $1, 0, 0, Int32(target.width), Int32(target.height)) }
        } else if out.size != target {
            out = try out.apply { prism_embed($0, $1, 0, 0, Int32(target.width), Int32(target.height), nil, 0) }
        }
        return out
    }

    /// The crop or pad that turns a scaled frame into a COVER or CONTAIN result.
    func finish(_ scaled: VImage, plan: ResizePlan, resize: Prism_V1_Resize) throws(VipsFailure) -> VImage {
        switch plan.finish {
        case .none:
            return scaled
        case .crop(let gravity):
            return try self.crop(scaled, to: plan.output, gravity: gravity)
        case .pad:
            let x = (plan.output.width - scaled.width) / 2
            let y = (plan.output.height - scaled.height) / 2
            return try self.pad(scaled, to: plan.output, x: x, y: y, colour: resize.hasBackground ? resize.background : nil)
        }
    }

    func crop(_ image: VImage, to wanted: Size, gravity: Prism_V1_Gravity) throws(VipsFailure) -> VImage {
        let size = Size(width: min(wanted.width, image.width), height: min(wanted.height, image.height))
        if size == image.size { return image }
        switch gravity {
        case .attention, .entropy:
            let interesting = gravity == .attention ? VIPS_INTERESTING_ATTENTION : VIPS_INTERESTING_ENTROPY
            return try image.apply { prism_smartcrop($0, $1, Int32(size.width), Int32(size.height), interesting) }
        default:
            let origin = gravityOrigin(gravity, image: image.size, crop: size)
            return try image.apply { prism_extract($0, $1, Int32(origin.x), Int32(origin.y), Int32(size.width), Int32(size.height)) }
        }
    }

    /// Pads to `size` with `colour` (default: black, or transparent when the image has alpha).
    func pad(_ image: VImage, to size: Size, x: Int, y: Int, colour: Prism_V1_Color?) throws(VipsFailure) -> VImage {
        var image = image
        if colour?.transparent == true, !image.hasAlpha {
            image = try image.apply { prism_add_alpha($0, $1) }
        }
        var values = Self.colourValues(colour ?? Prism_V1_Color(), bands: image.bands - (image.hasAlpha ? 1 : 0))
        if image.hasAlpha {
            values.append(colour == nil || colour?.transparent == true ? 0 : 255)
        }
        return try image.apply { input, out in
            values.withUnsafeBufferPointer { prism_embed(input, out, Int32(x), Int32(y), Int32(size.width), Int32(size.height), $0.baseAddress, Int32($0.count)) }
        }
    }

    /// A colour as one value per band: grey images get its luminance.
    static func colourValues(_ colour: Prism_V1_Color, bands: Int) -> [Double] {
        let rgb = [Double(colour.r), Double(colour.g), Double(colour.b)]
        if bands >= 3 { return rgb + Array(repeating: 0, count: bands - 3) }
        let luminance = (0.2126 * rgb[0] + 0.7152 * rgb[1] + 0.0722 * rgb[2]).rounded()
        return Array(repeating: luminance, count: max(1, bands))
    }

    func apply(_ operation: Prism_V1_Operation, to image: VImage, plan: VariantPlan) throws -> VImage {
        switch operation.op {
        case .resize(let resize):
            let resizePlan = ResizePlan(resize, input: image.size)
            return try self.finish(try self.scale(image, to: resizePlan.scaled), plan: resizePlan, resize: resize)
        case .crop(let crop):
            return try self.crop(image, to: Size(width: Int(crop.width), height: Int(crop.height)), gravity: crop.gravity)
        case .extract(let e):
            guard Int(e.left) + Int(e.width) <= image.width, Int(e.top) + Int(e.height) <= image.height else {
                throw ImagingError.impossible("Variant \(plan.label): the extract area is outside the \(image.size) image.", variant: plan.errorName)
            }
            return try image.apply { prism_extract($0, $1, Int32(e.left), Int32(e.top), Int32(e.width), Int32(e.height)) }
        case .blur(let blur):
            return try image.apply { prism_gaussblur($0, $1, Double(blur.sigma)) }
        case .sharpen(let sharpen):
            let sigma = sharpen.sigma == 0 ? 1.0 : Double(sharpen.sigma)
            let sharpened = try image.apply { prism_sharpen($0, $1, sigma) }
            return try self.restoreInterpretation(sharpened, like: image)
        case .rotate(let rotate):
            let angle: VipsAngle
            switch rotate.angle {
            case 90: angle = VIPS_ANGLE_D90
            case 180: angle = VIPS_ANGLE_D180
            case 270: angle = VIPS_ANGLE_D270
            default: return image
            }
            return try image.apply { prism_rot($0, $1, angle) }
        case .flip:
            return try image.apply { prism_flip($0, $1, VIPS_DIRECTION_VERTICAL) }
        case .flop:
            return try image.apply { prism_flip($0, $1, VIPS_DIRECTION_HORIZONTAL) }
        case .grayscale:
            return try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_B_W) }
        case .flatten(let flatten):
            guard image.hasAlpha else { return image }
            var colour = Prism_V1_Color()
            if flatten.hasBackground { colour = flatten.background } else { (colour.r, colour.g, colour.b) = (255, 255, 255) }
            return try self.flatten(image, colour: colour)
        case nil:
            return image
        }
    }

    func flatten(_ image: VImage, colour: Prism_V1_Color) throws(VipsFailure) -> VImage {
        let values = Self.colourValues(colour, bands: image.bands - 1)
        let flat = try image.apply { input, out in
            values.withUnsafeBufferPointer { prism_flatten(input, out, $0.baseAddress, Int32($0.count)) }
        }
        return flat.bandFormat == VIPS_FORMAT_UCHAR ? flat : try flat.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
    }

    /// Sharpen works in LabS; bring the result back to the interpretation it came in.
    func restoreInterpretation(_ image: VImage, like original: VImage) throws(VipsFailure) -> VImage {
        var image = image
        let wanted = original.interpretation == VIPS_INTERPRETATION_B_W ? VIPS_INTERPRETATION_B_W : VIPS_INTERPRETATION_sRGB
        if image.interpretation != wanted {
            image = try image.apply { prism_colourspace($0, $1, wanted) }
        }
        if image.bandFormat != VIPS_FORMAT_UCHAR {
            image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        }
        return image
    }
}
