import Foundation
import Logging
import NIOPosix

/// Processors found through DNS: every address a name resolves to is a processor, re-resolved
/// every `resolveInterval`.
extension ProcessorPool {
    /// Re-resolves the DNS names and adds or retires processors to match.
    func resolveLoop() async {
        while !Task.isCancelled {
            var wanted = Set<String>()
            var found: [ProcessorPoolConfiguration.Endpoint] = []
            for name in self.configuration.dnsNames {
                let addresses = await Self.resolve(name.host)
                if addresses.isEmpty {
                    self.logger.warning("processor name resolves to nothing", metadata: ["name": "\(name.host)"])
                }
                for address in addresses {
                    let endpoint = ProcessorPoolConfiguration.Endpoint(host: address, port: name.port, serverName: name.host)
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

    /// getaddrinfo on a thread pool thread (it blocks).
    static func resolve(_ host: String) async -> [String] {
        (try? await NIOThreadPool.singleton.runIfActive {
            var hints = addrinfo()
            hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
            var result: UnsafeMutablePointer<addrinfo>? = nil
            guard getaddrinfo(host, nil, &hints, &result) == 0 else { return [String]() }
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
            return addresses.sorted()
        }) ?? []
    }
}
