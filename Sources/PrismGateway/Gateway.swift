public import Foundation
public import Hummingbird
public import Logging
import CoreMetrics
import NIOCore
public import PrismClient
import PrismProto
public import PrismStorage
import PrismWire
public import Prometheus
public import ServiceLifecycle
import Synchronization

/// The request context: Hummingbird's, plus the connection, to notice a client that leaves.
public struct GatewayContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel
    /// Set by the request-id middleware; travels to processors in every call.
    public var requestID: String = ""

    public init(source: ApplicationRequestContextSource) {
        self.coreContext = .init(source: source)
        self.channel = source.channel
    }
}

/// A whole gateway: HTTP API, processor pool, object store, and the services that run them.
///
/// `services` lists them in start order for one `ServiceGroup`; shutdown runs in reverse, so the
/// HTTP server drains its uploads first, then the pool closes, then the curl thread stops.
public final class Gateway: Sendable {
    public let configuration: GatewayConfiguration
    public let recipes: RecipeBook
    public let pool: ProcessorPool
    public let store: any ObjectStore
    let curl: CurlDriver?
    let metrics: GatewayMetrics
    let logger: Logger
    let coordinator: UploadCoordinator
    /// Idempotency-Key records (see `IdempotencyStore`).
    let idempotency: IdempotencyStore
    /// Uploads past their body and being processed (bounded by `maxConcurrentUploads`).
    private let activeUploads = Mutex(0)
    /// Bytes of upload bodies held in memory, received or being processed.
    let bodyBudget: ByteBudget
    /// Where bodies go when `bodyBudget` is full.
    let spool: BodySpool
    /// Memory of finished bodies, reused by the next uploads.
    let bodyBuffers = BodyBufferPool()

    /// - Parameter recipes: the recipes, when already loaded; otherwise read from the
    ///   configuration's recipe file.
    public init(
        configuration: GatewayConfiguration,
        recipes: RecipeBook? = nil,
        logger: Logger = Logger(label: "prism.gateway"),
        registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()
    ) throws {
        self.configuration = configuration
        self.logger = logger
        self.recipes = try recipes ?? RecipeBook.load(file: configuration.recipesFile)
        self.metrics = GatewayMetrics(registry: registry)
        self.pool = ProcessorPool(configuration: configuration.processors, logger: logger, metricsFactory: self.metrics.factory)
        switch configuration.storage {
        case .local(let directory, let publicBaseURL):
            let base = publicBaseURL ?? "http://\(configuration.host == "0.0.0.0" ? "localhost" : configuration.host):\(configuration.port)/files"
            self.store = try LocalDiskStore(root: URL(fileURLWithPath: directory), publicBaseURL: base, durable: configuration.localFsync)
            self.curl = nil
        case .s3(let s3, _):
            let curl = CurlDriver()
            self.curl = curl
            self.store = try S3Store(configuration: s3, curl: curl)
        }
        self.coordinator = UploadCoordinator(pool: self.pool, store: self.store, configuration: configuration, metrics: self.metrics)
        self.idempotency = IdempotencyStore(
            store: self.store, retention: configuration.idempotencyRetention,
            runningLimit: configuration.uploadTimeout + configuration.cleanupTimeout + .seconds(5)
        )
        self.bodyBudget = ByteBudget(limit: configuration.maxUploadMemory)
        self.spool = BodySpool(directory: configuration.spoolDirectory, budget: ByteBudget(limit: configuration.maxSpoolBytes))
    }

    /// Makes the allocator give buffers of 1 MiB and more back to the system when they are
    /// freed. Upload bodies are such buffers; with glibc's default (a threshold that rises to
    /// 32 MiB as large blocks are freed) they stay in the heap's arenas and the process keeps
    /// the memory of its busiest moment. Call once, before serving.
    public static func returnLargeBuffersToTheSystem() {
        #if os(Linux)
        _ = glibcMallopt(glibcMMapThreshold, 1 << 20)
        #endif
    }

    /// The sweeper over this gateway's store, with the configured grace period.
    public var sweeper: Sweeper {
        Sweeper(store: self.store, grace: self.configuration.sweepGrace, logger: self.logger)
    }

    /// Creates the S3 bucket when configured to; call once the curl driver runs.
    func prepareStorage() async throws {
        if case .s3(_, let create) = self.configuration.storage, create, let s3 = self.store as? S3Store {
            try await s3.ensureBucket()
        }
    }

    /// What storage needs running (the curl thread for S3), for tools that only use the store.
    public func storageServices() -> [any Service] {
        self.curl.map { [$0] } ?? []
    }

    /// The services to run, in order: curl thread (S3 only), processor pool, HTTP server.
    public func services(onServerRunning: @escaping @Sendable (any Channel) async -> Void = { _ in }) -> [any Service] {
        var services: [any Service] = []
        if let curl = self.curl { services.append(curl) }
        services.append(self.pool)
        services.append(self.coordinator.cleanup)
        if let interval = self.configuration.sweepInterval {
            services.append(SweepService(sweeper: self.sweeper, interval: interval))
        }
        services.append(self.application(onServerRunning: onServerRunning))
        return services
    }

