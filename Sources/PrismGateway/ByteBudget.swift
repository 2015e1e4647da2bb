import Synchronization

/// A budget of bytes shared by every upload: what the gateway holds of bodies in memory (or,
/// for the spool, on disk).
///
/// Each upload takes a `Lease`. While its body arrives it grows the lease chunk by chunk with
/// `tryGrow`, which never waits: a body that does not fit goes to the spool instead (see
/// `BodySink`), so a client that trickles costs only the bytes it has sent and nobody waits
/// for memory while a socket is open. A spooled body later asks for its whole size at once with
/// `grow(by:until:)`, which waits its turn; while anyone waits, `tryGrow` refuses, so new
/// bodies cannot starve the one waiting.
final class ByteBudget: Sendable {
    let limit: Int
    private let state = Mutex(State())

    private struct State {
        var used = 0
        var waiting = 0
    }

    init(limit: Int) {
        self.limit = limit
    }

    var inUse: Int { self.state.withLock { $0.used } }

    func lease() -> Lease { Lease(budget: self) }

    fileprivate func take(_ bytes: Int, waiter: Bool) -> Bool {
        self.state.withLock { state in
            guard state.used + bytes <= self.limit, waiter || state.waiting == 0 else { return false }
            state.used += bytes
            return true
        }
    }

    fileprivate func waiting(_ delta: Int) {
        self.state.withLock { $0.waiting += delta }
    }

    fileprivate func give(_ bytes: Int) {
        self.state.withLock { $0.used -= bytes }
    }

    /// One upload's share of the budget.
    final class Lease: Sendable {
        private let budget: ByteBudget
        private let held = Mutex(0)

        fileprivate init(budget: ByteBudget) {
            self.budget = budget
        }

        var bytes: Int { self.held.withLock { $0 } }

        /// Adds `bytes` if the budget has room now and nobody is waiting for it.
        func tryGrow(by bytes: Int) -> Bool {
            guard self.budget.take(bytes, waiter: false) else { return false }
            self.held.withLock { $0 += bytes }
            return true
        }

        /// Adds `bytes`, waiting for room until `deadline`.
        ///
        /// - Throws: `GatewayError.memoryBusy` when the budget cannot cover them by then (or can
        ///   never: more than the whole budget), `CancellationError` when the task is cancelled.
        func grow(by bytes: Int, until deadline: ContinuousClock.Instant) async throws {
            guard bytes <= self.budget.limit else { throw GatewayError.memoryBusy }
            if !self.budget.take(bytes, waiter: true) {
                self.budget.waiting(1)
                defer { self.budget.waiting(-1) }
                while !self.budget.take(bytes, waiter: true) {
                    guard ContinuousClock.now < deadline else { throw GatewayError.memoryBusy }
                    try await Task.sleep(for: .milliseconds(10))
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
