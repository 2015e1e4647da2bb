import Foundation
import Hummingbird
import Logging
import MultipartKit
import NIOCore

/// Reads the image out of an upload: a multipart/form-data `file` field, parsed as the body
/// streams in, or a raw `image/*` (or application/octet-stream) body. Never holds more than
/// `limit` bytes; past that it answers 413 without reading the rest. The bytes go to a
/// `BodySink`: memory while the budget has room, a spool file otherwise.
enum UploadBody {
    /// The image, in one buffer (read back from the spool if it went there), and whether it was
    /// spooled.
    static func read(
        _ request: Request, limit: Int, lease: ByteBudget.Lease, spool: BodySpool,
        memoryWait: Duration, pool: BodyBufferPool? = nil, logger: Logger
    ) async throws -> (body: ByteBuffer, spooled: Bool) {
        let announced = request.headers[.contentLength].flatMap { Int($0) }
        let sink = BodySink(limit: limit, lease: lease, spool: spool, expected: announced, pool: pool)
        defer { sink.discard() }
        do {
            try await self.readBody(request, limit: limit, into: sink)
            guard sink.count > 0 else { throw GatewayError.badRequest("The request body is empty; send the image bytes.") }
            // The wait for memory counts from the end of the body, however long the body took.
            return (try await sink.finish(until: .now + memoryWait), sink.spooled)
        } catch let error as GatewayError {
            throw error
        } catch let error as RequestReadTimeout {
            throw error.problem
        } catch let error as SpoolError {
            logger.error("upload body could not be spooled", metadata: ["error": "\(error)"])
            throw GatewayError.memoryBusy
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // The connection broke or the body was shorter than announced.
            throw GatewayError.badRequest("The request body ended before it was complete; send the whole image.")
        }
    }

    private static func readBody(_ request: Request, limit: Int, into sink: BodySink) async throws {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw GatewayError.tooLarge(limit: limit)
        }
        let contentType = request.headers[.contentType] ?? ""
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        if mediaType == "multipart/form-data" {
            guard let boundary = parameter("boundary", in: contentType), !boundary.isEmpty, boundary.utf8.count <= 200 else {
                throw GatewayError.badRequest("multipart/form-data needs a boundary parameter in Content-Type.")
            }
            return try await self.multipartFile(request.body, boundary: boundary, limit: limit, into: sink)
        }
        if mediaType.hasPrefix("image/") || mediaType == "application/octet-stream" {
            for try await chunk in request.body {
                try await sink.append(chunk)
            }
            return
        }
        throw GatewayError.unsupportedMediaType(
            "Send the image as multipart/form-data with a 'file' field, or as a raw body with an image/* Content-Type (got '\(mediaType.isEmpty ? "none" : mediaType)')."
        )
    }

    /// Streams the body through multipart-kit's parser and keeps only the first `file` part.
    private static func multipartFile(_ body: RequestBody, boundary: String, limit: Int, into sink: BodySink) async throws {
        let parser = MultipartParser(boundary: boundary)
        // The parser traps on some bytes in part-header names; the guard refuses them first.
        var headerGuard = MultipartHeaderGuard(boundary: boundary)
        final class Collector {
            var inPart = false
            var isFile = false
            var fileDone = false
            var fileBytes = 0
            /// Bytes of the file part parsed from the last chunk, for the sink.
            var pending: [ByteBuffer] = []
            var completedParts = 0
        }
        let collector = Collector()
        parser.onHeader = { name, value in
            collector.inPart = true
            if name.lowercased() == "content-disposition", parameter("name", in: value) == "file" {
                collector.isFile = true
            }
        }
        parser.onBody = { chunk in
            collector.inPart = true
            if collector.isFile, !collector.fileDone {
                collector.pending.append(chunk)
                collector.fileBytes += chunk.readableBytes
            }
        }
        parser.onPartComplete = {
            if collector.isFile, collector.fileBytes > 0 { collector.fileDone = true }
            collector.isFile = false
            collector.inPart = false
            collector.completedParts += 1
        }
        var received = 0
        do {
            for try await chunk in body {
                received += chunk.readableBytes
                guard received <= limit else { throw GatewayError.tooLarge(limit: limit) }
                try headerGuard.check(chunk)
                try parser.execute(chunk)
                for part in collector.pending { try await sink.append(part) }
                collector.pending.removeAll()
            }
        } catch let error as GatewayError {
            throw error
        } catch let error as RequestReadTimeout {
            throw error
        } catch let error as SpoolError {
            throw error
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            throw GatewayError.badRequest("The multipart body is malformed; send multipart/form-data with a 'file' field.")
        }
        guard !collector.inPart else {
            throw GatewayError.badRequest("The multipart body ended before its closing boundary; the upload is incomplete.")
        }
        guard collector.completedParts > 0 else {
            throw GatewayError.badRequest("The multipart body has no parts (is the boundary right?); send a 'file' field.")
        }
        guard collector.fileDone else {
            throw GatewayError.badRequest("The multipart body has no non-empty 'file' field; send the image in a field named 'file'.")
        }
    }
}

/// The value of `name=value` (quoted or not) among `;`-separated header parameters.
func parameter(_ name: String, in header: String) -> String? {
    for part in header.split(separator: ";").dropFirst() {
        let pair = part.split(separator: "=", maxSplits: 1)
        guard pair.count == 2, pair[0].trimmingCharacters(in: .whitespaces).lowercased() == name else { continue }
        var value = pair[1].trimmingCharacters(in: .whitespaces)
        if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = String(value.dropFirst().dropLast()) }
        return value
    }
    return nil
}
