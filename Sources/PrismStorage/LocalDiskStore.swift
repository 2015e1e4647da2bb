public import Foundation
import NIOPosix

/// Objects as files under a root directory: the zero-setup default. The gateway serves them
/// over HTTP, so manifest URLs work.
///
/// Writes go to a temporary file then `rename`, so a reader never sees half an object. Disk I/O
/// runs on a small thread pool of its own, never on the event loops.
public final class LocalDiskStore: ObjectStore {
    public let root: URL
    let publicBaseURL: String
    let io: NIOThreadPool
    /// Entity tags of files that carry none in an extended attribute (see `fileInfo`).
    let etagCache = ETagCache()

    /// - Parameters:
    ///   - root: the directory objects live under (created if missing).
    ///   - publicBaseURL: what manifest URLs start with, e.g. `http://localhost:8080/files`.
    public init(root: URL, publicBaseURL: String) throws(StorageError) {
        do {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        } catch {
            throw StorageError("The storage directory cannot be created.", detail: "\(root.path): \(error)")
        }
        self.root = root.standardizedFileURL
        self.publicBaseURL = publicBaseURL.hasSuffix("/") ? String(publicBaseURL.dropLast()) : publicBaseURL
        self.io = NIOThreadPool(numberOfThreads: 2)
        self.io.start()
    }

    deinit {
        self.io.shutdownGracefully { _ in }
    }

    /// The file for a key; nil when the key would leave the root (`..`, absolute paths).
    public func fileURL(for key: String) -> URL? {
        guard !key.isEmpty, !key.hasPrefix("/"), !key.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." || $0 == "." || $0.isEmpty }) else {
            return nil
        }
        return self.root.appendingPathComponent(key)
    }

    func run<T: Sendable>(_ what: String, _ body: @escaping @Sendable () throws -> T) async throws(StorageError) -> T {
        do {
            return try await self.io.runIfActive(body)
        } catch let error as StorageError {
            throw error
        } catch {
            throw StorageError("The image store could not \(what).", detail: "\(error)")
        }
    }

    public func put(key: String, body: Data, contentType: String, cacheControl: String) async throws(StorageError) -> String {
        guard let url = self.fileURL(for: key) else { throw StorageError("Invalid object key.", detail: key) }
        return try await self.run("save a file") {
            try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
            let temporary = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).\(UUID().uuidString).tmp")
            try body.write(to: temporary)
            let etag = "\"\(Digest.md5Hex(body))\""
            // Kept with the file, so serving it needs no hash of the content (see `fileInfo`).
            Self.setStoredETag(etag, path: temporary.path)
            guard rename(temporary.path, url.path) == 0 else {
                try? FileManager.default.removeItem(at: temporary)
                throw StorageError("The image store could not save a file.", detail: "rename \(temporary.path): errno \(errno)")
            }
            return etag
        }
    }

    public func get(key: String) async throws(StorageError) -> Data? {
        guard let url = self.fileURL(for: key) else { return nil }
        return try await self.run("read a file") {
            FileManager.default.contents(atPath: url.path)
        }
    }

    public func delete(keys: [String]) async throws(StorageError) {
        let urls = keys.compactMap { self.fileURL(for: $0) }
        let root = self.root
        try await self.run("remove files") {
            var directories = Set<URL>()
            for url in urls {
                if unlink(url.path) != 0 && errno != ENOENT {
                    throw StorageError("The image store could not remove a file.", detail: "unlink \(url.path): errno \(errno)")
                }
                directories.insert(url.deletingLastPathComponent())
            }
            // Remove directories left empty, up to the root.
            for directory in directories {
                var current = directory.standardizedFileURL
                while current.path.hasPrefix(root.path + "/"), rmdir(current.path) == 0 {
                    current = current.deletingLastPathComponent().standardizedFileURL
                }
            }
        }
    }

    public func list(prefix: String) async throws(StorageError) -> [String] {
        try await self.list(prefix: prefix, hidden: false)
    }

    public func listAll(prefix: String) async throws(StorageError) -> [String] {
        try await self.list(prefix: prefix, hidden: true)
    }

    private func list(prefix: String, hidden: Bool) async throws(StorageError) -> [String] {
        let root = self.root
        return try await self.run("list files") {
            // Walk only the directory the prefix names (keys are paths).
            let directoryPart = prefix.contains("/") ? String(prefix[..<prefix.lastIndex(of: "/")!]) : ""
            let start = directoryPart.isEmpty ? root : root.appendingPathComponent(directoryPart)
            guard let walker = FileManager.default.enumerator(at: start, includingPropertiesForKeys: [.isRegularFileKey]) else { return [] }
            var keys: [String] = []
            for case let url as URL in walker {
                guard (try? url.resourceValues(forKeys: [.isRegularFileKey]).isRegularFile) == true else { continue }
                let key = String(url.standardizedFileURL.path.dropFirst(root.path.count + 1))
                if key.hasPrefix(prefix), hidden || !url.lastPathComponent.hasPrefix(".") { keys.append(key) }
            }
            return keys.sorted()
        }
    }

    public func url(for key: String) -> String {
        "\(self.publicBaseURL)/\(key)"
    }
}
