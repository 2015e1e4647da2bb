import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOFoundationCompat
import PrismStorage
import Synchronization

/// `Idempotency-Key` on `POST /v1/images` (IETF httpapi idempotency-key draft): a client that
/// did not get an answer retries with the same key and gets the first upload's image, never a
/// second one.
///
/// A key is remembered in the object store (so every gateway on one bucket sees it) under
/// `idempotency/{sha256(scope, key)}.json`, where the scope is a hash of the client's API key
/// when API keys are on: two tenants using the same key never meet. The record holds a
/// fingerprint of the request (SHA-256 of the recipe name and the image bytes) and either
/// "running", with an expiry just past the longest an upload can take (a crashed gateway's
/// marker does not block the key for longer), or "done" with the image id, kept for the
/// retention period. The sweeper removes expired records.
///
/// Two requests with one key on one gateway are told apart exactly (a lock); on two gateways at
/// the same instant both may run (S3 offers no compare-and-set every S3-compatible store has):
/// the window is the few milliseconds between their claims.
final class IdempotencyStore: Sendable {
    let store: any ObjectStore
    let retention: Duration
    /// How long a "running" record holds its key: the upload's limit plus its cleanup.
    let runningLimit: Duration
    /// Record keys being claimed or run on this gateway.
    private let local = Mutex<Set<String>>([])

    init(store: any ObjectStore, retention: Duration, runningLimit: Duration) {
        self.store = store
        self.retention = retention
        self.runningLimit = runningLimit
    }

    static let prefix = "idempotency/"

    /// What a request with a key gets.
    enum Claim: Sendable {
        /// No upload with this key yet: run it, then `complete` or `abandon` the ticket.
        case run(Ticket)
        /// Done before: answer this manifest again.
        case replay(id: String, manifest: Data)
    }

    struct Ticket: Sendable {
        let recordKey: String
        let fingerprint: String
        let recipe: String
    }

    /// The key a client sent, checked; nil when it sent none.
    ///
    /// - Throws: `GatewayError` (400) for an empty, too long or non-printable key.
    static func key(from request: Request) throws -> String? {
        guard let raw = request.headers[.idempotencyKey] else { return nil }
        var key = raw.trimmingCharacters(in: .whitespaces)
        // The draft sends it as a structured-field string ("..."); bare tokens are common too.
        if key.count >= 2, key.hasPrefix("\""), key.hasSuffix("\"") { key = String(key.dropFirst().dropLast()) }
        guard (1...255).contains(key.utf8.count), key.utf8.allSatisfy({ $0 >= 0x21 && $0 <= 0x7E }) else {
            throw GatewayError.invalidIdempotencyKey
        }
        return key
    }

    /// The record's object key: the scope and the client's key, hashed (fixed length, no
    /// client text in a path).
    static func recordKey(key: String, scope: String) -> String {
        let scopeHash = Digest.sha256Hex(Data(scope.utf8))
        return prefix + Digest.sha256Hex(Data("\(scopeHash)\n\(key)".utf8)) + ".json"
    }

    /// What makes two requests "the same": the recipe and the image bytes.
    static func fingerprint(recipe: String, image: ByteBuffer) -> String {
        let bytes = image.getData(at: image.readerIndex, length: image.readableBytes, byteTransferStrategy: .noCopy) ?? Data()
        return Digest.sha256Hex(Data("\(recipe)\n\(Digest.sha256Hex(bytes))".utf8))
    }

    /// Claims `recordKey` for a request, or says what to answer instead.
    ///
    /// - Throws: `GatewayError` 409 while another request with the key runs, 422 when the key
    ///   was used with another image or recipe, 503 when the store fails.
    func claim(recordKey: String, fingerprint: String, recipe: String, logger: Logger) async throws -> Claim {
        let mine = self.local.withLock { $0.insert(recordKey).inserted }
        guard mine else { throw GatewayError.idempotencyKeyInUse }
        do {
            let now = Date()
            if let data = try await self.store.get(key: recordKey), let record = IdempotencyRecord.decode(data),
               record.expires > now {
                guard record.fingerprint == fingerprint else { throw GatewayError.idempotencyKeyReused }
                switch record.state {
                case .running:
                    throw GatewayError.idempotencyKeyInUse
                case .done:
                    if let id = record.imageID, UploadID.isValid(id), let manifest = try await self.store.get(key: Manifest.key(id: id)) {
                        self.local.withLock { _ = $0.remove(recordKey) }
                        return .replay(id: id, manifest: manifest)
                    }
                    // The image was deleted since: the key starts over.
                    logger.info("idempotency key names a deleted image; uploading again")
                }
            }
            let running = IdempotencyRecord(
                state: .running, fingerprint: fingerprint, recipe: recipe, imageID: nil,
                created: now, expires: now.addingTimeInterval(self.runningLimit.seconds)
            )
            _ = try await self.store.put(key: recordKey, body: running.encoded(), contentType: "application/json", cacheControl: "no-store", options: PutOptions(entityTag: false))
            return .run(Ticket(recordKey: recordKey, fingerprint: fingerprint, recipe: recipe))
        } catch {
            self.local.withLock { _ = $0.remove(recordKey) }
            throw error
        }
    }

