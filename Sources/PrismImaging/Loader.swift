internal import CVips
import PrismProto

/// The libvips loaders Prism lets untrusted bytes reach. Everything else is refused, on top of
/// `vips_block_untrusted_set`, so a libvips upgrade that adds a loader does not widen the
/// attack surface by itself.
struct Loader {
    enum Kind {
        case jpeg, png, webp, gif, heif, tiff
    }

    let vipsName: String
    let kind: Kind

    init?(vipsName: String) {
        switch vipsName {
        case "VipsForeignLoadJpegBuffer": self.kind = .jpeg
        case "VipsForeignLoadPngBuffer": self.kind = .png
        case "VipsForeignLoadWebpBuffer": self.kind = .webp
        case "VipsForeignLoadNsgifBuffer": self.kind = .gif
        case "VipsForeignLoadHeifBuffer": self.kind = .heif
        case "VipsForeignLoadTiffBuffer": self.kind = .tiff
        default: return nil
        }
        self.vipsName = vipsName
    }

    /// JPEG and WebP can decode straight to a reduced size.
    var supportsShrink: Bool {
        self.kind == .jpeg || self.kind == .webp
    }

    func format(_ header: VImage) -> Prism_V1_Format {
        switch self.kind {
        case .jpeg: return .jpeg
        case .png: return .png
        case .webp: return .webp
        case .gif: return .gif
        case .tiff: return .tiff
        case .heif: return header.string("heif-compression") == "av1" ? .avif : .heic
        }
    }
}

/// Recognises formats that are images but that Prism refuses to decode, so the sender hears
/// "blocked" rather than "not an image".
enum BlockedFormat {
    /// A readable name for a libvips loader Prism refuses: "VipsForeignLoadSvgBuffer" -> "SVG".
    /// Nil for loaders whose match proves nothing: ImageMagick's sniffer claims almost any
    /// bytes (1000 zero bytes included), so its match alone is no sign of an image.
    static func name(ofLoader loader: String) -> String? {
        // Every loader's name starts with "VipsForeignLoad"; match on what follows.
        let kind = loader.hasPrefix("VipsForeignLoad") ? String(loader.dropFirst("VipsForeignLoad".count)) : loader
        if kind.hasPrefix("Magick") { return nil }
        let known: [(String, String)] = [
            ("Svg", "SVG"), ("Pdf", "PDF"), ("Jp2k", "JPEG 2000"), ("Jxl", "JPEG XL"),
            ("Openexr", "OpenEXR"), ("Fits", "FITS"), ("Matrix", "Matrix"), ("Csv", "CSV"),
            ("Ppm", "PPM"), ("Rad", "Radiance"), ("Openslide", "OpenSlide"),
        ]
        // Formats without a well-known name (libvips' own, say) are described, not named.
        return known.first { kind.hasPrefix($0.0) }?.1 ?? "this"
    }

    static func detect(_ bytes: UnsafeRawBufferPointer) -> String? {
        let head = Array(bytes.prefix(4096))
        func starts(_ magic: [UInt8], at offset: Int = 0) -> Bool {
            head.count >= offset + magic.count && Array(head[offset..<(offset + magic.count)]) == magic
        }
        if starts(Array("%PDF-".utf8)) { return "PDF" }
        if starts(Array("%!PS".utf8)) || starts([0xC5, 0xD0, 0xD3, 0xC6]) { return "PostScript" }
        if starts(Array("8BPS".utf8)) { return "Photoshop" }
        if starts([0xFF, 0x0A]) || starts(Array("JXL ".utf8), at: 4) { return "JPEG XL" }
        if starts(Array("jP  ".utf8), at: 4) || starts([0xFF, 0x4F, 0xFF, 0x51]) { return "JPEG 2000" }
        if starts(Array("v/1".utf8)) { return "OpenEXR" }  // 0x76 0x2f 0x31 0x01
        if starts(Array("SIMPLE  =".utf8)) { return "FITS" }
        // SVG: XML text whose first element is <svg, possibly after a declaration and comments.
        let text = String(decoding: head, as: UTF8.self).lowercased()
        let trimmed = text.drop { $0 == "\u{feff}" || $0.isWhitespace }
        if (trimmed.hasPrefix("<?xml") || trimmed.hasPrefix("<svg") || trimmed.hasPrefix("<!doctype svg")) && text.contains("<svg") {
            return "SVG"
        }
        return nil
    }
}
