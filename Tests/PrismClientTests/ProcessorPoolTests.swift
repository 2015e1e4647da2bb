import Foundation
import Logging
@testable import PrismClient
import PrismProto
import PrismWire
import ServiceLifecycle
import Synchronization
import Testing

/// Runs a pool over `servers` in a service group, and checks it shuts down promptly.
func withPool<T: Sendable>(
    _ servers: [FakeProcessor],
    _ body: @Sendable (ProcessorPool) async throws -> T
) async throws -> T {
    var configuration = ProcessorPoolConfiguration()
    configuration.endpoints = servers.map(\.endpoint)
    configuration.pingInterval = .milliseconds(200)
    configuration.pingTimeout = .seconds(1)  // long enough that a stalled machine does not fail a healthy peer
    let logger = Logger(label: "test.pool")
    let pool = ProcessorPool(configuration: configuration, logger: logger)
    let group = ServiceGroup(configuration: ServiceGroupConfiguration(services: [pool], logger: logger))
    return try await withThrowingTaskGroup(of: Void.self) { tasks in
        tasks.addTask { try await group.run() }
        let outcome: Result<T, any Error>
        do {
            outcome = .success(try await body(pool))
        } catch {
            outcome = .failure(error)
        }
        let stopping = ContinuousClock.now
        await group.triggerGracefulShutdown()
        try await tasks.waitForAll()
        let stopped = ContinuousClock.now - stopping
        #expect(stopped < .seconds(30), "the pool shut down in \(stopped), not hung")
        return try outcome.get()
    }
}

func waitFor(_ what: String, timeout: Duration = .seconds(30), _ condition: () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while !condition() {
        guard ContinuousClock.now < deadline else {
            Issue.record("timed out waiting for \(what)")
            return
        }
        try await Task.sleep(for: .milliseconds(10))
    }
}

@Suite("Processor pool failover")
struct ProcessorPoolTests {
    @Test("calls sent to a silent processor fail over to the healthy one within the ping timeout")
    func silentFailover() async throws {
        let silent = try await FakeProcessor.start(.init(mode: .silent))
        let healthy = try await FakeProcessor.start()
        try await withPool([silent, healthy]) { pool in
            try await waitFor("both processors ready") { pool.readyLoads().count == 2 }
            let timings = try await withThrowingTaskGroup(of: Duration.self) { group in
                for _ in 0..<8 {
                    group.addTask {
                        let start = ContinuousClock.now
                        // Two minutes to the deadline: only the ping can fail a silent call over sooner.
                        let result = try await pool.process(request(variants: 2, timeout: .seconds(120)))
                        #expect(result.variants.count == 2)
                        return ContinuousClock.now - start
                    }
                }
                return try await group.reduce(into: [Duration]()) { $0.append($1) }
            }
            #expect(timings.count == 8)
            #expect(timings.allSatisfy { $0 < .seconds(60) }, "failed over by the ping, not the deadline: \(timings)")
            #expect(silent.requests >= 1, "some calls went to the silent processor first")
            #expect(pool.readyLoads().map(\.address) == [healthy.address], "the silent one is no longer ready")
        }
        await silent.stop()
        await healthy.stop()
    }

    @Test("a call that already delivered a variant is not retried")
    func noRetryAfterVariant() async throws {
        let flaky = try await FakeProcessor.start(.init(mode: .oneVariantThenSilent))
        let healthy = try await FakeProcessor.start()
        try await withPool([flaky, healthy]) { pool in
            try await waitFor("both processors ready") { pool.readyLoads().count == 2 }
            // Load the healthy processor so that the next call picks the flaky one.
            let held = try #require(pool.pick(excluding: [flaky.address]))
            defer { held.0.release(held.1) }
            let delivered = Mutex(0)
            do {
                _ = try await pool.process(request(variants: 2)) { _ in delivered.withLock { $0 += 1 } }
                Issue.record("the call succeeded")
            } catch let error as PrismRPCError {
                #expect(error.code == .unavailable)
            }
            #expect(delivered.withLock { $0 } == 1)
            #expect(flaky.requests == 1)
            #expect(healthy.requests == 0, "the call was not made twice")
        }
        await flaky.stop()
        await healthy.stop()
    }

    @Test("a processor speaking another version is skipped, and shutdown does not hang")
    func otherVersion() async throws {
        let future = try await FakeProcessor.start(.init(version: 2))
        let healthy = try await FakeProcessor.start()
        try await withPool([future, healthy]) { pool in
            try await waitFor("the healthy processor ready") { pool.readyLoads().count == 1 }
            try await waitFor("a reconnect to the v2 processor") { future.connections >= 2 }
            for _ in 0..<4 {
                _ = try await pool.process(request(variants: 2))
            }
            #expect(pool.readyLoads().map(\.address) == [healthy.address])
        }
        #expect(future.requests == 0)
        await future.stop()
        await healthy.stop()
    }

    @Test("an oversize request is not retried on another processor")
    func oversizeNotRetried() async throws {
        let small = try await FakeProcessor.start(.init(maxFrameSize: 4096))
        let other = try await FakeProcessor.start(.init(maxFrameSize: 4096))
        try await withPool([small, other]) { pool in
            try await waitFor("both processors ready") { pool.readyLoads().count == 2 }
            await #expect(throws: PrismRPCError.self) { _ = try await pool.process(request(bytes: 10_000)) }
            do {
                _ = try await pool.process(request(bytes: 10_000))
            } catch let error as PrismRPCError {
                #expect(error.reason == .frameTooLarge)
            }
            #expect(pool.readyLoads().count == 2, "no connection was harmed")
        }
        #expect(small.requests + other.requests == 0)
        await small.stop()
        await other.stop()
    }
}
