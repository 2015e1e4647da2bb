import ArgumentParser
import Foundation
import Logging
import PrismClient
import PrismGateway
import PrismRuntime
import PrismStorage
import PrismTLS
import ServiceLifecycle
import UnixSignals

@main
struct GatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prism-gateway",
        abstract: "Prism's HTTP API: one upload in, every variant made on the processors, stored, one manifest out.",
        discussion: """
            Every option can also be set through the environment variable named in its help; a \
            flag wins over the variable. S3 credentials come from the standard AWS_ACCESS_KEY_ID, \
            AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN variables. SIGTERM or SIGINT stops \
            accepting connections, lets uploads in flight finish (up to --drain-timeout), then exits.
            """,
        subcommands: [SweepCommand.self]
    )

    @OptionGroup var options: GatewayOptions

    func run() async throws {
        let settings = Settings()
        let (config, summary) = try self.options.configuration(settings, serving: true)
        let drain = try settings.value(self.options.drainTimeout, env: "PRISM_DRAIN_TIMEOUT", default: DurationSetting(.seconds(30))).duration
        let logger = try self.options.bootstrapLogging(settings)
        let recipes = try GatewayOptions.recipes(config)
        let fullSummary = summary + [("recipes", recipes.recipes.keys.sorted().joined(separator: ","))]
        if StartupCheck.finish(settings, checkOnly: self.options.checkConfig, summary: fullSummary, logger: logger) { return }
        Gateway.returnLargeBuffersToTheSystem()
        let gateway = try Gateway(configuration: config, recipes: recipes, logger: logger)
        var groupConfig = ServiceGroupConfiguration(services: gateway.services(), logger: logger)
        groupConfig.gracefulShutdownSignals = [.sigterm, .sigint]
        groupConfig.maximumGracefulShutdownDuration = drain
        try await ServiceGroup(configuration: groupConfig).run()
        logger.info("gateway stopped")
    }
}

/// `prism-gateway sweep`: one pass of the orphan sweeper over the configured store, for cron
/// and Kubernetes CronJobs. Exits 0 when the store is clean afterwards, 1 when it could not
/// finish or found manifests that name missing objects.
struct SweepCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Remove objects of uploads that never committed a manifest (older than --sweep-grace), then exit."
    )

    @OptionGroup var options: GatewayOptions

    func run() async throws {
        let settings = Settings()
        let (config, summary) = try self.options.configuration(settings, serving: false)
        let logger = try self.options.bootstrapLogging(settings)
        if StartupCheck.finish(settings, checkOnly: self.options.checkConfig, summary: summary, logger: logger) { return }
        let gateway = try Gateway(configuration: config, recipes: try RecipeBook.load(file: nil), logger: logger)
        let services = gateway.storageServices()
        let report: Sweeper.Report
        if services.isEmpty {
            report = try await gateway.sweeper.sweep()
        } else {
            // The curl thread (S3) runs beside the sweep and stops when it is done.
            let serviceGroup = ServiceGroup(configuration: .init(services: services, logger: logger))
            report = try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask { try await serviceGroup.run() }
                defer { group.cancelAll() }
                let report = try await gateway.sweeper.sweep()
                await serviceGroup.triggerGracefulShutdown()
                return report
            }
        }
        print(report.description)
        logger.info("sweep done", metadata: ["report": "\(report)"])
        if !report.brokenManifests.isEmpty { throw ExitCode(1) }
    }
}

/// Every setting of the gateway, shared by serving and `sweep`.
struct GatewayOptions: ParsableArguments {

    @Option(help: "Address to listen on. (env PRISM_GATEWAY_HOST; default 127.0.0.1)")
    var host: String?

    @Option(help: "Port to listen on; 0 picks a free one. (env PRISM_GATEWAY_PORT; default 8080)")
    var port: Int?

    @Option(help: "Processors as host:port, comma-separated. (env PRISM_PROCESSORS)")
    var processors: String?

    @Option(help: "DNS names of processors as name:port, comma-separated, re-resolved periodically; every address is a processor. (env PRISM_PROCESSOR_DNS)")
    var processorDns: String?

    @Option(help: "How often the DNS names are re-resolved. (env PRISM_PROCESSOR_DNS_REFRESH; default 5s)")
    var dnsRefresh: DurationSetting?

