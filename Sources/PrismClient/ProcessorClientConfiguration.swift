public import PrismTLS
import PrismWire

/// How a `ProcessorConnection` connects and behaves.
public struct ProcessorClientConfiguration: Sendable {
    /// The largest frame this client accepts from the server (one encoded variant must fit).
    public var maxFrameSize: Int = PrismProtocol.defaultMaxFrameSize
    /// Sent in the Hello; required when the processor was started with a token.
    public var authToken: String? = nil
    /// Names this client in the processor's logs.
    public var agent: String = "prism-client/1"
    /// TLS towards the processor; nil connects in plain TCP. With TLS, the handshake is part
    /// of connecting: a processor whose certificate is not trusted or not valid for its name
    /// (or that wants a client certificate this client lacks) is a failed connect, with the
    /// reason in the error, like a refused TCP connection.
    public var tls: ClientTLSConfiguration? = nil
    /// Time allowed for the TCP connection, and then again for the TLS handshake when `tls` is set.
    public var connectTimeout: Duration = .seconds(5)
    /// Time allowed for the server's Hello once connected.
    public var handshakeTimeout: Duration = .seconds(5)
    /// How much later than the deadline it sent the client gives up on a call itself, if the
    /// server has not answered DEADLINE_EXCEEDED by then.
    public var deadlineGrace: Duration = .milliseconds(500)
    /// How often the connection pings the processor on its own, busy or idle, so that a hung
    /// host is noticed while calls wait on it. Nil sends no pings but those of `ping()`.
    public var pingInterval: Duration? = nil
    /// How long after a ping the processor may stay completely silent (no Pong, no byte of
    /// anything else) before the connection is declared dead and closed; its calls then fail
    /// with a retryable UNAVAILABLE. Must exceed the time to send the largest request, which
    /// a ping queues behind.
    public var pingTimeout: Duration = .seconds(2)

    public init() {}
}
