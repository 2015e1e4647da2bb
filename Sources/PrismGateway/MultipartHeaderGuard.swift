import Foundation
import NIOCore

/// Refuses a multipart body whose part-header names contain a byte above 0x7F before those
/// bytes reach multipart-kit's parser.
///
/// multipart-kit 4.7.1 looks header-name bytes up in a 128-entry table and traps on any byte
/// of 0x80 and above: one such request would take the whole gateway down (schemathesis found
/// it). The guard watches the stream for every place the parser could be reading a header
/// name and throws instead.
///
/// It over-approximates the parser, so it never misses a name the parser reads: every
/// occurrence of `--boundary` (the parser's delimiter is `\r\n--boundary`, or `--boundary`
/// alone in the preamble) may start a header block; after it, each line up to a blank one may
/// be a header, and its bytes before the first `:` are its name. A delimiter seen anywhere,
/// even inside what looks like a header, restarts the block, as it would for the parser.
/// Header values (which may hold UTF-8 file names) and part bodies are not constrained.
struct MultipartHeaderGuard {
    private enum State {
        /// In a part body or the preamble: only a delimiter matters.
        case body
        /// After a delimiter: the rest of its line (CRLF, or `--` at the end).
        case delimiterLine
        /// At or in a header name; `empty` while nothing but CR has been seen on the line.
        case name(empty: Bool)
        /// In a header value, up to the end of its line.
        case value
    }

    private let delimiter: [UInt8]
    /// KMP failure function of `delimiter`.
    private let failure: [Int]
    /// Bytes of `delimiter` matched so far.
    private var matched = 0
    private var state = State.body

    init(boundary: String) {
        self.delimiter = Array("--\(boundary)".utf8)
        var failure = [Int](repeating: 0, count: self.delimiter.count)
        var k = 0
        for i in 1..<max(1, self.delimiter.count) {
            while k > 0 && self.delimiter[i] != self.delimiter[k] { k = failure[k - 1] }
            if self.delimiter[i] == self.delimiter[k] { k += 1 }
            failure[i] = k
        }
        self.failure = failure
    }

    /// Checks the next chunk of the body.
    /// - Throws: `GatewayError` (400) when a part-header name has a byte above 0x7F.
    mutating func check(_ chunk: ByteBuffer) throws {
        let ok = chunk.withUnsafeReadableBytes { bytes -> Bool in
            var i = 0
            let count = bytes.count
            while i < count {
                // Part bodies are most of the bytes: jump to the next possible delimiter start.
                if case .body = self.state, self.matched == 0 {
                    guard let base = bytes.baseAddress,
                          let found = memchr(base + i, Int32(UInt8(ascii: "-")), count - i) else { return true }
                    i = base.distance(to: UnsafeRawPointer(found))
                }
                let byte = bytes[i]
                i += 1
                if self.advanceMatch(byte) {
                    self.state = .delimiterLine
                    continue
                }
                switch self.state {
                case .body:
                    break
                case .delimiterLine:
                    if byte == UInt8(ascii: "\n") { self.state = .name(empty: true) }
                case .name(let empty):
                    if byte == UInt8(ascii: ":") {
                        self.state = .value
                    } else if byte == UInt8(ascii: "\n") {
                        // A blank line ends the headers; the parser refuses any other bare line.
                        self.state = empty ? .body : .name(empty: true)
                    } else if byte >= 0x80 {
                        return false
                    } else if byte != UInt8(ascii: "\r") {
                        self.state = .name(empty: false)
                    }
                case .value:
                    if byte == UInt8(ascii: "\n") { self.state = .name(empty: true) }
                }
            }
            return true
        }
        guard ok else {
            throw GatewayError.badRequest(
                "A part header of the multipart body has a name that is not ASCII; header names such as Content-Disposition must be plain ASCII."
            )
        }
    }

    /// Feeds one byte to the delimiter matcher; true when it completes a delimiter.
    private mutating func advanceMatch(_ byte: UInt8) -> Bool {
        while self.matched > 0 && byte != self.delimiter[self.matched] {
            self.matched = self.failure[self.matched - 1]
        }
        if byte == self.delimiter[self.matched] { self.matched += 1 }
        if self.matched == self.delimiter.count {
            self.matched = self.failure[self.matched - 1]
            return true
        }
        return false
    }
}
