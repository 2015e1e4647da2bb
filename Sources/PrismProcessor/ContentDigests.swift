internal import CCrypto
import Foundation

/// MD5 and SHA-256 of a variant's bytes (`Response.md5`, `Response.sha256`), from libcrypto.
///
/// The processor hashes what it encodes so the gateway, whose CPU is the first limit of a
/// deployment (docs/scaling.md), never reads a variant's bytes a second time: the MD5 is the
/// object's ETag (and S3's Content-MD5 check), the SHA-256 signs the S3 request.
struct ContentDigests: Sendable {
    var md5: Data
    var sha256: Data

    init(of data: Data) {
        self.md5 = Self.digest(data, size: 16) { prism_md5($0, $1, $2) }
        self.sha256 = Self.sha256(of: data)
    }

    static func sha256(of data: Data) -> Data {
        Self.digest(data, size: 32) { prism_sha256($0, $1, $2) }
    }

    private static func digest(_ data: Data, size: Int, _ function: (UnsafeRawPointer?, Int, UnsafeMutablePointer<UInt8>) -> Int32) -> Data {
        var out = [UInt8](repeating: 0, count: size)
        let ok = data.withUnsafeBytes { bytes in out.withUnsafeMutableBufferPointer { function(bytes.baseAddress, bytes.count, $0.baseAddress!) } }
        // libcrypto fails only without memory; an empty digest makes the client hash the bytes.
        return ok == 1 ? Data(out) : Data()
    }
}

/// The SHA-256 of a call's source, computed on a thread of its own while the worker decodes
/// (a 37 MB source takes about 20 ms; after the last variant it would delay the answer by that).
/// A dedicated thread, never the cooperative pool, as for the job's helper chains.
final class BackgroundSHA256: @unchecked Sendable {
    // `digest` is written once by the thread and read after it signalled, under `condition`.
    private let condition = NSCondition()
    private var digest: Data?

    init(_ data: Data) {
        let thread = Thread { [self] in
            let value = ContentDigests.sha256(of: data)
            self.condition.lock()
            self.digest = value
            self.condition.broadcast()
            self.condition.unlock()
        }
        thread.name = "prism-source-sha256"
        thread.start()
    }

    /// Waits for the digest.
    func value() -> Data {
        self.condition.lock()
        defer { self.condition.unlock() }
        while self.digest == nil { self.condition.wait() }
        return self.digest!
    }
}
