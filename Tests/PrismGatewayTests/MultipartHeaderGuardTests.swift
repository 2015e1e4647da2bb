import Foundation
import Hummingbird
import HummingbirdTesting
import NIOCore
@testable import PrismGateway
import Testing

/// multipart-kit traps on a part-header name byte above 0x7F; the guard must refuse every such
/// body and no other, however the body is cut into chunks.
@Suite("Multipart header guard")
struct MultipartHeaderGuardTests {
    static func body(_ headers: String, preamble: String = "", file: [UInt8] = Array("image".utf8)) -> [UInt8] {
        Array("\(preamble)--b0und\r\n\(headers)\r\n\r\n".utf8) + file + Array("\r\n--b0und--\r\n".utf8)
    }

    /// Feeds `bytes` whole, one byte at a time, and in chunks of 3 and 7; all must agree.
    static func accepts(_ bytes: [UInt8]) -> Bool {
        var verdicts: [Bool] = []
        for size in [bytes.count, 1, 3, 7] {
            var headerGuard = MultipartHeaderGuard(boundary: "b0und")
            var ok = true
            for start in stride(from: 0, to: bytes.count, by: max(1, size)) {
                let chunk = ByteBuffer(bytes: bytes[start..<min(bytes.count, start + max(1, size))])
                do { try headerGuard.check(chunk) } catch { ok = false; break }
            }
            verdicts.append(ok)
        }
        #expect(Set(verdicts).count == 1, "chunking changed the verdict: \(verdicts)")
        return verdicts[0]
    }

    @Test("ordinary bodies pass, UTF-8 in values and non-ASCII in part bodies included")
    func passes() {
        #expect(Self.accepts(Self.body("Content-Disposition: form-data; name=\"file\"; filename=\"café.jpg\"")))
        #expect(Self.accepts(Self.body("Content-Disposition: form-data; name=\"file\"", file: [0xFF, 0xD8, 0xFF, 0x2D, 0x2D, 0x80, 0x0D, 0x0A, 0xFE])))
        #expect(Self.accepts(Self.body("Content-Type: image/jpeg", preamble: "preamble \u{e9}\r\n")))
    }

    @Test("a non-ASCII byte in a header name is refused, wherever the header block starts")
    func refuses() {
        #expect(!Self.accepts(Self.body("Cont\u{e9}nt-Disposition: form-data; name=\"file\"")))
        #expect(!Self.accepts(Self.body("Content-Type: image/png\r\n\u{80}x: y")))
        // The parser also takes "--boundary" without CRLF in the preamble as a delimiter.
        #expect(!Self.accepts(Array("junk--b0und\r\n\u{ff}: v\r\n\r\nx".utf8)))
        // And a delimiter inside a header value starts a new block for it.
        #expect(!Self.accepts(Array("--b0und\r\nA: --b0und\r\n\u{ff}: v\r\n\r\nx".utf8)))
    }

    @Test("through the route: 400 problem, and the gateway keeps answering")
    func route() async throws {
        try await RouteTests().withGateway { client, _ in
            let bytes = Self.body("\u{00ff}Content-Disposition: form-data; name=\"file\"")
            try await client.execute(uri: "/v1/images", method: .post, headers: [.contentType: "multipart/form-data; boundary=b0und"], body: ByteBuffer(bytes: bytes)) { response in
                #expect(response.status == .badRequest)
                let detail = try RouteTests.problemDetail(response)
                #expect(detail.contains("not ASCII"), "\(detail)")
            }
            try await client.execute(uri: "/healthz", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
    }
}
