/// Constants of the processor protocol (see Protos/PROTOCOL.md).
public enum PrismProtocol {
    /// The version this code speaks, sent in every Hello.
    public static let version: UInt32 = 1
    /// Bytes of the length prefix in front of every frame.
    public static let lengthPrefixSize = 4
    /// The default largest frame a peer accepts: room for a 50 MB upload plus its specs.
    public static let defaultMaxFrameSize = 64 << 20
    /// No peer may ask for frames larger than this (the length prefix could say up to 4 GiB).
    public static let absoluteMaxFrameSize = 1 << 30
    /// The smallest max frame size a peer may announce; anything smaller cannot carry a Hello
    /// and an error comfortably.
    public static let minimumMaxFrameSize = 4096
    /// The largest first frame a server reads before it has a valid Hello. A Hello is a few
    /// dozen bytes; without this, anyone who can open a connection could make the server
    /// buffer a full-size frame (64 MiB by default) without authenticating.
    public static let handshakeMaxFrameSize = 64 << 10
    /// The most bytes a Response frame's payload adds around its image data: call id, the
    /// Response field's tag and length, variant index, the data's tag and length, width,
    /// height, format, processing time and the MD5 and SHA-256 of the data, each at its largest
    /// encoding, come to 115.
    /// A variant fits a peer's frames when its encoded size is at most the peer's
    /// `max_frame_size` minus this (`max_frame_size` already excludes the 4-byte prefix).
    public static let maxResponseOverhead = 128
    /// The longest `VariantSpec.name`, in bytes.
    public static let maxVariantNameBytes = 64
}
