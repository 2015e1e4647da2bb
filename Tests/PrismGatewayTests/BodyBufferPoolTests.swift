import Foundation
import NIOCore
@testable import PrismGateway
import Testing

@Suite("Body buffer pool")
struct BodyBufferPoolTests {
    static func address(_ buffer: ByteBuffer) -> UInt {
        buffer.withVeryUnsafeBytes { UInt(bitPattern: $0.baseAddress) }
    }

    static func body(_ bytes: Int) -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: bytes)
        buffer.writeRepeatingByte(7, count: bytes)
        return buffer
    }

    @Test("a finished body's memory serves the next upload that fits, emptied")
    func reuse() {
        let pool = BodyBufferPool()
        var body = Self.body(1 << 20)
        let memory = Self.address(body)
        pool.give(body)
        body = ByteBuffer()
        #expect(pool.take(capacity: 2 << 20) == nil, "too small for this body")
        let next = pool.take(capacity: 600_000)
        #expect(next.map(Self.address) == memory, "the same memory, not a new allocation")
        #expect(next?.readableBytes == 0)
        #expect(pool.count == 0)
    }

    @Test("a buffer still in use elsewhere is never written over")
    func sharedIsCopied() {
        let pool = BodyBufferPool()
        let body = Self.body(1 << 20)
        // A write of a cancelled call may still hold the body when its upload ends.
        let stillQueued = body
        pool.give(body)
        var next = pool.take(capacity: 1 << 20)!
        next.writeRepeatingByte(9, count: 1 << 20)
        #expect(Self.address(next) != Self.address(stillQueued))
        #expect(stillQueued.getBytes(at: 0, length: 4) == [7, 7, 7, 7])
    }

    @Test("a reused buffer is paid for whole at once; without room in the budget a body gets fresh memory")
    func reusedBufferIsPaidFor() async throws {
        let spool = BodySpool(directory: NSTemporaryDirectory(), budget: ByteBudget(limit: 1 << 30))
        let chunk = ByteBuffer(repeating: 1, count: 1000)

        // Its pages are resident: a client that announces 6 MiB and sends 1000 bytes holds
        // all of the buffer's memory, so the budget counts all of it.
        let pool = BodyBufferPool()
        pool.give(Self.body(8 << 20))
        let budget = ByteBudget(limit: 64 << 20)
        let sink = BodySink(limit: 16 << 20, lease: budget.lease(), spool: spool, expected: 6 << 20, pool: pool)
        try await sink.append(chunk)
        #expect(pool.count == 0, "taken")
        #expect(budget.inUse == 8 << 20)
        // What arrives next was paid for already.
        try await sink.append(chunk)
        #expect(budget.inUse == 8 << 20)

        // A budget without room for it: fresh memory (paid as it fills), the pool keeps its buffer.
        let tight = ByteBudget(limit: 4 << 20)
        let pool2 = BodyBufferPool()
        pool2.give(Self.body(8 << 20))
        let sink2 = BodySink(limit: 16 << 20, lease: tight.lease(), spool: spool, expected: 3 << 20, pool: pool2)
        try await sink2.append(chunk)
        #expect(pool2.count == 1)
        #expect(tight.inUse == 1000)

        // A body much smaller than the kept buffer does not take it (it would pay for all of it).
        let sink3 = BodySink(limit: 16 << 20, lease: ByteBudget(limit: 64 << 20).lease(), spool: spool, expected: 200_000, pool: pool2)
        try await sink3.append(chunk)
        #expect(pool2.count == 1)
    }

    @Test("bounded: small and huge bodies are not kept, nor more than the total")
    func bounds() {
        let pool = BodyBufferPool(maxBuffers: 2, maxBufferBytes: 16 << 20, maxTotalBytes: 20 << 20)
        pool.give(Self.body(1000))
        #expect(pool.count == 0, "small bodies come from the heap cheaply")
        pool.give(Self.body(20 << 20))
        #expect(pool.count == 0, "larger than maxBufferBytes")
        pool.give(Self.body(2 << 20))
        pool.give(Self.body(4 << 20))
        pool.give(Self.body(8 << 20))
        // Full (two buffers): the 8 MiB one replaced the smallest, within 20 MiB in all.
        #expect(pool.count == 2)
        #expect(pool.take(capacity: 3 << 20)?.capacity ?? 0 >= 4 << 20)
        #expect(pool.take(capacity: 7 << 20)?.capacity ?? 0 >= 8 << 20)
        #expect(pool.count == 0)
        #expect(pool.take(capacity: 100) == nil)
    }
}
