import Synchronization

/// A budget of bytes shared by every upload: what the gateway holds of bodies in memory.
///
/// Each upload takes a `Lease` and grows it chunk by chunk as its body arrives, so a client
/// that trickles costs only the bytes it has sent. The lease is returned when the upload ends.
/// A chunk that does not fit waits for other uploads to return theirs, up to `wait`, then the
/// upload is refused (503): memory stays bounded and a burst is smoothed rather than refused.
final class ByteBudget: Sendable {
    let limit: Int
    let wait: Duration
    private let used = Mutex(0)

    init(limit: Int, wait: Duration = .seconds(5)) {
        self.limit = limit
        self.wait = wait
    }

    var inUse: Int { self.used.withLock { $0 } }

    func lease() -> Lease { Lease(budget: self) }

    fileprivate func take(_ bytes: Int) -> Bool {
        self.used.withLock { used in
            guard used + bytes <= self.limit else { return false }
            used += bytes
            return true
        }
    }

    fileprivate func give(_ bytes: Int) {
        self.used.withLock { $0 -= bytes }
    }

    /// One upload's share of the budget.
    final class Lease: Sendable {
        private let budget: ByteBudget
        private let held = Mutex(0)

        fileprivate init(budget: ByteBudget) {
            self.budget = budget
        }

        /// Adds `bytes` to this lease, waiting for room up to the budget's `wait`; throws 503
        /// when the budget cannot cover them by then.
        func grow(by bytes: Int) async throws {
            if !self.budget.take(bytes) {
                let giveUp = ContinuousClock.now + self.budget.wait
                while !self.budget.take(bytes) {
                    guard ContinuousClock.now < giveUp else { throw GatewayError.memoryBusy }
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            self.held.withLock { $0 += bytes }
        }

        /// Returns everything this lease holds.
        func release() {
            let bytes = self.held.withLock { held -> Int in
                defer { held = 0 }
                return held
            }
            if bytes > 0 { self.budget.give(bytes) }
        }
    }
}
