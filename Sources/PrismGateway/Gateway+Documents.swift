import Hummingbird
import NIOCore

/// What the gateway serves besides its API: the OpenAPI document.
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
    }
}
