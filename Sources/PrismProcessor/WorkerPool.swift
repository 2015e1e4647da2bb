import CoreMetrics
import NIOPosix
import Synchronization

/// Runs blocking libvips jobs on dedicated threads, never on an event loop or the cooperative
/// pool, and refuses work beyond `workers + queueCapacity` instead of queueing without bound.
final class WorkerPool: Sendable {
    let workers: Int
    let capacity: Int
    private let threads: NIOThreadPool
    private let outstanding = Mutex(0)
    private let metrics: ProcessorMetrics

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

    /// Reserves a place for one job; false when every worker is busy and the queue is full.
    func tryAdmit() -> Bool {
        let admitted = self.outstanding.withLock { count -> Bool in
            guard count < self.capacity else { return false }
            count += 1
            return true
        }
        if admitted { self.metrics.jobsQueued.increment() }
        return admitted
    }

    /// Runs `body` on a worker thread (after `tryAdmit` succeeded). Returns at once; the job
    /// reports through its own callbacks.
    func submit(_ body: @escaping @Sendable () -> Void) {
        self.threads.submit { _ in
            self.metrics.jobsQueued.decrement()
            self.metrics.jobsRunning.increment()
            body()
            self.metrics.jobsRunning.decrement()
            self.outstanding.withLock { $0 -= 1 }
        }
    }

    /// Jobs admitted and not yet finished.
    var load: Int {
        self.outstanding.withLock { $0 }
    }
}
