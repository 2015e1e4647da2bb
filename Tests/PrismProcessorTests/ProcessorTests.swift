import Foundation
import PrismClient
import PrismProcessor
import PrismProto
import PrismStorage
import PrismTestSupport
import PrismWire
import Testing

@Suite("prism-processor over real TCP", .serialized)
struct ProcessorTests {
    @Test("many concurrent calls on one connection come back matched to their call ids")
    func multiplexing() async throws {
        let source = try TestImages.photo("Storm.jpg")
        try await ProcessorFixture.run({ $0.queueCapacity = 32 }) { fixture in
            try await fixture.withConnection { connection in
                try await withThrowingTaskGroup(of: (Int, ProcessResult).self) { group in
                    for i in 0..<16 {
                        group.addTask {
                            let width = UInt32(100 + 10 * i)
                            let request = ProcessRequest(source: source, variants: [variant("w\(width)", [resize(width, 0)], format: .png)], requestID: "req-\(i)")
                            return (i, try await connection.process(request))
                        }
                    }
                    var seen = Set<Int>()
                    for try await (i, result) in group {
                        seen.insert(i)
                        #expect(result.variants.count == 1)
                        #expect(result.variants[0].width == 100 + 10 * i)
                        #expect(result.variants[0].name == "w\(100 + 10 * i)")
                        #expect(try DecodedImage(result.variants[0].data).width == 100 + 10 * i)
                        #expect(result.source.width == 1920 && result.source.height == 1280)
                    }
                    #expect(seen.count == 16)
                }
            }
            let metrics = try await fixture.metrics()
            #expect(metricValue(metrics, "prism_processor_calls_started_total") == 16)
            #expect(metricValue(metrics, "prism_processor_calls_succeeded_total") == 16)
        }
    }

    @Test("one call with several variants streams them all back, each the size asked for")
    func severalVariants() async throws {
        let source = try TestImages.photo("Garden.jpg")
        try await ProcessorFixture.run { fixture in
            try await fixture.withConnection { connection in
                let arrived = ArrivalLog()
                var request = ProcessRequest(source: source, variants: [
                    variant("thumb", [resize(200, 200)], format: .jpeg),
                    variant("small", [resize(640, 0, fit: .inside)], format: .webp),
                    variant("large", [resize(2048, 2048, fit: .inside)], format: .avif),
                ])
                request.digests = true
                let result = try await connection.process(request) { arrived.append($0.name) }
                #expect(result.variants.map(\.name) == ["thumb", "small", "large"])
                #expect(result.variants.map(\.width) == [200, 640, 2048])
                #expect(Set(arrived.names) == ["thumb", "small", "large"], "each variant was delivered as it arrived")
                #expect(try DecodedImage(result.variants[2].data).loader == "VipsForeignLoadHeifBuffer")
                #expect(result.complete.decodeUs > 0)
                // Each variant comes with its digests (the gateway stores it without hashing).
                for variant in result.variants {
                    #expect(variant.md5 == Digest.md5(variant.data), "\(variant.name)")
                    #expect(variant.sha256 == Digest.sha256(variant.data), "\(variant.name)")
                }
                #expect(result.sourceSHA256 == nil, "the source's SHA-256 only when asked")
                // And the variants' digests only when asked.
                let plain = try await connection.process(ProcessRequest(source: source, variants: [variant("thumb", [resize(200, 200)])]))
                #expect(plain.variants[0].md5 == nil && plain.variants[0].sha256 == nil)
            }
        }
    }

    @Test("a call asked for the source's SHA-256 gets it in Complete, with or without variants")
    func sourceDigest() async throws {
        let source = try TestImages.photo("Storm.jpg")
        try await ProcessorFixture.run { fixture in
            try await fixture.withConnection { connection in
                for specs in [[variant("thumb", [resize(200, 200)])], []] {
                    var request = ProcessRequest(source: source, variants: specs)
                    request.sourceSHA256 = true
                    let result = try await connection.process(request)
                    #expect(result.sourceSHA256 == Digest.sha256(source))
                    #expect(result.variants.count == specs.count)
                }
            }
        }
    }

