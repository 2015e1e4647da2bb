import ArgumentParser
import CMallocArena
import Foundation
import Logging
import PrismImaging
import PrismProcessor
import PrismRuntime
import PrismTLS
import ServiceLifecycle
import UnixSignals

@main
struct ProcessorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prism-processor",
        abstract: "Makes image variants with libvips for Prism gateways and other services.",
        discussion: """
            Speaks Prism's frame protocol (Protos/PROTOCOL.md) on --port and serves /healthz, \
            /readyz and /metrics over HTTP on --status-port. Every option can also be set through \
            the environment variable named in its help; a flag wins over the variable. \
            SIGTERM or SIGINT drains: go-away to clients, calls in flight finish (up to \
            --drain-timeout), then exit.
            """
    )

    @Option(help: "Address to listen on for the frame protocol. (env PRISM_PROCESSOR_HOST; default 127.0.0.1)")
    var host: String?

    @Option(help: "Port for the frame protocol; 0 picks a free one. (env PRISM_PROCESSOR_PORT; default 7070)")
    var port: Int?

    @Option(help: "Address for /healthz, /readyz and /metrics. (env PRISM_PROCESSOR_STATUS_HOST; default: same as --host)")
    var statusHost: String?

    @Option(help: "Port for /healthz, /readyz and /metrics; 0 picks a free one. (env PRISM_PROCESSOR_STATUS_PORT; default 9090)")
    var statusPort: Int?

    @Option(help: "Images processed at once, one thread each. (env PRISM_PROCESSOR_WORKERS; default: number of cores)")
    var workers: Int?

    @Option(help: "Calls that may wait for a worker; more are refused with RESOURCE_EXHAUSTED. (env PRISM_PROCESSOR_QUEUE; default: 4 x cores)")
    var queue: Int?

    @Option(help: "libvips threads inside one image's pipeline. (env PRISM_VIPS_CONCURRENCY; default 1)")
    var vipsConcurrency: Int?

    @Option(help: "Most threads one call may use when its client says cores are idle: a parallel decode and variants; 1 turns it off. (env PRISM_PROCESSOR_JOB_THREADS; default: number of cores)")
    var jobThreads: Int?

    @Option(help: "Largest frame accepted from a client, e.g. 64m; bounds the upload size. (env PRISM_MAX_FRAME_SIZE; default 64m)")
    var maxFrameSize: ByteSizeSetting?

    @Option(help: "Answers a client has not read yet, e.g. 32m, beyond which its connection is not read (no new calls) until they drain. (env PRISM_MAX_PENDING_OUTPUT_BYTES; default 32m)")
    var maxPendingOutputBytes: ByteSizeSetting?

    @Option(help: "Connections served at once; more are refused with RESOURCE_EXHAUSTED. (env PRISM_PROCESSOR_MAX_CONNECTIONS; default 256)")
    var maxConnections: Int?

    @Option(help: "Largest source image in pixels (width x height), checked before decoding. (env PRISM_MAX_INPUT_PIXELS; default 50000000)")
    var maxInputPixels: Int?

    @Option(help: "Largest width or height of any variant. (env PRISM_MAX_OUTPUT_DIMENSION; default 16384)")
    var maxOutputDimension: Int?

    @Option(help: "Largest AVIF variant in pixels (its encoder cannot be interrupted). (env PRISM_MAX_AVIF_PIXELS; default 8000000)")
    var maxAvifPixels: Int?

    @Flag(help: "Accept images whose decoder reports warnings (damaged areas come out grey). (env PRISM_LENIENT_DECODING=true)")
    var lenientDecoding = false

    @Option(help: "Token clients must send in their Hello. (env PRISM_AUTH_TOKEN; default: none required)")
    var authToken: String?

    @Option(help: "PEM certificate chain (leaf first) for TLS on --port; needs --tls-key. (env PRISM_TLS_CERT; default: plain TCP)")
    var tlsCert: String?

    @Option(help: "PEM private key of --tls-cert, without passphrase. (env PRISM_TLS_KEY)")
    var tlsKey: String?

    @Option(help: "PEM CA bundle: clients must present a certificate signed by it (mutual TLS); needs --tls-cert. (env PRISM_TLS_CLIENT_CA; default: no client certificate asked)")
    var tlsClientCa: String?

    @Option(help: "Time a new connection has to finish its TLS handshake and send its Hello, e.g. 10s. (env PRISM_PROCESSOR_HANDSHAKE_TIMEOUT; default 10s)")
    var handshakeTimeout: DurationSetting?

    @Option(help: "Budget for calls that send none, e.g. 60s. (env PRISM_PROCESSOR_DEFAULT_TIMEOUT; default 60s)")
    var defaultTimeout: DurationSetting?

    @Option(help: "Longest budget a call may ask for. (env PRISM_PROCESSOR_MAX_TIMEOUT; default 300s)")
    var maxTimeout: DurationSetting?

    @Option(help: "On shutdown, time calls in flight get to finish. (env PRISM_DRAIN_TIMEOUT; default 25s)")
    var drainTimeout: DurationSetting?

    @Option(help: "Log level: trace, debug, info, notice, warning, error. (env PRISM_LOG_LEVEL; default info)")
    var logLevel: Logger.Level?

    @Option(help: "Log format: logfmt or json. (env PRISM_LOG_FORMAT; default logfmt)")
    var logFormat: LogFormat?

    @Flag(help: "Check the settings (flags and environment), print them and exit without starting.")
    var checkConfig = false

    func run() async throws {
        let settings = Settings()
        var config = ProcessorConfiguration()
        config.host = try settings.value(self.host, env: "PRISM_PROCESSOR_HOST", default: config.host)
        config.port = try settings.value(self.port, env: "PRISM_PROCESSOR_PORT", default: config.port)
        config.statusHost = try settings.value(self.statusHost, env: "PRISM_PROCESSOR_STATUS_HOST", default: config.host)
        config.statusPort = try settings.value(self.statusPort, env: "PRISM_PROCESSOR_STATUS_PORT", default: 9090)
        config.workers = try settings.value(self.workers, env: "PRISM_PROCESSOR_WORKERS", default: config.workers)
        config.queueCapacity = try settings.value(self.queue, env: "PRISM_PROCESSOR_QUEUE", default: config.workers * 4)
        config.vipsConcurrency = try settings.value(self.vipsConcurrency, env: "PRISM_VIPS_CONCURRENCY", default: config.vipsConcurrency)
        config.jobThreads = try settings.value(self.jobThreads, env: "PRISM_PROCESSOR_JOB_THREADS", default: config.jobThreads)
        config.maxFrameSize = try settings.value(self.maxFrameSize, env: "PRISM_MAX_FRAME_SIZE", default: ByteSizeSetting(config.maxFrameSize)).bytes
        config.maxPendingOutputBytes = try settings.value(self.maxPendingOutputBytes, env: "PRISM_MAX_PENDING_OUTPUT_BYTES", default: ByteSizeSetting(config.maxPendingOutputBytes)).bytes
        config.maxConnections = try settings.value(self.maxConnections, env: "PRISM_PROCESSOR_MAX_CONNECTIONS", default: config.maxConnections)
        config.limits.maxInputPixels = try settings.value(self.maxInputPixels, env: "PRISM_MAX_INPUT_PIXELS", default: config.limits.maxInputPixels)
        config.limits.maxOutputDimension = try settings.value(self.maxOutputDimension, env: "PRISM_MAX_OUTPUT_DIMENSION", default: config.limits.maxOutputDimension)
        config.limits.maxAVIFPixels = try settings.value(self.maxAvifPixels, env: "PRISM_MAX_AVIF_PIXELS", default: config.limits.maxAVIFPixels)
        config.limits.failOnWarnings = try !settings.flag(self.lenientDecoding, env: "PRISM_LENIENT_DECODING")
        config.authToken = try settings.optional(self.authToken, env: "PRISM_AUTH_TOKEN")
        config.tls = try Self.tls(
            certificate: settings.optional(self.tlsCert, env: "PRISM_TLS_CERT"),
            key: settings.optional(self.tlsKey, env: "PRISM_TLS_KEY"),
            clientCA: settings.optional(self.tlsClientCa, env: "PRISM_TLS_CLIENT_CA")
        )
        config.handshakeTimeout = try settings.value(self.handshakeTimeout, env: "PRISM_PROCESSOR_HANDSHAKE_TIMEOUT", default: DurationSetting(config.handshakeTimeout)).duration
        config.defaultTimeout = try settings.value(self.defaultTimeout, env: "PRISM_PROCESSOR_DEFAULT_TIMEOUT", default: DurationSetting(config.defaultTimeout)).duration
        config.maxTimeout = try settings.value(self.maxTimeout, env: "PRISM_PROCESSOR_MAX_TIMEOUT", default: DurationSetting(config.maxTimeout)).duration
        config.drainTimeout = try settings.value(self.drainTimeout, env: "PRISM_DRAIN_TIMEOUT", default: DurationSetting(config.drainTimeout)).duration
        let level = try settings.value(self.logLevel, env: "PRISM_LOG_LEVEL", default: .info)
        let format = try settings.value(self.logFormat, env: "PRISM_LOG_FORMAT", default: .logfmt)

        try Settings.check(config.port, in: 0...65535, "--port (PRISM_PROCESSOR_PORT)")
        try Settings.check(config.statusPort ?? 0, in: 0...65535, "--status-port (PRISM_PROCESSOR_STATUS_PORT)")
        try Settings.check(config.workers, in: 1...256, "--workers (PRISM_PROCESSOR_WORKERS)")
        try Settings.check(config.queueCapacity, in: 0...100_000, "--queue (PRISM_PROCESSOR_QUEUE)")
        try Settings.check(config.vipsConcurrency, in: 1...64, "--vips-concurrency (PRISM_VIPS_CONCURRENCY)")
        try Settings.check(config.jobThreads, in: 1...64, "--job-threads (PRISM_PROCESSOR_JOB_THREADS)")
        try Settings.check(config.maxFrameSize, in: 65_536...(1 << 30), "--max-frame-size (PRISM_MAX_FRAME_SIZE)")
        try Settings.check(config.maxPendingOutputBytes, in: 65_536...(1 << 34), "--max-pending-output-bytes (PRISM_MAX_PENDING_OUTPUT_BYTES)")
        try Settings.check(config.maxConnections, in: 1...1_000_000, "--max-connections (PRISM_PROCESSOR_MAX_CONNECTIONS)")
        try Settings.check(config.limits.maxInputPixels, in: 1...1_000_000_000, "--max-input-pixels (PRISM_MAX_INPUT_PIXELS)")
        try Settings.check(config.limits.maxOutputDimension, in: 1...65_500, "--max-output-dimension (PRISM_MAX_OUTPUT_DIMENSION)")
        try Settings.check(config.limits.maxAVIFPixels, in: 1...1_000_000_000, "--max-avif-pixels (PRISM_MAX_AVIF_PIXELS)")
        try Settings.check(config.handshakeTimeout, in: .milliseconds(100)...(.seconds(300)), "--handshake-timeout (PRISM_PROCESSOR_HANDSHAKE_TIMEOUT)")
        try Settings.check(config.defaultTimeout, in: .milliseconds(1)...config.maxTimeout, "--default-timeout (PRISM_PROCESSOR_DEFAULT_TIMEOUT, at most --max-timeout)")
        if config.authToken?.isEmpty == true { config.authToken = nil }

        LogSetup.bootstrap(format: format, level: level)
        let logger = Logger(label: "prism.processor")
        let summary: [(String, String)] = [
            ("listen", "\(config.host):\(config.port)"),
            ("status", config.statusPort.map { "\(config.statusHost):\($0)" } ?? "off"),
            ("workers", "\(config.workers)"), ("queue", "\(config.queueCapacity)"),
            ("vips_concurrency", "\(config.vipsConcurrency)"), ("job_threads", "\(config.jobThreads)"), ("max_frame_size", "\(config.maxFrameSize)"),
            ("max_pending_output_bytes", "\(config.maxPendingOutputBytes)"), ("max_connections", "\(config.maxConnections)"),
            ("max_input_pixels", "\(config.limits.maxInputPixels)"), ("max_output_dimension", "\(config.limits.maxOutputDimension)"),
            ("max_avif_pixels", "\(config.limits.maxAVIFPixels)"), ("fail_on_warnings", "\(config.limits.failOnWarnings)"),
            ("tls", config.tls?.summary ?? "off"),
            ("auth_token", config.authToken == nil ? "none" : config.tls == nil ? "set (hidden; sent in clear without TLS)" : "set (hidden)"),
            ("handshake_timeout", "\(config.handshakeTimeout)"),
            ("default_timeout", "\(config.defaultTimeout)"), ("max_timeout", "\(config.maxTimeout)"),
            ("drain_timeout", "\(config.drainTimeout)"),
            // Set before any thread started (Sources/CMallocArena), unless the environment chose.
            ("malloc_arenas", prism_malloc_arena_max() == 1 ? "1" : "as the environment or the C library sets them"),
        ]
        if StartupCheck.finish(settings, checkOnly: self.checkConfig, summary: summary, logger: logger) { return }
        let server = try ProcessorServer(configuration: config, logger: logger)
        var groupConfig = ServiceGroupConfiguration(services: [server], logger: logger)
        groupConfig.gracefulShutdownSignals = [.sigterm, .sigint]
        groupConfig.maximumGracefulShutdownDuration = config.drainTimeout + .seconds(5)
        try await ServiceGroup(configuration: groupConfig).run()
    }

    /// TLS from the three file settings: none of them is plain TCP; a certificate needs its key
    /// and the other way round; a client CA needs a certificate. Each file is read and checked
    /// here, so a mistake stops the start (and `--check-config`) with the file and the problem.
    static func tls(certificate: String?, key: String?, clientCA: String?) throws -> ServerTLSConfiguration? {
        switch (certificate, key) {
        case (nil, nil):
            guard clientCA == nil else {
                throw ValidationError("--tls-client-ca (PRISM_TLS_CLIENT_CA) needs TLS: set --tls-cert and --tls-key too.")
            }
            return nil
        case (let certificate?, let key?):
            do {
                return try ServerTLSConfiguration.load(
                    certificateFile: certificate,
                    privateKeyFile: key,
                    clientCAFile: clientCA,
                    settings: (
                        certificate: "--tls-cert (PRISM_TLS_CERT)",
                        key: "--tls-key (PRISM_TLS_KEY)",
                        clientCA: "--tls-client-ca (PRISM_TLS_CLIENT_CA)"
                    )
                )
            } catch {
                throw ValidationError(error.message)
            }
        case (nil, _?):
            throw ValidationError("--tls-key (PRISM_TLS_KEY) is set without --tls-cert (PRISM_TLS_CERT): TLS needs both.")
        case (_?, nil):
            throw ValidationError("--tls-cert (PRISM_TLS_CERT) is set without --tls-key (PRISM_TLS_KEY): TLS needs both.")
        }
    }
}
