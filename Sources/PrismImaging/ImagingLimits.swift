/// Limits that protect a processor from hostile or unreasonable input.
public struct ImagingLimits: Sendable, Equatable {
    /// Largest source, as width x height of its first frame, read from the header before any
    /// pixel is decoded. imgproxy's default.
    public var maxInputPixels: Int = 50_000_000
    /// Largest width or height of any variant.
    public var maxOutputDimension: Int = 16_384
    /// Largest AVIF variant, in pixels. The AV1 encoder cannot be interrupted once it runs,
    /// so this bounds the time a cancelled or late call can still occupy a worker.
    public var maxAVIFPixels: Int = 8_000_000
    /// Largest encoded variant, in bytes (the response must fit the peer's frame size).
    public var maxOutputBytes: Int = 64 << 20
    /// Refuse sources whose decoder reports any warning (corrupt entropy-coded data, bad
    /// markers), as sharp does by default; when false only truncation and errors are refused and
    /// the damaged parts come out grey.
    public var failOnWarnings: Bool = true
    /// Most variants in one call.
    public var maxVariants: Int = 64
    /// Most operations in one variant.
    public var maxOperations: Int = 32

    public init() {}
}
