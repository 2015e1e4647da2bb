public import Foundation
import PrismProto

/// What an upload produced: the JSON the API answers and stores as `manifest.json`.
public struct Manifest: Codable, Sendable, Equatable {
    public var id: String
    public var recipe: String
    public var createdAt: String
    public var original: Original
    public var variants: [Variant]
    /// What a front end shows while the image loads; absent in manifests from before it existed.
    public var placeholder: Placeholder?

    public struct Placeholder: Codable, Sendable, Equatable {
        /// ThumbHash of the image, base64 (standard alphabet, padded).
        public var thumbhash: String
        /// Dominant colour, `#rrggbb`.
        public var color: String
        /// BlurHash, when the recipe asks for one.
        public var blurhash: String?

        public init(thumbhash: String, color: String, blurhash: String? = nil) {
            self.thumbhash = thumbhash
            self.color = color
            self.blurhash = blurhash
        }

        init(_ placeholder: Prism_V1_Placeholder) {
            let c = placeholder.color
            self.thumbhash = placeholder.thumbhash.base64EncodedString()
            self.color = c.transparent ? "transparent" : String(format: "#%02x%02x%02x", min(c.r, 255), min(c.g, 255), min(c.b, 255))
            self.blurhash = placeholder.blurhash.isEmpty ? nil : placeholder.blurhash
        }
    }

    public struct Original: Codable, Sendable, Equatable {
        public var key: String
        public var url: String
        public var width: Int
        public var height: Int
        public var format: String
        public var bytes: Int
        public var sha256: String
    }

    public struct Variant: Codable, Sendable, Equatable {
        public var name: String
        public var key: String
        public var url: String
        public var width: Int
        public var height: Int
        public var format: String
        public var bytes: Int
        public var etag: String
    }

    enum CodingKeys: String, CodingKey {
        case id, recipe, createdAt = "created_at", original, variants, placeholder
    }

    static func key(id: String) -> String { "images/\(id)/manifest.json" }

    func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(self)) ?? Data()
    }
}

/// Server-generated ids: UUIDv7 (RFC 9562), time-ordered so keys list in upload order.
enum UploadID {
    static func make() -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<16 { bytes[i] = UInt8.random(in: 0...255) }
        let millis = UInt64(Date().timeIntervalSince1970 * 1000)
        for i in 0..<6 { bytes[i] = UInt8((millis >> (8 * (5 - UInt64(i)))) & 0xFF) }
        bytes[6] = 0x70 | (bytes[6] & 0x0F)  // version 7
        bytes[8] = 0x80 | (bytes[8] & 0x3F)  // RFC 4122 variant
        let hex = bytes.map { String(format: "%02x", $0) }.joined()
        let parts = [hex.prefix(8), hex.dropFirst(8).prefix(4), hex.dropFirst(12).prefix(4), hex.dropFirst(16).prefix(4), hex.dropFirst(20)]
        return parts.joined(separator: "-")
    }

    /// True for the shape `make()` produces; anything else never reaches the store.
    /// When a valid id was made: UUIDv7 starts with 48 bits of Unix milliseconds.
    static func creationDate(_ id: String) -> Date? {
        guard self.isValid(id) else { return nil }
        let hex = id.replacingOccurrences(of: "-", with: "").prefix(12)
        guard let millis = UInt64(hex, radix: 16) else { return nil }
        return Date(timeIntervalSince1970: Double(millis) / 1000)
    }

    static func isValid(_ text: String) -> Bool {
        let pattern = Array("xxxxxxxx-xxxx-7xxx-xxxx-xxxxxxxxxxxx".utf8)
        let bytes = Array(text.utf8)
        guard bytes.count == pattern.count else { return false }
        for (c, p) in zip(bytes, pattern) {
            switch p {
            case UInt8(ascii: "x"): guard (0x30...0x39).contains(c) || (0x61...0x66).contains(c) else { return false }
            default: guard c == p else { return false }
            }
        }
        return true
    }
}

/// File extension and media type for the formats Prism writes and reads.
enum ImageFormat {
    static func name(_ format: Int) -> String {
        switch format {
        case 1: return "jpeg"
        case 2: return "png"
        case 3: return "webp"
        case 4: return "avif"
        case 5: return "gif"
        case 6: return "tiff"
        case 7: return "heic"
        default: return "unknown"
        }
    }

    static func fileExtension(_ name: String) -> String {
        switch name {
        case "jpeg": return "jpg"
        case "unknown": return "bin"
        default: return name
        }
    }

    /// Recognises the source format from its first bytes, to name and type the original.
    static func sniff(_ data: Data) -> String {
        let head = [UInt8](data.prefix(32))
        func at(_ offset: Int, _ magic: String) -> Bool {
            let m = Array(magic.utf8)
            return head.count >= offset + m.count && Array(head[offset..<(offset + m.count)]) == m
        }
        if head.starts(with: [0xFF, 0xD8, 0xFF]) { return "jpeg" }
        if head.starts(with: [0x89, 0x50, 0x4E, 0x47]) { return "png" }
        if at(0, "GIF8") { return "gif" }
        if at(0, "RIFF"), at(8, "WEBP") { return "webp" }
        if at(4, "ftypavif") || at(4, "ftypavis") { return "avif" }
        if at(4, "ftypheic") || at(4, "ftypheix") || at(4, "ftypmif1") || at(4, "ftypmsf1") { return "heic" }
        if head.starts(with: [0x49, 0x49, 0x2A, 0x00]) || head.starts(with: [0x4D, 0x4D, 0x00, 0x2A]) { return "tiff" }
        return "unknown"
    }

