import Foundation
public import NIOSSL

/// Why TLS could not be set up from the files it was given: which file, what is wrong with it,
/// and what to do. Thrown at start (and by `--check-config`), never in the middle of serving.
public struct TLSSetupError: Error, CustomStringConvertible, Sendable {
    public var message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { self.message }
}

/// Reads the PEM files TLS is configured with, so that each mistake (a missing file, a directory,
/// no permission, DER instead of PEM, a key with a passphrase, an expired certificate) is named
/// with the setting it came from instead of surfacing as a BoringSSL error code at the first
/// handshake.
public enum PEMFile {
    /// Every certificate in a PEM file (a chain: leaf first; or a CA bundle).
    ///
    /// - Parameters:
    ///   - path: the file.
    ///   - setting: how the user named it, e.g. `--tls-cert (PRISM_PROCESSOR_TLS_CERT)`.
    /// - Throws: `TLSSetupError` naming `setting` when the file cannot be read, is not PEM, holds
    ///   no certificate, or holds one that has expired.
    public static func certificates(at path: String, setting: String) throws(TLSSetupError) -> [NIOSSLCertificate] {
        let bytes = try Self.read(path, setting: setting, marker: "CERTIFICATE")
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMBytes(bytes)
        } catch {
            throw TLSSetupError("\(setting): \(path) does not parse as PEM certificates (\(error)); expected one or more '-----BEGIN CERTIFICATE-----' blocks.")
        }
        guard !certificates.isEmpty else {
            throw TLSSetupError("\(setting): \(path) holds no certificate; expected one or more '-----BEGIN CERTIFICATE-----' blocks.")
        }
        let now = time(nil)
        for (index, certificate) in certificates.enumerated() where certificate.notValidAfter < now {
            let which = certificates.count == 1 ? "its certificate" : "certificate \(index + 1) of \(certificates.count)"
            throw TLSSetupError("\(setting): \(path): \(which) expired on \(Self.date(certificate.notValidAfter)); issue a new one.")
        }
        return certificates
    }

    /// The private key in a PEM file. Keys protected by a passphrase are refused: a service
    /// cannot type one in at start.
    ///
    /// - Throws: `TLSSetupError` naming `setting` when the file cannot be read or holds no
    ///   usable key.
    public static func privateKey(at path: String, setting: String) throws(TLSSetupError) -> NIOSSLPrivateKey {
        let bytes = try Self.read(path, setting: setting, marker: "PRIVATE KEY")
        if String(decoding: bytes, as: UTF8.self).contains("ENCRYPTED") {
            throw TLSSetupError("\(setting): \(path) is protected by a passphrase, which a service cannot enter; store it unencrypted (e.g. openssl pkey -in \(path) -out key.pem) with permissions 0600.")
        }
        do {
            return try NIOSSLPrivateKey(bytes: bytes, format: .pem)
        } catch {
            throw TLSSetupError("\(setting): \(path) does not parse as a PEM private key (\(error)); expected a '-----BEGIN PRIVATE KEY-----' (or RSA/EC PRIVATE KEY) block.")
        }
    }

    /// The bytes of a PEM file, after checking it exists, is a file, can be read and contains
    /// a PEM block with `marker` in its label.
    static func read(_ path: String, setting: String, marker: String) throws(TLSSetupError) -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw TLSSetupError("\(setting): \(path) does not exist.")
        }
        guard !isDirectory.boolValue else {
            throw TLSSetupError("\(setting): \(path) is a directory; name the PEM file itself.")
        }
        guard FileManager.default.isReadableFile(atPath: path), let data = FileManager.default.contents(atPath: path) else {
            throw TLSSetupError("\(setting): \(path) cannot be read by this process (check its permissions and owner).")
        }
        let text = String(decoding: data, as: UTF8.self)
        guard text.contains("-----BEGIN ") else {
            let hint = data.first == 0x30 ? " It looks like DER; convert it with 'openssl x509 -inform der' (or 'openssl pkey -inform der' for a key)." : ""
            throw TLSSetupError("\(setting): \(path) is not PEM: no '-----BEGIN' line.\(hint)")
        }
        guard text.contains(marker) else {
            throw TLSSetupError("\(setting): \(path) holds no '\(marker)' PEM block; is it the right file?")
        }
        return Array(data)
    }

    static func date(_ time: time_t) -> String {
        Date(timeIntervalSince1970: TimeInterval(time)).formatted(.iso8601)
    }
}