    func application(onServerRunning: @escaping @Sendable (any Channel) async -> Void) -> some ApplicationProtocol {
        let router = Router(context: GatewayContext.self)
        router.add(middleware: RequestIDMiddleware())
        // Metrics outside Problem: every failure has become a GatewayError with its real status
        // (404, 405, 408, 499...) by the time it is counted and logged.
        router.add(middleware: MetricsMiddleware(metrics: self.metrics))
        // Inside metrics (preflights are counted), outside Problem (errors get CORS headers).
        if self.configuration.cors.isEnabled {
            router.add(middleware: CORSMiddleware(policy: self.configuration.cors))
        }
        router.add(middleware: ProblemMiddleware(logger: self.logger, servesFiles: self.store is LocalDiskStore, servesUploadPage: self.configuration.uploadPage))
        self.addOperationalRoutes(router)
        self.addDocumentRoutes(router)
        if case .local = self.configuration.storage, let local = self.store as? LocalDiskStore {
            self.addFileRoutes(router, store: local)
        }
        let v1 = router.group("v1")
        if !self.configuration.apiKeys.isEmpty {
            v1.add(middleware: APIKeyMiddleware(keys: self.configuration.apiKeys))
        }
        self.addImageRoutes(v1)
        return Application(
            router: router,
            server: DisconnectAwareHTTP1.builder(limits: self.configuration.http, metrics: self.metrics),
            configuration: .init(address: .hostname(self.configuration.host, port: self.configuration.port), serverName: "prism-gateway"),
            onServerRunning: { channel in
                do {
                    try await self.prepareStorage()
                } catch {
                    self.logger.error("storage is not ready", metadata: ["error": "\(error)"])
                }
                self.logger.info("gateway listening", metadata: ["address": "\(channel.localAddress?.hostPort ?? "?")"])
                await onServerRunning(channel)
            },
            logger: self.logger
        )
    }

    // MARK: Routes

