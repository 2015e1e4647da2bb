internal import CVips

/// Stops a running job from any thread: the next time libvips finishes a chunk of work on a
/// watched image, its eval handler sees the flag (or the passed deadline) and kills the
/// computation.
///
/// The flag lives in C memory that libvips' worker threads read, so it is allocated once and
/// freed only when the last reference to this object goes away (after the job has returned).
public final class JobCancellation: Sendable {
    nonisolated(unsafe) let state: UnsafeMutablePointer<PrismCancel>

    /// - Parameter deadline: the moment the job must give up, on `ContinuousClock`; nil for none.
    public init(deadline: ContinuousClock.Instant? = nil) {
        self.state = .allocate(capacity: 1)
        var deadlineMicros: Int64 = 0
        if let deadline {
            // g_get_monotonic_time() and ContinuousClock both count CLOCK_MONOTONIC on Linux, but
            // their epochs are not guaranteed to match: translate through "time remaining".
            let remaining = ContinuousClock.now.duration(to: deadline)
            let micros: Int = Int(remaining.components.seconds * 1_000_000 + remaining.components.attoseconds / 1_000_000_000_000)
            deadlineMicros = Int64(max(1, g_get_monotonic_time() + micros))
        }
        self.state.initialize(to: PrismCancel(cancelled: 0, stopped: 0, deadline_us: Int(deadlineMicros)))
    }

    deinit {
        self.state.deallocate()
    }

    /// Asks the job to stop as soon as it can. Safe from any thread, any number of times.
    public func cancel() {
        prism_cancel_set(self.state)
    }

    /// The reason to stop now, if there is one.
    var stopError: ImagingError? {
        switch prism_cancel_should_stop(self.state) {
        case 1: return .cancelled
        case 2: return .deadlineExceeded
        default: return nil
        }
    }

    /// True once the job should stop: cancelled, or past its deadline. A job not started yet
    /// need not start at all.
    public var isStopped: Bool {
        prism_cancel_should_stop(self.state) != 0
    }

    /// True once an eval handler (or a watched read) has stopped a computation for this job.
    public var killedComputation: Bool {
        prism_cancel_stopped(self.state) != 0
    }
}
