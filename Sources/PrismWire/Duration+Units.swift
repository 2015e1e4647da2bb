extension Duration {
    /// Whole nanoseconds (what swift-metrics timers record).
    public var nanoseconds: Int64 {
        let (seconds, attoseconds) = self.components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }

    /// Whole microseconds, never negative (what frames carry).
    public var microseconds: UInt64 {
        UInt64(max(0, self.nanoseconds / 1000))
    }
}
