public import Foundation
public import PrismClient
public import PrismStorage

/// Everything a gateway is configured with. Every field has a working default.
public struct GatewayConfiguration: Sendable {
    public var host: String = "127.0.0.1"
    public var port: Int = 8080
    /// Largest accepted upload body, multipart overhead included.
    public var maxUploadBytes: Int = 40 << 20
    /// Time for one upload from the end of its body to its answer: processing, storing,
    /// manifest. The remaining budget travels in every processor call.
    public var uploadTimeout: Duration = .seconds(30)
    /// Time a failed upload's cleanup may take before the answer goes out; what is left is
    /// retried in the background.
    public var cleanupTimeout: Duration = .seconds(3)
    /// The sweeper removes objects of uploads without a manifest once their id is this old.
    public var sweepGrace: Duration = .seconds(3600)
    /// How often the gateway sweeps by itself; nil: never (run `prism-gateway sweep` instead).
    public var sweepInterval: Duration? = nil
    /// Uploads processed at once (counted once their body has arrived); more get 429 with
    /// Retry-After.
    public var maxConcurrentUploads: Int = 32
    /// Bytes of upload bodies held in memory at once, counted as they arrive; a body that would
    /// go past it continues into a spool file and is read back when there is room.
    public var maxUploadMemory: Int = 128 << 20
    /// Where bodies that do not fit in memory are spooled (unnamed files, gone when closed).
    public var spoolDirectory: String = FileManager.default.temporaryDirectory.path
    /// Bytes of spooled bodies on disk at once; beyond it uploads are answered 503.
    public var maxSpoolBytes: Int = 2 << 30
    /// Time limits on reading requests, and the connection cap.
    public var http = HTTPServerLimits()
    /// Bearer keys; when not empty every /v1 route requires one.
    public var apiKeys: [String] = []
    /// A JSON recipe file (see docs/configuration.md); nil for the built-in default recipe only.
    public var recipesFile: String? = nil
    /// Serve the upload page at `/` (and its script and style sheet at `/assets/`).
    public var uploadPage: Bool = true
    /// Cache-Control for stored images (ids are never reused, so objects never change).
    public var cacheControl: String = "public, max-age=31536000, immutable"
    public var storage: Storage = .local(directory: "./data", publicBaseURL: nil)
    /// Local storage flushes every object to the device before the upload is answered
    /// (`fsync`), so an upload whose manifest is stored survives a power loss whole; off, a
    /// power loss (not a crash) can leave recent uploads' files empty or missing.
    public var localFsync = true
    public var processors = ProcessorPoolConfiguration()
    /// Origins whose pages may call the API from a browser; empty: no CORS headers at all.
    public var cors = CORSPolicy()
    /// How long an `Idempotency-Key` is remembered: a retry within it answers the first
    /// upload's manifest instead of making a second image.
    public var idempotencyRetention: Duration = .seconds(86_400)
    /// How an upload's variants are spread over processors (see `VariantPlanner`).
    public var split: SplitPolicy = .auto

    public enum Storage: Sendable {
        /// Files under `directory`, served by the gateway at /files/. `publicBaseURL` is what
        /// manifest URLs start with (default: http://host:port/files).
        case local(directory: String, publicBaseURL: String?)
        case s3(S3Configuration, createBucket: Bool)
    }

    public init() {}
}

/// How an upload's variants are grouped into processor calls.
public enum SplitPolicy: String, Sendable, CaseIterable {
    /// While processors have idle workers: baseline JPEG and WebP uploads are spread over them
    /// (their extra decodes shrink on load cheaply), others get one call that uses them as
    /// threads. Under load: one call, one thread.
    case auto
    /// Always one call: one decode per upload (best throughput under load).
    case never
    /// Always over every ready processor (lowest latency when idle; for comparison).
    case always
}
