import CoreMetrics
public import Prometheus
import PrismProto
import PrismWire

/// The processor's metrics, created through swift-metrics on a factory the server owns (no
/// global bootstrap: several servers can live in one process, as they do in tests).
final class ProcessorMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let callsStarted: CoreMetrics.Counter
    let callsSucceeded: CoreMetrics.Counter
    let callsCancelled: CoreMetrics.Counter
    let callDuration: CoreMetrics.Timer
    let queueWait: CoreMetrics.Timer
    let decodeDuration: CoreMetrics.Timer
    let variantDuration: CoreMetrics.Timer
    let encodeDuration: CoreMetrics.Timer
    let jobsRunning: CoreMetrics.Meter
    let jobsQueued: CoreMetrics.Meter
    let jobsKilled: CoreMetrics.Counter
    let jobsDropped: CoreMetrics.Counter
    let helperChains: CoreMetrics.Counter
    let connections: CoreMetrics.Meter
    let connectionsRefused: CoreMetrics.Counter
    let tlsHandshakeFailures: CoreMetrics.Counter
    let sourceBytes: CoreMetrics.Counter
    let outputBytes: CoreMetrics.Counter
    private let factory: PrometheusMetricsFactory

    init(registry: PrometheusCollectorRegistry) {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = MetricBuckets.latency
        self.factory = factory
        self.registry = registry
        self.callsStarted = CoreMetrics.Counter(label: "prism_processor_calls_started_total", factory: factory)
        self.callsSucceeded = CoreMetrics.Counter(label: "prism_processor_calls_succeeded_total", factory: factory)
        self.callsCancelled = CoreMetrics.Counter(label: "prism_processor_calls_cancelled_total", factory: factory)
        self.callDuration = CoreMetrics.Timer(label: "prism_processor_call_duration_seconds", factory: factory)
        self.queueWait = CoreMetrics.Timer(label: "prism_processor_queue_wait_seconds", factory: factory)
        self.decodeDuration = CoreMetrics.Timer(label: "prism_processor_decode_seconds", factory: factory)
        self.variantDuration = CoreMetrics.Timer(label: "prism_processor_variant_seconds", factory: factory)
        self.encodeDuration = CoreMetrics.Timer(label: "prism_processor_encode_seconds", factory: factory)
        self.jobsRunning = CoreMetrics.Meter(label: "prism_processor_jobs_running", factory: factory)
        self.jobsQueued = CoreMetrics.Meter(label: "prism_processor_jobs_queued", factory: factory)
        self.jobsKilled = CoreMetrics.Counter(label: "prism_processor_computations_killed_total", factory: factory)
        // Queued jobs whose call ended (cancelled, expired, orphaned) before a worker took them.
        self.jobsDropped = CoreMetrics.Counter(label: "prism_processor_jobs_dropped_total", factory: factory)
        // Variant chains run on a helper thread because the call's client said cores were idle.
        self.helperChains = CoreMetrics.Counter(label: "prism_processor_helper_chains_total", factory: factory)
        self.connections = CoreMetrics.Meter(label: "prism_processor_connections", factory: factory)
        self.connectionsRefused = CoreMetrics.Counter(label: "prism_processor_connections_refused_total", factory: factory)
        // Clients that failed TLS: untrusted or missing client certificates, plain TCP on the TLS
        // port, handshakes cut off. A rise after a certificate rotation says who was missed.
        self.tlsHandshakeFailures = CoreMetrics.Counter(label: "prism_processor_tls_handshake_failures_total", factory: factory)
        self.sourceBytes = CoreMetrics.Counter(label: "prism_processor_source_bytes_total", factory: factory)
        self.outputBytes = CoreMetrics.Counter(label: "prism_processor_output_bytes_total", factory: factory)
        self.jobsRunning.set(0)
        self.jobsQueued.set(0)
        self.connections.set(0)
    }

    /// A call that ended with an error, labelled by its gRPC-style code and Prism reason.
    func callFailed(code: Prism_V1_Code, reason: Prism_V1_Reason) {
        CoreMetrics.Counter(label: "prism_processor_calls_failed_total", dimensions: [("code", code.label), ("reason", reason.label)], factory: self.factory).increment()
    }

    /// Worker time spent on one job, by how it ended: the evidence that a cancelled or late
    /// job really stopped early.
    func jobFinished(outcome: String, duration: Duration) {
        CoreMetrics.Timer(label: "prism_processor_job_seconds", dimensions: [("outcome", outcome)], factory: self.factory).recordNanoseconds(duration.nanoseconds)
    }

    func protocolError(_ reason: Prism_V1_Reason) {
        CoreMetrics.Counter(label: "prism_processor_protocol_errors_total", dimensions: [("reason", reason.label)], factory: self.factory).increment()
    }
}

extension Prism_V1_Code {
    /// snake_case name for metric labels: "deadline_exceeded".
    var label: String { snakeCase(String(describing: self)) }
}

extension Prism_V1_Reason {
    var label: String { snakeCase(String(describing: self)) }
}

private func snakeCase(_ name: String) -> String {
    var out = ""
    for character in name {
        if character.isUppercase {
            if !out.isEmpty { out.append("_") }
            out.append(contentsOf: character.lowercased())
        } else if character.isLetter || character.isNumber {
            out.append(character)
        }
    }
    return out
}
