import Foundation
import PrismProto
import PrismWire
import NIOCore
import SwiftProtobuf
#if canImport(Glibc)
import Glibc
#endif

/// A bare TCP client for sending the processor bytes no well-behaved client would.
final class RawSocket: @unchecked Sendable {
    let fd: Int32

    init(port: Int) throws {
        self.fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, "127.0.0.1", &address.sin_addr)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(self.fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw RawSocketError.connect }
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(self.fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(self.fd) }

    func send(_ bytes: [UInt8]) {
        _ = bytes.withUnsafeBytes { Glibc.send(self.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    func send(_ frame: Prism_V1_Frame) throws {
        var buffer = try frame.encoded()
        self.send(buffer.readBytes(length: buffer.readableBytes)!)
    }

    /// Reads until the server closes (or 10 s pass) and parses what came as frames.
    func readUntilClosed() throws -> (frames: [Prism_V1_Frame], closed: Bool) {
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 65_536)
        var closed = false
        while true {
            let n = recv(self.fd, &chunk, chunk.count, 0)
            if n == 0 { closed = true; break }
            if n < 0 { break }  // timeout
            bytes.append(contentsOf: chunk[0..<n])
        }
        var frames: [Prism_V1_Frame] = []
        var offset = 0
        while bytes.count - offset >= 4 {
            let length = Int(bytes[offset]) << 24 | Int(bytes[offset + 1]) << 16 | Int(bytes[offset + 2]) << 8 | Int(bytes[offset + 3])
            guard bytes.count - offset - 4 >= length else { break }
            frames.append(try Prism_V1_Frame(serializedBytes: Array(bytes[(offset + 4)..<(offset + 4 + length)])))
            offset += 4 + length
        }
        return (frames, closed)
    }
}

enum RawSocketError: Error { case connect }

func helloFrame(version: UInt32 = PrismProtocol.version, token: String = "") -> Prism_V1_Frame {
    var hello = Prism_V1_Hello()
    hello.protocolVersion = version
    hello.maxFrameSize = UInt32(PrismProtocol.defaultMaxFrameSize)
    hello.authToken = token
    return .hello(hello)
}
