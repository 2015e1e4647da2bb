public import Foundation
import NIOPosix

/// Objects as files under a root directory: the zero-setup default. The gateway serves them
/// over HTTP, so manifest URLs work.
///
/// Writes go to a temporary file then `rename`, so a reader never sees half an object. Disk I/O
/// runs on a small thread pool of its own, never on the event loops.
///
/// With `durable` (the gateway's default), each object's data is on the device before it gets
/// its name, and a commit object (`PutOptions.commit`, an upload's manifest) is written only
/// after the names of the objects before it are durable, then made durable with its directory's
/// entry in its parent: after a power loss an upload with a manifest has all of its files,
/// whole. Without it a process crash still loses nothing (the kernel holds the data), but a
/// power loss can leave recent files empty or missing, manifests included, as with SeaweedFS's
/// or nginx's defaults.
public final class LocalDiskStore: ObjectStore {
    public let root: URL
    /// `root` as a path, without a trailing slash.
    let rootPath: String
    let publicBaseURL: String
    /// Whether `put` flushes each file and its directory to the device (`fsync`).
    public let durable: Bool
    let io: NIOThreadPool
    /// Entity tags of files that carry none in an extended attribute (see `fileInfo`).
    let etagCache = ETagCache()

    /// - Parameters:
    ///   - root: the directory objects live under (created if missing).
    ///   - publicBaseURL: what manifest URLs start with, e.g. `http://localhost:8080/files`.
    ///   - durable: flush every object to the device before `put` returns.
    public init(root: URL, publicBaseURL: String, durable: Bool = false) throws(StorageError) {
        do {
            try FileManager.default.createDirectory(at: root, withIntermediateDirectories: true)
        } catch {
            throw StorageError("The storage directory cannot be created.", detail: "\(root.path): \(error)")
        }
        self.root = root.standardizedFileURL
        self.rootPath = self.root.path
        self.publicBaseURL = publicBaseURL.hasSuffix("/") ? String(publicBaseURL.dropLast()) : publicBaseURL
        self.durable = durable
        self.io = NIOThreadPool(numberOfThreads: 2)
        self.io.start()
    }

    deinit {
        self.io.shutdownGracefully { _ in }
    }

    /// The file for a key; nil when the key would leave the root (`..`, absolute paths).
    public func fileURL(for key: String) -> URL? {
        guard Self.isValidKey(key) else { return nil }
        return self.root.appendingPathComponent(key)
    }

    /// Whether a key stays under the root: relative, no `.`, `..` or empty components.
    static func isValidKey(_ key: String) -> Bool {
        !key.isEmpty && !key.hasPrefix("/") && !key.split(separator: "/", omittingEmptySubsequences: false).contains(where: { $0 == ".." || $0 == "." || $0.isEmpty })
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

    public func put(key: String, body: Data, contentType: String, cacheControl: String, options: PutOptions) async throws(StorageError) -> String {
        guard Self.isValidKey(key) else { throw StorageError("Invalid object key.", detail: key) }
        // Paths as strings: Foundation's URL operations showed in the gateway's profile.
        let path = self.rootPath + "/" + key
        let slash = path.lastIndex(of: "/")!
        let directory = String(path[..<slash])
        let temporary = "\(directory)/.\(path[path.index(after: slash)...]).\(UUID().uuidString).tmp"
        let durable = self.durable
        return try await self.run("save a file") {
            // Plain POSIX calls: Foundation's `Data.write` also flushes every file to the device,
            // which is `durable`'s choice to make, not every write's. The directory is made only
            // when missing (an upload's first object), not tried on every write.
            // The names of the objects this one commits are durable before it exists (no
            // directory yet: nothing written before it to commit).
            if durable, options.commit { try Self.flushDirectory(directory, missingIsFine: true) }
            var fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
            if fd < 0, errno == ENOENT {
                try Self.makeDirectory(directory)
                fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o666)
            }
            guard fd >= 0 else { throw Self.failure("open", temporary) }
            var etag = ""
            do {
                defer { if fd >= 0 { close(fd) } }
                try Self.writeAll(body, to: fd, path: temporary)
                if let md5 = options.md5 {
                    etag = "\"\(Digest.hex(md5))\""
                    Self.setStoredETag(etag, descriptor: fd)
                } else if options.entityTag {
                    etag = "\"\(Digest.md5Hex(body))\""
                    // Kept with the file, so serving it needs no hash of the content (see `fileInfo`).
                    Self.setStoredETag(etag, descriptor: fd)
                }
                if durable, fdatasync(fd) != 0 { throw Self.failure("flush", temporary) }
                // Errors of delayed writes (NFS, quotas) may show only here.
                let closed = close(fd)
                fd = -1
                guard closed == 0 || errno == EINTR else { throw Self.failure("close", temporary) }
            } catch {
                unlink(temporary)
                throw error
            }
            guard rename(temporary, path) == 0 else {
                let failure = Self.failure("rename", temporary)
                unlink(temporary)
                throw failure
            }
            if durable, options.commit {
                try Self.flushDirectory(directory)
                // The upload's directory itself was new: its entry in the parent too.
                if let slash = directory.lastIndex(of: "/"), slash != directory.startIndex {
                    try Self.flushDirectory(String(directory[..<slash]))
                }
            }
            return etag
        }
    }

    /// The directory, and its parents when missing (one `mkdir` when only the last is new, as
    /// for each upload's first object).
    static func makeDirectory(_ directory: String) throws {
        if mkdir(directory, 0o777) == 0 || errno == EEXIST { return }
        guard errno == ENOENT else { throw Self.failure("create directory", directory) }
        // A parent is missing: make it, then this one. Deletes keep top-level directories (see
        // `delete`), but something else (an operator's cleanup) may remove an empty parent in
        // between, so try again a few times.
        guard let slash = directory.lastIndex(of: "/"), slash != directory.startIndex else {
            throw Self.failure("create directory", directory)
        }
        let parent = String(directory[..<slash])
        for _ in 0..<4 {
            try Self.makeDirectory(parent)
            if mkdir(directory, 0o777) == 0 || errno == EEXIST { return }
            guard errno == ENOENT else { break }
        }
        throw Self.failure("create directory", directory)
    }

    static func writeAll(_ body: Data, to fd: Int32, path: String) throws {
        try body.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var done = 0
            while done < raw.count {
                let n = write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw Self.failure("write", path)
                }
                done += n
            }
        }
    }

    /// Makes a rename in `path` survive a power loss.
    static func flushDirectory(_ path: String, missingIsFine: Bool = false) throws {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if fd < 0, missingIsFine, errno == ENOENT { return }
        guard fd >= 0 else { throw Self.failure("open directory", path) }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw Self.failure("flush directory", path) }
    }

    /// The client sees "could not save a file"; the log gets the call, the path and the reason.
    static func failure(_ call: String, _ path: String) -> StorageError {
        let code = errno
        return StorageError("The image store could not save a file.", detail: "\(call) \(path): \(String(cString: strerror(code)))")
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
            // Remove directories left empty, up to but not including the top level (`images/`,
            // `idempotency/`): a concurrent upload may be about to create its directory in it,
            // and removing the parent under it failed that upload (seen once in 1000 in a soak).
            for directory in directories {
                var current = directory.standardizedFileURL
                while current.deletingLastPathComponent().standardizedFileURL.path.hasPrefix(root.path + "/"), rmdir(current.path) == 0 {
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
