import Foundation
@testable import PrismTLS
import Testing

/// The PEM checks behind `--check-config`, the name sent as SNI, and the sentences that
/// replace BoringSSL's error stacks.
@Suite struct TLSConfigurationTests {
    @Test func theServerNameIsTheHostUnlessSetAndSNINeverCarriesAnAddress() {
        var tls = ClientTLSConfiguration()
        #expect(tls.sniName(connectingTo: "proc1.internal") == "proc1.internal")
        #expect(tls.sniName(connectingTo: "127.0.0.1") == nil)
        #expect(tls.sniName(connectingTo: "::1") == nil)
        tls.serverName = "processor"
        #expect(tls.sniName(connectingTo: "10.0.0.7") == "processor")
        tls.serverName = "10.0.0.7"
        #expect(tls.sniName(connectingTo: "proc1.internal") == nil)
    }

    @Test func handshakeFailuresAreNamedByTheirReason() {
        let unknownCA = "handshakeFailed(NIOSSL.BoringSSLError.sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at ...]))"
        #expect(TLSFailure.reason(unknownCA, role: .client, serverName: nil).contains("unknown CA"))
        #expect(TLSFailure.reason(unknownCA, role: .server, serverName: nil).contains("--tls-client-ca"))
        let mismatch = "NIOSSLExtraError.failedToValidateHostname: Couldn't find images.example.com in certificate from peer"
        let sentence = TLSFailure.reason(mismatch, role: .client, serverName: "images.example.com")
        #expect(sentence.contains("hostname mismatch") && sentence.contains("'images.example.com'"))
        let noCertificate = "sslError([Error: 268436566 error:10000456:SSL routines:OPENSSL_internal:TLSV1_ALERT_CERTIFICATE_REQUIRED at ...])"
        #expect(TLSFailure.reason(noCertificate, role: .client, serverName: nil).contains("requires a client certificate"))
        let notTLS = "handshakeFailed(sslError([Error: 268435708 error:100000fc:SSL routines:OPENSSL_internal:WRONG_VERSION_NUMBER at ...]))"
        #expect(TLSFailure.reason(notTLS, role: .client, serverName: nil).contains("did not answer with TLS"))
        #expect(TLSFailure(CancellationError(), role: .client) == nil)
    }

    @Test func eachMistakeInAPEMFileIsNamed() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("prism-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let setting = "--tls-cert (PRISM_TLS_CERT)"

        func message(_ path: String) -> String {
            do {
                _ = try PEMFile.certificates(at: path, setting: setting)
                return "no error"
            } catch {
                return error.message
            }
        }

        let missing = directory.appendingPathComponent("missing.pem").path
        #expect(message(missing) == "\(setting): \(missing) does not exist.")
        #expect(message(directory.path).contains("is a directory"))

        let der = directory.appendingPathComponent("cert.der")
        try Data([0x30, 0x82, 0x01, 0x0A, 0x02]).write(to: der)
        #expect(message(der.path).contains("is not PEM") && message(der.path).contains("DER"))

        let key = directory.appendingPathComponent("key.pem")
        try Data("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".utf8).write(to: key)
        #expect(message(key.path).contains("no 'CERTIFICATE' PEM block"))

        let broken = directory.appendingPathComponent("broken.pem")
        try Data("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n".utf8).write(to: broken)
        #expect(message(broken.path).contains("does not parse as PEM certificates"))

        let encrypted = directory.appendingPathComponent("encrypted.pem")
        try Data("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n".utf8).write(to: encrypted)
        #expect(throws: TLSSetupError.self) { try PEMFile.privateKey(at: encrypted.path, setting: "--tls-key") }
        do {
            _ = try PEMFile.privateKey(at: encrypted.path, setting: "--tls-key")
        } catch {
            #expect(error.message.contains("passphrase"))
        }
    }
}
