import ArgumentParser
import Logging
@testable import PrismRuntime
import Testing

@Suite("Settings from flags and environment")
struct SettingsTests {
    @Test("a flag wins over the variable, the variable over the default")
    func precedence() throws {
        let settings = Settings(environment: ["PORT": "9000"])
        #expect(try settings.value(1234, env: "PORT", default: 80) == 1234)
        #expect(try settings.value(nil as Int?, env: "PORT", default: 80) == 9000)
        #expect(try settings.value(nil as Int?, env: "OTHER", default: 80) == 80)
    }

    @Test("a bad variable names itself and what was expected")
    func badValues() throws {
        let settings = Settings(environment: ["PORT": "eighty", "WAIT": "soon", "SIZE": "12q", "ON": "maybe"])
        #expect(throws: ValidationError.self) { try settings.value(nil as Int?, env: "PORT", default: 80) }
        let error = #expect(throws: ValidationError.self) {
            try settings.value(nil as DurationSetting?, env: "WAIT", default: DurationSetting(.seconds(1)))
        }
        #expect(error?.message.contains("WAIT=soon") == true, "\(String(describing: error))")
        #expect(error?.message.contains("500ms") == true, "the message says what a duration looks like")
        #expect(throws: ValidationError.self) { try settings.value(nil as ByteSizeSetting?, env: "SIZE", default: ByteSizeSetting(1)) }
        #expect(throws: ValidationError.self) { try settings.flag(false, env: "ON") }
    }

    @Test("durations and sizes", arguments: [("250ms", 250), ("30s", 30_000), ("1.5s", 1500), ("2m", 120_000), ("5", 5000)])
    func durations(text: String, millis: Int) {
        #expect(DurationSetting(setting: text)?.duration == .milliseconds(millis))
    }

    @Test("sizes use binary multiples", arguments: [("1024", 1024), ("512k", 524_288), ("64m", 67_108_864), ("64MiB", 67_108_864), ("1g", 1_073_741_824)])
    func sizes(text: String, bytes: Int) {
        #expect(ByteSizeSetting(setting: text)?.bytes == bytes)
    }

    @Test("ranges are checked with the option's name")
    func ranges() {
        #expect(throws: ValidationError.self) { try Settings.check(0, in: 1...10, "--workers") }
        #expect(throws: Never.self) { try Settings.check(5, in: 1...10, "--workers") }
    }

    @Test("logfmt quotes what needs quoting; JSON escapes control characters")
    func logFormats() {
        #expect(StructuredLogHandler.logfmtValue("simple") == "simple")
        #expect(StructuredLogHandler.logfmtValue("two words") == "\"two words\"")
        #expect(StructuredLogHandler.logfmtValue("say \"hi\"") == "\"say \\\"hi\\\"\"")
        #expect(StructuredLogHandler.logfmtValue("") == "\"\"")
        #expect(StructuredLogHandler.jsonString("a\"b\n\u{1}") == "\"a\\\"b\\n\\u0001\"")
    }
}
