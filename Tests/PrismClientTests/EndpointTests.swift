@testable import PrismClient
import Testing

@Suite("Processor endpoints")
struct EndpointTests {
    @Test("host:port parsing", arguments: [
        ("127.0.0.1:7070", "127.0.0.1", 7070),
        ("processor:7070", "processor", 7070),
        ("[::1]:7070", "::1", 7070),
    ])
    func parses(text: String, host: String, port: Int) throws {
        let endpoint = try #require(ProcessorPoolConfiguration.Endpoint(text))
        #expect(endpoint.host == host && endpoint.port == port)
        #expect(endpoint.description == text)
    }

    @Test("bad endpoints are refused", arguments: ["processor", ":7070", "processor:0", "processor:99999", "processor:http"])
    func refuses(text: String) {
        #expect(ProcessorPoolConfiguration.Endpoint(text) == nil)
    }

    @Test("names resolve to every address they have")
    func resolves() async {
        let addresses = await ProcessorPool.resolve("localhost")
        #expect(addresses.contains("127.0.0.1"))
        #expect(await ProcessorPool.resolve("no-such-host.invalid").isEmpty)
    }
}
