import Foundation
import Hummingbird
import NIOCore
import PrismStorage

/// What the gateway serves besides its API: the OpenAPI document and the upload page.
///
/// The files live in `Sources/PrismGateway/Resources/` and are compiled into the binary
/// (`.embedInCode` in Package.swift), so a gateway finds them whatever its working directory
/// and however it was installed.
extension Gateway {
    func addDocumentRoutes(_ router: Router<GatewayContext>) {
        let openAPI = ByteBuffer(bytes: PackageResources.openapi_json)
        router.get("openapi.json") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-cache"], body: .init(byteBuffer: openAPI))
        }
        guard self.configuration.uploadPage else { return }

        let page = ByteBuffer(bytes: PackageResources.index_html)
        let policy = UploadPage.contentSecurityPolicy(imageOrigin: UploadPage.origin(of: self.store.url(for: "images/")))
        router.get("/") { _, _ -> Response in
            Response(status: .ok, headers: UploadPage.headers(contentType: "text/html; charset=utf-8", policy: policy), body: .init(byteBuffer: page))
        }
        let assets: [String: (type: String, body: ByteBuffer)] = [
            "app.js": ("text/javascript; charset=utf-8", ByteBuffer(bytes: PackageResources.app_js)),
            "app.css": ("text/css; charset=utf-8", ByteBuffer(bytes: PackageResources.app_css)),
            "icon.svg": ("image/svg+xml", ByteBuffer(bytes: PackageResources.icon_svg)),
        ]
        router.get("assets/:asset") { _, context -> Response in
            guard let name = context.parameters.get("asset"), let asset = assets[name] else {
                throw GatewayError.notFound("No such asset; the page uses /assets/app.js, /assets/app.css and /assets/icon.svg.")
            }
            return Response(status: .ok, headers: UploadPage.headers(contentType: asset.type, policy: policy), body: .init(byteBuffer: asset.body))
        }
    }
}

enum UploadPage {
    /// The page's headers. `no-cache`: the files change with the binary and are small, so a
    /// browser revalidates rather than keep an old script.
    static func headers(contentType: String, policy: String) -> HTTPFields {
        [
            .contentType: contentType,
            .cacheControl: "no-cache",
            .contentSecurityPolicy: policy,
            .init("X-Content-Type-Options")!: "nosniff",
            .init("Referrer-Policy")!: "no-referrer",
        ]
    }

    /// Scripts, styles and requests from this gateway only, no inline script; images also from
    /// where the manifest's URLs point (the gateway's /files under another name, a CDN, S3).
    static func contentSecurityPolicy(imageOrigin: String?) -> String {
        let images = ["'self'", "blob:", imageOrigin].compactMap { $0 }.joined(separator: " ")
        return "default-src 'none'; script-src 'self'; style-src 'self'; img-src \(images); connect-src 'self'; "
            + "form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    }

    /// `scheme://host[:port]` of a URL, nil when it has none (a relative base URL).
    static func origin(of url: String) -> String? {
        guard let components = URLComponents(string: url), let scheme = components.scheme, let host = components.host, !host.isEmpty else {
            return nil
        }
        let bracketed = host.contains(":") && !host.hasPrefix("[") ? "[\(host)]" : host
        return "\(scheme)://\(bracketed)\(components.port.map { ":\($0)" } ?? "")"
    }
}
