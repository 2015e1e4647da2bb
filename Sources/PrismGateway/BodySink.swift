import Foundation
import NIOCore
import NIOPosix
import Synchronization

/// Where upload bodies go when the memory budget is full: a directory and a cap on its bytes.
struct BodySpool: Sendable {
    let directory: String
    /// Bytes of spooled bodies on disk at once; beyond it an upload is answered 503.
    let budget: ByteBudget
}

/// Memory of finished upload bodies, kept for the next ones.
///
/// A body buffer is allocated at the announced length: fresh pages from the kernel, each faulted
/// in and zeroed on first touch, then given back when the upload ends (above glibc's mmap
/// threshold, 1 MiB, see `Gateway.returnLargeBuffersToTheSystem`, by munmap; below it by the
/// heap's trim): 8% of the gateway's CPU per upload in a profile. Reusing a few buffers skips
/// both. The pool is small and bounded (idle memory at most `maxTotalBytes`, 32 MiB); a buffer
/// still shared when taken (a write of a cancelled call still queued) gets new memory from
/// `ByteBuffer`'s copy-on-write, so nothing still in use is ever overwritten.
final class BodyBufferPool: Sendable {
    let maxBuffers: Int
    let maxBufferBytes: Int
    /// Capacity of all kept buffers together (`ByteBuffer` rounds capacities up to a power of 2).
    let maxTotalBytes: Int
    /// Smaller bodies are cheap to allocate (they come from the heap without new pages).
    static let minimumBufferBytes = 128 << 10
    private let buffers = Mutex<[ByteBuffer]>([])

    init(maxBuffers: Int = 4, maxBufferBytes: Int = 16 << 20, maxTotalBytes: Int = 32 << 20) {
        self.maxBuffers = maxBuffers
        self.maxBufferBytes = maxBufferBytes
        self.maxTotalBytes = maxTotalBytes
    }

    /// An empty buffer with room for `capacity` bytes and at most `largest` (its memory is
    /// resident and the taker pays for all of it), if one is kept: the smallest that fits.
    func take(capacity: Int, largest: Int = .max) -> ByteBuffer? {
        guard capacity <= self.maxBufferBytes else { return nil }
        // Bound to a `var` straight from the array, so this is the only reference and `clear`
        // keeps the memory (a second copy alive here would make it allocate anew).
        guard var buffer = self.buffers.withLock({ buffers -> ByteBuffer? in
            var best: Int? = nil
            for (i, buffer) in buffers.enumerated() where buffer.capacity >= capacity && buffer.capacity <= largest {
                if best == nil || buffer.capacity < buffers[best!].capacity { best = i }
            }
            return best.map { buffers.remove(at: $0) }
        }) else { return nil }
        buffer.clear()
        return buffer
    }

    /// Keeps a finished body's memory, if it is not too large and there is room; otherwise the
    /// smallest kept buffer makes way for a larger one (uploads of a deployment are similar).
    func give(_ buffer: ByteBuffer) {
        guard buffer.capacity >= Self.minimumBufferBytes, buffer.capacity <= self.maxBufferBytes else { return }
        self.buffers.withLock { buffers in
            let kept = buffers.reduce(0) { $0 + $1.capacity }
            if buffers.count < self.maxBuffers, kept + buffer.capacity <= self.maxTotalBytes {
                buffers.append(buffer)
            } else if let smallest = buffers.indices.min(by: { buffers[$0].capacity < buffers[$1].capacity }),
                      buffers[smallest].capacity < buffer.capacity,
                      kept - buffers[smallest].capacity + buffer.capacity <= self.maxTotalBytes {
                buffers[smallest] = buffer
            }
        }
    }

    var count: Int { self.buffers.withLock { $0.count } }
}

/// Collects one upload's body: in memory while the memory budget has room, otherwise in a
/// spool file, as nginx does with `client_body_buffer_size` and its temp files.
///
/// A body never waits for memory while it is being received (a paused socket would trip the
/// body timeouts and let slow clients hold fast ones). Once received, a spooled body waits for
/// its turn in the memory budget and is read back whole: what the processors and the store are
/// given is always one buffer, and memory stays within the budget.
final class BodySink {
    private let limit: Int
    private let expected: Int?
    private let lease: ByteBudget.Lease
    private let spool: BodySpool
    private let spoolLease: ByteBudget.Lease
    private let pool: BodyBufferPool?
    private var buffer = ByteBuffer()
    private var file: SpoolFile?
    /// Chunks received for the spool file and not written yet (written in batches).
    private var pending: [ByteBuffer] = []
    private var pendingBytes = 0
    /// Bytes of the lease already paid for a reused buffer's memory and not yet filled.
    private var prepaid = 0
    private(set) var count = 0

    /// - Parameter expected: the announced length, when there is one: the memory buffer is
    ///   reserved at that size (bounded by `limit`) so it never grows by reallocation. Only the
    ///   bytes that arrive are touched, and counted.
    init(limit: Int, lease: ByteBudget.Lease, spool: BodySpool, expected: Int? = nil, pool: BodyBufferPool? = nil) {
        self.expected = expected.map { min(max($0, 0), limit) }
        self.pool = pool
        self.limit = limit
        self.lease = lease
        self.spool = spool
        self.spoolLease = spool.budget.lease()
    }

    deinit {
        self.spoolLease.release()
    }

    /// Whether the body went to the spool.
    private(set) var spooled = false

