@testable import PrismGateway
import Testing

@Suite("Byte budget")
struct ByteBudgetTests {
    @Test("chunks are taken while there is room, never past the limit")
    func tryGrow() {
        let budget = ByteBudget(limit: 100)
        let a = budget.lease()
        let b = budget.lease()
        #expect(a.tryGrow(by: 60))
        #expect(!b.tryGrow(by: 41))
        #expect(b.tryGrow(by: 40))
        #expect(budget.inUse == 100)
        a.release()
        a.release()  // twice is harmless
        #expect(budget.inUse == 40)
        b.release()
        #expect(budget.inUse == 0)
    }

    @Test("a waiting body gets the room that frees, and new chunks cannot jump ahead of it")
    func waiterFirst() async throws {
        let budget = ByteBudget(limit: 100)
        let holder = budget.lease()
        #expect(holder.tryGrow(by: 90))
        let waiter = budget.lease()
        let waiting = Task { try await waiter.grow(by: 50, until: .now + .seconds(10)) }
        // Wait until it is registered as waiting: 10 bytes are free, yet a newcomer is refused.
        let late = budget.lease()
        var refused = false
        for _ in 0..<200 where !refused {
            try await Task.sleep(for: .milliseconds(5))
            refused = !late.tryGrow(by: 5)
            if !refused { late.release() }
        }
        #expect(refused, "with a body waiting, new chunks go to the spool instead")
        holder.release()
        try await waiting.value
        #expect(waiter.bytes == 50 && budget.inUse == 50)
        waiter.release()
        #expect(late.tryGrow(by: 5))
    }

    @Test("waiting ends at the deadline with 503, and more than the whole budget is refused")
    func deadline() async throws {
        let budget = ByteBudget(limit: 100)
        let holder = budget.lease()
        #expect(holder.tryGrow(by: 100))
        let waiter = budget.lease()
        let start = ContinuousClock.now
        await #expect(throws: GatewayError.self) { try await waiter.grow(by: 10, until: .now + .milliseconds(200)) }
        #expect(ContinuousClock.now - start >= .milliseconds(200))
        #expect(waiter.bytes == 0 && budget.inUse == 100)
        let tooBig = budget.lease()
        await #expect(throws: GatewayError.self) { try await tooBig.grow(by: 101, until: .now + .seconds(1)) }
        #expect(tooBig.bytes == 0)
        // A newcomer is served again once nobody waits.
        holder.release()
        #expect(budget.lease().tryGrow(by: 100))
    }
}
