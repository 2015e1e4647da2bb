import Foundation
@testable import PrismImaging
import PrismProto
import Synchronization
import Testing

/// Watches libvips stop: a long blur on a 19 MP photo, run once to the end and then cut short.
@Suite("Cancelling a running computation", .serialized)
struct CancellationTests {
    static let source = Result { try TestImages.edge("large-19mp.jpg") }
    static let slow = [variant("slow", [blur(30)], format: .jpeg)]

    /// Runs the slow job on its own thread; returns how long `run` took and how it ended.
    static func timedRun(_ cancellation: JobCancellation, cancelAfter: Duration? = nil) async throws -> (Duration, Result<JobSummary, ImagingError>) {
        #expect(startVips())
        let source = try Self.source.get()
        let clock = ContinuousClock()
        let start = clock.now
        let canceller = Task {
            if let cancelAfter {
                try await Task.sleep(for: cancelAfter)
                cancellation.cancel()
            }
        }
        let result = try await onThread {
            Result { () throws(ImagingError) in
                try ImageJob(source: source, variants: Self.slow).run(cancellation: cancellation) { _ in }
            }
        }
        canceller.cancel()
        return (clock.now - start, result)
    }

    @Test("cancel and deadline both stop libvips far sooner than the full run")
    func stops() async throws {
        let (full, fullResult) = try await Self.timedRun(JobCancellation())
        #expect(throws: Never.self) { try fullResult.get() }
        #expect(full > .seconds(2), "the slow job must be slow enough to show anything (took \(full))")

        let cancellation = JobCancellation()
        let (cancelled, cancelledResult) = try await Self.timedRun(cancellation, cancelAfter: .milliseconds(500))
        #expect(throws: ImagingError.self) { try cancelledResult.get() }
        if case .failure(let error) = cancelledResult { #expect(error.code == .cancelled) }
        #expect(cancellation.killedComputation, "the eval handler killed the computation")
        #expect(cancelled < full / 3, "cancelled after 0.5 s, returned after \(cancelled); the full run takes \(full)")

        let deadline = JobCancellation(deadline: .now + .milliseconds(500))
        let (late, lateResult) = try await Self.timedRun(deadline)
        if case .failure(let error) = lateResult { #expect(error.code == .deadlineExceeded) } else { Issue.record("the job beat its deadline") }
        #expect(deadline.killedComputation)
        #expect(late < full / 3, "deadline 0.5 s, returned after \(late); the full run takes \(full)")
    }

    @Test("a cancel during a progressive JPEG's decode stops it at the next read, not after the decode")
    func cancelDuringDecode() async throws {
        #expect(startVips())
        // 18 MP progressive: libjpeg absorbs every scan before the first row comes out, a stretch
        // in which libvips' eval handler never runs.
        var progressive = variant("big", [resize(5376, 3360, fit: .fill)], format: .jpeg, quality: 95)
        progressive.output.progressive = true
        let spec = progressive
        let photo = try TestImages.photo("Blinds.jpg")
        let made = try await onThread {
            var outputs: [EncodedVariant] = []
            _ = try ImageJob(source: photo, variants: [spec]).run(cancellation: JobCancellation()) { outputs.append($0) }
            return outputs
        }
        let source = try #require(made.first).data
        let full = try await onThread { try ImageJob(source: source, variants: [variant("full")]).run(cancellation: JobCancellation()) { _ in } }

        let cancellation = JobCancellation()
        let clock = ContinuousClock()
        let cancelledAt = Mutex<ContinuousClock.Instant?>(nil)
        let canceller = Task {
            try await Task.sleep(for: .milliseconds(100))
            cancelledAt.withLock { $0 = clock.now }
            cancellation.cancel()
        }
        let result = try await onThread {
            Result { () throws(ImagingError) in
                try ImageJob(source: source, variants: [variant("full")]).run(cancellation: cancellation) { _ in }
            }
        }
        let returned = clock.now
        canceller.cancel()
        if case .failure(let error) = result { #expect(error.code == .cancelled) } else { Issue.record("the decode beat the cancel") }
        #expect(cancellation.killedComputation)
        let stopped = returned - (cancelledAt.withLock { $0 } ?? returned)
        print("progressive 18 MP: decode \(full.decodeDuration); stopped \(stopped) after the cancel")
        // Unwatched, the decode would run on for decodeDuration - 100 ms after the cancel.
        #expect(stopped < full.decodeDuration / 2, "stopped \(stopped) after the cancel; the decode takes \(full.decodeDuration)")
    }

    @Test("a job cancelled before it starts does no work")
    func cancelledBeforeStart() async throws {
        let cancellation = JobCancellation()
        cancellation.cancel()
        let (_, result) = try await Self.timedRun(cancellation)
        if case .failure(let error) = result { #expect(error.code == .cancelled) } else { Issue.record("ran anyway") }
        #expect(!cancellation.killedComputation, "nothing was started, so nothing had to be killed")
    }
}
