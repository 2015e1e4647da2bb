import PrismWire

/// How a `ProcessorConnection` connects and behaves.
public struct ProcessorClientConfiguration: Sendable {
    /// The largest frame this client accepts from the server (one encoded variant must fit).
    public var maxFrameSize: Int = PrismProtocol.defaultMaxFrameSize
    /// Sent in the Hello; required when the processor was started with a token.
    public var authToken: String? = nil
    /// Names this client in the processor's logs.
    public var agent: String = "prism-client/1"
    /// Time allowed for the TCP connection.
    public var connectTimeout: Duration = .seconds(5)
    /// Time allowed for the server's Hello once connected.
    public var handshakeTimeout: Duration = .seconds(5)
    /// How much later than the deadline it sent the client gives up on a call itself, if the
    /// server has not answered DEADLINE_EXCEEDED by then.
    public var deadlineGrace: Duration = .milliseconds(500)

    public init() {}
}
