import Foundation
import Hummingbird
import NIOCore
import PrismStorage
import Synchronization

/// Stored files served at `/files/**` (local storage only) as a static origin behind a CDN
/// expects: GET and HEAD, a strong ETag equal to the manifest's `etag`, `If-None-Match` and
/// `If-Modified-Since` answered 304, one byte range answered 206 (`If-Range` honoured), a range
/// past the end answered 416. Bodies are streamed from disk in chunks, never loaded whole.
///
/// Hummingbird's `FileMiddleware` is not used: its ETag is weak and derived from size and time
/// (never the manifest's), it reads `bytes=-n` as the first n+1 bytes instead of the last n,
/// and it has no 416 with `Content-Range: bytes */size`. Its `FileIO` does the streaming.
extension Gateway {
    func addFileRoutes(_ router: Router<GatewayContext>, store: LocalDiskStore) {
        let origin = FileOrigin(
            store: store,
            cacheControl: self.configuration.cacheControl,
            keys: self.configuration.apiKeys.isEmpty ? nil : APIKeyMiddleware(keys: self.configuration.apiKeys)
        )
        router.get("files/**") { request, context in try await origin.serve(request, context: context) }
        router.head("files/**") { request, context in try await origin.serve(request, context: context) }
    }
}

/// Answers requests for stored files.
struct FileOrigin: Sendable {
    let store: LocalDiskStore
    let cacheControl: String
    /// Set when API keys are on: originals and manifests then need one.
    let keys: APIKeyMiddleware?
    let io = FileIO()

    func serve(_ request: Request, context: GatewayContext) async throws -> Response {
        let parts = context.parameters.getCatchAll()
        let key = parts.joined(separator: "/")
        // With API keys on, originals (EXIF, GPS) and manifests need a key; variants stay
        // public, as a CDN in front expects.
        if let keys, parts.count == 3, parts[2].hasPrefix("original.") || parts[2] == "manifest.json", !keys.authorized(request) {
            throw GatewayError.unauthorized
        }
        // Files being written are temporaries named ".name.uuid.tmp": never served. Nor is
        // anything outside images/: the store keeps records there are no URLs for.
        guard parts.first == "images", !parts.contains(where: { $0.hasPrefix(".") }), let file = try await self.info(key) else {
            throw GatewayError.notFound("No such file.")
        }
        let lastModified = HTTPDate.format(file.modified)
        var headers: HTTPFields = [
            .contentType: contentType(forKey: key),
            .cacheControl: key.hasSuffix("manifest.json") ? "no-cache" : self.cacheControl,
            .eTag: file.etag,
            .lastModified: lastModified,
            .acceptRanges: "bytes",
            // Also on 304 and HEAD: the length a 200 would have (RFC 9110, 8.6).
            .contentLength: "\(file.size)",
        ]
        if Conditional.notModified(request.headers, etag: file.etag, modified: file.modified) {
            return Response(status: .notModified, headers: headers)
        }
        if request.method == .head {
            return Response(status: .ok, headers: headers)
        }
        let range: ByteRange.Outcome =
            Conditional.rangeApplies(request.headers, etag: file.etag, lastModified: lastModified)
            ? ByteRange.resolve(request.headers[.range], size: file.size) : .whole
        switch range {
        case .whole:
            guard file.size > 0 else { return Response(status: .ok, headers: headers) }
            let body = try await self.io.loadFile(path: file.path, range: 0...(file.size - 1), context: context)
            return Response(status: .ok, headers: headers, body: body)
        case .partial(let bytes):
            headers[.contentRange] = "bytes \(bytes.lowerBound)-\(bytes.upperBound)/\(file.size)"
            headers[.contentLength] = "\(bytes.count)"
            let body = try await self.io.loadFile(path: file.path, range: bytes, context: context)
            return Response(status: .partialContent, headers: headers, body: body)
        case .unsatisfiable:
            // Returned, not thrown: the problem keeps its Content-Range either way, and the
            // access log and metrics see the real 416.
            return try GatewayError.rangeNotSatisfiable(size: file.size).response(from: request, context: context)
        }
    }

    private func info(_ key: String) async throws -> LocalDiskStore.FileInfo? {
        do {
            return try await self.store.fileInfo(key: key)
        } catch {
            throw GatewayError.storageUnavailable
        }
    }
}