    @Test("a call told that two cores are idle makes its variants in parallel chains, up to --job-threads", arguments: [1, 2])
    func threads(jobThreads: Int) async throws {
        let source = try TestImages.photo("Garden.jpg")
        let specs = [
            variant("thumb", [resize(200, 200)]),
            variant("small", [resize(640, 0, fit: .inside)], format: .webp),
            variant("large", [resize(2048, 2048, fit: .inside)]),
        ]
        try await ProcessorFixture.run({ $0.jobThreads = jobThreads }) { fixture in
            try await fixture.withConnection { connection in
                var request = ProcessRequest(source: source, variants: specs)
                request.threads = 2
                let result = try await connection.process(request)
                #expect(result.variants.map(\.name) == ["thumb", "small", "large"])
                #expect(result.variants.map(\.width) == [200, 640, 2048])
            }
            let metrics = try await fixture.metrics()
            // One helper chain with a second thread allowed; none with --job-threads 1.
            #expect(metricValue(metrics, "prism_processor_helper_chains_total") == (jobThreads == 2 ? 1 : 0))
        }
    }

    @Test("garbage gets an error frame and a close; the next client is served")
    func garbage() async throws {
        try await ProcessorFixture.run { fixture in
            let raw = try RawSocket(port: fixture.port)
            raw.send(Array("GET / HTTP/1.1\r\nHost: processor\r\n\r\n".utf8))
            let (frames, closed) = try await onThread { try raw.readUntilClosed() }
            #expect(closed, "the processor closes a connection that sends garbage")
            #expect(frames.count == 1)
            #expect(frames.first?.callID == 0)
            #expect(frames.first?.error.reason == .frameTooLarge)

            let small = try RawSocket(port: fixture.port)
            try small.send(helloFrame())
            small.send([0, 0, 0, 5, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF])  // fits, but is not a Frame
            let (answers, smallClosed) = try await onThread { try small.readUntilClosed() }
            #expect(smallClosed)
            #expect(answers.last?.error.reason == .protocolViolation)

            let result = try await fixture.withConnection { connection in
                try await connection.process(ProcessRequest(source: try TestImages.photo("Dune.jpg"), variants: [variant("v", [resize(64, 64)])]))
            }
            #expect(result.variants[0].width == 64)
            let metrics = try await fixture.metrics()
            #expect(metricValue(metrics, "prism_processor_protocol_errors_total") == 2)
        }
    }

