import Foundation
import Hummingbird
import HummingbirdTesting
@testable import PrismGateway
import PrismStorage
import Testing

@Suite("Stored files as a static origin")
struct FileOriginTests {
    @Test("Range headers resolve as RFC 9110 says", arguments: [
        (nil, 100, ByteRange.Outcome.whole),
        ("bytes=0-9", 100, .partial(0...9)),
        ("bytes=90-", 100, .partial(90...99)),
        ("bytes=-10", 100, .partial(90...99)),
        ("bytes=-1000", 100, .partial(0...99)),
        ("bytes=50-5000", 100, .partial(50...99)),
        ("bytes=99-99", 100, .partial(99...99)),
        (" Bytes = 1-2 ", 100, .whole),  // space before '=' makes the unit "bytes " - ignored
        ("BYTES=1-2", 100, .partial(1...2)),
        ("bytes=100-", 100, .unsatisfiable),
        ("bytes=100-200", 100, .unsatisfiable),
        ("bytes=-0", 100, .unsatisfiable),
        ("bytes=0-", 0, .unsatisfiable),
        ("bytes=-5", 0, .unsatisfiable),
        ("bytes=99999999999999999999999-", 100, .unsatisfiable),
        ("bytes=9-1", 100, .whole),
        ("bytes=a-b", 100, .whole),
        ("bytes=-", 100, .whole),
        ("items=0-1", 100, .whole),
        ("bytes=0-1,5-6", 100, .whole),
        ("bytes=0-1,", 100, .partial(0...1)),
    ] as [(String?, Int, ByteRange.Outcome)])
    func ranges(header: String?, size: Int, expected: ByteRange.Outcome) {
        #expect(ByteRange.resolve(header, size: size) == expected)
    }

    @Test("If-None-Match compares weakly, takes lists and *, and wins over If-Modified-Since")
    func noneMatch() {
        let etag = "\"0123456789abcdef0123456789abcdef\""
        let modified = Date(timeIntervalSince1970: 1_700_000_000.75)
        let later = HTTPDate.format(Date(timeIntervalSince1970: 1_800_000_000))
        let earlier = HTTPDate.format(Date(timeIntervalSince1970: 1_600_000_000))
        func check(_ headers: HTTPFields) -> Bool { Conditional.notModified(headers, etag: etag, modified: modified) }
        #expect(check([.ifNoneMatch: etag]))
        #expect(check([.ifNoneMatch: "W/\(etag)"]))
        #expect(check([.ifNoneMatch: "\"other\", \(etag)"]))
        #expect(check([.ifNoneMatch: "*"]))
        #expect(!check([.ifNoneMatch: "\"other\""]))
        #expect(!check([.ifNoneMatch: "\"other\"", .ifModifiedSince: later]))
        #expect(check([.ifModifiedSince: later]))
        #expect(check([.ifModifiedSince: HTTPDate.format(modified)]))  // same second
        #expect(!check([.ifModifiedSince: earlier]))
        #expect(!check([.ifModifiedSince: "yesterday"]))
        #expect(!check([:]))
    }

    @Test("If-Range: a strong match or the exact Last-Modified keeps the range")
    func ifRange() {
        let etag = "\"abc\""
        let date = HTTPDate.format(Date(timeIntervalSince1970: 1_700_000_000))
        #expect(Conditional.rangeApplies([:], etag: etag, lastModified: date))
        #expect(Conditional.rangeApplies([.ifRange: etag], etag: etag, lastModified: date))
        #expect(Conditional.rangeApplies([.ifRange: date], etag: etag, lastModified: date))
        #expect(!Conditional.rangeApplies([.ifRange: "W/\(etag)"], etag: etag, lastModified: date))
        #expect(!Conditional.rangeApplies([.ifRange: "\"old\""], etag: etag, lastModified: date))
    }

    @Test("HTTP dates round-trip as IMF-fixdate")
    func dates() {
        let text = HTTPDate.format(Date(timeIntervalSince1970: 784_111_777))
        #expect(text == "Sun, 06 Nov 1994 08:49:37 GMT")
        #expect(HTTPDate.parse(text) == Date(timeIntervalSince1970: 784_111_777))
    }

    @Test("files answer HEAD, the manifest's ETag, 304 and ranges through the router")
    func routes() async throws {
        try await RouteTests().withGateway { client, directory in
            let store = try LocalDiskStore(root: directory, publicBaseURL: "http://x/files")
            let body = Data((0..<1000).map { UInt8($0 % 251) })
            let etag = try await store.put(key: "images/a/thumb.webp", body: body, contentType: "image/webp", cacheControl: "x")
            #expect(etag == "\"\(Digest.md5Hex(body))\"")
            try await client.execute(uri: "/files/images/a/thumb.webp", method: .head) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.eTag] == etag)
                #expect(response.headers[.contentLength] == "1000")
                #expect(response.headers[.contentType] == "image/webp")
                #expect(response.headers[.acceptRanges] == "bytes")
                #expect(response.body.readableBytes == 0)
            }
            try await client.execute(uri: "/files/images/a/thumb.webp", method: .get, headers: [.ifNoneMatch: etag]) { response in
                #expect(response.status == .notModified)
                #expect(response.body.readableBytes == 0)
            }
            try await client.execute(uri: "/files/images/a/thumb.webp", method: .get, headers: [.range: "bytes=-10"]) { response in
                #expect(response.status == .partialContent)
                #expect(response.headers[.contentRange] == "bytes 990-999/1000")
                #expect(Data(response.body.readableBytesView) == body.suffix(10))
            }
            try await client.execute(uri: "/files/images/a/thumb.webp", method: .get, headers: [.range: "bytes=1000-"]) { response in
                #expect(response.status == .rangeNotSatisfiable)
                #expect(response.headers[.contentRange] == "bytes */1000")
            }
            try await client.execute(uri: "/files/images/a/thumb.webp", method: .get) { response in
                #expect(response.status == .ok)
                #expect(Data(response.body.readableBytesView) == body)
            }
        }
    }
}
