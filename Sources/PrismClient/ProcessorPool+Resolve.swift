import Foundation
import Logging
import NIOPosix

/// Processors found through DNS: every address a name resolves to is a processor, re-resolved
/// every `resolveInterval`.
extension ProcessorPool {
    /// Re-resolves the DNS names and adds or retires processors to match.
    ///
    /// Only an answer retires processors: a name that does not exist (NXDOMAIN, or no address,
    /// as a headless Service with no ready pod gives) has none. A lookup that fails (timeout,
    /// SERVFAIL, no resolver) keeps the name's last known processors: a DNS hiccup must not
    /// turn every upload into a 503 until the next refresh.
    func resolveLoop() async {
        var lastKnown: [String: [ProcessorPoolConfiguration.Endpoint]] = [:]
        while !Task.isCancelled {
            var wanted = Set<String>()
            var found: [ProcessorPoolConfiguration.Endpoint] = []
            for name in self.configuration.dnsNames {
                let key = name.description
                switch await Self.lookup(name.host) {
                case .answer(let addresses):
                    if addresses.isEmpty {
                        self.logger.warning("processor name resolves to nothing", metadata: ["name": "\(name.host)"])
                    }
                    lastKnown[key] = addresses.map { ProcessorPoolConfiguration.Endpoint(host: $0, port: name.port, serverName: name.host) }
                case .failed(let reason):
                    self.logger.warning("processor name lookup failed; keeping its last known processors", metadata: [
                        "name": "\(name.host)", "error": "\(reason)", "kept": "\(lastKnown[key]?.count ?? 0)",
                    ])
                }
                for endpoint in lastKnown[key] ?? [] {
                    wanted.insert(endpoint.description)
                    found.append(endpoint)
                }
            }
            found.forEach { self.add($0) }
            let statics = Set(self.configuration.endpoints.map(\.description))
            let gone = self.removeSubchannels { !wanted.contains($0) && !statics.contains($0) }
            for subchannel in gone {
                self.logger.info("processor no longer in DNS", metadata: ["processor": "\(subchannel.address)"])
                subchannel.remove()
            }
            try? await Task.sleep(for: self.configuration.resolveInterval)
        }
    }

    /// What one lookup gave: the addresses in an answer (none when the name does not exist or
    /// has no address), or a failure that says nothing about the name.
    enum Lookup: Equatable {
        case answer([String])
        case failed(String)
    }

    /// The addresses of `host`, or none when the lookup fails for any reason.
    static func resolve(_ host: String) async -> [String] {
        if case .answer(let addresses) = await Self.lookup(host) { return addresses }
        return []
    }

    /// getaddrinfo on a thread pool thread (it blocks).
    static func lookup(_ host: String) async -> Lookup {
        (try? await NIOThreadPool.singleton.runIfActive { () -> Lookup in
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>? = nil
            let status = getaddrinfo(host, nil, &hints, &result)
            switch status {
            case 0:
                break
            case EAI_NONAME, Self.eaiNoData:
                return .answer([])  // the name does not exist, or has no address
            default:
                return .failed(String(cString: gai_strerror(status)))
            }
            defer { freeaddrinfo(result) }
            var addresses: [String] = []
            var cursor = result
            while let info = cursor {
                var buffer = [CChar](repeating: 0, count: Int(NI_MAXHOST))
                if getnameinfo(info.pointee.ai_addr, info.pointee.ai_addrlen, &buffer, socklen_t(buffer.count), nil, 0, NI_NUMERICHOST) == 0 {
                    let address = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                    if !addresses.contains(address) { addresses.append(address) }
                }
                cursor = info.pointee.ai_next
            }
            return .answer(addresses.sorted())
        }) ?? .failed("the resolver thread pool is shut down")
    }

    /// glibc's EAI_NODATA ("no address associated with hostname"), hidden behind __USE_GNU.
    static let eaiNoData: Int32 = -5
}
