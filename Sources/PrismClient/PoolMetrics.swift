import CoreMetrics

/// swift-metrics handles for the pool, on the factory the gateway owns.
struct PoolMetrics: Sendable {
    let retries: CoreMetrics.Counter
    let reconnects: CoreMetrics.Counter
    /// Time to choose a processor for a call (including waiting for one to be ready).
    let dispatch: CoreMetrics.Timer
    let factory: any MetricsFactory

    init(factory: (any MetricsFactory)?) {
        let factory = factory ?? MetricsSystem.factory
        self.factory = factory
        self.retries = CoreMetrics.Counter(label: "prism_gateway_call_retries_total", factory: factory)
        self.reconnects = CoreMetrics.Counter(label: "prism_gateway_processor_reconnects_total", factory: factory)
        self.dispatch = CoreMetrics.Timer(label: "prism_gateway_dispatch_seconds", factory: factory)
    }

    func connections(_ state: String) -> CoreMetrics.Gauge {
        CoreMetrics.Gauge(label: "prism_gateway_processor_connections", dimensions: [("state", state)], factory: self.factory)
    }
}
