import Foundation
public import NIOSSL

/// TLS on a processor's frame port: its certificate and key, and for mutual TLS the CA that
/// client certificates must be signed by.
///
/// Holds the parsed certificates, not file paths, so a value that exists is usable: the files
/// were read and checked once, at start, where a mistake stops the program with a clear message.
public struct ServerTLSConfiguration: Sendable {
    /// The server's certificate, leaf first, then any intermediates clients need.
    public var certificateChain: [NIOSSLCertificate]
    /// The key of the leaf certificate.
    public var privateKey: NIOSSLPrivateKey
    /// When set, clients must present a certificate signed by one of these CAs (mutual TLS);
    /// a client without one, or with one from another CA, fails the handshake.
    public var clientCertificateAuthorities: [NIOSSLCertificate]? = nil

    public init(
        certificateChain: [NIOSSLCertificate],
        privateKey: NIOSSLPrivateKey,
        clientCertificateAuthorities: [NIOSSLCertificate]? = nil
    ) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
        self.clientCertificateAuthorities = clientCertificateAuthorities
    }

    /// Reads and checks the PEM files, including that the key belongs to the certificate.
    ///
    /// - Parameters:
    ///   - certificateFile: PEM certificate chain, leaf first.
    ///   - privateKeyFile: PEM private key of the leaf, without passphrase.
    ///   - clientCAFile: PEM CA bundle for mutual TLS, or nil.
    ///   - settings: how the user names the three, for messages (flag and variable).
    /// - Throws: `TLSSetupError` saying which file is wrong and how.
    public static func load(
        certificateFile: String,
        privateKeyFile: String,
        clientCAFile: String?,
        settings: (certificate: String, key: String, clientCA: String)
    ) throws(TLSSetupError) -> ServerTLSConfiguration {
        let chain = try PEMFile.certificates(at: certificateFile, setting: settings.certificate)
        let key = try PEMFile.privateKey(at: privateKeyFile, setting: settings.key)
        let clientCA = try clientCAFile.map { path throws(TLSSetupError) in try PEMFile.certificates(at: path, setting: settings.clientCA) }
        let configuration = ServerTLSConfiguration(certificateChain: chain, privateKey: key, clientCertificateAuthorities: clientCA)
        do {
            _ = try configuration.makeContext()
        } catch {
            throw TLSSetupError("\(settings.key): \(privateKeyFile) does not belong to the certificate in \(certificateFile) (\(error)); pass the key the certificate was issued for.")
        }
        return configuration
    }

    /// The BoringSSL context every accepted connection's handler is made from: TLS 1.2 or 1.3
    /// (1.3 when the client has it), no ALPN, client certificates required and checked
    /// against `clientCertificateAuthorities` when set.
    public func makeContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: self.certificateChain.map { .certificate($0) },
            privateKey: .privateKey(self.privateKey)
        )
        tls.minimumTLSVersion = .tlsv12
        if let authorities = self.clientCertificateAuthorities {
            // Chain checked, and a certificate required (BoringSSL's FAIL_IF_NO_PEER_CERT);
            // a client's name is not checked: a client has no host name to match.
            tls.certificateVerification = .noHostnameVerification
            tls.trustRoots = .certificates(authorities)
            // Tells clients which CA to pick a certificate from.
            tls.sendCANameList = true
        }
        return try NIOSSLContext(configuration: tls)
    }

    /// One line for start-up logs and `--check-config`: no key material, just what a person
    /// checks (which certificate, until when, whether clients must present one).
    public var summary: String {
        let leaf = self.certificateChain[0]
        var text = "on, certificate expires \(PEMFile.date(leaf.notValidAfter))"
        if let authorities = self.clientCertificateAuthorities {
            text += ", client certificates required (\(authorities.count) CA\(authorities.count == 1 ? "" : "s"))"
        }
        return text
    }
}

