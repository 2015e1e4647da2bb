import PrismProto

/// What the gateway reads of a source from its first bytes, to estimate what each way of
/// grouping the variants into processor calls costs.
struct SourceHeader: Equatable, Sendable {
    var width: Int
    var height: Int
    /// The source's size in bytes: JPEG entropy decoding costs in proportion to it.
    var bytes: Int
    var format: Format

    enum Format: Equatable, Sendable {
        /// Baseline JPEG: decodes at 1/2, 1/4 or 1/8 for a fraction of the full cost.
        case sequentialJPEG
        /// WebP: libwebp decodes every pixel, then scales on the way out.
        case webp
    }
}

/// Estimated processor work, in milliseconds of one core, of one call making a group of
/// variants: what a split over idle processors is chosen by.
///
/// The call is simulated the way the processor runs it (`ImageJob`): decode once at the
/// largest shrink-on-load every member allows; with several members, decode straight into the
/// largest one's frame; then each variant from the smallest frame already made that is large
/// enough; the placeholder from the smallest frame kept. The rates were measured on the
/// benchmark machine (2-core AMD EPYC, libvips 8.14) with single calls on the corpus photos
/// (docs/performance.md); only how groupings compare matters, not the absolute numbers.
enum CallCost {
    /// JPEG entropy decoding, per megabyte of file: paid whatever the shrink.
    static let jpegEntropyPerMB = 9.0
    /// JPEG inverse DCT and colour conversion, per decoded megapixel.
    static let jpegDecodePerMP = 2.5
    /// WebP decoding, per source megapixel (shrink-on-load scales after decoding).
    static let webpDecodePerMP = 12.0
    /// Lanczos 3 (`vips_resize`), per input megapixel, divided by the linear shrink factor:
    /// 13.9 ms/MP at 1.25x, 10 at 1.5x, 7.8 at 2x, 5.4 at 3x (libvips 8.14, one thread).
    static let resizePerMP = 17.0
    /// What larger shrinks cost on top, per input megapixel (measured on the placeholder's
    /// 100 px scaling: about 2.7 ms/MP at 20-25x).
    static let largeShrinkPerMP = 2.7
    /// Gaussian blur, per output megapixel and unit of sigma.
    static let blurPerMPSigma = 4.0
    static let sharpenPerMP = 8.0
    /// Sending the source to one more call and reading its frame, per megabyte, plus the call.
    static let transferPerMB = 1.0
    /// The part of a lone variant's resize or encode, whichever is shorter, that overlaps.
    static let streamingOverlap = 0.65
    static let perCall = 1.0

    /// Encoding, per output megapixel.
    static func encodePerMP(_ output: Prism_V1_Output) -> Double {
        switch output.format {
        case .png: return 40
        case .webp:
            // libwebp's method 0-6 (Prism's default 4 measured 75 ms/MP); lossless costs more.
            let effort = Double(output.effort == 0 ? 4 : min(output.effort, 6))
            return (output.lossless ? 3 : 1) * 75 * (0.4 + 0.15 * effort)
        case .avif: return 400
        case .gif: return 60
        default: return 6  // JPEG
        }
    }

    /// One variant as the planner sees it: the frame its first resize needs, and the work
    /// after that frame exists.
    struct Variant: Equatable {
        /// Pixels of the frame the leading resize scales to (the whole source without one).
        var needs: Double
        var needsWidth: Double
        var needsHeight: Double
        /// Starts with an aspect-preserving resize, so it can share and reuse frames.
        var sharesFrames: Bool
        /// Operations after the leading resize and the encode.
        var work: Double
    }

