public import ArgumentParser
import Foundation
import Synchronization
public import Logging

/// Resolves a setting the way every Prism binary does: the command-line flag if given, else
/// the environment variable, else the default. A value that does not parse is a start-up
/// error naming where it came from.
public final class Settings: Sendable {
    let environment: [String: String]
    private let consulted = Mutex<Set<String>>([])

    public init(environment: [String: String]) {
        self.environment = environment
    }

    /// Settings from this process's environment.
    public convenience init() {
        self.init(environment: ProcessInfo.processInfo.environment)
    }

    /// `PRISM_*` variables that are set but that no setting read: typos, or settings of the
    /// other binary. Call after resolving every setting.
    public var unknownVariables: [String] {
        let known = self.consulted.withLock { $0 }
        // PRISM_RUN_* belong to scripts/run-local.sh, PRISM_TEST_* to the test suites.
        return self.environment.keys.filter {
            $0.hasPrefix("PRISM_") && !$0.hasPrefix("PRISM_RUN_") && !$0.hasPrefix("PRISM_TEST_") && !known.contains($0)
        }.sorted()
    }

    public func value<T: SettingValue>(_ flag: T?, env name: String, default fallback: T) throws -> T {
        try self.optional(flag, env: name) ?? fallback
    }

    public func optional<T: SettingValue>(_ flag: T?, env name: String) throws -> T? {
        self.consulted.withLock { _ = $0.insert(name) }
        if let flag { return flag }
        guard let raw = self.environment[name], !raw.isEmpty else { return nil }
        guard let value = T(setting: raw) else {
            throw ValidationError("\(name)=\(raw) is not valid: expected \(T.settingDescription).")
        }
        return value
    }

    /// A boolean switch: the flag, or the variable set to 1/true/yes.
    public func flag(_ flag: Bool, env name: String) throws -> Bool {
        self.consulted.withLock { _ = $0.insert(name) }
        if flag { return true }
        guard let raw = self.environment[name]?.lowercased(), !raw.isEmpty else { return false }
        switch raw {
        case "1", "true", "yes", "on": return true
        case "0", "false", "no", "off": return false
        default: throw ValidationError("\(name)=\(raw) is not valid: expected true or false.")
        }
    }

    /// Checks a resolved number against a range, naming the flag and variable in the message.
    public static func check<T: Comparable>(_ value: T, in range: ClosedRange<T>, _ what: String) throws {
        guard range.contains(value) else {
            throw ValidationError("\(what) must be between \(range.lowerBound) and \(range.upperBound); got \(value).")
        }
    }
}

/// A type a setting can be parsed into.
public protocol SettingValue {
    init?(setting: String)
    static var settingDescription: String { get }
}

extension Int: SettingValue {
    public init?(setting: String) { self.init(setting.trimmingCharacters(in: .whitespaces)) }
    public static var settingDescription: String { "a whole number" }
}

/// On/off settings that default to on, so they need a way to say off: `--name=false`,
/// `PRISM_NAME=false` (also 0/no/off and 1/yes/on).
extension Bool: SettingValue {
    public init?(setting: String) {
        switch setting.trimmingCharacters(in: .whitespaces).lowercased() {
        case "1", "true", "yes", "on": self = true
        case "0", "false", "no", "off": self = false
        default: return nil
        }
    }
    public static var settingDescription: String { "true or false" }
}

extension String: SettingValue {
    public init?(setting: String) { self = setting }
    public static var settingDescription: String { "text" }
}

/// A duration written as `250ms`, `30s`, `5m` or a plain number of seconds.
public struct DurationSetting: SettingValue, ExpressibleByArgument, Sendable, CustomStringConvertible {
    public var duration: Duration

    public init(_ duration: Duration) { self.duration = duration }

    public init?(setting: String) {
        let text = setting.trimmingCharacters(in: .whitespaces).lowercased()
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let number = Double(text.dropLast(suffix.count)), number >= 0 else { return nil }
            self.duration = .milliseconds(Int64((number * scale * 1000).rounded()))
            return
        }
        guard let seconds = Double(text), seconds >= 0 else { return nil }
        self.duration = .milliseconds(Int64((seconds * 1000).rounded()))
    }

    public init?(argument: String) { self.init(setting: argument) }
    public static var settingDescription: String { "a duration such as 500ms, 30s or 5m" }
    public var description: String { "\(self.duration)" }
}

/// A size in bytes written as `1048576`, `512k`, `64m` or `1g` (binary multiples).
public struct ByteSizeSetting: SettingValue, ExpressibleByArgument, Sendable {
    public var bytes: Int

    public init(_ bytes: Int) { self.bytes = bytes }

    public init?(setting: String) {
        var text = setting.trimmingCharacters(in: .whitespaces).lowercased()
        for suffix in ["ib", "b"] where text.hasSuffix(suffix) && text.count > suffix.count {
            text.removeLast(suffix.count)
            break
        }
        let scales: [Character: Int] = ["k": 1 << 10, "m": 1 << 20, "g": 1 << 30]
        var scale = 1
        if let last = text.last, let s = scales[last] {
            scale = s
            text.removeLast()
        }
        guard let number = Int(text), number >= 0 else { return nil }
        let (bytes, overflow) = number.multipliedReportingOverflow(by: scale)
        guard !overflow else { return nil }
        self.bytes = bytes
    }

    public init?(argument: String) { self.init(setting: argument) }
    public static var settingDescription: String { "a size such as 1048576, 512k, 64m or 1g" }
}

/// What both binaries do once their settings are resolved: warn about unknown variables, and
/// with --check-config print the resolved settings and stop.
public enum StartupCheck {
    /// - Returns: true when the process should exit now (check mode).
    public static func finish(_ settings: Settings, checkOnly: Bool, summary: [(String, String)], logger: Logger) -> Bool {
        let unknown = settings.unknownVariables
        for name in unknown {
            logger.warning("unknown setting ignored", metadata: ["variable": "\(name)"])
        }
        guard checkOnly else { return false }
        for (name, value) in summary {
            print("\(name) = \(value)")
        }
        print(unknown.isEmpty ? "configuration OK" : "configuration OK, but these variables are not settings of this program: \(unknown.joined(separator: ", "))")
        return true
    }
}