    @Test("a wrong protocol version or token is refused with a clear error and a close")
    func handshakeRefusals() async throws {
        try await ProcessorFixture.run({ $0.authToken = "s3cret" }) { fixture in
            let future = try RawSocket(port: fixture.port)
            try future.send(helloFrame(version: 2, token: "s3cret"))
            let (frames, closed) = try await onThread { try future.readUntilClosed() }
            #expect(closed)
            #expect(frames.last?.error.reason == .unsupportedVersion)
            #expect(frames.last?.error.message.contains("version 1") == true)

            let wrongToken = try await fixture.connect { $0.authToken = "guess" }
            async let running: Void = wrongToken.run()
            await #expect(throws: PrismRPCError.self) {
                try await wrongToken.process(ProcessRequest(source: Data([1]), variants: []))
            }
            await running

            let rightToken = try await fixture.connect { $0.authToken = "s3cret" }
            async let runningRight: Void = rightToken.run()
            let latency = try await rightToken.ping()
            #expect(latency > .zero)
            rightToken.close()
            await runningRight
        }
    }

    @Test("bad images get clear error codes and the processor stays up", arguments: [
        ("truncated.jpg", Prism_V1_Reason.corruptImage, Prism_V1_Code.invalidArgument),
        ("corrupt.jpg", .corruptImage, .invalidArgument),
        ("not-an-image.txt", .notAnImage, .invalidArgument),
        ("drawing.svg", .blockedFormat, .invalidArgument),
        ("document.pdf", .blockedFormat, .invalidArgument),
        ("bomb-30000.png", .tooManyPixels, .failedPrecondition),
    ])
    func badImages(file: String, reason: Prism_V1_Reason, code: Prism_V1_Code) async throws {
        try await ProcessorFixture.run { fixture in
            try await fixture.withConnection { connection in
                do {
                    _ = try await connection.process(ProcessRequest(source: try TestImages.edge(file), variants: [variant("v", [resize(200, 200)])]))
                    Issue.record("\(file) was accepted")
                } catch let error as PrismRPCError {
                    #expect(error.reason == reason)
                    #expect(error.code == code)
                    #expect(!error.isRetryable)
                    #expect(!error.message.contains("/"), "no paths in \(error.message)")
                }
                let ok = try await connection.process(ProcessRequest(source: try TestImages.photo("Dune.jpg"), variants: [variant("v", [resize(32, 32)])]))
                #expect(ok.variants[0].width == 32)
            }
        }
    }

    @Test("a full queue answers RESOURCE_EXHAUSTED at once")
    func fullQueue() async throws {
        let slow = try TestImages.edge("large-19mp.jpg")
        try await ProcessorFixture.run({ $0.workers = 1; $0.queueCapacity = 0 }) { fixture in
            try await fixture.withConnection { connection in
                let first = Task { try await connection.process(ProcessRequest(source: slow, variants: [variant("slow", [blur(30)])])) }
                _ = try await fixture.waitForMetrics { metricValue($0, "prism_processor_jobs_running") == 1 }
                do {
                    _ = try await connection.process(ProcessRequest(source: slow, variants: [variant("v", [resize(10, 10)])]))
                    Issue.record("a second call was accepted by a full processor")
                } catch let error as PrismRPCError {
                    #expect(error.code == .resourceExhausted)
                    #expect(error.reason == .queueFull)
                    #expect(error.isRetryable)
                }
                let metrics = try await fixture.metrics()
                #expect(metricValue(metrics, "prism_processor_jobs_running") == 1, "refused while the first job still runs, not after it")
                first.cancel()
                _ = await first.result
            }
        }
    }

    @Test("go-away on shutdown: the call in flight finishes, new ones are refused retryably")
    func drain() async throws {
        let slowish = try TestImages.edge("large-19mp.jpg")
        try await ProcessorFixture.run({ $0.workers = 1 }) { fixture in
            try await fixture.withConnection { connection in
                let inFlight = Task { try await connection.process(ProcessRequest(source: slowish, variants: [variant("v", [blur(6)])])) }
                _ = try await fixture.waitForMetrics { metricValue($0, "prism_processor_jobs_running") == 1 }
                await fixture.shutDown()
                while connection.isReady { try await Task.sleep(for: .milliseconds(5)) }
                do {
                    _ = try await connection.process(ProcessRequest(source: slowish, variants: [variant("v", [resize(10, 10)])]))
                    Issue.record("a draining processor accepted a new call")
                } catch let error as PrismRPCError {
                    #expect(error.code == .unavailable && error.isRetryable)
                }
                let finished = try await inFlight.value
                #expect(finished.variants.count == 1, "the call in flight finished despite the shutdown")
                await connection.waitUntilClosed()
            }
        }
        // run() returned: the server exited once its last call was done. Had the drain deadline
        // (10 s in the fixture) cut it short, the call in flight would have failed UNAVAILABLE.
    }
}

/// Names in the order `onVariant` saw them.
final class ArrivalLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _names: [String] = []
    func append(_ name: String) { self.lock.withLock { self._names.append(name) } }
    var names: [String] { self.lock.withLock { self._names } }
}