    /// Whether a decode at 1/2, 1/4 or 1/8 of the size costs a fraction of a full one: WebP,
    /// and sequential (baseline) JPEG. A progressive JPEG must still entropy-decode every scan
    /// of the full image, and PNG, GIF, TIFF and HEIF always decode at full size.
    static func shrinksCheaplyOnLoad(_ data: Data, sniffed: String) -> Bool {
        switch sniffed {
        case "webp": return true
        case "jpeg": return Self.jpegFrameType(data) == .sequential
        default: return false
        }
    }

    enum JPEGFrame: Equatable { case sequential, progressive, other }

    /// The frame type from the JPEG's start-of-frame marker, found by walking the marker
    /// segments from the start (each names its length); nil when none comes before the scan.
    static func jpegFrameType(_ data: Data) -> JPEGFrame? {
        Self.jpegFrame(data)?.type
    }

    /// The start-of-frame marker's type and the image's stored size (before EXIF orientation).
    static func jpegFrame(_ data: Data) -> (type: JPEGFrame, width: Int, height: Int)? {
        data.withUnsafeBytes { (bytes: UnsafeRawBufferPointer) -> (type: JPEGFrame, width: Int, height: Int)? in
            func size(at offset: Int) -> (width: Int, height: Int) {
                // Length (2), precision (1), height (2), width (2); 0 when cut short.
                guard offset + 9 <= bytes.count else { return (0, 0) }
                return (Int(bytes[offset + 7]) << 8 | Int(bytes[offset + 8]), Int(bytes[offset + 5]) << 8 | Int(bytes[offset + 6]))
            }
            var offset = 2  // after SOI
            // A step can advance as little as one byte (a fill byte): a body crafted of them
            // must not cost a walk over megabytes. Real files reach their frame header within
            // a few dozen segments (a 16 MB ICC profile is 256); past 4096 the answer is nil
            // and the processor reads the file itself.
            var steps = 0
            while offset + 4 <= bytes.count {
                steps += 1
                guard steps <= 4096, bytes[offset] == 0xFF else { return nil }
                let marker = bytes[offset + 1]
                if marker == 0xFF {  // fill byte
                    offset += 1
                    continue
                }
                let type: JPEGFrame
                switch marker {
                case 0xC0, 0xC1: type = .sequential
                case 0xC2: type = .progressive
                case 0xC3, 0xC5...0xC7, 0xC9...0xCB, 0xCD...0xCF: type = .other
                case 0xDA, 0xD9: return nil  // the scan (or the end) before any frame header
                case 0x01, 0xD0...0xD7:
                    offset += 2  // markers without a length
                    continue
                default:
                    offset += 2 + (Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3]))
                    continue
                }
                let (width, height) = size(at: offset)
                return (type, width, height)
            }
            return nil
        }
    }

    /// What the call planner needs to estimate a split (`CallCost`): the size and how the
    /// source decodes. Nil for formats that are never split (`shrinksCheaplyOnLoad`) and for
    /// headers it cannot read; the processor still reads the source itself.
    static func header(_ data: Data, sniffed: String) -> SourceHeader? {
        switch sniffed {
        case "jpeg":
            guard let frame = Self.jpegFrame(data), frame.type == .sequential, frame.width > 0, frame.height > 0 else { return nil }
            return SourceHeader(width: frame.width, height: frame.height, bytes: data.count, format: .sequentialJPEG)
        case "webp":
            guard let (width, height) = Self.webpSize(data) else { return nil }
            return SourceHeader(width: width, height: height, bytes: data.count, format: .webp)
        default:
            return nil
        }
    }

    /// The canvas size from a WebP's first chunk: VP8X (extended), VP8L (lossless) or VP8
    /// (lossy).
    static func webpSize(_ data: Data) -> (width: Int, height: Int)? {
        let head = [UInt8](data.prefix(30))
        guard head.count == 30 else { return nil }
        func little(_ offset: Int, _ count: Int) -> Int {
            (0..<count).reduce(0) { $0 | Int(head[offset + $1]) << (8 * $1) }
        }
        let chunk = String(decoding: head[12..<16], as: UTF8.self)
        switch chunk {
        case "VP8X":
            return (little(24, 3) + 1, little(27, 3) + 1)
        case "VP8L":
            guard head[20] == 0x2F else { return nil }
            let bits = little(21, 4)
            return ((bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1)
        case "VP8 ":
            guard head[23] == 0x9D, head[24] == 0x01, head[25] == 0x2A else { return nil }
            let size = (little(26, 2) & 0x3FFF, little(28, 2) & 0x3FFF)
            return size.0 > 0 && size.1 > 0 ? size : nil
        default:
            return nil
        }
    }
}
