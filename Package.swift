// swift-tools-version:6.1
import Foundation
import PackageDescription

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "prism",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "prism-processor", targets: ["prism-processor"]),
        .executable(name: "prism-gateway", targets: ["prism-gateway"]),
        .library(name: "PrismClient", targets: ["PrismClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-protobuf.git", from: "1.39.0"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/vapor/multipart-kit.git", from: "4.7.1"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
    ],
    targets: [
        // C libraries, reached through fixed-arity inline shims (Swift cannot call C variadics).
        .systemLibrary(
            name: "CVips",
            pkgConfig: "vips",
            providers: [.apt(["libvips-dev"])]
        ),
        .systemLibrary(
            name: "CCurl",
            pkgConfig: "libcurl",
            providers: [.apt(["libcurl4-openssl-dev"])]
        ),
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),

        // Generated from Protos/ by scripts/gen-protos.sh; never edited by hand.
        // One malloc arena for the processor, set by a constructor before any thread starts.
        .target(name: "CMallocArena"),
        .target(
            name: "PrismProto",
            dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
            swiftSettings: swiftSettings
        ),
        // Framing, handshake, errors: what both ends of a processor connection share.
        .target(
            name: "PrismWire",
            dependencies: [
                "PrismProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: swiftSettings
        ),
        // TLS for the frame port (swift-nio-ssl): PEM files checked at start, handshake failures
        // described, the handlers both ends put in front of the frame codec.
        .target(
            name: "PrismTLS",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOTLS", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
        // The libvips pipeline: variant specs in, encoded images out.
        .target(
            name: "PrismImaging",
            dependencies: [
                "CVips",
                "PrismProto",
                "PrismWire",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // The processor service: listener, worker pool, metrics endpoint.
        .target(
            name: "PrismProcessor",
            dependencies: [
                "CCrypto",
                "PrismWire",
                "PrismTLS",
                "PrismImaging",
                "PrismProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ],
            swiftSettings: swiftSettings
        ),
        // The Swift client of the processor protocol, usable by any Swift service.
        .target(
            name: "PrismClient",
            dependencies: [
                "PrismWire",
                "PrismTLS",
                "PrismProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // What every Prism binary shares: settings from flags or environment, log format.
        .target(
            name: "PrismRuntime",
            dependencies: [
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        // Where images are kept: local disk, or S3 through libcurl's multi interface and SigV4.
        .target(
            name: "PrismStorage",
            dependencies: [
                "CCurl",
                "CCrypto",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        // The HTTP API: uploads, recipes, orchestration over the processor pool, storage.
        .target(
            name: "PrismGateway",
            dependencies: [
                "PrismClient",
                "PrismStorage",
                "PrismWire",
                "PrismProto",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "MultipartKit", package: "multipart-kit"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOFoundationCompat", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            // Compiled into the binary (PackageResources), so a gateway copied alone (the
            // container image) still serves its API document and upload page.
            resources: [
                .embedInCode("Resources/openapi.json"),
                .embedInCode("Resources/upload-page/index.html"),
                .embedInCode("Resources/upload-page/app.js"),
                .embedInCode("Resources/upload-page/app.css"),
                .embedInCode("Resources/upload-page/icon.svg"),
            ],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "prism-processor",
            dependencies: [
                "CMallocArena",
                "PrismProcessor",
                "PrismTLS",
                "PrismRuntime",
                "PrismImaging",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // Test images, spec builders and decoders shared by the test targets.
        .target(
            name: "PrismTestSupport",
            dependencies: ["CVips", "PrismProto"],
            path: "Tests/PrismTestSupport",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "prism-gateway",
            dependencies: [
                "PrismGateway",
                "PrismTLS",
                "PrismRuntime",
                "PrismClient",
                "PrismStorage",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),

        // The in-process half of the benchmark harness (Benchmarks/run.py).
        .executableTarget(
            name: "prism-bench",
            dependencies: [
                "PrismImaging",
                "PrismClient",
                "PrismGateway",
                "PrismProto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings
        ),

        .testTarget(
            name: "PrismWireTests",
            dependencies: [
                "PrismWire",
                "PrismProto",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOTestUtils", package: "swift-nio"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismImagingTests",
            dependencies: ["PrismImaging", "PrismProto", "CVips", "PrismTestSupport"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismProcessorTests",
            dependencies: [
                "PrismProcessor",
                "PrismClient",
                "PrismStorage",
                "PrismWire",
                "PrismProto",
                "PrismTestSupport",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismStorageTests",
            dependencies: [
                "PrismStorage",
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismRuntimeTests",
            dependencies: [
                "PrismRuntime",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismGatewayTests",
            dependencies: [
                "PrismGateway",
                "PrismClient",
                "PrismProto",
                "PrismTestSupport",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdTesting", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismTLSTests",
            dependencies: ["PrismTLS"],
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "PrismClientTests",
            dependencies: [
                "PrismClient",
                "PrismTLS",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ],
            swiftSettings: swiftSettings
        ),
    ]
)

// libFuzzer targets, only when scripts/fuzz.sh builds them (PRISM_FUZZ=1, own scratch path,
// -sanitize=fuzzer,address): their main hands over to libFuzzer, which a normal build lacks.
if ProcessInfo.processInfo.environment["PRISM_FUZZ"] != nil {
    package.targets += [
        .executableTarget(
            name: "prism-fuzz-frames",
            dependencies: [
                "PrismWire",
                "PrismProto",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Tests/Fuzz/FuzzFrames",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "prism-fuzz-specs",
            dependencies: [
                "PrismImaging",
                "PrismWire",
                "PrismProto",
                .product(name: "SwiftProtobuf", package: "swift-protobuf"),
            ],
            path: "Tests/Fuzz/FuzzSpecs",
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "prism-fuzz-connection",
            dependencies: [
                "PrismProcessor",
                "PrismWire",
                "PrismProto",
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            path: "Tests/Fuzz/FuzzConnection",
            swiftSettings: swiftSettings
        ),
    ]
}
