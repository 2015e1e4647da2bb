internal import CVips
import Foundation
import PrismProto

extension JobRun {
    /// The source's ThumbHash, dominant colour and (if asked) BlurHash, from the smallest scaling already made that
    /// is still at least the 100 px the hash is made at: no extra decode, and usually a resize
    /// of a few hundred pixels.
    func placeholder(frames: inout Frames) throws -> Prism_V1_Placeholder {
        if frames.oriented == nil {
            frames.oriented = try frames.raw.apply { prism_autorot($0, $1) }
        }
        let full = frames.oriented!
        let target = Self.placeholderSize(full.size)
        let source = ([full] + frames.scaledOriented).filter { target.fits(in: $0.size) }.min { $0.size.pixels < $1.size.pixels } ?? full
        var image = try self.scale(source, to: target)
        if image.bands < 3 {
            image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_sRGB) }
        }
        if !image.hasAlpha {
            image = try image.apply { prism_add_alpha($0, $1) }
        }
        if image.bandFormat != VIPS_FORMAT_UCHAR {
            image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        }
        let size = image.size
        var length = 0
        guard image.bands == 4, let pixels = vips_image_write_to_memory(image.pointer, &length) else {
            throw VipsFailure(detail: takeErrorBuffer())
        }
        defer { g_free(pixels) }
        let rgba = UnsafeRawBufferPointer(start: pixels, count: length)
        var placeholder = Prism_V1_Placeholder()
        placeholder.thumbhash = Data(ThumbHash.encode(width: size.width, height: size.height, rgba: rgba))
        if let (r, g, b) = dominantColour(width: size.width, height: size.height, rgba: rgba) {
            (placeholder.color.r, placeholder.color.g, placeholder.color.b) = (UInt32(r), UInt32(g), UInt32(b))
        } else {
            placeholder.color.transparent = true
        }
        if let blurHash = self.job.blurHash {
            placeholder.blurhash = BlurHash.encode(
                width: size.width, height: size.height, rgba: rgba,
                xComponents: Int(blurHash.xComponents), yComponents: Int(blurHash.yComponents)
            )
        }
        return placeholder
    }

    /// `size` scaled to fit 100 x 100 (never enlarged), as the ThumbHash reference expects.
    static func placeholderSize(_ size: Size) -> Size {
        let scale = min(1, 100 / Double(max(size.width, size.height)))
        return Size(
            width: max(1, Int((Double(size.width) * scale).rounded())),
            height: max(1, Int((Double(size.height) * scale).rounded()))
        )
    }
}
