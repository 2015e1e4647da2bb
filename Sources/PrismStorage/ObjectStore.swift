public import Foundation

/// Where Prism keeps originals, variants and manifests. Keys are relative paths such as
/// `images/0193.../thumb.jpg`; implementations must treat them as opaque.
public protocol ObjectStore: Sendable {
    /// Stores `body` under `key`, replacing what was there.
    /// - Returns: the stored object's entity tag, as the store reports it; empty when
    ///   `options.entityTag` is false and the store would have had to compute it.
    func put(key: String, body: Data, contentType: String, cacheControl: String, options: PutOptions) async throws(StorageError) -> String

    /// The object's bytes, or nil when there is none.
    func get(key: String) async throws(StorageError) -> Data?

    /// Removes objects; keys that do not exist are not an error.
    func delete(keys: [String]) async throws(StorageError)

    /// Every key that starts with `prefix`.
    func list(prefix: String) async throws(StorageError) -> [String]

    /// Every key that starts with `prefix`, including what a store keeps while writing (local
    /// disk's temporary files): what the sweeper must remove with an abandoned upload.
    func listAll(prefix: String) async throws(StorageError) -> [String]

    /// The URL a client fetches the object from.
    func url(for key: String) -> String

    /// Whether `put` needs the body's SHA-256 (S3 signs requests with it): a caller that would
    /// learn it only later should compute it now and pass it, rather than have it computed twice.
    var signsContent: Bool { get }
}

/// The deadline of the work the calling task is part of (an upload): remote stores end their
/// transfers by then, whatever their own timeouts. A task-local, so it reaches every call made
/// inside `StorageDeadline.$current.withValue(deadline) { ... }`, child tasks included.
public enum StorageDeadline {
    @TaskLocal public static var current: ContinuousClock.Instant?
}

/// What a caller of `put` already knows of the body, and what it needs back. Hashing is most of
/// what storing costs the gateway's CPU: these let it hash each body at most once, or never
/// when a processor sent the digests with the bytes.
public struct PutOptions: Sendable {
    /// The body's MD5 (16 bytes), when the caller has it: the local store's ETag without
    /// hashing; S3 gets it as Content-MD5 and refuses the body if it does not match.
    public var md5: Data?
    /// The body's SHA-256 (32 bytes), when the caller has it (S3 requests are signed with it).
    public var sha256: Data?
    /// Whether the caller needs the entity tag now. The local store otherwise leaves the MD5 to
    /// the first request that serves the file (originals are rarely served).
    public var entityTag: Bool
    /// This object is the commit point of the objects written before it under the same prefix
    /// (an upload's manifest): a store that flushes makes them and their names durable before
    /// this one exists, so after a power loss either all of them are there or it is not.
    public var commit: Bool

    public init(md5: Data? = nil, sha256: Data? = nil, entityTag: Bool = true, commit: Bool = false) {
        self.md5 = md5?.count == 16 ? md5 : nil
        self.sha256 = sha256?.count == 32 ? sha256 : nil
        self.entityTag = entityTag
        self.commit = commit
    }
}

extension ObjectStore {
    public var signsContent: Bool { false }

    /// Stores `body` under `key` and returns its entity tag.
    public func put(key: String, body: Data, contentType: String, cacheControl: String) async throws(StorageError) -> String {
        try await self.put(key: key, body: body, contentType: contentType, cacheControl: cacheControl, options: PutOptions())
    }

    public func listAll(prefix: String) async throws(StorageError) -> [String] {
        try await self.list(prefix: prefix)
    }
}

/// A storage failure. `message` is safe to show to API clients; `detail` (paths, endpoints,
/// server answers) is for the log only.
public struct StorageError: Error, Sendable, CustomStringConvertible {
    public var message: String
    public var detail: String

    public init(_ message: String, detail: String) {
        self.message = message
        self.detail = detail
    }

    public var description: String { "\(self.message) [\(self.detail)]" }

    /// The call was abandoned because its task was cancelled; the store did nothing wrong.
    public var isCancellation = false

    public static var cancelled: StorageError {
        var error = StorageError("The object store call was cancelled.", detail: "cancelled")
        error.isCancellation = true
        return error
    }
}

/// The media type of the formats Prism stores, by file extension.
public func contentType(forKey key: String) -> String {
    switch (key as NSString).pathExtension.lowercased() {
    case "jpg", "jpeg": return "image/jpeg"
    case "png": return "image/png"
    case "webp": return "image/webp"
    case "avif": return "image/avif"
    case "gif": return "image/gif"
    case "heic": return "image/heic"
    case "tif", "tiff": return "image/tiff"
    case "json": return "application/json"
    default: return "application/octet-stream"
    }
}
