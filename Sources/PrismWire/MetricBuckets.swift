/// Histogram buckets shared by every Prism service, so latency histograms line up across them.
public enum MetricBuckets {
    /// 5 ms to 60 s: from a store write to a slow AVIF.
    public static let latency: [Duration] = [
        .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
        .milliseconds(250), .milliseconds(500), .seconds(1), .milliseconds(2500), .seconds(5),
        .seconds(10), .seconds(30), .seconds(60),
    ]
}