/// Conditional requests (RFC 9110, 13) on a file with a strong entity tag.
enum Conditional {
    /// True when a GET or HEAD is answered 304. `If-None-Match` compares weakly and, when
    /// present, `If-Modified-Since` is ignored (RFC 9110, 13.2.2).
    static func notModified(_ headers: HTTPFields, etag: String, modified: Date) -> Bool {
        let noneMatch = headers[values: .ifNoneMatch]
        if !noneMatch.isEmpty {
            let tags = noneMatch.flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
            return tags.contains { $0 == "*" || opaque($0) == opaque(etag) }
        }
        if let since = headers[.ifModifiedSince].flatMap(HTTPDate.parse) {
            // Last-Modified has whole seconds.
            return modified.timeIntervalSince1970.rounded(.down) <= since.timeIntervalSince1970
        }
        return false
    }

    /// False when `If-Range` names another version: the whole file is sent instead of a range.
    /// An entity tag compares strongly; a date must equal Last-Modified exactly.
    static func rangeApplies(_ headers: HTTPFields, etag: String, lastModified: String) -> Bool {
        guard let ifRange = headers[.ifRange]?.trimmingCharacters(in: .whitespaces) else { return true }
        return ifRange == etag || ifRange == lastModified
    }

    private static func opaque(_ tag: String) -> Substring {
        tag.hasPrefix("W/") ? tag.dropFirst(2) : Substring(tag)
    }
}

/// The `Range` header of a request for one file (RFC 9110, 14.1.2 and 14.2).
enum ByteRange {
    enum Outcome: Equatable {
        /// No range, or one this origin ignores (malformed, another unit, several ranges):
        /// 200 with the whole file.
        case whole
        /// 206 with these bytes (bounds inclusive, within the file).
        case partial(ClosedRange<Int>)
        /// 416: the range starts past the end (or asks for the last 0 bytes).
        case unsatisfiable
    }

    /// What to send for `header` on a file of `size` bytes. Several ranges are answered with
    /// the whole file (RFC 9110 allows ignoring Range; multipart/byteranges is not produced).
    static func resolve(_ header: String?, size: Int) -> Outcome {
        guard let header else { return .whole }
        let trimmed = header.trimmingCharacters(in: .whitespaces)
        guard let equals = trimmed.firstIndex(of: "="), trimmed[..<equals].lowercased() == "bytes" else { return .whole }
        let specs = trimmed[trimmed.index(after: equals)...].split(separator: ",", omittingEmptySubsequences: true)
            .map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        guard specs.count == 1, let spec = specs.first, let dash = spec.firstIndex(of: "-") else { return .whole }
        let first = String(spec[..<dash])
        let last = String(spec[spec.index(after: dash)...])
        guard first.allSatisfy(\.isASCIIDigit), last.allSatisfy(\.isASCIIDigit), !(first.isEmpty && last.isEmpty) else { return .whole }
        if first.isEmpty {
            // The last n bytes.
            let count = number(last)
            guard count > 0, size > 0 else { return .unsatisfiable }
            return .partial(max(0, size - count)...(size - 1))
        }
        let start = number(first)
        if !last.isEmpty, number(last) < start { return .whole }  // invalid: ignored
        guard start < size else { return .unsatisfiable }
        let end = last.isEmpty ? size - 1 : min(number(last), size - 1)
        return .partial(start...end)
    }

    /// Digits as a number; more than fit are "past any file".
    private static func number(_ digits: String) -> Int {
        Int(digits) ?? Int.max
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { self >= "0" && self <= "9" }
}

/// HTTP dates (IMF-fixdate, RFC 9110, 5.6.7).
enum HTTPDate {
    /// DateFormatter is not Sendable: one, behind a lock.
    private static let formatter = Mutex<DateFormatter>(Self.makeFormatter())

    private static func makeFormatter() -> DateFormatter {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "GMT")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss 'GMT'"
        return formatter
    }

    static func format(_ date: Date) -> String {
        let seconds = Date(timeIntervalSince1970: date.timeIntervalSince1970.rounded(.down))
        return self.formatter.withLock { $0.string(from: seconds) }
    }

    /// The date, or nil for anything but an IMF-fixdate (the obsolete formats are not sent by
    /// any client still in use; an unparsable date makes the condition be ignored).
    static func parse(_ text: String) -> Date? {
        let text = text.trimmingCharacters(in: .whitespaces)
        return self.formatter.withLock { $0.date(from: text) }
    }
}