    /// Records the image the key made. Runs to its end even if the request is cancelled: the
    /// image exists, and a retry must find it.
    func complete(_ ticket: Ticket, imageID: String, logger: Logger) async {
        defer { self.local.withLock { _ = $0.remove(ticket.recordKey) } }
        let now = Date()
        let done = IdempotencyRecord(
            state: .done, fingerprint: ticket.fingerprint, recipe: ticket.recipe, imageID: imageID,
            created: now, expires: now.addingTimeInterval(self.retention.seconds)
        )
        let store = self.store
        do {
            _ = try await finishWrite { try await store.put(key: ticket.recordKey, body: done.encoded(), contentType: "application/json", cacheControl: "no-store", options: PutOptions(entityTag: false)) }
        } catch {
            // The image is kept; a retry after the running marker expires makes a second one.
            logger.error("idempotency record could not be stored", metadata: ["image_id": "\(imageID)", "error": "\(error)"])
        }
    }

    /// Frees the key after a failed upload (nothing was kept), so a retry runs again.
    func abandon(_ ticket: Ticket, logger: Logger) async {
        defer { self.local.withLock { _ = $0.remove(ticket.recordKey) } }
        let store = self.store
        do {
            try await finishWrite { try await store.delete(keys: [ticket.recordKey]) }
        } catch {
            // It expires by itself after `runningLimit`.
            logger.warning("idempotency marker could not be removed; it expires by itself", metadata: ["error": "\(error)"])
        }
    }
}

/// One `idempotency/*.json` object.
struct IdempotencyRecord: Codable, Sendable {
    enum State: String, Codable, Sendable {
        case running, done
    }

    var state: State
    var fingerprint: String
    var recipe: String
    var imageID: String?
    var created: Date
    /// A running record past it belongs to a gateway that died; a done one is forgotten.
    var expires: Date

    enum CodingKeys: String, CodingKey {
        case state, fingerprint, recipe, imageID = "image_id", created, expires
    }

    func encoded() -> Data {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        encoder.outputFormatting = [.sortedKeys]
        return (try? encoder.encode(self)) ?? Data()
    }

    static func decode(_ data: Data) -> IdempotencyRecord? {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return try? decoder.decode(IdempotencyRecord.self, from: data)
    }
}

extension HTTPField.Name {
    static let idempotencyKey = HTTPField.Name("Idempotency-Key")!
    static let idempotentReplayed = HTTPField.Name("Idempotent-Replayed")!
}

extension IdempotencyStore {
    /// Runs an upload, then records its image under `ticket` or frees the key if it failed.
    /// Both happen inside the upload's task, which is awaited even when the client leaves: an
    /// upload that committed is always recorded.
    func recording(_ ticket: Ticket?, logger: Logger, _ upload: () async throws -> Manifest) async throws -> Manifest {
        guard let ticket else { return try await upload() }
        do {
            let manifest = try await upload()
            await self.complete(ticket, imageID: manifest.id, logger: logger)
            return manifest
        } catch {
            await self.abandon(ticket, logger: logger)
            throw error
        }
    }
}

extension Gateway {
    /// Claims an upload's Idempotency-Key, scoped to the client's API key when keys are on.
    func claim(_ key: String, request: Request, recipe: Recipe, image: ByteBuffer, logger: Logger) async throws -> IdempotencyStore.Claim {
        var scope = ""
        if !self.configuration.apiKeys.isEmpty, let authorization = request.headers[.authorization] {
            scope = authorization.dropFirst(7).trimmingCharacters(in: .whitespaces)
        }
        let recordKey = IdempotencyStore.recordKey(key: key, scope: scope)
        let fingerprint = IdempotencyStore.fingerprint(recipe: recipe.name, image: image)
        do {
            return try await self.idempotency.claim(recordKey: recordKey, fingerprint: fingerprint, recipe: recipe.name, logger: logger)
        } catch let error as StorageError where error.isCancellation {
            throw CancellationError()
        } catch let error as StorageError {
            logger.error("idempotency record unavailable", metadata: ["error": "\(error.detail)"])
            throw GatewayError.storageUnavailable
        }
    }

    /// The first upload's answer again, marked as a replay: 201, as the first time, so a
    /// client that checks for 201 needs no second case.
    static func replay(id: String, manifest: Data) -> Response {
        Response(
            status: .created,
            headers: [.contentType: "application/json", .location: "/v1/images/\(id)", .idempotentReplayed: "true"],
            body: .init(byteBuffer: ByteBuffer(bytes: manifest))
        )
    }
}