/// TLS from a client to processors: which CAs to trust, the name to check in the processor's
/// certificate, and for mutual TLS the client's own certificate and key.
public struct ClientTLSConfiguration: Sendable {
    /// CAs a processor's certificate must chain to; nil trusts the system's roots.
    public var trustRoots: [NIOSSLCertificate]? = nil
    /// The client's certificate, leaf first, for processors that require one; empty for none.
    public var certificateChain: [NIOSSLCertificate] = []
    /// The key of the client certificate's leaf.
    public var privateKey: NIOSSLPrivateKey? = nil
    /// The name the processor's certificate must carry, also sent as SNI. Nil means the host
    /// connected to. A name that is an IP address is checked against the certificate's IP
    /// addresses (SNI cannot carry one, so none is sent).
    public var serverName: String? = nil

    public init() {}

    /// Reads and checks the PEM files.
    ///
    /// - Parameters:
    ///   - trustRootsFile: PEM CA bundle; nil uses the system's roots.
    ///   - certificateFile: PEM client certificate for mutual TLS, or nil.
    ///   - privateKeyFile: its key; given exactly when `certificateFile` is.
    ///   - serverName: the name to check, or nil for the host connected to.
    ///   - settings: how the user names the three files, for messages.
    /// - Throws: `TLSSetupError` saying which file is wrong and how.
    public static func load(
        trustRootsFile: String?,
        certificateFile: String?,
        privateKeyFile: String?,
        serverName: String?,
        settings: (trustRoots: String, certificate: String, key: String)
    ) throws(TLSSetupError) -> ClientTLSConfiguration {
        var configuration = ClientTLSConfiguration()
        configuration.serverName = serverName
        configuration.trustRoots = try trustRootsFile.map { path throws(TLSSetupError) in try PEMFile.certificates(at: path, setting: settings.trustRoots) }
        switch (certificateFile, privateKeyFile) {
        case (nil, nil):
            break
        case (let certificate?, let key?):
            configuration.certificateChain = try PEMFile.certificates(at: certificate, setting: settings.certificate)
            configuration.privateKey = try PEMFile.privateKey(at: key, setting: settings.key)
            do {
                _ = try configuration.makeContext()
            } catch {
                throw TLSSetupError("\(settings.key): \(key) does not belong to the certificate in \(certificate) (\(error)); pass the key the certificate was issued for.")
            }
        default:
            throw TLSSetupError("A client certificate needs both \(settings.certificate) and \(settings.key); only one is set.")
        }
        return configuration
    }

    /// The BoringSSL context for one connection: TLS 1.2 or 1.3, full verification (chain and
    /// name), no ALPN.
    public func makeContext() throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = .fullVerification
        tls.trustRoots = self.trustRoots.map { .certificates($0) } ?? .default
        if let key = self.privateKey, !self.certificateChain.isEmpty {
            tls.certificateChain = self.certificateChain.map { .certificate($0) }
            tls.privateKey = .privateKey(key)
        }
        return try NIOSSLContext(configuration: tls)
    }

    /// The name to send as SNI for a connection to `host`: nil when the name to check is an IP
    /// address, which NIOSSL then checks against the address connected to.
    public func sniName(connectingTo host: String) -> String? {
        let name = self.serverName ?? host
        return IPAddressText.isIPAddress(name) ? nil : name
    }

    /// One line for start-up logs and `--check-config`.
    public var summary: String {
        var text = "on, trusting " + (self.trustRoots.map { "\($0.count) CA\($0.count == 1 ? "" : "s")" } ?? "the system's CAs")
        text += ", server name " + (self.serverName ?? "the processor's host")
        text += self.certificateChain.isEmpty ? ", no client certificate" : ", client certificate expires \(PEMFile.date(self.certificateChain[0].notValidAfter))"
        return text
    }
}

/// Whether text is an IPv4 or IPv6 literal (SNI may carry only a DNS name).
enum IPAddressText {
    static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return text.withCString { inet_pton(AF_INET, $0, &v4) == 1 || inet_pton(AF_INET6, $0, &v6) == 1 }
    }
}
