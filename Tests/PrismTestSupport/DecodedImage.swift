internal import CVips
public import Foundation

/// An encoded image read back with libvips, for checking what a service returned.
public struct DecodedImage: Sendable {
    public var width: Int
    public var height: Int
    public var bands: Int
    /// The libvips loader that recognised the bytes, e.g. "VipsForeignLoadJpegBuffer".
    public var loader: String
    /// Metadata field names (exif-*, xmp-data...).
    public var fields: [String]

    /// Decodes every pixel, so a broken file throws here.
    public init(_ data: Data) throws {
        guard vips_init("prism-tests") == 0 else { throw DecodeError(detail: "libvips did not start") }
        let loader: String? = data.withUnsafeBytes { raw in
            vips_foreign_find_load_buffer(raw.baseAddress, raw.count).map { String(cString: $0) }
        }
        guard let loader else {
            vips_error_clear()
            throw DecodeError(detail: "no libvips loader recognises these \(data.count) bytes")
        }
        guard let image = data.withUnsafeBytes({ prism_decode_copy($0.baseAddress, $0.count) }) else {
            throw DecodeError(detail: "not decodable")
        }
        defer { g_object_unref(image) }
        var mean = 0.0
        guard prism_avg(image, &mean) == 0 else {
            vips_error_clear()
            throw DecodeError(detail: "pixel data does not decode")
        }
        var fields: [String] = []
        if let list = vips_image_get_fields(image) {
            var i = 0
            while let field = list[i] {
                fields.append(String(cString: field))
                i += 1
            }
            g_strfreev(list)
        }
        self.width = Int(vips_image_get_width(image))
        self.height = Int(vips_image_get_height(image))
        self.bands = Int(vips_image_get_bands(image))
        self.loader = loader
        self.fields = fields
    }
}

public struct DecodeError: Error, CustomStringConvertible {
    public var detail: String
    public var description: String { self.detail }
}
