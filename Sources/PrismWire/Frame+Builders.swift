public import PrismProto

extension Prism_V1_Frame {
    public static func hello(_ hello: Prism_V1_Hello) -> Self {
        var frame = Self()
        frame.hello = hello
        return frame
    }

    public static func request(callID: UInt64, _ request: Prism_V1_Request) -> Self {
        var frame = Self()
        frame.callID = callID
        frame.request = request
        return frame
    }

    public static func response(callID: UInt64, _ response: Prism_V1_Response) -> Self {
        var frame = Self()
        frame.callID = callID
        frame.response = response
        return frame
    }

    public static func complete(callID: UInt64, _ complete: Prism_V1_Complete) -> Self {
        var frame = Self()
        frame.callID = callID
        frame.complete = complete
        return frame
    }

    public static func error(callID: UInt64, _ error: PrismRPCError) -> Self {
        var frame = Self()
        frame.callID = callID
        frame.error = error.frame
        return frame
    }

    public static func cancel(callID: UInt64) -> Self {
        var frame = Self()
        frame.callID = callID
        frame.cancel = Prism_V1_Cancel()
        return frame
    }

    public static func ping(_ payload: UInt64) -> Self {
        var frame = Self()
        frame.ping.payload = payload
        return frame
    }

    public static func pong(_ payload: UInt64) -> Self {
        var frame = Self()
        frame.pong.payload = payload
        return frame
    }

    public static func goAway(lastCallID: UInt64, reason: String) -> Self {
        var frame = Self()
        frame.goAway.lastCallID = lastCallID
        frame.goAway.reason = reason
        return frame
    }
}