    @Option(help: "Token the processors require in their handshake. (env PRISM_AUTH_TOKEN; default none)")
    var processorToken: String?

    @Flag(help: "Connect to the processors with TLS, trusting the system's CAs unless --processor-tls-ca is set. (env PRISM_PROCESSOR_TLS=true; default: plain TCP)")
    var processorTls = false

    @Option(help: "PEM CA bundle the processors' certificates must chain to; turns TLS on. (env PRISM_PROCESSOR_TLS_CA; default: the system's CAs)")
    var processorTlsCa: String?

    @Option(help: "PEM client certificate for processors that require one (mutual TLS); needs --processor-tls-key; turns TLS on. (env PRISM_PROCESSOR_TLS_CERT)")
    var processorTlsCert: String?

    @Option(help: "PEM private key of --processor-tls-cert, without passphrase. (env PRISM_PROCESSOR_TLS_KEY)")
    var processorTlsKey: String?

    @Option(help: "Name the processors' certificates must carry, also sent as SNI. (env PRISM_PROCESSOR_TLS_SERVER_NAME; default: the host in --processors / --processor-dns)")
    var processorTlsServerName: String?

    @Option(help: "API keys clients must send as 'Authorization: Bearer <key>', comma-separated; none means open. (env PRISM_API_KEYS)")
    var apiKeys: String?

    @Option(help: "Largest upload body, e.g. 40m. (env PRISM_MAX_UPLOAD_SIZE; default 40m)")
    var maxUploadSize: ByteSizeSetting?

    @Option(help: "Time from a received upload to its answer. (env PRISM_UPLOAD_TIMEOUT; default 30s)")
    var uploadTimeout: DurationSetting?

    @Option(help: "Uploads processed at once; more are answered 429. (env PRISM_MAX_CONCURRENT_UPLOADS; default 32)")
    var maxConcurrentUploads: Int?

    @Option(help: "JSON file of recipes (docs/configuration.md); the built-in 'default' recipe is always there. (env PRISM_RECIPES)")
    var recipes: String?

    @Option(help: "Where images go: local or s3. (env PRISM_STORAGE; default local)")
    var storage: String?

    @Option(help: "Directory for local storage. (env PRISM_DATA_DIR; default ./data)")
    var dataDir: String?

    @Option(help: ArgumentHelp("Local storage: flush every object to the device before the upload is answered (fsync), so a stored upload survives a power loss whole; false trades that for less CPU and latency per upload. (env PRISM_LOCAL_FSYNC; default true)", valueName: "true|false"))
    var localFsync: Bool?

    @Option(help: "What manifest URLs start with, e.g. https://cdn.example.com. (env PRISM_PUBLIC_BASE_URL; default: the gateway's /files for local, the S3 URL for s3)")
    var publicBaseUrl: String?

    @Option(help: "S3 endpoint URL, e.g. https://s3.eu-west-1.amazonaws.com. (env PRISM_S3_ENDPOINT)")
    var s3Endpoint: String?

    @Option(help: "S3 region. (env PRISM_S3_REGION or AWS_REGION; default us-east-1)")
    var s3Region: String?

    @Option(help: "S3 bucket. (env PRISM_S3_BUCKET)")
    var s3Bucket: String?

    @Option(help: "Prefix for every key in the bucket, e.g. prism/. (env PRISM_S3_PREFIX; default none)")
    var s3Prefix: String?

    @Flag(help: "Address the bucket as bucket.endpoint (virtual-hosted style) instead of endpoint/bucket. (env PRISM_S3_VIRTUAL_HOSTED=true)")
    var s3VirtualHosted = false

    @Flag(help: "Create the bucket at start if it does not exist. (env PRISM_S3_CREATE_BUCKET=true)")
    var s3CreateBucket = false

    @Option(help: "Cache-Control of stored images. (env PRISM_CACHE_CONTROL; default 'public, max-age=31536000, immutable')")
    var cacheControl: String?

    @Option(help: ArgumentHelp("Serve the upload page at / (false: / answers 404). (env PRISM_UPLOAD_PAGE; default true)", valueName: "true|false"))
    var uploadPage: Bool?

