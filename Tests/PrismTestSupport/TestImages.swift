public import Foundation

/// The corpus made by scripts/make_test_images.py (real photos plus generated edge cases).
public enum TestImages {
    public static let root: URL = {
        if let path = ProcessInfo.processInfo.environment["PRISM_TEST_IMAGES"] {
            return URL(fileURLWithPath: path)
        }
        // Tests/PrismTestSupport/TestImages.swift -> repository root.
        return URL(fileURLWithPath: #filePath)
            .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent(".test-images")
    }()

    public static func photo(_ name: String) throws -> Data {
        try self.load("photos/\(name)")
    }

    public static func edge(_ name: String) throws -> Data {
        try self.load("edge/\(name)")
    }

    public static var photoNames: [String] {
        ["Garden.jpg", "Dune.jpg", "Wood.jpg", "TwoWings.jpg", "Storm.jpg", "RainDrops.jpg", "Blinds.jpg", "LadyBird.jpg", "YellowFlower.jpg"]
    }

    private static func load(_ relative: String) throws -> Data {
        let url = self.root.appendingPathComponent(relative)
        guard let data = FileManager.default.contents(atPath: url.path) else {
            throw MissingTestImage(path: url.path)
        }
        return data
    }
}

public struct MissingTestImage: Error, CustomStringConvertible {
    var path: String
    public var description: String { "\(self.path) is missing: run scripts/make_test_images.py (make test does)" }
}
