import Foundation
@testable import PrismImaging
import PrismProto
import Synchronization
import Testing

/// Helpers that never have a thread free.
private struct NoHelpers: JobHelpers {
    func tryRun(_ work: @escaping @Sendable () -> Void) -> Bool { false }
}

@Suite("variants made in parallel chains after one decode")
struct ParallelTests {
    /// The default recipe's shape: 2048 and 1280 JPEG, 640 WebP, 640 blur, 200 px cover.
    static let recipe = [
        variant("thumb", [resize(200, 200, fit: .cover)]),
        variant("small", [resize(640, 640, fit: .inside)], format: .webp),
        variant("medium", [resize(1280, 1280, fit: .inside)]),
        variant("large", [resize(2048, 2048, fit: .inside)]),
        variant("blur", [resize(640, 640, fit: .inside), { var op = Prism_V1_Operation(); op.blur.sigma = 8; return op }()]),
    ]

    /// Runs `job` and returns its outputs in spec order, checking each was emitted on this thread.
    func run(_ job: ImageJob) throws -> (outputs: [EncodedVariant], summary: JobSummary) {
        #expect(startVips())
        let caller = pthread_self()
        var outputs: [EncodedVariant] = []
        let summary = try job.run(cancellation: JobCancellation()) { variant in
            #expect(pthread_equal(pthread_self(), caller) != 0, "emitted on another thread")
            outputs.append(variant)
        }
        return (outputs.sorted { $0.index < $1.index }, summary)
    }

    @Test("two threads and a helper make the same variants and placeholder as one thread")
    func sameOutputs() throws {
        let source = try TestImages.edge("large-19mp.jpg")
        let serial = try self.run(ImageJob(source: source, variants: Self.recipe, placeholder: true))
        let parallel = try self.run(ImageJob(source: source, variants: Self.recipe, placeholder: true, threads: 2, helpers: ThreadHelpers(limit: 1)))
        #expect(parallel.outputs.map(\.index) == Array(Self.recipe.indices))
        #expect(parallel.outputs.map(\.size) == serial.outputs.map(\.size))
        #expect(parallel.outputs.map(\.format) == serial.outputs.map(\.format))
        #expect(parallel.summary.shrinkOnLoad == serial.summary.shrinkOnLoad)
        #expect(parallel.summary.source.placeholder.thumbhash.count == serial.summary.source.placeholder.thumbhash.count)
        for (a, b) in zip(parallel.outputs, serial.outputs) {
            // A chain may start from the decoded frame rather than a larger variant: the
            // resampling differs a little, the picture does not.
            #expect(try meanAbsDifference(try decode(a.data).image, try decode(b.data).image) < 3, "variant \(a.index)")
        }
    }

    @Test("with no helper free, the job makes every variant itself")
    func noHelperFree() throws {
        let source = try TestImages.photo("Garden.jpg")
        let (outputs, _) = try self.run(ImageJob(source: source, variants: Self.recipe, threads: 2, helpers: NoHelpers()))
        #expect(outputs.map(\.index) == Array(Self.recipe.indices))
    }

    @Test("a variant failing on a helper fails the job, with that variant named")
    func helperFailure() throws {
        let source = try TestImages.photo("Garden.jpg")  // 2560x1600
        // The 2048 px JPEG at quality 1 is the costlier chain and stays on this thread; the
        // 640 px PNG goes to the helper and is over the output limit.
        let specs = [variant("large", [resize(2048, 2048, fit: .inside)], quality: 1), variant("png", [resize(640, 640, fit: .inside)], format: .png)]
        var limits = ImagingLimits()
        limits.maxOutputBytes = 150_000
        #expect(startVips())
        do {
            _ = try ImageJob(source: source, variants: specs, limits: limits, threads: 2, helpers: ThreadHelpers(limit: 1))
                .run(cancellation: JobCancellation()) { _ in }
            Issue.record("the job succeeded")
        } catch {
            #expect(error.reason == .outputTooLarge)
            #expect(error.variant == "png")
        }
    }

    @Test("chains balance the estimated cost; the 2048 px variant gets a chain of its own")
    func chains() throws {
        let oriented = Size(width: 5184, height: 3456)
        let plans = try Self.recipe.enumerated().map { index, spec in
            try VariantPlan(spec: spec, index: index, source: oriented, orientedSource: oriented, sourceFormat: .jpeg, limits: ImagingLimits())
        }
        let ordered = plans.sorted { $0.needs.pixels > $1.needs.pixels }
        #expect(JobRun.chains(ordered, count: 1).map { $0.map(\.index) } == [ordered.map(\.index)])
        let two = JobRun.chains(ordered, count: 2).map { $0.map(\.index) }
        #expect(two.count == 2)
        #expect(two[0] == [3])
        #expect(Set(two[1]) == [0, 1, 2, 4])
        // Each chain is largest first, so its smaller variants start from its larger ones.
        #expect(two[1].first == 2)
        #expect(JobRun.chains(Array(ordered.prefix(2)), count: 4).count == 2)
    }

    @Test("helpers never run more than their limit at once, and never queue")
    func helperLimit() throws {
        let helpers = ThreadHelpers(limit: 1)
        let release = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        #expect(helpers.tryRun { release.wait(); done.signal() })
        #expect(!helpers.tryRun { Issue.record("ran beyond the limit") })
        release.signal()
        done.wait()
        // The thread gives its place back just after its work; wait for it, not for a time.
        var started = false
        while !started {
            started = helpers.tryRun { done.signal() }
            if !started { Thread.sleep(forTimeInterval: 0.001) }
        }
        done.wait()
    }
}
