import Foundation
import Hummingbird
import MultipartKit
import NIOCore

/// Reads the image out of an upload: a multipart/form-data `file` field, parsed as the body
/// streams in, or a raw `image/*` (or application/octet-stream) body. Never holds more than
/// `limit` bytes; past that it answers 413 without reading the rest.
enum UploadBody {
    static func read(_ request: Request, limit: Int, lease: ByteBudget.Lease) async throws -> Data {
        do {
            return try await self.readBody(request, limit: limit, lease: lease)
        } catch let error as GatewayError {
            throw error
        } catch let error as RequestReadTimeout {
            throw error.problem
        } catch is CancellationError {
            throw CancellationError()
        } catch {
            // The connection broke or the body was shorter than announced.
            throw GatewayError.badRequest("The request body ended before it was complete; send the whole image.")
        }
    }

    private static func readBody(_ request: Request, limit: Int, lease: ByteBudget.Lease) async throws -> Data {
        if let length = request.headers[.contentLength].flatMap({ Int($0) }), length > limit {
            throw GatewayError.tooLarge(limit: limit)
        }
        let contentType = request.headers[.contentType] ?? ""
        let mediaType = contentType.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces).lowercased() } ?? ""
        if mediaType == "multipart/form-data" {
            guard let boundary = parameter("boundary", in: contentType), !boundary.isEmpty, boundary.utf8.count <= 200 else {
                throw GatewayError.badRequest("multipart/form-data needs a boundary parameter in Content-Type.")
            }
            return try await self.multipartFile(request.body, boundary: boundary, limit: limit, lease: lease)
        }
        if mediaType.hasPrefix("image/") || mediaType == "application/octet-stream" {
            // Straight into the Data that travels on: one copy of the bytes, sized up front when
            // the length is announced.
            var data = Data()
            // Reserve what is announced only up to 1 MiB: a client that announces 40 MB and sends
            // nothing must not make the gateway map 40 MB (the budget counts what arrives).
            if let length = request.headers[.contentLength].flatMap({ Int($0) }) { data.reserveCapacity(min(length, 1 << 20)) }
            for try await chunk in request.body {
                guard data.count + chunk.readableBytes <= limit else { throw GatewayError.tooLarge(limit: limit) }
                try await lease.grow(by: chunk.readableBytes)
                data.append(contentsOf: chunk.readableBytesView)
            }
            guard !data.isEmpty else { throw GatewayError.badRequest("The request body is empty; send the image bytes.") }
            return data
        }
        throw GatewayError.unsupportedMediaType(
            "Send the image as multipart/form-data with a 'file' field, or as a raw body with an image/* Content-Type (got '\(mediaType.isEmpty ? "none" : mediaType)')."
        )
    }

    /// Streams the body through multipart-kit's parser and keeps only the `file` part.
    private static func multipartFile(_ body: RequestBody, boundary: String, limit: Int, lease: ByteBudget.Lease) async throws -> Data {
        let parser = MultipartParser(boundary: boundary)
        final class Collector {
            var inPart = false
            var isFile = false
            var file: Data?
            var current = Data()
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
            if collector.isFile, collector.file == nil { collector.current.append(contentsOf: chunk.readableBytesView) }
        }
        parser.onPartComplete = {
            if collector.isFile, collector.file == nil { collector.file = collector.current }
            collector.current = Data()
            collector.isFile = false
            collector.inPart = false
            collector.completedParts += 1
        }
        var received = 0
        do {
            for try await chunk in body {
                received += chunk.readableBytes
                guard received <= limit else { throw GatewayError.tooLarge(limit: limit) }
                try await lease.grow(by: chunk.readableBytes)
                try parser.execute(chunk)
            }
        } catch let error as GatewayError {
            throw error
        } catch let error as RequestReadTimeout {
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
        guard let file = collector.file, !file.isEmpty else {
            throw GatewayError.badRequest("The multipart body has no non-empty 'file' field; send the image in a field named 'file'.")
        }
        return file
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
