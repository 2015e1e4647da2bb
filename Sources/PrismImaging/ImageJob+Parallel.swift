internal import CVips
import Foundation
import PrismProto
import Synchronization

/// Threads a job may borrow to make its variants in parallel after its one decode.
///
/// A job asked to use more than one thread (`ImageJob.threads`) splits its variants into
/// independent chains and hands all but one to helpers; the chain it keeps runs on its own
/// thread. Helpers never queue: when none is free the job makes those variants itself.
public protocol JobHelpers: Sendable {
    /// Starts `work` on another thread if one is free now; never waits for one.
    ///
    /// - Returns: false, without calling `work`, when no helper is free.
    func tryRun(_ work: @escaping @Sendable () -> Void) -> Bool
}

/// Up to `limit` helper threads at once, each a dedicated thread started for one chain and
/// ended with it (a chain takes tens of milliseconds or more; starting a thread, microseconds).
/// Never the cooperative pool: libvips blocks.
public final class ThreadHelpers: JobHelpers {
    private let limit: Int
    private let busy = Mutex(0)

    /// - Parameter limit: helper threads running at once, over every job.
    public init(limit: Int) {
        self.limit = max(0, limit)
    }

    public func tryRun(_ work: @escaping @Sendable () -> Void) -> Bool {
        let granted = self.busy.withLock { busy -> Bool in
            guard busy < self.limit else { return false }
            busy += 1
            return true
        }
        guard granted else { return false }
        let thread = Thread {
            work()
            self.busy.withLock { $0 -= 1 }
        }
        thread.name = "prism-helper"
        thread.start()
        return true
    }
}

/// What a helper thread made for the job: handed back to the job's own thread, which emits
/// each variant (so `emit` keeps running on the caller's thread) and rethrows a failure.
final class HelperChain: @unchecked Sendable {
    // Every field is read and written with `condition` locked.
    private let condition = NSCondition()
    private var made: [EncodedVariant] = []
    private var failure: ImagingError?
    private var scaledOriented: [VImage] = []
    private var scaledRaw: [VImage] = []
    private var finished = false
    private var abandoned = false

    /// Called by the helper for each finished variant.
    func add(_ variant: EncodedVariant) {
        self.condition.lock()
        self.made.append(variant)
        self.condition.broadcast()
        self.condition.unlock()
    }

    /// Called by the helper once, last: its error if it failed, and the scalings it made (the
    /// placeholder may start from one).
    func finish(failure: ImagingError?, frames: JobRun.Frames?) {
        self.condition.lock()
        self.failure = failure
        self.scaledOriented = frames?.scaledOriented ?? []
        self.scaledRaw = frames?.scaledRaw ?? []
        self.finished = true
        self.condition.broadcast()
        self.condition.unlock()
    }

    /// The job's thread failed: the helper stops before its next variant.
    func abandon() {
        self.condition.lock()
        self.abandoned = true
        self.condition.unlock()
    }

    var isAbandoned: Bool {
        self.condition.lock()
        defer { self.condition.unlock() }
        return self.abandoned
    }

    /// Variants finished since the last call, without waiting.
    func take() -> [EncodedVariant] {
        self.condition.lock()
        defer { self.condition.unlock() }
        let made = self.made
        self.made = []
        return made
    }

    /// Waits for the next variants, or the end. Returns `nil` once the helper has finished and
    /// everything it made has been taken.
    func next() -> [EncodedVariant]? {
        self.condition.lock()
        defer { self.condition.unlock() }
        while self.made.isEmpty, !self.finished {
            self.condition.wait()
        }
        guard !self.made.isEmpty else { return nil }
        let made = self.made
        self.made = []
        return made
    }

    /// After `next()` returned nil: the helper's failure and scalings.
    var outcome: (failure: ImagingError?, scaledOriented: [VImage], scaledRaw: [VImage]) {
        self.condition.lock()
        defer { self.condition.unlock() }
        return (self.failure, self.scaledOriented, self.scaledRaw)
    }
}

/// What a helper thread needs: the job's state (its source bytes are only read while the
/// job's thread waits in `runChains`) and the frames decoded so far, which libvips lets any
/// number of threads read.
private struct Handoff: @unchecked Sendable {
    let run: JobRun
    let frames: JobRun.Frames
    let chain: [VariantPlan]
    let box: HelperChain
}

extension JobRun {
    /// Splits variants (largest first) into at most `count` chains of similar estimated cost
    /// (longest processing time first onto the cheapest chain), each kept largest first so its
    /// smaller variants can start from its larger ones.
    static func chains(_ ordered: [VariantPlan], count: Int) -> [[VariantPlan]] {
        let count = min(count, ordered.count)
        guard count > 1 else { return [ordered] }
        var chains = Array(repeating: (cost: 0.0, plans: [VariantPlan]()), count: count)
        for plan in ordered.sorted(by: { $0.cost > $1.cost }) {
            let target = chains.indices.min { chains[$0].cost < chains[$1].cost }!
            chains[target].cost += plan.cost
            chains[target].plans.append(plan)
        }
        return chains
            .sorted { $0.cost > $1.cost }
            .map { chain in chain.plans.sorted { $0.needs.pixels > $1.needs.pixels } }
    }

    /// Makes `chains` in parallel: the first on this thread, each other one on a helper when
    /// one is free (else here, after the first). Every variant is emitted on this thread.
    func runChains(
        _ chains: [[VariantPlan]],
        helpers: any JobHelpers,
        frames: inout Frames,
        emit: (EncodedVariant) -> Void
    ) throws(ImagingError) {
        // Orient once, before the chains share the frame.
        if frames.oriented == nil, chains.joined().contains(where: \.autoOrient) || self.job.placeholder {
            do {
                frames.oriented = try frames.raw.apply { prism_autorot($0, $1) }
            } catch {
                throw self.failure(error, reason: .unspecified, message: "The image could not be turned upright.")
            }
        }
        var boxes: [HelperChain] = []
        var leftOver: [[VariantPlan]] = []
        for chain in chains.dropFirst() {
            let box = HelperChain()
            let handoff = Handoff(run: self, frames: frames, chain: chain, box: box)
            let started = helpers.tryRun {
                var frames = handoff.frames
                do throws(ImagingError) {
                    try handoff.run.runChain(handoff.chain, frames: &frames, stop: { handoff.box.isAbandoned }) { handoff.box.add($0) }
                    handoff.box.finish(failure: nil, frames: frames)
                } catch {
                    handoff.box.finish(failure: error, frames: nil)
                }
                Vips.threadDone()
            }
            if started { boxes.append(box) } else { leftOver.append(chain) }
        }
        // Every box is drained below whatever happens, so no helper outlives this call.
        var failure: ImagingError? = nil
        do throws(ImagingError) {
            for chain in [chains[0]] + leftOver {
                try self.runChain(chain, frames: &frames, stop: { false }) { variant in
                    emit(variant)
                    for box in boxes {
                        for made in box.take() { emit(made) }
                    }
                }
            }
        } catch {
            failure = error
            for box in boxes { box.abandon() }
        }
        for box in boxes {
            while let made = box.next() {
                if failure == nil { made.forEach(emit) }
            }
            let outcome = box.outcome
            failure = failure ?? outcome.failure
            frames.scaledOriented += outcome.scaledOriented
            frames.scaledRaw += outcome.scaledRaw
        }
        if let failure { throw failure }
    }
}
