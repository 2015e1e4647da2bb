import Foundation
import PrismStorage
import ServiceLifecycle
import Testing

// sys/xattr.h is not part of Swift's Glibc module.
@_silgen_name("getxattr")
private func getxattr(_ path: UnsafePointer<CChar>, _ name: UnsafePointer<CChar>, _ value: UnsafeMutableRawPointer, _ size: Int) -> Int

@Suite("Object stores")
struct LocalDiskStoreTests {
    func makeStore() throws -> (LocalDiskStore, URL) {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("prism-store-\(UUID().uuidString)")
        return (try LocalDiskStore(root: root, publicBaseURL: "http://localhost:8080/files/"), root)
    }

    @Test("local disk: put, get, list, delete, and empty directories go away")
    func localRoundTrip() async throws {
        let (store, root) = try self.makeStore()
        defer { try? FileManager.default.removeItem(at: root) }
        let body = Data("hello".utf8)
        let etag = try await store.put(key: "images/abc/thumb.jpg", body: body, contentType: "image/jpeg", cacheControl: "x")
        #expect(etag == "\"5d41402abc4b2a76b9719d911017c592\"", "the MD5 ETag S3 would give")
        _ = try await store.put(key: "images/abc/manifest.json", body: Data("{}".utf8), contentType: "application/json", cacheControl: "x")
        _ = try await store.put(key: "images/abd/other.jpg", body: body, contentType: "image/jpeg", cacheControl: "x")
        #expect(try await store.get(key: "images/abc/thumb.jpg") == body)
        #expect(try await store.get(key: "images/abc/missing.jpg") == nil)
        #expect(try await store.list(prefix: "images/abc/") == ["images/abc/manifest.json", "images/abc/thumb.jpg"])
        #expect(store.url(for: "images/abc/thumb.jpg") == "http://localhost:8080/files/images/abc/thumb.jpg")
        try await store.delete(keys: ["images/abc/thumb.jpg", "images/abc/manifest.json", "images/abc/never-existed.jpg"])
        #expect(try await store.list(prefix: "images/abc/").isEmpty)
        #expect(!FileManager.default.fileExists(atPath: root.appendingPathComponent("images/abc").path))
        #expect(FileManager.default.fileExists(atPath: root.appendingPathComponent("images/abd/other.jpg").path))
    }

    @Test("local disk: an ETag given is kept, one not asked for is computed and kept on first serve")
    func entityTags() async throws {
        let (store, root) = try self.makeStore()
        defer { try? FileManager.default.removeItem(at: root) }
        let body = Data("a variant's bytes".utf8)
        let md5 = Data((0..<16).map { UInt8($0) })
        // The processor's digest is taken as is: the store does not read the body to hash it.
        let given = try await store.put(key: "images/e1/thumb.jpg", body: body, contentType: "image/jpeg", cacheControl: "x", options: PutOptions(md5: md5))
        #expect(given == "\"000102030405060708090a0b0c0d0e0f\"")
        #expect(try await store.fileInfo(key: "images/e1/thumb.jpg")?.etag == given, "served with the ETag the manifest has")

        // An original: no hash at upload; the first serve computes the MD5 and keeps it.
        let original = Data((0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 13) })
        let none = try await store.put(key: "images/e1/original.jpg", body: original, contentType: "image/jpeg", cacheControl: "x", options: PutOptions(entityTag: false))
        #expect(none == "")
        let path = root.appendingPathComponent("images/e1/original.jpg").path
        #expect(Self.xattr(path) == nil, "nothing stored until it is served")
        let served = try await store.fileInfo(key: "images/e1/original.jpg")?.etag
        #expect(served == "\"\(Digest.md5Hex(original))\"")
        #expect(Self.xattr(path) == served, "kept with the file: computed once, not once per process")
        #expect(try await store.get(key: "images/e1/original.jpg") == original)
    }

    @Test("local disk: durable writes (fsync) store the same files, and a first object makes its directories")
    func durableWrites() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("prism-store-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let store = try LocalDiskStore(root: root, publicBaseURL: "http://localhost/files", durable: true)
        #expect(store.durable)
        let body = Data("durable".utf8)
        let etag = try await store.put(key: "a/b/c/d.jpg", body: body, contentType: "image/jpeg", cacheControl: "x")
        #expect(etag == "\"\(Digest.md5Hex(body))\"")
        #expect(try await store.get(key: "a/b/c/d.jpg") == body)
        // No temporary file is left beside it.
        #expect(try await store.listAll(prefix: "a/b/c/") == ["a/b/c/d.jpg"])
    }

    @Test("local disk: deleting one upload never removes the directory another is being written into")
    func deleteRacesNoPut() async throws {
        let (store, root) = try self.makeStore()
        defer { try? FileManager.default.removeItem(at: root) }
        // Each round deletes the last round's uploads (leaving `images/` empty) while the next
        // ones write their first objects: before, a delete could remove `images/` between a
        // writer's two mkdirs, and the write failed (once in about 1000 uploads in a soak).
        let body = Data("x".utf8)
        let width = 4
        for j in 0..<width {
            _ = try await store.put(key: "images/r0-\(j)/a.jpg", body: body, contentType: "image/jpeg", cacheControl: "x")
        }
        for round in 1...400 {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for j in 0..<width {
                    group.addTask { try await store.delete(keys: ["images/r\(round - 1)-\(j)/a.jpg"]) }
                    group.addTask { _ = try await store.put(key: "images/r\(round)-\(j)/a.jpg", body: body, contentType: "image/jpeg", cacheControl: "x") }
                }
                try await group.waitForAll()
            }
        }
        #expect(try await store.list(prefix: "images/").count == width)
        #expect(!FileManager.default.fileExists(atPath: root.appendingPathComponent("images/r399-0").path), "emptied upload directories still go")
        // What makes it safe: the top-level directory stays when its last upload goes.
        try await store.delete(keys: (0..<width).map { "images/r400-\($0)/a.jpg" })
        #expect(try await store.list(prefix: "images/").isEmpty)
        var isDirectory: ObjCBool = false
        #expect(FileManager.default.fileExists(atPath: root.appendingPathComponent("images").path, isDirectory: &isDirectory) && isDirectory.boolValue)
    }

    static func xattr(_ path: String) -> String? {
        var buffer = [UInt8](repeating: 0, count: 64)
        let count = buffer.withUnsafeMutableBytes { getxattr(path, "user.prism.etag", $0.baseAddress!, $0.count) }
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : nil
    }

    @Test("local disk: keys cannot leave the root")
    func traversal() async throws {
        let (store, root) = try self.makeStore()
        defer { try? FileManager.default.removeItem(at: root) }
        for key in ["../escape.jpg", "/etc/passwd", "images/../../x", "images//x", ""] {
            #expect(store.fileURL(for: key) == nil, "\(key)")
            await #expect(throws: StorageError.self) { _ = try await store.put(key: key, body: Data(), contentType: "x", cacheControl: "x") }
        }
        #expect(try await store.get(key: "../../etc/passwd") == nil)
    }
}