    func append(_ chunk: ByteBuffer) async throws {
        let bytes = chunk.readableBytes
        guard bytes > 0 else { return }
        guard self.count + bytes <= self.limit else { throw GatewayError.tooLarge(limit: self.limit) }
        self.count += bytes
        if self.file == nil {
            if self.charge(bytes) {
                if self.buffer.capacity == 0, let expected = self.expected, expected > bytes {
                    self.prepareBuffer(expected: expected, first: bytes)
                }
                var chunk = chunk
                self.buffer.writeBuffer(&chunk)
                return
            }
            try await self.startSpooling()
        }
        guard self.spoolLease.tryGrow(by: bytes) else { throw GatewayError.memoryBusy }
        self.pending.append(chunk)
        self.pendingBytes += bytes
        if self.pendingBytes >= 1 << 20 { try await self.flush() }
    }

    /// Counts `bytes` against the memory budget, from what a reused buffer prepaid first.
    private func charge(_ bytes: Int) -> Bool {
        if self.prepaid >= bytes {
            self.prepaid -= bytes
            return true
        }
        guard self.lease.tryGrow(by: bytes - self.prepaid) else { return false }
        self.prepaid = 0
        return true
    }

    /// Room for the announced body: a reused buffer when the budget can pay for all of its
    /// memory now (its pages are resident, unlike fresh ones, which cost only as they fill, so
    /// a client that announces much and sends little must not hold it unpaid), else a fresh
    /// reservation.
    private func prepareBuffer(expected: Int, first: Int) {
        if let pool = self.pool, let reused = pool.take(capacity: expected, largest: max(4 * expected, BodyBufferPool.minimumBufferBytes)) {
            let extra = reused.capacity - first
            if self.lease.tryGrow(by: extra) {
                self.buffer = reused
                self.prepaid = extra
                return
            }
            pool.give(reused)
        }
        self.buffer.reserveCapacity(expected)
    }

    /// The whole body in one buffer. A spooled body first waits, until `deadline`, for room in
    /// the memory budget, then is read back and its file closed.
    func finish(until deadline: ContinuousClock.Instant) async throws -> ByteBuffer {
        guard let file = self.file else { return self.buffer }
        try await self.flush()
        try await self.lease.grow(by: self.count, until: deadline)
        let count = self.count
        let body = try await NIOThreadPool.singleton.runIfActive { try file.readAll(count: count) }
        self.file = nil
        file.close()
        self.spoolLease.release()
        return body
    }

    /// Moves what is in memory to a new spool file and gives its memory back.
    private func startSpooling() async throws {
        let directory = self.spool.directory
        let file = try await NIOThreadPool.singleton.runIfActive { try SpoolFile(directory: directory) }
        self.file = file
        self.spooled = true
        let inMemory = self.buffer.readableBytes
        guard self.spoolLease.tryGrow(by: inMemory) else { throw GatewayError.memoryBusy }
        if inMemory > 0 {
            self.pending = [self.buffer]
            self.pendingBytes = inMemory
            try await self.flush()
        }
        self.buffer = ByteBuffer()
        self.prepaid = 0
        self.lease.release()
    }

    private func flush() async throws {
        guard let file = self.file, !self.pending.isEmpty else { return }
        let chunks = self.pending
        self.pending = []
        self.pendingBytes = 0
        try await NIOThreadPool.singleton.runIfActive { try file.append(chunks) }
    }

    /// Closes the spool file if the body never finished (its disk space is freed at once: the
    /// file has no name).
    func discard() {
        self.file?.close()
        self.file = nil
        self.pending = []
        self.spoolLease.release()
    }
}

/// An unnamed temporary file: created and unlinked at once, so nothing is left on disk if the
/// gateway dies, and its space is freed when it is closed.
final class SpoolFile: @unchecked Sendable {
    // Used by one upload at a time, from the thread pool, in sequence.
    private var descriptor: Int32
    private var size = 0

    init(directory: String) throws {
        var template = Array((directory.hasSuffix("/") ? directory : directory + "/").utf8CString.dropLast())
        template += Array("prism-body-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw SpoolError(operation: "create a spool file in \(directory)", errno: errno)
        }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        self.descriptor = fd
    }

    deinit {
        self.close()
    }

    func append(_ chunks: [ByteBuffer]) throws {
        for chunk in chunks {
            try chunk.withUnsafeReadableBytes { raw in
                var done = 0
                while done < raw.count {
                    let n = pwrite(self.descriptor, raw.baseAddress! + done, raw.count - done, off_t(self.size + done))
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw SpoolError(operation: "write a spool file", errno: errno)
                    }
                    done += n
                }
            }
            self.size += chunk.readableBytes
        }
    }

    func readAll(count: Int) throws -> ByteBuffer {
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { raw in
            var done = 0
            while done < count {
                let n = pread(self.descriptor, raw.baseAddress! + done, count - done, off_t(done))
                if n < 0 {
                    if errno == EINTR { continue }
                    throw SpoolError(operation: "read a spool file", errno: errno)
                }
                guard n > 0 else { throw SpoolError(operation: "read a spool file (it is shorter than written)", errno: 0) }
                done += n
            }
            return count
        }
        return buffer
    }

    func close() {
        if self.descriptor >= 0 {
            _ = Foundation.close(self.descriptor)
            self.descriptor = -1
        }
    }
}

/// A spool file could not be used (disk full, directory missing): logged for the operator, the
/// client gets a 503.
struct SpoolError: Error, CustomStringConvertible {
    let operation: String
    let errno: Int32

    var description: String {
        "could not \(self.operation): \(String(cString: strerror(self.errno)))"
    }
}
