internal import CCrypto
public import Foundation

/// Hex digests from OpenSSL's libcrypto.
public enum Digest {
    /// Lowercase hex SHA-256.
    public static func sha256Hex(_ data: Data) -> String {
        var out = [UInt8](repeating: 0, count: 32)
        data.withUnsafeBytes { _ = prism_sha256($0.baseAddress, $0.count, &out) }
        return hex(out)
    }

    /// Lowercase hex MD5: the ETag S3 gives an object uploaded in one piece.
    public static func md5Hex(_ data: Data) -> String {
        var out = [UInt8](repeating: 0, count: 16)
        data.withUnsafeBytes { _ = prism_md5($0.baseAddress, $0.count, &out) }
        return hex(out)
    }

    private static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
