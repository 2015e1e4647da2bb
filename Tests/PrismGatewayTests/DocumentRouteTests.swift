import Foundation
import Hummingbird
import HummingbirdTesting
@testable import PrismGateway
import Testing

/// The OpenAPI document, as the router serves it.
@Suite("Gateway documents")
struct DocumentRouteTests {
    let routes = RouteTests()

    @Test("the OpenAPI document is compiled in and served as JSON, with API keys on or off")
    func openAPI() async throws {
        for keys in [[], ["k"]] {
            try await self.routes.withGateway({ $0.apiKeys = keys }) { client, _ in
                try await client.execute(uri: "/openapi.json", method: .get) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == "application/json")
                    let json = try JSONSerialization.jsonObject(with: Data(response.body.readableBytesView)) as? [String: Any]
                    #expect((json?["openapi"] as? String)?.hasPrefix("3.1") == true)
                    #expect((json?["paths"] as? [String: Any])?["/v1/images"] != nil)
                }
            }
        }
    }
}
