public import Foundation
public import Logging
public import PrismStorage
public import ServiceLifecycle
import Synchronization

/// Objects a failed upload could not remove at once (the store was down or slow), retried in
/// the background until they are gone. What a crash loses from this list, the sweeper finds.
final class PendingCleanup: Service, Sendable {
    let store: any ObjectStore
    let interval: Duration
    private let keys = Mutex<Set<String>>([])

    init(store: any ObjectStore, interval: Duration = .seconds(5)) {
        self.store = store
        self.interval = interval
    }

    func add(_ keys: [String]) {
        self.keys.withLock { $0.formUnion(keys) }
    }

    var pending: Int { self.keys.withLock { $0.count } }

    func run() async throws {
        while true {
            do {
                try await gracefulSleep(self.interval)
            } catch {
                break
            }
            if Task.isCancelled || Task.isShuttingDownGracefully { break }
            await self.retry()
        }
        // One last try on the way out.
        await self.retry()
    }

    /// Tries to remove every pending key once; what fails stays pending.
    func retry() async {
        let batch = self.keys.withLock { keys -> [String] in
            defer { keys.removeAll() }
            return Array(keys)
        }
        guard !batch.isEmpty else { return }
        let store = self.store
        do {
            try await withDeadline(.now + .seconds(10)) { try await store.delete(keys: batch) }
        } catch {
            self.add(batch)
        }
    }
}

/// Finds and removes what uploads left behind: objects under `images/{id}/` with no
/// `manifest.json`, once the id (a UUIDv7, so it carries its creation time) is older than the
/// grace period. Run by `prism-gateway sweep` (cron, Kubernetes CronJob) or periodically inside
/// the gateway (`--sweep-interval`).
///
/// The grace period must be longer than any upload can take (`--upload-timeout`): an upload
/// still running has no manifest yet either.
public struct Sweeper: Sendable {
    public struct Report: Sendable, CustomStringConvertible {
        /// Images with a manifest.
        public var images = 0
        /// Uploads without a manifest, old enough to remove, and their objects.
        public var orphanedUploads = 0
        public var removedObjects = 0
        /// Uploads without a manifest still inside the grace period (maybe still running).
        public var recentWithoutManifest = 0
        /// Manifests naming an object that is not there.
        public var brokenManifests: [String] = []
        /// Idempotency-Key records past their expiry, removed.
        public var expiredIdempotencyKeys = 0

        public var description: String {
            "images=\(self.images) orphaned_uploads=\(self.orphanedUploads) removed_objects=\(self.removedObjects) recent_without_manifest=\(self.recentWithoutManifest) broken_manifests=\(self.brokenManifests.count) expired_idempotency_keys=\(self.expiredIdempotencyKeys)"
        }
    }

    let store: any ObjectStore
    let grace: Duration
    let logger: Logger

    public init(store: any ObjectStore, grace: Duration, logger: Logger) {
        self.store = store
        self.grace = grace
        self.logger = logger
    }

    /// One pass over the store.
    public func sweep(now: Date = Date()) async throws(StorageError) -> Report {
        var report = Report()
        let keys = try await self.store.listAll(prefix: "images/")
        var byID: [String: [String]] = [:]
        for key in keys {
            let parts = key.split(separator: "/", maxSplits: 2)
            guard parts.count == 3, UploadID.isValid(String(parts[1])) else { continue }
            byID[String(parts[1]), default: []].append(key)
        }
        for (id, objects) in byID.sorted(by: { $0.key < $1.key }) {
            let manifestKey = Manifest.key(id: id)
            if objects.contains(manifestKey) {
                report.images += 1
                if let data = try await self.store.get(key: manifestKey),
                   let manifest = try? JSONDecoder().decode(Manifest.self, from: data) {
                    let present = Set(objects)
                    let named = [manifest.original.key] + manifest.variants.map(\.key)
                    if named.contains(where: { !present.contains($0) }) {
                        report.brokenManifests.append(id)
                        self.logger.error("manifest names objects that are missing", metadata: ["image_id": "\(id)"])
                    }
                }
                continue
            }
            guard let created = UploadID.creationDate(id), now.timeIntervalSince(created) > self.grace.seconds else {
                report.recentWithoutManifest += 1
                continue
            }
            try await self.store.delete(keys: objects)
            report.orphanedUploads += 1
            report.removedObjects += objects.count
            self.logger.notice("removed an upload that never committed", metadata: ["image_id": "\(id)", "objects": "\(objects.count)"])
        }
        report.expiredIdempotencyKeys = try await self.sweepIdempotencyKeys(now: now)
        return report
    }

    /// Removes Idempotency-Key records past their expiry (done ones after the retention,
    /// running ones a crashed gateway left). One read per record: on a bucket with many, an
    /// S3 lifecycle rule expiring `idempotency/` after the retention does the same for free.
    func sweepIdempotencyKeys(now: Date) async throws(StorageError) -> Int {
        var expired: [String] = []
        for key in try await self.store.list(prefix: IdempotencyStore.prefix) where key.hasSuffix(".json") {
            guard let data = try await self.store.get(key: key), let record = IdempotencyRecord.decode(data) else { continue }
            if record.expires < now { expired.append(key) }
        }
        if !expired.isEmpty {
            try await self.store.delete(keys: expired)
            self.logger.info("removed expired idempotency keys", metadata: ["count": "\(expired.count)"])
        }
        return expired.count
    }
}

/// Sweeps every `interval` inside the gateway.
struct SweepService: Service {
    let sweeper: Sweeper
    let interval: Duration

    func run() async throws {
        while true {
            do {
                try await gracefulSleep(self.interval)
            } catch {
                return
            }
            if Task.isCancelled || Task.isShuttingDownGracefully { return }
            do {
                let report = try await self.sweeper.sweep()
                self.sweeper.logger.info("sweep done", metadata: ["report": "\(report)"])
            } catch {
                self.sweeper.logger.warning("sweep failed; will try again", metadata: ["error": "\(error.detail)"])
            }
        }
    }
}

/// Sleeps, ending early (throwing) on cancellation or graceful shutdown.
func gracefulSleep(_ duration: Duration) async throws {
    try await cancelWhenGracefulShutdown {
        try await Task.sleep(for: duration)
    }
}

extension Duration {
    /// Seconds as a Double.
    var seconds: Double {
        Double(self.components.seconds) + Double(self.components.attoseconds) / 1e18
    }
}
