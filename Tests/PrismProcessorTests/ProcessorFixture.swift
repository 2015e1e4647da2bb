import Foundation
import Logging
import NIOCore
import PrismClient
@testable import PrismProcessor
import PrismTestSupport
import ServiceLifecycle

/// A processor running in this test process on free loopback ports, stopped (gracefully) when
/// the body returns.
struct ProcessorFixture: Sendable {
    let server: ProcessorServer
    let group: ServiceGroup
    let port: Int
    let statusPort: Int

    /// Starts the graceful shutdown (as SIGTERM would).
    func shutDown() async {
        await self.group.triggerGracefulShutdown()
    }

    static func run<T: Sendable>(
        _ configure: (inout ProcessorConfiguration) -> Void = { _ in },
        _ body: @Sendable (ProcessorFixture) async throws -> T
    ) async throws -> T {
        var config = ProcessorConfiguration()
        config.port = 0
        config.statusPort = 0
        config.workers = 2
        config.queueCapacity = 8
        config.drainTimeout = .seconds(10)
        configure(&config)
        var logger = Logger(label: "test.processor")
        logger.logLevel = .notice
        let server = try ProcessorServer(configuration: config, logger: logger)
        let group = ServiceGroup(services: [server], logger: logger)
        return try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let port = try await server.listeningAddress().port!
            let statusPort = try await server.statusAddress().port!
            do {
                let result = try await body(ProcessorFixture(server: server, group: group, port: port, statusPort: statusPort))
                await group.triggerGracefulShutdown()
                try await tasks.waitForAll()
                return result
            } catch {
                await group.triggerGracefulShutdown()
                try? await tasks.waitForAll()
                throw error
            }
        }
    }

    func connect(_ configure: (inout ProcessorClientConfiguration) -> Void = { _ in }) async throws -> ProcessorConnection {
        var config = ProcessorClientConfiguration()
        configure(&config)
        return try await ProcessorConnection.connect(host: "127.0.0.1", port: self.port, configuration: config)
    }

    func withConnection<T: Sendable>(_ body: (ProcessorConnection) async throws -> T) async throws -> T {
        try await ProcessorConnection.withConnection(host: "127.0.0.1", port: self.port, body)
    }

    func metrics() async throws -> String {
        let port = self.statusPort
        return try await onThread { try httpGet(port: port, path: "/metrics").body }
    }

    /// Polls /metrics until `condition` holds or `timeout` passes; returns the last scrape.
    func waitForMetrics(timeout: Duration = .seconds(20), _ condition: (String) -> Bool) async throws -> String {
        let limit = ContinuousClock.now + timeout
        var text = try await self.metrics()
        while !condition(text), ContinuousClock.now < limit {
            try await Task.sleep(for: .milliseconds(10))
            text = try await self.metrics()
        }
        return text
    }
}
