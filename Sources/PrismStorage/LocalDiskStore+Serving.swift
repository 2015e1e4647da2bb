public import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension LocalDiskStore {
    /// What an HTTP origin needs to serve a stored file without reading it.
    public struct FileInfo: Sendable, Equatable {
        /// The file's path on disk.
        public var path: String
        public var size: Int
        public var modified: Date
        /// The strong entity tag `put` returned for it (quoted MD5 of the content, as S3's),
        /// so the ETag served equals the one in the manifest.
        public var etag: String
    }

    /// The extended attribute `put` writes the entity tag to.
    static let etagAttribute = "user.prism.etag"

    /// A stored regular file's size, modification time and entity tag; nil when there is none.
    ///
    /// The entity tag comes from the extended attribute `put` wrote. Files without it (originals,
    /// which `put` leaves unhashed; files on a file system without user attributes such as older
    /// tmpfs) are hashed on first use and the tag is written to the attribute; it is also kept
    /// in memory for as long as the file's size and time stay the same, so a file is hashed once,
    /// not once per request.
    public func fileInfo(key: String) async throws(StorageError) -> FileInfo? {
        guard let url = self.fileURL(for: key) else { return nil }
        let cache = self.etagCache
        return try await self.run("read a file's attributes") {
            var status = stat()
            guard stat(url.path, &status) == 0, (status.st_mode & S_IFMT) == S_IFREG else { return nil }
            let size = Int(status.st_size)
            let modified = Date(timeIntervalSince1970: Double(status.st_mtim.tv_sec) + Double(status.st_mtim.tv_nsec) / 1e9)
            let stamp = ETagCache.Stamp(size: size, seconds: status.st_mtim.tv_sec, nanoseconds: status.st_mtim.tv_nsec)
            if let etag = Self.storedETag(path: url.path) ?? cache.get(url.path, stamp) {
                return FileInfo(path: url.path, size: size, modified: modified, etag: etag)
            }
            guard let data = try? Data(contentsOf: url, options: .alwaysMapped) else { return nil }
            let etag = "\"\(Digest.md5Hex(data))\""
            Self.setStoredETag(etag, path: url.path)
            cache.set(url.path, stamp, etag)
            return FileInfo(path: url.path, size: size, modified: modified, etag: etag)
        }
    }

    /// Best effort: a file system without user attributes leaves the tag to be computed.
    static func setStoredETag(_ etag: String, path: String) {
        #if os(Linux)
        _ = etag.withCString { value in linuxSetxattr(path, Self.etagAttribute, value, strlen(value), 0) }
        #endif
    }

    /// `setStoredETag` on an open file (`put`, before the file has its name).
    static func setStoredETag(_ etag: String, descriptor: Int32) {
        #if os(Linux)
        _ = etag.withCString { value in linuxFsetxattr(descriptor, Self.etagAttribute, value, strlen(value), 0) }
        #endif
    }

    static func storedETag(path: String) -> String? {
        #if os(Linux)
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { linuxGetxattr(path, Self.etagAttribute, $0.baseAddress!, $0.count) }
        // A quoted 32-digit hex MD5; anything else is not ours.
        guard count == 34 else { return nil }
        let text = String(decoding: buffer[0..<count], as: UTF8.self)
        guard text.first == "\"", text.last == "\"" else { return nil }
        return text
        #else
        return nil
        #endif
    }
}

/// Entity tags computed for files that carry none, by path, valid while size and time match.
final class ETagCache: Sendable {
    struct Stamp: Equatable, Sendable {
        var size: Int
        var seconds: Int
        var nanoseconds: Int
    }

    /// Bounded: when full it starts over (files are immutable, recomputing is only slower).
    private let limit = 10_000
    private let entries = Mutex<[String: (Stamp, String)]>([:])

    func get(_ path: String, _ stamp: Stamp) -> String? {
        self.entries.withLock { entries in
            guard let (stored, etag) = entries[path], stored == stamp else { return nil }
            return etag
        }
    }

    func set(_ path: String, _ stamp: Stamp, _ etag: String) {
        self.entries.withLock { entries in
            if entries.count >= self.limit { entries.removeAll(keepingCapacity: true) }
            entries[path] = (stamp, etag)
        }
    }
}

#if os(Linux)
// sys/xattr.h is not part of Swift's Glibc module.
@_silgen_name("setxattr")
private func linuxSetxattr(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeRawPointer, _ size: Int, _ flags: Int32) -> Int32
@_silgen_name("fsetxattr")
private func linuxFsetxattr(_ fd: Int32, _ name: UnsafePointer<CChar>, _ value: UnsafeRawPointer, _ size: Int, _ flags: Int32) -> Int32
@_silgen_name("getxattr")
private func linuxGetxattr(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeMutableRawPointer, _ size: Int) -> Int
#endif