@Suite("S3 through libcurl against SeaweedFS", .serialized)
struct S3StoreTests {
    /// Runs `body` with a fresh SeaweedFS and a running curl driver.
    func withS3(_ body: (S3Store, SeaweedFixture, CurlDriver) async throws -> Void) async throws {
        let weed = try SeaweedFixture()
        do {
            try await weed.waitUntilReady()
            let curl = CurlDriver()
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await curl.run() }
                let store = try S3Store(configuration: weed.configuration(), curl: curl)
                try await store.ensureBucket()
                do {
                    try await body(store, weed, curl)
                } catch {
                    group.cancelAll()
                    throw error
                }
                group.cancelAll()
            }
        } catch {
            await weed.stop()
            throw error
        }
        await weed.stop()
    }

    @Test("put, get, list and delete through SigV4-signed requests; wrong keys are refused")
    func roundTrip() async throws {
        try await self.withS3 { store, weed, curl in
            let payload = Data((0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 7) })
            let etag = try await store.put(key: "images/x1/large.jpg", body: payload, contentType: "image/jpeg", cacheControl: "public, max-age=60")
            #expect(etag == "\"\(Digest.md5Hex(payload))\"")
            #expect(try await store.get(key: "images/x1/large.jpg") == payload)
            #expect(try await store.get(key: "images/x1/nope.jpg") == nil)

            // Many transfers at once on the one curl thread.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for i in 0..<40 {
                    group.addTask { _ = try await store.put(key: "images/x2/v\(i).webp", body: Data("v\(i)".utf8), contentType: "image/webp", cacheControl: "x") }
                }
                try await group.waitForAll()
            }
            let listed = try await store.list(prefix: "images/x2/")
            #expect(listed.count == 40)
            #expect(listed.allSatisfy { $0.hasPrefix("images/x2/v") }, "the key prefix is stripped from listings")
            try await store.delete(keys: listed + ["images/x2/never.webp"])
            #expect(try await store.list(prefix: "images/x2/").isEmpty)
            #expect(store.url(for: "images/x1/large.jpg") == "\(weed.endpoint)/prism-test/t/images/x1/large.jpg")

            // Refused by the store itself, with its reason: a connection failure is no proof that
            // signatures are checked.
            var wrongSecret = weed.configuration()
            wrongSecret.secretAccessKey = "not-the-secret"
            var unknownKey = weed.configuration()
            unknownKey.accessKeyID = "nobody"
            for (config, code) in [(wrongSecret, "SignatureDoesNotMatch"), (unknownKey, "InvalidAccessKeyId")] {
                let intruder = try S3Store(configuration: config, curl: curl)
                let error = await #expect(throws: StorageError.self) {
                    _ = try await intruder.put(key: "images/x3/a.jpg", body: payload, contentType: "image/jpeg", cacheControl: "x")
                }
                #expect(error?.detail == "HTTP 403 \(code)", "\(String(describing: error))")
            }
            #expect(try await store.get(key: "images/x3/a.jpg") == nil, "nothing was written with the wrong keys")

            // The processor's digests travel with the bytes: S3 checks Content-MD5 against what
            // it received, and the signature covers the SHA-256 given.
            let variant = Data((0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 31) })
            let digests = PutOptions(md5: Digest.md5(variant), sha256: Digest.sha256(variant))
            let stored = try await store.put(key: "images/x4/small.webp", body: variant, contentType: "image/webp", cacheControl: "x", options: digests)
            #expect(stored == "\"\(Digest.md5Hex(variant))\"")
            var changed = variant
            changed[100] ^= 0xFF
            let corrupt = PutOptions(md5: Digest.md5(variant), sha256: Digest.sha256(changed))
            let error = await #expect(throws: StorageError.self) {
                _ = try await store.put(key: "images/x4/corrupt.webp", body: changed, contentType: "image/webp", cacheControl: "x", options: corrupt)
            }
            #expect(error?.detail.hasPrefix("HTTP 400") == true, "refused by S3: \(String(describing: error))")
            #expect(try await store.get(key: "images/x4/corrupt.webp") == nil, "bytes that changed on the way are not stored")
        }
    }
}
