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

    /// SHA-256, 32 bytes.
    public static func sha256(_ data: Data) -> Data {
        var out = [UInt8](repeating: 0, count: 32)
        data.withUnsafeBytes { _ = prism_sha256($0.baseAddress, $0.count, &out) }
        return Data(out)
    }

    /// MD5, 16 bytes.
    public static func md5(_ data: Data) -> Data {
        var out = [UInt8](repeating: 0, count: 16)
        data.withUnsafeBytes { _ = prism_md5($0.baseAddress, $0.count, &out) }
        return Data(out)
    }

    /// Lowercase hex MD5: the ETag S3 gives an object uploaded in one piece.
    public static func md5Hex(_ data: Data) -> String {
        var out = [UInt8](repeating: 0, count: 16)
        data.withUnsafeBytes { _ = prism_md5($0.baseAddress, $0.count, &out) }
        return hex(out)
    }

    public static func hex<Bytes: Sequence<UInt8>>(_ bytes: Bytes) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(64)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
