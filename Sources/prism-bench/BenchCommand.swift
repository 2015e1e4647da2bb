import ArgumentParser
import Foundation
import PrismClient
import PrismGateway
import PrismImaging
import PrismProto
import Synchronization

/// The in-process half of the benchmark harness (Benchmarks/run.py drives it): the default
/// recipe made by Prism's own pipeline code, or sent to one processor over the frame protocol,
/// with a fixed number of uploads in flight. Prints one JSON object.
@main
struct BenchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prism-bench",
        abstract: "Measures Prism's pipeline in-process, or one processor over the protocol.",
        subcommands: [Pipeline.self, Processor.self]
    )

    struct Common: ParsableArguments {
        @Option(help: "Comma-separated image files, used round-robin.")
        var images: String

        @Option(help: "Uploads in flight at once.")
        var inFlight: Int = 1

        @Option(help: "How many times each image is processed.")
        var rounds: Int = 2

        func load() throws -> [Data] {
            try self.images.split(separator: ",").map { path in
                guard let data = FileManager.default.contents(atPath: String(path)) else {
                    throw ValidationError("cannot read \(path)")
                }
                return data
            }
        }
    }

    /// The default recipe, made in-process: decode once, derive each variant.
    struct Pipeline: AsyncParsableCommand {
        @OptionGroup var common: Common

        @Option(help: "libvips threads per image (the processor's --vips-concurrency).")
        var vipsConcurrency: Int = 1

        func run() async throws {
            try Vips.start(concurrency: self.vipsConcurrency)
            let images = try self.common.load()
            let variants = RecipeBook.builtIn.variants
            // Warm up: code paths, libvips' first-use initialisation.
            _ = try await Self.runJob(images[0], variants)
            let startCPU = cpuSeconds()
            let report = try await measure(images: images, inFlight: self.common.inFlight, rounds: self.common.rounds) { image in
                try await Self.runJob(image, variants)
            }
            var result = report.json
            result["mode"] = "pipeline"
            result["cpu_s"] = cpuSeconds() - startCPU
            result["peak_rss_bytes"] = peakRSS()
            result["vips_concurrency"] = self.vipsConcurrency
            print(String(decoding: try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys]), as: UTF8.self))
        }

        /// One job on a thread of its own, as a processor worker runs it.
        static func runJob(_ image: Data, _ variants: [Prism_V1_VariantSpec]) async throws {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                Thread {
                    do {
                        _ = try ImageJob(source: image, variants: variants).run(cancellation: JobCancellation()) { _ in }
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }.start()
            }
        }
    }

    /// The default recipe as one call to one processor over the frame protocol.
    struct Processor: AsyncParsableCommand {
        @OptionGroup var common: Common

        @Option(help: "The processor's port on 127.0.0.1.")
        var port: Int

        func run() async throws {
            let images = try self.common.load()
            let variants = RecipeBook.builtIn.variants
            let inFlight = self.common.inFlight
            let rounds = self.common.rounds
            let json = try await ProcessorConnection.withConnection(host: "127.0.0.1", port: self.port) { connection in
                _ = try await connection.process(ProcessRequest(source: images[0], variants: variants))
                let startCPU = cpuSeconds()
                let report = try await measure(images: images, inFlight: inFlight, rounds: rounds) { image in
                    _ = try await connection.process(ProcessRequest(source: image, variants: variants, requestID: "bench"))
                }
                var result = report.json
                result["mode"] = "processor"
                result["client_cpu_s"] = cpuSeconds() - startCPU
                return try JSONSerialization.data(withJSONObject: result, options: [.sortedKeys])
            }
            print(String(decoding: json, as: UTF8.self))
        }
    }
}

struct Report {
    var latencies: [Double]
    var wall: Double

    var json: [String: Any] {
        ["latencies_ms": self.latencies.map { ($0 * 10_000).rounded() / 10 }, "wall_s": self.wall, "uploads": self.latencies.count]
    }
}

/// Runs `rounds` x `images.count` uploads with `inFlight` at once; each upload's latency and
/// the wall time of the whole run.
func measure(images: [Data], inFlight: Int, rounds: Int, _ upload: @escaping @Sendable (Data) async throws -> Void) async throws -> Report {
    final class Progress: Sendable {
        let next = Mutex(0)
        let latencies = Mutex<[Double]>([])
    }
    let total = images.count * rounds
    let progress = Progress()
    let clock = ContinuousClock()
    let start = clock.now
    try await withThrowingTaskGroup(of: Void.self) { group in
        for _ in 0..<inFlight {
            group.addTask {
                while true {
                    let index = progress.next.withLock { value -> Int? in
                        guard value < total else { return nil }
                        defer { value += 1 }
                        return value
                    }
                    guard let index else { return }
                    let began = clock.now
                    try await upload(images[index % images.count])
                    let took = clock.now - began
                    progress.latencies.withLock { $0.append(Double(took.components.seconds) + Double(took.components.attoseconds) / 1e18) }
                }
            }
        }
        try await group.waitForAll()
    }
    let wall = clock.now - start
    return Report(latencies: progress.latencies.withLock { $0 }, wall: Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18)
}

/// User + system CPU time of this process, all threads, in seconds.
func cpuSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    return Double(usage.ru_utime.tv_sec) + Double(usage.ru_utime.tv_usec) / 1e6 + Double(usage.ru_stime.tv_sec) + Double(usage.ru_stime.tv_usec) / 1e6
}

/// Peak resident set of this process (VmHWM), in bytes.
func peakRSS() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        return (line.split(separator: " ").compactMap { Int($0) }.first ?? 0) * 1024
    }
    return 0
}
