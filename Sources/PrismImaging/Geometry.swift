import PrismProto

/// Width and height in pixels.
public struct Size: Sendable, Hashable, CustomStringConvertible {
    public var width: Int
    public var height: Int

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
    }

    public var pixels: Int { self.width * self.height }
    public var transposed: Size { Size(width: self.height, height: self.width) }
    public var description: String { "\(self.width)x\(self.height)" }

    func fits(in other: Size) -> Bool {
        self.width <= other.width && self.height <= other.height
    }
}

/// What one Resize does to an image of a given size, worked out before any pixel is touched.
struct ResizePlan: Equatable {
    enum Finish: Equatable {
        case none
        /// Cut `output` out of the scaled image at `gravity`.
        case crop(Prism_V1_Gravity)
        /// Pad the scaled image to `output`, centred.
        case pad
    }

    /// The whole frame after scaling, before any crop or pad.
    var scaled: Size
    /// True when the aspect ratio is kept, so the scaled frame can feed other variants.
    var uniform: Bool
    var finish: Finish
    /// The size after crop or pad.
    var output: Size

    init(_ resize: Prism_V1_Resize, input: Size) {
        let w = Int(resize.width)
        let h = Int(resize.height)
        let iw = Double(input.width)
        let ih = Double(input.height)

        func scaledSize(_ s: Double) -> Size {
            Size(width: max(1, Int((iw * s).rounded())), height: max(1, Int((ih * s).rounded())))
        }
        func limit(_ s: Double) -> Double {
            resize.withoutEnlargement ? min(s, 1) : s
        }

        if w == 0 || h == 0 {
            // One side given: the other follows from the aspect ratio, whatever the fit.
            let s = limit(w == 0 ? Double(h) / ih : Double(w) / iw)
            self.scaled = scaledSize(s)
            if w == 0, !resize.withoutEnlargement || h <= input.height { self.scaled.height = h }
            if h == 0, !resize.withoutEnlargement || w <= input.width { self.scaled.width = w }
            self.uniform = true
            self.finish = .none
            self.output = self.scaled
            return
        }

        let target = Size(width: w, height: h)
        switch resize.fit {
        case .fill:
            self.scaled = resize.withoutEnlargement
                ? Size(width: min(w, input.width), height: min(h, input.height)) : target
            self.uniform = false
            self.finish = .none
            self.output = self.scaled
        case .inside, .outside:
            let s = limit(resize.fit == .inside ? min(Double(w) / iw, Double(h) / ih) : max(Double(w) / iw, Double(h) / ih))
            self.scaled = scaledSize(s)
            self.uniform = true
            self.finish = .none
            self.output = self.scaled
        case .contain:
            let s = limit(min(Double(w) / iw, Double(h) / ih))
            self.scaled = scaledSize(s)
            self.scaled.width = min(self.scaled.width, w)
            self.scaled.height = min(self.scaled.height, h)
            self.uniform = true
            self.finish = self.scaled == target ? .none : .pad
            self.output = target
        case .cover, .UNRECOGNIZED:
            let s = limit(max(Double(w) / iw, Double(h) / ih))
            var scaled = scaledSize(s)
            if !resize.withoutEnlargement || s < 1 {
                // Rounding must never leave the frame a pixel short of the target.
                scaled.width = max(scaled.width, w)
                scaled.height = max(scaled.height, h)
            }
            self.scaled = scaled
            self.uniform = true
            self.output = Size(width: min(w, scaled.width), height: min(h, scaled.height))
            self.finish = self.output == scaled ? .none : .crop(resize.position)
        }
    }
}

/// The top-left corner of a `crop`-sized region of `image` placed by a compass gravity.
func gravityOrigin(_ gravity: Prism_V1_Gravity, image: Size, crop: Size) -> (x: Int, y: Int) {
    let dx = image.width - crop.width
    let dy = image.height - crop.height
    switch gravity {
    case .north: return (dx / 2, 0)
    case .northEast: return (dx, 0)
    case .east: return (dx, dy / 2)
    case .southEast: return (dx, dy)
    case .south: return (dx / 2, dy)
    case .southWest: return (0, dy)
    case .west: return (0, dy / 2)
    case .northWest: return (0, 0)
    default: return (dx / 2, dy / 2)
    }
}
