public import PrismImaging
public import PrismTLS
import PrismWire
import NIOCore

/// Everything a processor is configured with. Every field has a production default.
public struct ProcessorConfiguration: Sendable {
    /// Where the frame protocol listens.
    public var host: String = "127.0.0.1"
    public var port: Int = 7070
    /// Where `/healthz`, `/readyz` and `/metrics` are served over HTTP; nil turns it off.
    public var statusHost: String = "127.0.0.1"
    public var statusPort: Int? = 9090
    /// Images worked on at once, each on its own thread.
    public var workers: Int = System.coreCount
    /// Calls that may wait for a worker; beyond it new calls get RESOURCE_EXHAUSTED at once.
    public var queueCapacity: Int = System.coreCount * 4
    /// Threads libvips uses inside one image's pipeline.
    public var vipsConcurrency: Int = 1
    /// The most threads one call may use when its client says that many cores are idle
    /// (`Request.threads`): its decode on that many libvips threads, its variants in that many
    /// parallel chains. Chains beyond the first run on helper threads, at most
    /// `jobThreads - 1` over all calls at once; 1 turns it off.
    public var jobThreads: Int = System.coreCount
    /// The largest frame accepted from a client (the request carries the whole source). Before
    /// a valid Hello only `PrismProtocol.handshakeMaxFrameSize` bytes are accepted.
    public var maxFrameSize: Int = PrismProtocol.defaultMaxFrameSize
    /// Answers written to a connection but not yet taken by its peer, in bytes, beyond which the
    /// processor stops reading that connection (so takes no new calls from it) until they drain.
    /// A client that never reads costs this much plus the answers of the calls it already has
    /// in flight, instead of growing the processor without bound.
    public var maxPendingOutputBytes: Int = 32 << 20
    /// Connections served at once; more are answered RESOURCE_EXHAUSTED on call 0 and closed.
    public var maxConnections: Int = 256
    /// TLS on the frame port; nil keeps it plain TCP. The token below is only secret with TLS.
    public var tls: ServerTLSConfiguration? = nil
    /// When set, clients must send this token in their Hello.
    public var authToken: String? = nil
    /// Image limits: pixels, dimensions, AVIF size, output bytes.
    public var limits: ImagingLimits = ImagingLimits()
    /// Budget for calls that do not send one, and the most any call may ask for.
    public var defaultTimeout: Duration = .seconds(60)
    public var maxTimeout: Duration = .seconds(300)
    /// Time a new connection has to send its Hello, counted from accept: with TLS it bounds the
    /// TLS handshake too, so a peer that sends nothing or half a ClientHello is closed by then.
    public var handshakeTimeout: Duration = .seconds(10)
    /// On shutdown, how long calls in flight may take to finish before they are cancelled.
    public var drainTimeout: Duration = .seconds(25)

    public init() {}
}


