import CoreMetrics
import Foundation
import Logging
import NIOCore
import NIOFoundationCompat
import PrismClient
import PrismProto
import PrismStorage
import PrismWire
import Synchronization

/// Turns one upload into stored variants and a manifest, or into nothing at all.
///
/// The variants run concurrently (one or several processor calls, see `VariantPlanner`) under
/// one deadline while the original is stored. Each variant is stored as soon as it arrives.
/// On the first failure every call still running is cancelled (the processors receive Cancel
/// frames and stop), everything already written is deleted, and one error is answered. The
/// manifest is written last: it is the commit point.
///
/// It owns the upload's one deadline, storage included: when it passes, whatever is running
/// (processor calls, S3 transfers) is cancelled and the upload answers 504. Cleanup gets a short
/// budget of its own; what it cannot remove is handed to `cleanup`, which retries, and the
/// sweeper removes anything older that still has no manifest.
struct UploadCoordinator: Sendable {
    let pool: ProcessorPool
    let store: any ObjectStore
    let configuration: GatewayConfiguration
    let metrics: GatewayMetrics
    /// Ids of uploads running on this gateway (DELETE of one answers 409).
    let inProgress = IDSet()
    /// Objects whose removal failed, retried in the background.
    let cleanup: PendingCleanup

    init(pool: ProcessorPool, store: any ObjectStore, configuration: GatewayConfiguration, metrics: GatewayMetrics) {
        self.pool = pool
        self.store = store
        self.configuration = configuration
        self.metrics = metrics
        self.cleanup = PendingCleanup(store: store)
    }

    func upload(_ source: ByteBuffer, recipe: Recipe, requestID: String, logger: Logger) async throws -> Manifest {
        let clock = ContinuousClock()
        let start = clock.now
        let deadline = start + self.configuration.uploadTimeout
        let id = UploadID.make()
        let written = WrittenKeys()
        let committed = CommitPoint()
        var logger = logger
        logger[metadataKey: "image_id"] = "\(id)"
        self.inProgress.insert(id)
        defer { self.inProgress.remove(id) }

        do {
            let log = logger
            let manifest = try await withDeadline(deadline) {
                // Writes end by the deadline on their own (the store's timeouts are cut to it),
                // so they need not be cancelled, see `finishWrite`.
                try await StorageDeadline.$current.withValue(deadline) {
                    try await self.make(source, recipe: recipe, id: id, requestID: requestID, deadline: deadline, written: written, committed: committed, logger: log)
                }
            }
            self.metrics.stage("total", clock.now - start)
            return manifest
        } catch {
            // The manifest is the commit point: once it is written the image exists, even if
            // the deadline or the client's leaving interrupted what came after it.
            if let manifest = committed.manifest {
                logger.notice("upload committed just as it was interrupted; the image is kept", metadata: ["error": "\(error)"])
                return manifest
            }
            // Every task of the upload has ended here (task groups wait for their children), so
            // no write is still in flight: deleting now leaves the store clean.
            let keys = written.all
            if !keys.isEmpty {
                do {
                    // A task of its own: the upload's task may be cancelled (client gone), and a
                    // cancelled task's I/O is refused; the cleanup must happen regardless. It has
                    // a short budget of its own: a store that hangs must not hold the answer.
                    let store = self.store
                    let budget = self.configuration.cleanupTimeout
                    try await Task { try await withDeadline(.now + budget) { try await store.delete(keys: keys) } }.value
                    logger.info("upload failed; removed what it stored", metadata: ["objects": "\(keys.count)"])
                } catch {
                    logger.warning("upload failed and its objects could not all be removed yet; retrying in the background", metadata: ["objects": "\(keys.count)", "error": "\(error)"])
                    self.cleanup.add(keys)
                }
            }
            self.metrics.uploadFailed()
            throw Self.answer(for: error, logger: logger)
        }
    }