    @Option(help: "Spreading an upload's variants over processors: auto (idle processors: JPEG/WebP spread over them, others one call using them as threads; under load one call), never, always (over every processor). (env PRISM_SPLIT; default auto)")
    var split: String?

    @Option(help: "Largest frame accepted from a processor (one encoded variant). (env PRISM_MAX_FRAME_SIZE; default 64m)")
    var maxFrameSize: ByteSizeSetting?

    @Option(help: "On shutdown, time uploads in flight get to finish. (env PRISM_DRAIN_TIMEOUT; default 30s)")
    var drainTimeout: DurationSetting?

    @Option(help: "Log level: trace, debug, info, notice, warning, error. (env PRISM_LOG_LEVEL; default info)")
    var logLevel: Logger.Level?

    @Option(help: "Log format: logfmt or json. (env PRISM_LOG_FORMAT; default logfmt)")
    var logFormat: LogFormat?

    @Option(help: "How often each processor connection is pinged. (env PRISM_PROCESSOR_PING_INTERVAL; default 2s)")
    var processorPingInterval: DurationSetting?

    @Option(help: "A processor that sends nothing for this long after a ping is dropped and its calls retried elsewhere; must exceed the time to send the largest upload to a processor. (env PRISM_PROCESSOR_PING_TIMEOUT; default 2s)")
    var processorPingTimeout: DurationSetting?

    @Option(help: "Time a client has to send a request header once it starts (408 beyond). (env PRISM_HEADER_TIMEOUT; default 10s)")
    var headerTimeout: DurationSetting?

    @Option(help: "Longest pause inside a request body (408 beyond). (env PRISM_BODY_IDLE_TIMEOUT; default 10s)")
    var bodyIdleTimeout: DurationSetting?

    @Option(help: "Time to receive a whole request body after its header (408 beyond). (env PRISM_BODY_TIMEOUT; default 60s)")
    var bodyTimeout: DurationSetting?

    @Option(help: "An idle keep-alive connection is closed after this. (env PRISM_KEEP_ALIVE_TIMEOUT; default 60s)")
    var keepAliveTimeout: DurationSetting?

    @Option(help: "Open client connections; more are answered 503 and closed. (env PRISM_MAX_CONNECTIONS; default 1024)")
    var maxConnections: Int?

    @Option(help: "Upload body bytes held in memory at once, counted as they arrive; beyond it bodies go to the spool. (env PRISM_MAX_UPLOAD_MEMORY; default 128m)")
    var maxUploadMemory: ByteSizeSetting?

    @Option(help: "Directory for upload bodies that do not fit in memory (unnamed files). (env PRISM_SPOOL_DIR; default the system temporary directory)")
    var spoolDir: String?

    @Option(help: "Bytes of spooled upload bodies on disk at once; beyond it 503. (env PRISM_MAX_SPOOL; default 2g)")
    var maxSpool: ByteSizeSetting?

    @Option(help: "The sweeper removes objects of uploads without a manifest once this old. (env PRISM_SWEEP_GRACE; default 1h)")
    var sweepGrace: DurationSetting?

    @Option(help: "Sweep inside the gateway this often; default off (run 'prism-gateway sweep' from cron instead). (env PRISM_SWEEP_INTERVAL)")
    var sweepInterval: DurationSetting?

    @Option(help: "Origins whose pages may call the API from a browser (CORS), comma-separated, e.g. https://app.example.com; * for any. (env PRISM_CORS_ORIGINS; default none: no CORS headers)")
    var corsOrigins: String?

    @Option(help: "How long an Idempotency-Key is remembered; a retry within it answers the first upload's manifest. (env PRISM_IDEMPOTENCY_RETENTION; default 24h)")
    var idempotencyRetention: DurationSetting?

    @Flag(help: "Check the settings (flags, environment, recipes), print them and exit without starting.")
    var checkConfig = false

