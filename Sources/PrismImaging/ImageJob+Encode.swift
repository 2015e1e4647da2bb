internal import CVips
import Foundation
import PrismProto

extension JobRun {
    func encode(_ image: VImage, plan: VariantPlan) throws(ImagingError) -> Data {
        let output = plan.spec.output
        let strip: Int32 = plan.spec.keepMetadata ? 0 : 1
        var buffer: UnsafeMutableRawPointer? = nil
        var length = 0
        do {
            var image = image
            switch plan.format {
            case .jpeg where image.hasAlpha:
                var white = Prism_V1_Color()
                (white.r, white.g, white.b) = (255, 255, 255)
                image = try self.flatten(image, colour: white)
            case .avif where image.bands < 3:
                image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_sRGB) }
            default:
                break
            }
            if image.bandFormat != VIPS_FORMAT_UCHAR {
                image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
            }
            // A private copy to strip, so frames shared with other variants keep their fields.
            image = try image.apply { prism_copy($0, $1) }
            if strip == 1 { prism_remove_metadata(image.pointer) }
            prism_watch(image.pointer, self.cancellation.state)
            image.setConcurrency(self.concurrency)

            let quality = Int32(output.quality)
            let effort = Int32(output.effort)
            let progressive: Int32 = output.progressive ? 1 : 0
            let lossless: Int32 = output.lossless ? 1 : 0
            let status: Int32
            switch plan.format {
            case .png:
                status = prism_pngsave(image.pointer, &buffer, &length, effort == 0 ? 6 : effort, progressive, strip)
            case .webp:
                status = prism_webpsave(image.pointer, &buffer, &length, quality == 0 ? 80 : quality, lossless, effort == 0 ? 4 : min(effort, 6), strip)
            case .avif:
                status = prism_avifsave(image.pointer, &buffer, &length, quality == 0 ? 50 : quality, lossless, effort == 0 ? 4 : effort, strip)
            case .gif:
                status = prism_gifsave(image.pointer, &buffer, &length, progressive, strip)
            default:
                status = prism_jpegsave(image.pointer, &buffer, &length, quality == 0 ? 80 : quality, progressive, strip)
            }
            guard status == 0, let buffer else { throw VipsFailure(detail: takeErrorBuffer()) }
            if plan.format == .webp, strip == 1 {
                // libvips 8.14's webpsave ignores `strip` and writes a fresh EXIF block.
                length = WebPMetadata.strip(buffer, length: length)
            }
            guard length <= self.limits.maxOutputBytes else {
                g_free(buffer)
                throw ImagingError.outputTooLarge(
                    "Variant \(plan.label): the encoded image is \(length) bytes, over the \(self.limits.maxOutputBytes)-byte limit; lower the quality or the size.",
                    variant: plan.errorName
                )
            }
            // Hand libvips' buffer to Data without copying; g_free releases it.
            return Data(bytesNoCopy: buffer, count: length, deallocator: .custom { pointer, _ in g_free(pointer) })
        } catch let error as ImagingError {
            throw error
        } catch {
            throw self.failure(error, reason: .unspecified, message: "Variant \(plan.label) could not be encoded as \(plan.format).", variant: plan.errorName)
        }
    }
}