    static func variant(_ spec: Prism_V1_VariantSpec, source: SourceHeader) -> Variant {
        let sourceWidth = Double(source.width), sourceHeight = Double(source.height)
        var width = sourceWidth, height = sourceHeight
        var sharesFrames = false
        var outputPixels = width * height
        var work = 0.0
        for (position, operation) in spec.operations.enumerated() {
            switch operation.op {
            case .resize(let resize):
                let boxWidth = Double(resize.width), boxHeight = Double(resize.height)
                var scaleX = boxWidth > 0 ? boxWidth / width : boxHeight / height
                var scaleY = boxHeight > 0 ? boxHeight / height : scaleX
                var cropped = false
                switch resize.fit {
                case .inside, .contain:
                    scaleX = min(scaleX, scaleY)
                    scaleY = scaleX
                case .cover, .outside:
                    scaleX = max(scaleX, scaleY)
                    scaleY = scaleX
                    cropped = resize.fit == .cover && boxWidth > 0 && boxHeight > 0
                default:
                    break
                }
                if resize.withoutEnlargement {
                    scaleX = min(scaleX, 1)
                    scaleY = min(scaleY, 1)
                }
                let scaledWidth = max(1, width * scaleX), scaledHeight = max(1, height * scaleY)
                if position == 0 {
                    (width, height) = (scaledWidth, scaledHeight)
                    sharesFrames = scaleX == scaleY
                } else {
                    work += Self.resize(from: width * height, to: scaledWidth * scaledHeight)
                    (width, height) = (scaledWidth, scaledHeight)
                }
                outputPixels = cropped ? boxWidth * boxHeight : width * height
            case .blur(let blur):
                work += Self.blurPerMPSigma * Double(max(blur.sigma, 0.5)) * outputPixels / 1e6
            case .sharpen:
                work += Self.sharpenPerMP * outputPixels / 1e6
            default:
                break
            }
        }
        let leading: Bool = {
            if case .resize = spec.operations.first?.op { return true }
            return false
        }()
        let needsWidth = leading ? width : sourceWidth
        let needsHeight = leading ? height : sourceHeight
        work += Self.encodePerMP(spec.output) * outputPixels / 1e6
        return Variant(needs: needsWidth * needsHeight, needsWidth: needsWidth, needsHeight: needsHeight, sharesFrames: leading && sharesFrames, work: work)
    }

    /// Lanczos 3 from `input` to `output` pixels.
    static func resize(from input: Double, to output: Double) -> Double {
        guard output < input * 0.98 else { return 0 }
        let factor = (input / output).squareRoot()
        let large = factor > 3 ? Self.largeShrinkPerMP * (1 - 3 / factor) : 0
        return (Self.resizePerMP / factor + large) * input / 1e6
    }

    /// One call making `members`; with `placeholder`, also the source's placeholder.
    static func call(_ members: [Variant], source: SourceHeader, placeholder: Bool) -> Double {
        let width = Double(source.width), height = Double(source.height)
        var shrink = 1.0
        for factor in [8.0, 4.0, 2.0] where members.allSatisfy({ variant in
            variant.sharesFrames && variant.needsWidth.rounded() * factor <= width && variant.needsHeight.rounded() * factor <= height
        }) {
            shrink = factor
            break
        }
        let decoded = (width / shrink).rounded(.up) * (height / shrink).rounded(.up)
        let megabytes = Double(source.bytes) / 1_048_576
        var cost = Self.perCall + Self.transferPerMB * megabytes
        switch source.format {
        case .sequentialJPEG: cost += Self.jpegEntropyPerMB * megabytes + Self.jpegDecodePerMP * decoded / 1e6
        case .webp: cost += Self.webpDecodePerMP * width * height / 1e6
        }
        let ordered = members.sorted { $0.needs > $1.needs }
        // Frames kept in memory (pixels): the decoded one, then each scaling a later member uses.
        var frames = [decoded]
        var first = 0
        if ordered.count > 1, let largest = ordered.first, ordered.allSatisfy({ $0.sharesFrames && $0.needs <= largest.needs }), largest.needs < 0.8 * decoded {
            cost += Self.resize(from: decoded, to: largest.needs)
            frames = [largest.needs]
            cost += largest.work
            first = 1
        }
        for (position, variant) in ordered.enumerated().dropFirst(first) {
            if variant.sharesFrames {
                let from = frames.filter { $0 >= variant.needs * 0.98 }.min() ?? frames.max()!
                let resize = Self.resize(from: from, to: variant.needs)
                cost += resize
                if ordered.count == 1 {
                    // A lone variant is resized inside its encode's pipeline: libvips computes
                    // the pixels on a worker thread while the write thread compresses, so
                    // about two thirds of the shorter of the two is hidden (82 ms measured for
                    // a 2048 px JPEG from 4 MP where the sum is 92).
                    cost -= Self.streamingOverlap * min(resize, variant.work)
                }
                if ordered[(position + 1)...].contains(where: { $0.sharesFrames && $0.needs <= variant.needs }) {
                    frames.append(variant.needs)
                }
            }
            cost += variant.work
        }
        if placeholder {
            // ThumbHash and colour from a 100 px image, scaled from the smallest kept frame.
            let from = frames.filter { $0 >= 10_000 }.min() ?? frames.max()!
            cost += 0.5 + Self.resize(from: from, to: 10_000)
        }
        return cost
    }
}
