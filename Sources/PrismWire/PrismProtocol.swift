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
}
