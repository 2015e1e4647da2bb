internal import CVips
import Foundation
import PrismProto

extension JobRun {
    /// Names the loader for the bytes, refusing what Prism does not read.
    func sniff() throws(ImagingError) -> Loader {
        var loaderName: String? = nil
        if let base = self.bytes.baseAddress, let name = vips_foreign_find_load_buffer(base, self.bytes.count) {
            loaderName = String(cString: name)
        } else {
            vips_error_clear()
        }
        if let loaderName, let loader = Loader(vipsName: loaderName) {
            return loader
        }
        // "Blocked" only on positive evidence of a format: magic bytes, or a loader whose
        // sniffer checks them. Anything else is simply not an image.
        if let format = BlockedFormat.detect(self.bytes) ?? loaderName.flatMap(BlockedFormat.name(ofLoader:)) {
            throw ImagingError(
                code: .invalidArgument,
                reason: .blockedFormat,
                message: "Images in \(format) format are not accepted because their decoders are unsafe for untrusted input; convert to JPEG, PNG, WebP, AVIF or GIF first.",
                detail: loaderName
            )
        }
        throw ImagingError(
            code: .invalidArgument,
            reason: .notAnImage,
            message: "The upload is not an image in a format this server reads (JPEG, PNG, WebP, AVIF, HEIC, GIF, TIFF).",
            detail: loaderName
        )
    }

    /// Opens the source lazily (header only) for one sequential top-to-bottom read.
    ///
    /// JPEG and PNG are read through a stream that checks the cancellation on every read:
    /// decoders do work libvips cannot interrupt (libjpeg absorbs every scan of a progressive
    /// JPEG before it returns the first row, 0.3-1 s for 18 MP; an interlaced PNG is decoded
    /// whole), and a failed read is the one thing they all stop at.
    func open(loader: Loader, shrink: Int) throws(ImagingError) -> VImage {
        let watchReads: Int32 = loader.kind == .jpeg || loader.kind == .png ? 1 : 0
        do {
            return try VImage.make { out in
                prism_load(
                    self.bytes.baseAddress, self.bytes.count, loader.vipsName, Int32(shrink), 1,
                    self.limits.failOnWarnings ? 1 : 0, watchReads == 1 ? self.cancellation.state : nil, out
                )
            }
        } catch {
            throw self.failure(error, reason: .corruptImage, message: "The image header could not be read: the file is truncated or corrupt.")
        }
    }

    /// The largest JPEG/WebP shrink-on-load factor that still leaves every variant's source at
    /// least as large as it needs.
    ///
    /// A variant that needs exactly 1/2, 1/4 or 1/8 of the source comes straight from the
    /// scaled decode, with no resample after it (as imgproxy does; `vips_thumbnail` leaves a
    /// 2x reduce after it). libjpeg's scaled inverse DCT is a clean reduction: against a full
    /// decode and a Lanczos 3 reduce, at 1/2, 1/4 and 1/8 of the corpus photos and the 19 MP
    /// JPEG, 41.8-54.7 dB PSNR and 0.6-2.6% fewer bytes (docs/performance.md), for a decode of
    /// a fraction of the pixels and no reduce.
    ///
    /// A variant's `needs` is in the orientation it works in: upright (`oriented`) when it
    /// auto-orients, as stored (`stored`) when it does not.
    static func shrinkFactor(plans: [VariantPlan], oriented: Size, stored: Size) -> Int {
        for factor in [8, 4, 2] {
            let fits = plans.allSatisfy { plan in
                // libvips rounds the reduced size down (JPEG, measured) or to nearest (WebP):
                // either way at least `needs` when needs x factor fits in the source.
                let source = plan.autoOrient ? oriented : stored
                return plan.needs.width * factor <= source.width && plan.needs.height * factor <= source.height
            }
            if fits { return factor }
        }
        return 1
    }

    /// Converts to 8-bit sRGB (or 8-bit greyscale): from the embedded ICC profile when there is
    /// one (CMYK, Adobe RGB, P3...), else by the image's interpretation.
    func normalizeColour(_ image: VImage) throws(VipsFailure) -> VImage {
        var image = image
        let interpretation = image.interpretation
        if image.hasICCProfile, interpretation != VIPS_INTERPRETATION_B_W, interpretation != VIPS_INTERPRETATION_GREY16 {
            if let converted = try? image.apply({ prism_icc_to_srgb($0, $1) }) {
                image = converted
            } else {
                vips_error_clear()  // a broken profile: fall back to the interpretation
            }
        }
        switch image.interpretation {
        case VIPS_INTERPRETATION_sRGB, VIPS_INTERPRETATION_B_W:
            break
        case VIPS_INTERPRETATION_GREY16:
            image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_B_W) }
        default:
            image = try image.apply { prism_colourspace($0, $1, VIPS_INTERPRETATION_sRGB) }
        }
        if image.bandFormat != VIPS_FORMAT_UCHAR {
            image = try image.apply { prism_cast($0, $1, VIPS_FORMAT_UCHAR) }
        }
        return image
    }
}