    private func addImageRoutes(_ v1: RouterGroup<GatewayContext>) {
        v1.post("images") { request, context in
            try await self.upload(request, context: context)
        }
        v1.get("images/:id") { request, context -> Response in
            let id = try self.imageID(context)
            guard let data = try await self.storeCall({ try await self.store.get(key: Manifest.key(id: id)) }) else {
                throw GatewayError.notFound("No image with id \(id).")
            }
            return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        v1.delete("images/:id") { request, context -> Response in
            let id = try self.imageID(context)
            if self.coordinator.inProgress.contains(id) {
                throw GatewayError(.conflict, "upload-in-progress", "Upload in progress",
                    detail: "Image \(id) is still being uploaded; delete it once its upload has answered.")
            }
            let keys = try await self.storeCall { try await self.store.list(prefix: "images/\(id)/") }
            // An image exists once its manifest does (the commit point). Objects without one
            // belong to an upload still running (on this or another gateway) or to one that
            // failed; the sweeper removes the latter. Deleting them here would let a running
            // upload commit a manifest whose files are gone.
            let manifest = Manifest.key(id: id)
            guard keys.contains(manifest) else { throw GatewayError.notFound("No image with id \(id).") }
            // The manifest goes first: the image stops existing before its files do.
            try await self.storeCall { try await self.store.delete(keys: keys.filter { $0 == manifest }) }
            try await self.storeCall { try await self.store.delete(keys: keys.filter { $0 != manifest }) }
            context.logger.info("image deleted", metadata: ["image_id": "\(id)", "objects": "\(keys.count)"])
            return Response(status: .noContent)
        }
        v1.get("recipes") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: self.recipes.json())))
        }
    }

    private func addOperationalRoutes(_ router: Router<GatewayContext>) {
        router.get("healthz") { _, _ in "ok\n" }
        router.get("readyz") { _, _ -> Response in
            let ready = self.pool.readyLoads().count
            guard ready > 0 else {
                throw GatewayError(.serviceUnavailable, "not-ready", "Not ready", detail: "No image processor is connected.", retryAfter: 2)
            }
            return Response(status: .ok, headers: [.contentType: "text/plain"], body: .init(byteBuffer: ByteBuffer(string: "ready: \(ready) processor(s)\n")))
        }
        let registry = self.metrics.registry
        router.get("metrics") { _, _ -> Response in
            var bytes: [UInt8] = []
            bytes.reserveCapacity(32_768)
            registry.emit(into: &bytes)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: bytes)))
        }
    }

    // MARK: Upload

    private func upload(_ request: Request, context: GatewayContext) async throws -> Response {
        let recipeName = request.uri.queryParameters["recipe"].map(String.init) ?? RecipeBook.defaultName
        guard let recipe = self.recipes.recipes[recipeName] else {
            let known = self.recipes.recipes.keys.sorted().joined(separator: ", ")
            throw GatewayError.badRequest("There is no recipe named '\(recipeName)'; known recipes: \(known).")
        }
        let idempotencyKey = try IdempotencyStore.key(from: request)
        // The body first, counted in bytes against the memory budget as it arrives: a client
        // that trickles holds only what it has sent, never a slot that fast clients need. What
        // does not fit goes to the spool and comes back when there is room (waiting at most
        // the upload timeout).
        let clock = ContinuousClock()
        let receiving = clock.now
        let lease = self.bodyBudget.lease()
        defer { lease.release() }
        let (source, spooled) = try await UploadBody.read(
            request, limit: self.configuration.maxUploadBytes, lease: lease, spool: self.spool,
            memoryWait: self.configuration.uploadTimeout, pool: self.bodyBuffers, logger: context.logger
        )
        // Once the upload is over, by whatever way, its buffer serves the next one.
        defer { self.bodyBuffers.give(source) }
        if spooled { self.metrics.uploadsSpooled.increment() }
        self.metrics.stage("receive", clock.now - receiving)
        var ticket: IdempotencyStore.Ticket?
        if let idempotencyKey {
            switch try await self.claim(idempotencyKey, request: request, recipe: recipe, image: source, logger: context.logger) {
            case .replay(let id, let manifest):
                return Self.replay(id: id, manifest: manifest)
            case .run(let claimed):
                ticket = claimed
            }
        }

        // Then a processing slot: only uploads whose whole body is here compete for these.
        let admitted = self.activeUploads.withLock { count -> Bool in
            guard count < self.configuration.maxConcurrentUploads else { return false }
            count += 1
            return true
        }
        guard admitted else {
            if let ticket { await self.idempotency.abandon(ticket, logger: context.logger) }
            throw GatewayError.overloaded
        }
        self.metrics.uploadsInFlight.increment()
        defer {
            self.activeUploads.withLock { $0 -= 1 }
            self.metrics.uploadsInFlight.decrement()
        }

        let manifest = try await self.cancelledIfClientLeaves(context.channel, logger: context.logger) { [ticket] in
            try await self.idempotency.recording(ticket, logger: context.logger) {
                try await self.coordinator.upload(source, recipe: recipe, requestID: context.requestID, logger: context.logger)
            }
        }
        self.metrics.uploadsSucceeded.increment()
        context.logger.info("upload stored", metadata: ["image_id": "\(manifest.id)", "recipe": "\(recipe.name)", "bytes": "\(source.readableBytes)"])
        return Response(
            status: .created,
            headers: [.contentType: "application/json", .location: "/v1/images/\(manifest.id)"],
            body: .init(byteBuffer: ByteBuffer(bytes: manifest.encoded()))
        )
    }

    /// Runs `work`, cancelling it if the client's connection closes first (the upload then
    /// cleans up after itself like any failed one).
    private func cancelledIfClientLeaves<T: Sendable>(_ channel: any Channel, logger: Logger, _ work: @escaping @Sendable () async throws -> T) async throws -> T {
        let (closed, signal) = AsyncStream<Void>.makeStream()
        channel.closeFuture.whenComplete { _ in signal.finish() }
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await work() }
            group.addTask {
                for await _ in closed {}
                return nil
            }
            defer { group.cancelAll() }
            guard let first = try await group.next(), let value = first else {
                group.cancelAll()
                // Wait for the upload's own cleanup, or its commit if it got there first.
                if let finished = try? await group.next(), let value = finished {
                    let id = (value as? Manifest)?.id ?? "?"
                    logger.notice("client went away after the upload committed; the image is kept", metadata: ["image_id": "\(id)"])
                } else {
                    self.metrics.uploadsAbandoned.increment()
                    logger.info("client went away; upload cancelled and removed")
                }
                throw CancellationError()
            }
            return value
        }
    }

    private func imageID(_ context: GatewayContext) throws -> String {
        let id = context.parameters.get("id") ?? ""
        guard UploadID.isValid(id) else { throw GatewayError.notFound("No image with id \(id.prefix(64)).") }
        return id
    }

    private func storeCall<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch let error as StorageError where error.isCancellation {
            throw CancellationError()
        } catch let error as StorageError {
            self.logger.error("storage failed", metadata: ["error": "\(error.detail)"])
            throw GatewayError.storageUnavailable
        }
    }
}

#if os(Linux)
/// glibc's `mallopt` (malloc.h is not part of Swift's Glibc module).
@_silgen_name("mallopt")
private func glibcMallopt(_ parameter: Int32, _ value: Int32) -> Int32
/// `M_MMAP_THRESHOLD` from malloc.h.
private let glibcMMapThreshold: Int32 = -3
#endif
