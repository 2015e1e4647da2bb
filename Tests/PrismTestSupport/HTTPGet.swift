import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A blocking HTTP/1.1 GET over a plain socket, for reading /metrics and /healthz in tests
/// without pulling an HTTP client library into them.
public func httpGet(host: String = "127.0.0.1", port: Int, path: String) throws -> (status: Int, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw DecodeError(detail: "socket failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    inet_pton(AF_INET, host, &address.sin_addr)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw DecodeError(detail: "connect to \(host):\(port) failed") }
    let request = "GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n"
    _ = request.withCString { send(fd, $0, strlen($0), 0) }
    var response = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 65_536)
    while true {
        let n = recv(fd, &chunk, chunk.count, 0)
        if n <= 0 { break }
        response.append(contentsOf: chunk[0..<n])
    }
    let text = String(decoding: response, as: UTF8.self)
    let status = Int(text.split(separator: " ", maxSplits: 2).dropFirst().first ?? "") ?? 0
    var body = text.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
    if text.lowercased().contains("transfer-encoding: chunked") {
        body = dechunk(body)
    }
    return (status, body)
}

private func dechunk(_ body: String) -> String {
    var out = ""
    var rest = Substring(body)
    while let lineEnd = rest.range(of: "\r\n") {
        guard let size = Int(rest[rest.startIndex..<lineEnd.lowerBound], radix: 16), size > 0 else { break }
        let start = lineEnd.upperBound
        let end = rest.utf8.index(start, offsetBy: size)
        out += rest[start..<end]
        rest = rest[end...].dropFirst(2)
    }
    return out
}

/// Reads one sample from Prometheus text: `name{labels} value`, labels matched exactly as
/// written (e.g. `outcome="cancelled"`); without labels, sums every series of the name.
public func metricValue(_ text: String, _ name: String, labels: String? = nil) -> Double {
    var total = 0.0
    for line in text.split(separator: "\n") where !line.hasPrefix("#") {
        let parts = line.split(separator: " ")
        guard parts.count >= 2, let value = Double(parts[parts.count - 1]) else { continue }
        let series = parts[0..<(parts.count - 1)].joined(separator: " ")
        if let labels {
            if series == "\(name){\(labels)}" { return value }
        } else if series == name || series.hasPrefix("\(name){") {
            total += value
        }
    }
    return total
}
