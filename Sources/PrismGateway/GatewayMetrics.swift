import CoreMetrics
public import Prometheus
import PrismWire

/// The gateway's metrics, on a Prometheus registry the gateway owns (scraped at /metrics).
final class GatewayMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    let factory: PrometheusMetricsFactory
    let uploadsInFlight: CoreMetrics.Meter
    let uploadsSucceeded: CoreMetrics.Counter
    let uploadsFailedCounter: CoreMetrics.Counter
    let uploadsAbandoned: CoreMetrics.Counter
    /// Bodies that went to the spool because the memory budget was full.
    let uploadsSpooled: CoreMetrics.Counter
    let bytesStored: CoreMetrics.Counter
    let variantTimer: CoreMetrics.Timer
    let storeTimer: CoreMetrics.Timer

    init(registry: PrometheusCollectorRegistry) {
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = MetricBuckets.latency
        self.registry = registry
        self.factory = factory
        self.uploadsInFlight = CoreMetrics.Meter(label: "prism_gateway_uploads_in_flight", factory: factory)
        self.uploadsSucceeded = CoreMetrics.Counter(label: "prism_gateway_uploads_total", dimensions: [("outcome", "ok")], factory: factory)
        self.uploadsFailedCounter = CoreMetrics.Counter(label: "prism_gateway_uploads_total", dimensions: [("outcome", "failed")], factory: factory)
        self.uploadsAbandoned = CoreMetrics.Counter(label: "prism_gateway_uploads_cancelled_total", factory: factory)
        self.uploadsSpooled = CoreMetrics.Counter(label: "prism_gateway_upload_bodies_spooled_total", factory: factory)
        self.bytesStored = CoreMetrics.Counter(label: "prism_gateway_bytes_stored_total", factory: factory)
        self.variantTimer = CoreMetrics.Timer(label: "prism_gateway_variant_seconds", factory: factory)
        self.storeTimer = CoreMetrics.Timer(label: "prism_gateway_store_seconds", factory: factory)
        self.uploadsInFlight.set(0)
    }

    /// Time spent in one stage of an upload: receive, process, manifest, total.
    func stage(_ name: String, _ duration: Duration) {
        CoreMetrics.Timer(label: "prism_gateway_upload_stage_seconds", dimensions: [("stage", name)], factory: self.factory)
            .recordNanoseconds(duration.nanoseconds)
    }

    func request(route: String, method: String, status: Int, duration: Duration) {
        CoreMetrics.Counter(label: "prism_gateway_requests_total", dimensions: [("route", route), ("method", method), ("status", "\(status)")], factory: self.factory).increment()
        CoreMetrics.Timer(label: "prism_gateway_request_duration_seconds", dimensions: [("route", route), ("method", method)], factory: self.factory)
            .recordNanoseconds(duration.nanoseconds)
    }

    /// A request answered by the connection guard before it reached a route (timeouts, parse
    /// errors, too many connections).
    func refused(reason: String, status: Int) {
        CoreMetrics.Counter(label: "prism_gateway_requests_refused_total", dimensions: [("reason", reason), ("status", "\(status)")], factory: self.factory).increment()
    }

    func stored(bytes: Int, duration: Duration) {
        self.bytesStored.increment(by: Int64(bytes))
        self.storeTimer.recordNanoseconds(duration.nanoseconds)
    }

    func variant(_ processing: Duration) {
        self.variantTimer.recordNanoseconds(processing.nanoseconds)
    }

    func uploadFailed() {
        self.uploadsFailedCounter.increment()
    }
}
