/// Where to find processors.
public struct ProcessorPoolConfiguration: Sendable {
    /// Fixed addresses.
    public var endpoints: [Endpoint] = []
    /// Names re-resolved every `resolveInterval`; every address a name has becomes a processor
    /// (compose `--scale` and Kubernetes headless services give one name many addresses).
    public var dnsNames: [Endpoint] = []
    public var resolveInterval: Duration = .seconds(5)
    /// Each connection's settings (frame size, token, timeouts).
    public var client = ProcessorClientConfiguration()
    /// Every connection, busy or idle, is pinged this often; one that then sends nothing at
    /// all for `pingTimeout` is closed, its calls are retried on another processor, and it is
    /// reconnected. A hung processor holds calls for at most `pingInterval + pingTimeout`.
    /// `pingTimeout` must exceed the time to send the largest request (a ping queues behind it);
    /// bytes still arriving count as an answer, so large responses need no allowance.
    public var pingInterval: Duration = .seconds(2)
    public var pingTimeout: Duration = .seconds(2)
    /// Reconnect backoff: doubles from `initial` up to `maximum`, with +/-20% jitter.
    public var backoffInitial: Duration = .milliseconds(100)
    public var backoffMaximum: Duration = .seconds(5)
    /// How long a call waits for a processor when none is ready but some are connecting.
    public var readyWait: Duration = .seconds(2)

    public init() {}

    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: Int
        /// For an address found through DNS, the name it was found under: with TLS, the
        /// processor's certificate is checked against that name (as a client of `https://name`
        /// would), not against the address. Nil for fixed addresses: `host` is the name.
        public var serverName: String? = nil

        public init(host: String, port: Int, serverName: String? = nil) {
            self.host = host
            self.port = port
            self.serverName = serverName
        }

        /// Parses `host:port` (or `[v6]:port`).
        public init?(_ text: String) {
            guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else { return nil }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            guard !host.isEmpty else { return nil }
            self.init(host: host, port: port)
        }

        public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
    }
}

/// How busy one ready processor is, for planning.
public struct ProcessorLoad: Sendable {
    public var address: String
    /// Calls this gateway has in flight on it.
    public var inFlight: Int
    /// Images it works on at once (from its Hello).
    public var workers: Int

    public init(address: String, inFlight: Int, workers: Int) {
        self.address = address
        self.inFlight = inFlight
        self.workers = workers
    }
}
