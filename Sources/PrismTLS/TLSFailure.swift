import NIOCore
import NIOSSL

/// A TLS handshake or record-layer failure, described for the person who has to fix it.
///
/// NIOSSL reports failures as BoringSSL error stacks such as
/// `handshakeFailed(sslError([Error: 268435581 error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED ...]))`.
/// The reason codes in them are stable, so they are matched here and turned into a sentence
/// that says what went wrong (unknown CA, name mismatch, no client certificate, not TLS at all)
/// and which setting to look at. The original text is kept as `detail` for debugging.
public struct TLSFailure: Error, CustomStringConvertible, Sendable {
    /// What went wrong, in words.
    public var reason: String
    /// NIOSSL's own description of the error.
    public var detail: String

    /// Which end of the connection saw the failure: the advice differs.
    public struct Role: Sendable, Equatable {
        private enum Backing { case client, server }
        private let backing: Backing
        public static let client = Role(backing: .client)
        public static let server = Role(backing: .server)
    }

    public init(reason: String, detail: String) {
        self.reason = reason
        self.detail = detail
    }

    /// Classifies `error` if it came from TLS; nil for anything else (a reset, a timeout).
    ///
    /// - Parameters:
    ///   - error: what NIOSSL fired down the pipeline.
    ///   - role: the side that saw it.
    ///   - serverName: for a client, the name it checked the certificate against.
    public init?(_ error: any Error, role: Role, serverName: String? = nil) {
        if let failure = error as? TLSFailure {
            self = failure
            return
        }
        let detail = String(describing: error)
        guard error is NIOSSLError || error is BoringSSLError || error is NIOSSLExtraError else { return nil }
        self.init(reason: Self.reason(detail, role: role, serverName: serverName), detail: detail)
    }

    public var description: String { "TLS: \(self.reason)" }

    /// The sentence for a BoringSSL reason code (or NIOSSL error name) found in `detail`.
    static func reason(_ detail: String, role: Role, serverName: String?) -> String {
        let client = role == .client
        let rules: [(String, String)] = [
            ("failedToValidateHostname",
             "hostname mismatch: the processor's certificate is not valid for \(serverName.map { "'\($0)'" } ?? "the address connected to"); set --processor-tls-server-name to a name the certificate carries, or reissue it with that name"),
            ("CERTIFICATE_VERIFY_FAILED",
             client
                ? "certificate verify failed: the processor's certificate is not signed by a CA this client trusts (unknown CA), or has expired; point --processor-tls-ca at the CA that issued it"
                : "the client's certificate is not signed by the CA in --tls-client-ca (unknown CA), or has expired"),
            ("PEER_DID_NOT_RETURN_A_CERTIFICATE",
             "the client presented no certificate, and this processor requires one (--tls-client-ca)"),
            ("CERTIFICATE_REQUIRED",
             "the processor requires a client certificate (mutual TLS) and none was sent; set --processor-tls-cert and --processor-tls-key"),
            ("ALERT_UNKNOWN_CA",
             client
                ? "the processor does not trust this client's certificate (unknown CA): use one signed by the CA in the processor's --tls-client-ca"
                : "the client does not trust this processor's certificate (unknown CA): give the client the CA that issued --tls-cert"),
            ("ALERT_BAD_CERTIFICATE",
             client ? "the processor rejected this client's certificate (bad certificate)" : "the client rejected this processor's certificate (bad certificate)"),
            ("ALERT_CERTIFICATE_EXPIRED",
             client ? "the processor rejected this client's certificate as expired" : "the client rejected this processor's certificate as expired"),
            ("ALERT_HANDSHAKE_FAILURE",
             "the peer aborted the handshake (no common TLS version or cipher, or a client certificate it requires is missing)"),
            ("WRONG_VERSION_NUMBER",
             client
                ? "the processor did not answer with TLS; it may not have TLS turned on (--tls-cert), or this is not a processor port"
                : "the client did not speak TLS (plain TCP on a TLS port?)"),
            ("HTTP_REQUEST", "the peer sent an HTTP request, not TLS"),
            ("UNSUPPORTED_PROTOCOL", "no TLS version in common (Prism needs TLS 1.2 or 1.3)"),
            ("PROTOCOL_VERSION", "no TLS version in common (Prism needs TLS 1.2 or 1.3)"),
            ("NO_SHARED_CIPHER", "no cipher suite in common"),
            ("eofDuringHandshake",
             client
                ? "the processor closed the connection during the TLS handshake (it may not speak TLS, or refused this client; see its log)"
                : "the client closed the connection during the TLS handshake (it may not trust this certificate; see its log)"),
            ("uncleanShutdown", "the peer closed the connection without ending TLS (close_notify)"),
        ]
        for (code, sentence) in rules where detail.contains(code) {
            return sentence
        }
        return "handshake or record error (\(detail))"
    }
}
