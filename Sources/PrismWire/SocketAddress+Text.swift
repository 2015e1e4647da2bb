public import NIOCore

extension SocketAddress {
    /// "127.0.0.1:7070" or "[::1]:7070", rather than NIO's "[IPv4]127.0.0.1/127.0.0.1:7070".
    public var hostPort: String {
        guard let ip = self.ipAddress, let port = self.port else { return "\(self)" }
        return self.protocol == .inet6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
