public import Foundation

/// Where Prism keeps originals, variants and manifests. Keys are relative paths such as
/// `images/0193.../thumb.jpg`; implementations must treat them as opaque.
public protocol ObjectStore: Sendable {
    /// Stores `body` under `key`, replacing what was there.
    /// - Returns: the stored object's entity tag, as the store reports it.
    func put(key: String, body: Data, contentType: String, cacheControl: String) async throws(StorageError) -> String

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
}

/// The deadline of the work the calling task is part of (an upload): remote stores end their
/// transfers by then, whatever their own timeouts. A task-local, so it reaches every call made
/// inside `StorageDeadline.$current.withValue(deadline) { ... }`, child tasks included.
public enum StorageDeadline {
    @TaskLocal public static var current: ContinuousClock.Instant?
}

extension ObjectStore {
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