    private func make(
        _ sourceBuffer: ByteBuffer, recipe: Recipe, id: String, requestID: String,
        deadline: ContinuousClock.Instant, written: WrittenKeys, committed: CommitPoint, logger: Logger
    ) async throws -> Manifest {
        // One copy of the body in memory for everything: the processor calls write the buffer
        // itself, the store and the hash read it through a Data that shares its bytes.
        let source = sourceBuffer.getData(at: sourceBuffer.readerIndex, length: sourceBuffer.readableBytes, byteTransferStrategy: .noCopy) ?? Data()
        let clock = ContinuousClock()
        let cacheControl = self.configuration.cacheControl
        let sniffed = ImageFormat.sniff(source)
        let originalKey = "images/\(id)/original.\(ImageFormat.fileExtension(sniffed))"
        let calls = VariantPlanner.calls(
            recipe.variants, loads: self.pool.readyLoads(), split: self.configuration.split,
            shrinksOnLoad: ImageFormat.shrinksCheaplyOnLoad(source, sniffed: sniffed),
            source: ImageFormat.header(source, sniffed: sniffed)  // read only when a split is possible
        )
        logger.debug("upload planned", metadata: ["calls": "\(calls.map(\.members))", "threads": "\(calls.map(\.threads))", "variants": "\(recipe.variants.count)"])

        enum Part: Sendable {
            case original(sha256: Data?)
            case call(ProcessResult, [Int], [Int: String])
        }
        // The manifest's SHA-256 of the original: a store that signs what it is given (S3) needs
        // it before the original goes out, so it is computed here once; otherwise the processor
        // of the first call computes it, and this gateway never reads the source to hash it.
        let hashesSourceHere = self.store.signsContent
        let dispatched = clock.now
        let parts: [Part] = try await withThrowingTaskGroup(of: Part.self) { group in
            group.addTask {
                // Stored while the processors work. The manifest carries no ETag for the
                // original, so the local store leaves its MD5 to the first GET.
                let sha256 = hashesSourceHere ? Digest.sha256(source) : nil
                written.add(originalKey)
                let stored = clock.now
                let store = self.store
                let options = PutOptions(sha256: sha256, entityTag: false)
                _ = try await finishWrite { try await store.put(key: originalKey, body: source, contentType: contentType(forKey: originalKey), cacheControl: cacheControl, options: options) }
                self.metrics.stored(bytes: source.count, duration: clock.now - stored)
                return .original(sha256: sha256)
            }
            for (number, call) in calls.enumerated() {
                let members = call.members
                group.addTask {
                    let specs = members.map { recipe.variants[$0] }
                    let etags = Mutex<[Int: String]>([:])
                    // The variants' bytes are dropped once stored, not held until the upload ends.
                    var request = ProcessRequest(source: sourceBuffer, variants: specs, deadline: deadline, requestID: requestID, keepsVariantData: false)
                    // One call is enough to describe the source: the planner puts first the one
                    // where the placeholder costs least.
                    request.placeholder = number == 0
                    if number == 0 {
                        request.blurHash = recipe.blurHash
                        request.sourceSHA256 = !hashesSourceHere
                    }
                    request.threads = call.threads
                    // The variants' digests come with their bytes: stored without hashing them here.
                    request.digests = true
                    let result = try await self.pool.process(request) { variant in
                        let key = Self.variantKey(id: id, spec: specs[variant.index])
                        written.add(key)
                        let stored = clock.now
                        let store = self.store
                        // The processor's digests of the bytes: stored without hashing them again.
                        let options = PutOptions(md5: variant.md5, sha256: variant.sha256)
                        let etag = try await finishWrite { try await store.put(key: key, body: variant.data, contentType: contentType(forKey: key), cacheControl: cacheControl, options: options) }
                        self.metrics.stored(bytes: variant.data.count, duration: clock.now - stored)
                        self.metrics.variant(variant.processDuration)
                        etags.withLock { $0[variant.index] = etag }
                    }
                    return .call(result, members, etags.withLock { $0 })
                }
            }
            var parts: [Part] = []
            // The first failure leaves this loop by throwing; the group then cancels the others.
            for try await part in group { parts.append(part) }
            return parts
        }
        self.metrics.stage("process", clock.now - dispatched)

        var originalSHA256: Data? = nil
        var sourceInfo = Prism_V1_SourceInfo()
        var variants = [Manifest.Variant?](repeating: nil, count: recipe.variants.count)
        for part in parts {
            switch part {
            case .original(let sha256):
                if let sha256 { originalSHA256 = sha256 }
            case .call(let result, let members, let etags):
                if result.source.hasPlaceholder || !sourceInfo.hasPlaceholder { sourceInfo = result.source }
                if originalSHA256 == nil { originalSHA256 = result.sourceSHA256 }
                for variant in result.variants {
                    let index = members[variant.index]
                    let spec = recipe.variants[index]
                    let key = Self.variantKey(id: id, spec: spec)
                    variants[index] = Manifest.Variant(
                        name: spec.name, key: key, url: self.store.url(for: key),
                        width: variant.width, height: variant.height, format: ImageFormat.name(variant.format.rawValue),
                        bytes: variant.byteCount, etag: etags[variant.index] ?? ""
                    )
                }
            }
        }
        let formatName = ImageFormat.name(sourceInfo.format.rawValue)
        let manifest = Manifest(
            id: id,
            recipe: recipe.name,
            createdAt: ISO8601DateFormatter().string(from: Date()),
            original: Manifest.Original(
                key: originalKey, url: self.store.url(for: originalKey),
                width: Int(sourceInfo.width), height: Int(sourceInfo.height),
                format: formatName == "unknown" ? sniffed : formatName,
                // From a processor that did not send it: hashed here after all.
                bytes: source.count, sha256: Digest.hex(originalSHA256 ?? Digest.sha256(source))
            ),
            variants: variants.compactMap { $0 },
            placeholder: sourceInfo.hasPlaceholder ? Manifest.Placeholder(sourceInfo.placeholder) : nil
        )
        guard manifest.variants.count == recipe.variants.count else {
            throw GatewayError.internalError
        }
        // The commit point: once the manifest exists, the upload exists.
        let manifestKey = Manifest.key(id: id)
        written.add(manifestKey)
        let committing = clock.now
        _ = try await self.store.put(key: manifestKey, body: manifest.encoded(), contentType: "application/json", cacheControl: "no-cache", options: PutOptions(entityTag: false, commit: true))
        committed.set(manifest)
        self.metrics.stage("manifest", clock.now - committing)
        // From here the image exists, whatever happens to the request (a client that leaves
        // now does not undo it): this line is how an operator finds it.
        logger.info("upload committed", metadata: ["variants": "\(manifest.variants.count)"])
        return manifest
    }

