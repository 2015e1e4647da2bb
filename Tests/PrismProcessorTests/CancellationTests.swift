import Foundation
import PrismClient
import PrismProcessor
import PrismWire
import PrismProto
import PrismTestSupport
import Testing

/// Cancellation watched from the processor's own counters: a long blur on a 19 MP photo is
/// run to the end once, then cancelled, then given a short deadline.
@Suite("Cancelling calls on a processor", .serialized)
struct ProcessorCancellationTests {
    @Test("a Cancel frame and an expired deadline stop the computation far sooner than a full run")
    func cancelAndDeadline() async throws {
        let source = try TestImages.edge("large-19mp.jpg")
        let slow = [variant("slow", [blur(30)], format: .jpeg)]
        try await ProcessorFixture.run({ $0.workers = 1 }) { fixture in
            try await fixture.withConnection { connection in
                // 1. The full run, for scale.
                _ = try await connection.process(ProcessRequest(source: source, variants: slow))
                var metrics = try await fixture.metrics()
                let full = metricValue(metrics, "prism_processor_job_seconds_sum", labels: #"outcome="ok""#)
                #expect(full > 2, "the slow job must be slow enough to show anything (took \(full) s)")

                // 2. Cancel the calling task while libvips is busy.
                let call = Task { try await connection.process(ProcessRequest(source: source, variants: slow, requestID: "cancel-me")) }
                _ = try await fixture.waitForMetrics { metricValue($0, "prism_processor_jobs_running") == 1 }
                try await Task.sleep(for: .milliseconds(300))
                call.cancel()
                let outcome = await call.result
                #expect(throws: CancellationError.self) { try outcome.get() }
                metrics = try await fixture.waitForMetrics {
                    metricValue($0, "prism_processor_jobs_running") == 0 && metricValue($0, "prism_processor_calls_cancelled_total") == 1
                }
                let cancelled = metricValue(metrics, "prism_processor_job_seconds_sum", labels: #"outcome="cancelled""#)
                #expect(cancelled > 0)
                #expect(cancelled < full / 3, "the cancelled job ran \(cancelled) s; a full run takes \(full) s")
                #expect(metricValue(metrics, "prism_processor_calls_cancelled_total") == 1)
                #expect(metricValue(metrics, "prism_processor_computations_killed_total") == 1)

                // 3. A deadline that runs out while libvips is busy.
                do {
                    _ = try await connection.process(ProcessRequest(source: source, variants: slow, deadline: .now + .milliseconds(600)))
                    Issue.record("the slow call beat a 600 ms deadline")
                } catch let error as PrismRPCError {
                    #expect(error.code == .deadlineExceeded)
                    #expect(!error.isRetryable)
                }
                metrics = try await fixture.waitForMetrics {
                    metricValue($0, "prism_processor_jobs_running") == 0 && metricValue($0, "prism_processor_computations_killed_total") == 2
                }
                let late = metricValue(metrics, "prism_processor_job_seconds_sum", labels: #"outcome="deadline""#)
                #expect(late > 0)
                #expect(late < full / 3, "the expired job ran \(late) s; a full run takes \(full) s")
                #expect(metricValue(metrics, "prism_processor_calls_failed_total", labels: #"code="deadline_exceeded",reason="unspecified""#) == 1)
                #expect(metricValue(metrics, "prism_processor_computations_killed_total") == 2)
                print("full run \(full) s, cancelled after \(cancelled) s, deadline-stopped after \(late) s")
            }
        }
    }

    @Test("a cancelled call still waiting in the queue is dropped without being worked on")
    func cancelQueued() async throws {
        let source = try TestImages.edge("large-19mp.jpg")
        try await ProcessorFixture.run({ $0.workers = 1; $0.queueCapacity = 4 }) { fixture in
            try await fixture.withConnection { connection in
                let running = Task { try await connection.process(ProcessRequest(source: source, variants: [variant("slow", [blur(20)])])) }
                _ = try await fixture.waitForMetrics { metricValue($0, "prism_processor_jobs_running") == 1 }
                let queued = Task { try await connection.process(ProcessRequest(source: source, variants: [variant("queued", [blur(20)])])) }
                _ = try await fixture.waitForMetrics { metricValue($0, "prism_processor_jobs_queued") == 1 }
                queued.cancel()
                let queuedOutcome = await queued.result
                #expect(throws: CancellationError.self) { try queuedOutcome.get() }
                let during = try await fixture.metrics()
                #expect(metricValue(during, "prism_processor_jobs_running") == 1, "the queued call ended while the running one still ran")
                running.cancel()
                _ = await running.result
                let metrics = try await fixture.waitForMetrics { metricValue($0, "prism_processor_jobs_running") == 0 && metricValue($0, "prism_processor_jobs_queued") == 0 }
                // Both calls ended as cancelled; the queued one left the queue without ever
                // reaching a worker, so only one job ran and one computation had to be killed.
                #expect(metricValue(metrics, "prism_processor_calls_cancelled_total") == 2)
                #expect(metricValue(metrics, "prism_processor_job_seconds_count", labels: #"outcome="cancelled""#) == 1)
                #expect(metricValue(metrics, "prism_processor_jobs_dropped_total") == 1)
                #expect(metricValue(metrics, "prism_processor_computations_killed_total") == 1)
            }
        }
    }
}
