import Synchronization

/// A budget of bytes shared by every upload: what the gateway holds of bodies in memory.
///
/// Each upload takes a `Lease` and grows it chunk by chunk as its body arrives, so a client
/// that trickles costs only the bytes it has sent. The lease is returned when the upload ends.
final class ByteBudget: Sendable {
    let limit: Int
    private let used = Mutex(0)

    init(limit: Int) {
        self.limit = limit
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

        /// Adds `bytes` to this lease; throws 503 when the budget cannot cover them.
        func grow(by bytes: Int) throws(GatewayError) {
            guard self.budget.take(bytes) else { throw GatewayError.memoryBusy }
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