    /// The configuration from flags and environment, and its printable summary.
    func configuration(_ settings: Settings, serving: Bool) throws -> (GatewayConfiguration, [(String, String)]) {
        let environment = ProcessInfo.processInfo.environment
        var config = GatewayConfiguration()
        config.host = try settings.value(self.host, env: "PRISM_GATEWAY_HOST", default: config.host)
        config.port = try settings.value(self.port, env: "PRISM_GATEWAY_PORT", default: config.port)
        try Settings.check(config.port, in: 0...65535, "--port (PRISM_GATEWAY_PORT)")

        let statics = try settings.optional(self.processors, env: "PRISM_PROCESSORS") ?? ""
        let names = try settings.optional(self.processorDns, env: "PRISM_PROCESSOR_DNS") ?? ""
        config.processors.endpoints = try Self.endpoints(statics, "--processors (PRISM_PROCESSORS)")
        config.processors.dnsNames = try Self.endpoints(names, "--processor-dns (PRISM_PROCESSOR_DNS)")
        guard !serving || !config.processors.endpoints.isEmpty || !config.processors.dnsNames.isEmpty else {
            throw ValidationError("Name the processors with --processors host:port[,host:port] or --processor-dns name:port (PRISM_PROCESSORS / PRISM_PROCESSOR_DNS).")
        }
        config.processors.resolveInterval = try settings.value(self.dnsRefresh, env: "PRISM_PROCESSOR_DNS_REFRESH", default: DurationSetting(.seconds(5))).duration
        try Settings.check(config.processors.resolveInterval, in: .milliseconds(100)...(.seconds(3600)), "--dns-refresh (PRISM_PROCESSOR_DNS_REFRESH)")
        config.processors.client.authToken = try settings.optional(self.processorToken, env: "PRISM_AUTH_TOKEN")
        config.processors.client.tls = try self.processorTLS(settings, loadFiles: serving)
        config.processors.client.agent = "prism-gateway/1"
        config.processors.client.maxFrameSize = try settings.value(self.maxFrameSize, env: "PRISM_MAX_FRAME_SIZE", default: ByteSizeSetting(64 << 20)).bytes
        try Settings.check(config.processors.client.maxFrameSize, in: 65_536...(1 << 30), "--max-frame-size (PRISM_MAX_FRAME_SIZE)")

        config.apiKeys = (try settings.optional(self.apiKeys, env: "PRISM_API_KEYS") ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        config.maxUploadBytes = try settings.value(self.maxUploadSize, env: "PRISM_MAX_UPLOAD_SIZE", default: ByteSizeSetting(config.maxUploadBytes)).bytes
        try Settings.check(config.maxUploadBytes, in: 1024...(1 << 30), "--max-upload-size (PRISM_MAX_UPLOAD_SIZE)")
        config.uploadTimeout = try settings.value(self.uploadTimeout, env: "PRISM_UPLOAD_TIMEOUT", default: DurationSetting(config.uploadTimeout)).duration
        try Settings.check(config.uploadTimeout, in: .milliseconds(100)...(.seconds(600)), "--upload-timeout (PRISM_UPLOAD_TIMEOUT)")
        config.maxConcurrentUploads = try settings.value(self.maxConcurrentUploads, env: "PRISM_MAX_CONCURRENT_UPLOADS", default: config.maxConcurrentUploads)
        try Settings.check(config.maxConcurrentUploads, in: 1...10_000, "--max-concurrent-uploads (PRISM_MAX_CONCURRENT_UPLOADS)")
        config.recipesFile = try settings.optional(self.recipes, env: "PRISM_RECIPES")
        config.cacheControl = try settings.value(self.cacheControl, env: "PRISM_CACHE_CONTROL", default: config.cacheControl)
        config.uploadPage = try settings.value(self.uploadPage, env: "PRISM_UPLOAD_PAGE", default: config.uploadPage)
        let split = try settings.value(self.split, env: "PRISM_SPLIT", default: "auto")
        guard let policy = SplitPolicy(rawValue: split.lowercased()) else {
            throw ValidationError("--split (PRISM_SPLIT) must be auto, never or always; got \(split).")
        }
        config.split = policy

        let publicBase = try settings.optional(self.publicBaseUrl, env: "PRISM_PUBLIC_BASE_URL")
        // Read whatever the storage: an image may set it for local use while S3 is configured.
        let directory = try settings.value(self.dataDir, env: "PRISM_DATA_DIR", default: "./data")
        config.localFsync = try settings.value(self.localFsync, env: "PRISM_LOCAL_FSYNC", default: config.localFsync)
        switch try settings.value(self.storage, env: "PRISM_STORAGE", default: "local").lowercased() {
        case "local":
            config.storage = .local(directory: directory, publicBaseURL: publicBase)
        case "s3":
            guard let endpoint = try settings.optional(self.s3Endpoint, env: "PRISM_S3_ENDPOINT") else {
                throw ValidationError("S3 storage needs --s3-endpoint (PRISM_S3_ENDPOINT).")
            }
            guard URL(string: endpoint)?.host != nil else {
                throw ValidationError("--s3-endpoint (PRISM_S3_ENDPOINT) must be a URL such as https://s3.amazonaws.com; got \(endpoint).")
            }
            guard let bucket = try settings.optional(self.s3Bucket, env: "PRISM_S3_BUCKET") else {
                throw ValidationError("S3 storage needs --s3-bucket (PRISM_S3_BUCKET).")
            }
            guard let (key, secret, token) = S3Configuration.credentialsFromEnvironment(environment) else {
                throw ValidationError("S3 storage needs credentials in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")
            }
            var s3 = S3Configuration(endpoint: endpoint, bucket: bucket, accessKeyID: key, secretAccessKey: secret)
            s3.sessionToken = token
            s3.region = try settings.value(self.s3Region, env: "PRISM_S3_REGION", default: environment["AWS_REGION"] ?? "us-east-1")
            s3.keyPrefix = try settings.value(self.s3Prefix, env: "PRISM_S3_PREFIX", default: "")
            s3.pathStyle = try !settings.flag(self.s3VirtualHosted, env: "PRISM_S3_VIRTUAL_HOSTED")
            s3.publicBaseURL = publicBase
            config.storage = .s3(s3, createBucket: try settings.flag(self.s3CreateBucket, env: "PRISM_S3_CREATE_BUCKET"))
        case let other:
            throw ValidationError("--storage (PRISM_STORAGE) must be local or s3; got \(other).")
        }
        config.processors.pingInterval = try settings.value(self.processorPingInterval, env: "PRISM_PROCESSOR_PING_INTERVAL", default: DurationSetting(config.processors.pingInterval)).duration
        try Settings.check(config.processors.pingInterval, in: .milliseconds(100)...(.seconds(600)), "--processor-ping-interval (PRISM_PROCESSOR_PING_INTERVAL)")
        config.processors.pingTimeout = try settings.value(self.processorPingTimeout, env: "PRISM_PROCESSOR_PING_TIMEOUT", default: DurationSetting(config.processors.pingTimeout)).duration
        try Settings.check(config.processors.pingTimeout, in: .milliseconds(100)...(.seconds(600)), "--processor-ping-timeout (PRISM_PROCESSOR_PING_TIMEOUT)")
        config.http.headerTimeout = try settings.value(self.headerTimeout, env: "PRISM_HEADER_TIMEOUT", default: DurationSetting(config.http.headerTimeout)).duration
        try Settings.check(config.http.headerTimeout, in: .milliseconds(100)...(.seconds(3600)), "--header-timeout (PRISM_HEADER_TIMEOUT)")
        config.http.bodyIdleTimeout = try settings.value(self.bodyIdleTimeout, env: "PRISM_BODY_IDLE_TIMEOUT", default: DurationSetting(config.http.bodyIdleTimeout)).duration
        try Settings.check(config.http.bodyIdleTimeout, in: .milliseconds(100)...(.seconds(3600)), "--body-idle-timeout (PRISM_BODY_IDLE_TIMEOUT)")
        config.http.bodyTimeout = try settings.value(self.bodyTimeout, env: "PRISM_BODY_TIMEOUT", default: DurationSetting(config.http.bodyTimeout)).duration
        try Settings.check(config.http.bodyTimeout, in: .milliseconds(100)...(.seconds(3600)), "--body-timeout (PRISM_BODY_TIMEOUT)")
        config.http.keepAliveTimeout = try settings.value(self.keepAliveTimeout, env: "PRISM_KEEP_ALIVE_TIMEOUT", default: DurationSetting(config.http.keepAliveTimeout)).duration
        try Settings.check(config.http.keepAliveTimeout, in: .milliseconds(100)...(.seconds(3600)), "--keep-alive-timeout (PRISM_KEEP_ALIVE_TIMEOUT)")
        config.http.maxConnections = try settings.value(self.maxConnections, env: "PRISM_MAX_CONNECTIONS", default: config.http.maxConnections)
        try Settings.check(config.http.maxConnections, in: 1...1_000_000, "--max-connections (PRISM_MAX_CONNECTIONS)")
        config.maxUploadMemory = try settings.value(self.maxUploadMemory, env: "PRISM_MAX_UPLOAD_MEMORY", default: ByteSizeSetting(config.maxUploadMemory)).bytes
        try Settings.check(config.maxUploadMemory, in: config.maxUploadBytes...(1 << 40), "--max-upload-memory (PRISM_MAX_UPLOAD_MEMORY), at least --max-upload-size,")
        config.maxSpoolBytes = try settings.value(self.maxSpool, env: "PRISM_MAX_SPOOL", default: ByteSizeSetting(config.maxSpoolBytes)).bytes
        try Settings.check(config.maxSpoolBytes, in: config.maxUploadBytes...(1 << 50), "--max-spool (PRISM_MAX_SPOOL), at least --max-upload-size,")
        config.spoolDirectory = try settings.value(self.spoolDir, env: "PRISM_SPOOL_DIR", default: config.spoolDirectory)
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: config.spoolDirectory, isDirectory: &isDirectory), isDirectory.boolValue,
              FileManager.default.isWritableFile(atPath: config.spoolDirectory) else {
            throw ValidationError("--spool-dir (PRISM_SPOOL_DIR) '\(config.spoolDirectory)' is not a writable directory; create it or point the flag at one.")
        }
        config.sweepGrace = try settings.value(self.sweepGrace, env: "PRISM_SWEEP_GRACE", default: DurationSetting(config.sweepGrace)).duration
        guard config.sweepGrace > config.uploadTimeout + config.cleanupTimeout else {
            throw ValidationError("--sweep-grace (PRISM_SWEEP_GRACE) must be longer than --upload-timeout (plus 3 s of cleanup): a running upload has no manifest yet either.")
        }
        config.sweepInterval = try settings.optional(self.sweepInterval, env: "PRISM_SWEEP_INTERVAL")?.duration
        if let interval = config.sweepInterval {
            try Settings.check(interval, in: .seconds(1)...(.seconds(86_400 * 7)), "--sweep-interval (PRISM_SWEEP_INTERVAL)")
        }
        let origins = (try settings.optional(self.corsOrigins, env: "PRISM_CORS_ORIGINS") ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        for origin in origins {
            if let problem = CORSPolicy.problem(origin) { throw ValidationError("--cors-origins (PRISM_CORS_ORIGINS): \(problem)") }
        }
        config.cors = CORSPolicy(origins: origins)
        config.idempotencyRetention = try settings.value(self.idempotencyRetention, env: "PRISM_IDEMPOTENCY_RETENTION", default: DurationSetting(config.idempotencyRetention)).duration
        try Settings.check(config.idempotencyRetention, in: .seconds(60)...(.seconds(86_400 * 30)), "--idempotency-retention (PRISM_IDEMPOTENCY_RETENTION)")
        _ = try settings.value(self.drainTimeout, env: "PRISM_DRAIN_TIMEOUT", default: DurationSetting(.seconds(30)))

        var summary: [(String, String)] = [
            ("listen", "\(config.host):\(config.port)"),
            ("processors", config.processors.endpoints.map(\.description).joined(separator: ",")),
            ("processor_dns", config.processors.dnsNames.map(\.description).joined(separator: ",")),
            ("processor_tls", config.processors.client.tls?.summary ?? "off"),
            ("processor_token", config.processors.client.authToken == nil ? "none" : config.processors.client.tls == nil ? "set (hidden; sent in clear without TLS)" : "set (hidden)"),
            ("api_keys", "\(config.apiKeys.count)"), ("max_upload_size", "\(config.maxUploadBytes)"),
            ("upload_timeout", "\(config.uploadTimeout)"), ("max_concurrent_uploads", "\(config.maxConcurrentUploads)"),
            ("split", config.split.rawValue), ("upload_page", config.uploadPage ? "on at /" : "off"),
            ("processor_ping", "every \(config.processors.pingInterval), timeout \(config.processors.pingTimeout)"),
            ("header_timeout", "\(config.http.headerTimeout)"), ("body_idle_timeout", "\(config.http.bodyIdleTimeout)"),
            ("body_timeout", "\(config.http.bodyTimeout)"), ("keep_alive_timeout", "\(config.http.keepAliveTimeout)"),
            ("max_connections", "\(config.http.maxConnections)"), ("max_upload_memory", "\(config.maxUploadMemory)"),
            ("spool", "\(config.spoolDirectory), at most \(config.maxSpoolBytes) bytes"),
            ("sweep_grace", "\(config.sweepGrace)"), ("sweep_interval", config.sweepInterval.map { "\($0)" } ?? "off"),
            ("cors_origins", config.cors.isEnabled ? config.cors.origins.joined(separator: ",") : "off"),
            ("idempotency_retention", "\(config.idempotencyRetention)"),
        ]
        switch config.storage {
        case .local(let directory, let base):
            summary.append(("storage", "local \(directory) \(base ?? "")"))
            summary.append(("local_fsync", config.localFsync ? "on (each object flushed before the answer)" : "off (a power loss can lose recent uploads)"))
        case .s3(let s3, let create):
            summary.append(("storage", "s3 \(s3.endpoint) bucket=\(s3.bucket) prefix=\(s3.keyPrefix) region=\(s3.region) path_style=\(s3.pathStyle) create_bucket=\(create)"))
        }
        return (config, summary)
    }

    /// TLS towards the processors: on with --processor-tls, or as soon as a CA or client
    /// certificate is named. Files are read and checked here, so a mistake stops the start
    /// (and `--check-config`) naming the file and the problem. `sweep` never calls a processor:
    /// it reads the settings (so they are not reported as unknown) but not the files, which a
    /// cron job sharing the gateway's environment may not have mounted.
    func processorTLS(_ settings: Settings, loadFiles: Bool) throws -> ClientTLSConfiguration? {
        let on = try settings.flag(self.processorTls, env: "PRISM_PROCESSOR_TLS")
        let ca = try settings.optional(self.processorTlsCa, env: "PRISM_PROCESSOR_TLS_CA")
        let certificate = try settings.optional(self.processorTlsCert, env: "PRISM_PROCESSOR_TLS_CERT")
        let key = try settings.optional(self.processorTlsKey, env: "PRISM_PROCESSOR_TLS_KEY")
        let serverName = try settings.optional(self.processorTlsServerName, env: "PRISM_PROCESSOR_TLS_SERVER_NAME")
        guard on || ca != nil || certificate != nil || key != nil else {
            if serverName != nil {
                throw ValidationError("--processor-tls-server-name (PRISM_PROCESSOR_TLS_SERVER_NAME) needs TLS: add --processor-tls or --processor-tls-ca.")
            }
            return nil
        }
        guard loadFiles else { return nil }
        do {
            return try ClientTLSConfiguration.load(
                trustRootsFile: ca,
                certificateFile: certificate,
                privateKeyFile: key,
                serverName: serverName,
                settings: (
                    trustRoots: "--processor-tls-ca (PRISM_PROCESSOR_TLS_CA)",
                    certificate: "--processor-tls-cert (PRISM_PROCESSOR_TLS_CERT)",
                    key: "--processor-tls-key (PRISM_PROCESSOR_TLS_KEY)"
                )
            )
        } catch {
            throw ValidationError(error.message)
        }
    }

    func bootstrapLogging(_ settings: Settings) throws -> Logger {
        let level = try settings.value(self.logLevel, env: "PRISM_LOG_LEVEL", default: .info)
        let format = try settings.value(self.logFormat, env: "PRISM_LOG_FORMAT", default: .logfmt)
        LogSetup.bootstrap(format: format, level: level)
        return Logger(label: "prism.gateway")
    }

    static func recipes(_ config: GatewayConfiguration) throws -> RecipeBook {
        do {
            return try RecipeBook.load(file: config.recipesFile)
        } catch {
            throw ValidationError("Recipes: \(error.description)")
        }
    }

    static func endpoints(_ list: String, _ what: String) throws -> [ProcessorPoolConfiguration.Endpoint] {
        try list.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }.map { item in
            guard let endpoint = ProcessorPoolConfiguration.Endpoint(item) else {
                throw ValidationError("\(what): '\(item)' is not host:port.")
            }
            return endpoint
        }
    }
}
