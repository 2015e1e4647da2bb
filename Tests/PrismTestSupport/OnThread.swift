import Foundation

/// Runs blocking work (socket reads, waiting on libvips) on a thread of its own, so tests never
/// block the cooperative pool that the servers under test need to make progress.
public func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            continuation.resume(with: Result { try body() })
        }
        thread.start()
    }
}
