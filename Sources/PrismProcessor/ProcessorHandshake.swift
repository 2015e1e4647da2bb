import PrismProto
import PrismWire

/// The processor's rules for a connection's first frame.
///
/// Run twice per connection: by the frame decoder, which raises its size limit only for a first
/// frame that passes, and by the connection's state machine, which answers it.
enum ProcessorHandshake {
    /// Why a connection's first frame does not open it, or nil when it is a Hello this
    /// processor accepts.
    static func refusal(_ first: Prism_V1_Frame, configuration config: ProcessorConfiguration) -> PrismRPCError? {
        guard case .hello(let hello) = first.kind, first.callID == 0 else {
            return PrismRPCError(code: .failedPrecondition, reason: .protocolViolation, message: "The first frame on a connection must be a Hello on call 0.")
        }
        guard hello.protocolVersion == PrismProtocol.version else {
            return PrismRPCError(
                code: .failedPrecondition,
                reason: .unsupportedVersion,
                message: "This processor speaks Prism protocol version \(PrismProtocol.version); the client sent version \(hello.protocolVersion)."
            )
        }
        if let token = config.authToken, !constantTimeEquals(token, hello.authToken) {
            return PrismRPCError(code: .unauthenticated, message: "The Hello did not carry this processor's auth token; configure the client with the right token.")
        }
        guard hello.maxFrameSize == 0 || hello.maxFrameSize >= PrismProtocol.minimumMaxFrameSize else {
            return PrismRPCError(code: .invalidArgument, reason: .protocolViolation, message: "max_frame_size must be at least \(PrismProtocol.minimumMaxFrameSize) bytes.")
        }
        return nil
    }

    /// The Error frame for bytes that cannot be read as frames.
    ///
    /// - Parameter maxFrameSize: the processor's limit once a connection is open; a smaller
    ///   limit in `error` means the frame was refused before the Hello.
    static func refusal(for error: FrameError, maxFrameSize: Int) -> PrismRPCError {
        switch error {
        case .tooLarge(let length, let limit) where limit < maxFrameSize:
            return PrismRPCError(
                code: .resourceExhausted,
                reason: .frameTooLarge,
                message: "A frame of \(length) bytes arrived before the Hello; until a valid Hello a connection may send at most \(limit) bytes per frame."
            )
        case .tooLarge(let length, let limit):
            return PrismRPCError(
                code: .resourceExhausted,
                reason: .frameTooLarge,
                message: "A frame of \(length) bytes was announced; this processor accepts at most \(limit) bytes per frame."
            )
        case .malformed:
            return PrismRPCError(
                code: .invalidArgument,
                reason: .protocolViolation,
                message: "The bytes received are not Prism protocol frames; check that the client speaks the Prism processor protocol, version \(PrismProtocol.version)."
            )
        }
    }
}

/// Compares secrets without an early exit, so response timing does not reveal a prefix.
private func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8)
    let y = Array(b.utf8)
    var difference = UInt8(x.count == y.count ? 0 : 1)
    for i in 0..<max(x.count, y.count) {
        difference |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
    }
    return difference == 0
}
