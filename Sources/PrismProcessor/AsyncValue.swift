import Synchronization

/// A value set once and awaited by anyone: "the port I bound", "the moment I started draining".
final class AsyncValue<Value: Sendable>: Sendable {
    private let state = Mutex<(value: Value?, waiters: [CheckedContinuation<Value, Never>])>((nil, []))

    init() {}

    func set(_ value: Value) {
        let waiters = self.state.withLock { state -> [CheckedContinuation<Value, Never>] in
            guard state.value == nil else { return [] }
            state.value = value
            defer { state.waiters.removeAll() }
            return state.waiters
        }
        waiters.forEach { $0.resume(returning: value) }
    }

    var current: Value? {
        self.state.withLock { $0.value }
    }

    func get() async -> Value {
        await withCheckedContinuation { continuation in
            let value = self.state.withLock { state -> Value? in
                if let value = state.value { return value }
                state.waiters.append(continuation)
                return nil
            }
            if let value { continuation.resume(returning: value) }
        }
    }
}