    static func variantKey(id: String, spec: Prism_V1_VariantSpec) -> String {
        let format = ImageFormat.name(spec.output.format.rawValue)
        return "images/\(id)/\(spec.name).\(ImageFormat.fileExtension(format))"
    }

    /// The one answer for a failed upload.
    static func answer(for error: any Error, logger: Logger) -> any Error {
        switch error {
        case let error as GatewayError:
            return error
        case let error as PrismRPCError:
            if error.code == .internal || error.code == .unknown {
                logger.error("processor failed", metadata: ["error": "\(error)"])
            }
            return GatewayError.from(error)
        case let error as StorageError where error.isCancellation:
            return CancellationError()
        case let error as StorageError:
            logger.error("storage failed", metadata: ["error": "\(error.detail)"])
            return GatewayError.storageUnavailable
        case is CancellationError:
            return CancellationError()
        case is DeadlinePassed:
            return GatewayError.deadline
        default:
            logger.error("upload failed", metadata: ["error": "\(error)"])
            return GatewayError.internalError
        }
    }
}

/// Runs a store write to its end even if the calling task is cancelled (another variant failed,
/// the client left).
///
/// A write cut off mid-transfer may still land on the server after the cleanup's DELETE of the
/// same key (seen with SeaweedFS): the object would be orphaned. Letting it finish, bounded by
/// the upload's deadline through `StorageDeadline`, makes the cleanup that follows reliable.
func finishWrite<T: Sendable>(_ write: @escaping @Sendable () async throws -> T) async throws -> T {
    try await Task { try await write() }.value
}

/// Thrown by `withDeadline` when the deadline passes first.
struct DeadlinePassed: Error {}

/// Runs `body`, cancelling it when `deadline` passes (then throws `DeadlinePassed`, once
/// `body` has ended: nothing it started is left running).
func withDeadline<T: Sendable>(_ deadline: ContinuousClock.Instant, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(until: deadline, clock: .continuous)
            throw DeadlinePassed()
        }
        defer { group.cancelAll() }
        // The first to finish decides; the other is cancelled and awaited by the group.
        guard let value = try await group.next() ?? nil else { throw DeadlinePassed() }
        return value
    }
}

/// Set once the manifest is stored: from then on the upload succeeded, whatever follows.
final class CommitPoint: Sendable {
    private let value = Mutex<Manifest?>(nil)

    func set(_ manifest: Manifest) { self.value.withLock { $0 = manifest } }
    var manifest: Manifest? { self.value.withLock { $0 } }
}

/// A set of ids under a lock.
final class IDSet: Sendable {
    private let ids = Mutex<Set<String>>([])

    func insert(_ id: String) { _ = self.ids.withLock { $0.insert(id) } }
    func remove(_ id: String) { _ = self.ids.withLock { $0.remove(id) } }
    func contains(_ id: String) -> Bool { self.ids.withLock { $0.contains(id) } }
}

/// The keys an upload has started writing, to delete them all if it fails.
final class WrittenKeys: Sendable {
    private let keys = Mutex<[String]>([])

    func add(_ key: String) {
        self.keys.withLock { $0.append(key) }
    }

    var all: [String] {
        self.keys.withLock { $0 }
    }
}
