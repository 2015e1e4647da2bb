import Foundation
import Hummingbird
import HummingbirdTesting
@testable import PrismGateway
import Testing

/// The OpenAPI document and the upload page, as the router serves them.
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

    @Test("the upload page and its assets, with a policy that allows no inline script")
    func page() async throws {
        try await self.routes.withGateway { client, _ in
            try await client.execute(uri: "/", method: .get) { response in
                #expect(response.status == .ok)
                #expect(response.headers[.contentType] == "text/html; charset=utf-8")
                let policy = try #require(response.headers[.contentSecurityPolicy])
                #expect(policy.contains("script-src 'self';"))
                #expect(!policy.contains("unsafe-inline"))
                #expect(policy.contains("img-src 'self' blob: http://127.0.0.1:8080;"))
                #expect(String(buffer: response.body).contains("/assets/app.js"))
            }
            for (asset, type) in [("app.js", "text/javascript; charset=utf-8"), ("app.css", "text/css; charset=utf-8")] {
                try await client.execute(uri: "/assets/\(asset)", method: .get) { response in
                    #expect(response.status == .ok)
                    #expect(response.headers[.contentType] == type)
                }
            }
            try await client.execute(uri: "/assets/../openapi.json", method: .get) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/", method: .post) { response in
                #expect(response.status == .methodNotAllowed)
                #expect(response.headers[.allow] == "GET")
            }
        }
    }

    @Test("with the page off, / and /assets are 404 and the API document stays")
    func pageOff() async throws {
        try await self.routes.withGateway({ $0.uploadPage = false }) { client, _ in
            for path in ["/", "/assets/app.js"] {
                try await client.execute(uri: path, method: .get) { response in
                    #expect(response.status == .notFound, "\(path)")
                    #expect(response.headers[.contentType] == "application/problem+json")
                }
            }
            try await client.execute(uri: "/", method: .post) { response in
                #expect(response.status == .notFound)
            }
            try await client.execute(uri: "/openapi.json", method: .get) { response in
                #expect(response.status == .ok)
            }
        }
    }

    @Test("image origins for the policy", arguments: [
        ("http://127.0.0.1:8080/files/images/", "http://127.0.0.1:8080"),
        ("https://cdn.example.com/prism/images/", "https://cdn.example.com"),
        ("http://[::1]:9000/bucket/images/", "http://[::1]:9000"),
        ("/files/images/", nil),
    ])
    func origins(url: String, origin: String?) {
        #expect(UploadPage.origin(of: url) == origin)
    }
}
