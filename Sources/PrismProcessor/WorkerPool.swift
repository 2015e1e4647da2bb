import CoreMetrics
import NIOCore
import NIOPosix
import Synchronization

/// Runs blocking libvips jobs on dedicated threads, never on an event loop or the cooperative
/// pool, and refuses work beyond `workers + queueCapacity` instead of queueing without bound.
///
/// The waiting jobs are kept here rather than in the thread pool's own queue so that a job
/// nobody wants any more (its call was cancelled, ran out of time or lost its connection)
/// gives its place back at once: `withdraw` takes it out of the queue, and a worker skips one
/// that was abandoned before anyone withdrew it. Otherwise the place would stay taken until a
/// worker reached it, and new calls would be refused by a server with nothing to do.
final class WorkerPool: Sendable {
    let workers: Int
    let capacity: Int
    private let threads: NIOThreadPool
    private let state = Mutex(State())
    private let metrics: ProcessorMetrics

    /// One unit of work and how to tell that nobody wants it any more.
    final class Job: Sendable {
        fileprivate let isAbandoned: @Sendable () -> Bool
        fileprivate let body: @Sendable (_ queued: Duration) -> Void
        fileprivate let submitted = ContinuousClock.now

        /// - Parameters:
        ///   - isAbandoned: true once the job should not start (cancelled, past its deadline).
        ///     Called with the pool's lock held: it must be quick and must not call the pool.
        ///   - body: the work, on a worker thread; receives the time it waited for a worker.
        init(isAbandoned: @escaping @Sendable () -> Bool, body: @escaping @Sendable (_ queued: Duration) -> Void) {
            self.isAbandoned = isAbandoned
            self.body = body
        }
    }

    private struct State {
        /// Worker threads busy with (or about to start) a job; at most `workers`.
        var running = 0
        /// Admitted jobs waiting for a worker, oldest first. Only non-empty when every worker
        /// is busy: a worker that finishes takes the next one before it counts itself free.
        var queue = CircularBuffer<Job>()
    }

    init(workers: Int, queueCapacity: Int, metrics: ProcessorMetrics) {
        self.workers = workers
        self.capacity = workers + queueCapacity
        self.threads = NIOThreadPool(numberOfThreads: workers)
        self.metrics = metrics
    }

    func start() {
        self.threads.start()
    }

    func shutdown() async throws {
        try await self.threads.shutdownGracefully()
    }

    /// Admits `job`: it starts on a free worker at once, or waits in the queue.
    ///
    /// - Returns: false, without running anything, when every worker is busy and the queue is
    ///   full.
    func submit(_ job: Job) -> Bool {
        let startNow: Bool? = self.state.withLock { state in
            if state.running < self.workers {
                state.running += 1
                return true
            }
            guard state.running + state.queue.count < self.capacity else { return nil }
            state.queue.append(job)
            return false
        }
        guard let startNow else { return false }
        self.metrics.jobsQueued.increment()
        if startNow {
            self.threads.submit { threadState in
                guard case .active = threadState else {
                    // The pool is shutting down (only after every connection has ended).
                    self.metrics.jobsQueued.decrement()
                    self.state.withLock { $0.running -= 1 }
                    return
                }
                self.work(startingWith: job)
            }
        }
        return true
    }

    /// Takes `job` out of the queue if it is still waiting there, so its place is free at once.
    ///
    /// - Returns: true when the job was waiting and will now never run.
    @discardableResult
    func withdraw(_ job: Job) -> Bool {
        let removed = self.state.withLock { state -> Bool in
            guard let index = state.queue.firstIndex(where: { $0 === job }) else { return false }
            state.queue.remove(at: index)
            return true
        }
        if removed {
            self.metrics.jobsQueued.decrement()
            self.metrics.jobsDropped.increment()
        }
        return removed
    }

    /// Runs jobs on this worker thread until the queue is empty.
    private func work(startingWith first: Job) {
        var next: Job? = first
        while let job = next {
            self.metrics.jobsQueued.decrement()
            self.metrics.jobsRunning.increment()
            job.body(ContinuousClock.now - job.submitted)
            self.metrics.jobsRunning.decrement()
            var skipped = 0
            next = self.state.withLock { state -> Job? in
                while let candidate = state.queue.popFirst() {
                    if !candidate.isAbandoned() { return candidate }
                    skipped += 1
                }
                state.running -= 1
                return nil
            }
            for _ in 0..<skipped {
                self.metrics.jobsQueued.decrement()
                self.metrics.jobsDropped.increment()
            }
        }
    }

    /// Jobs admitted and not yet finished (running or waiting).
    var load: Int {
        self.state.withLock { $0.running + $0.queue.count }
    }
}
