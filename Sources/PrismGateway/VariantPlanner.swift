import PrismClient
import PrismProto

/// One processor call of an upload.
struct PlannedCall: Equatable {
    /// Indices into the recipe's variants.
    var members: [Int]
    /// Cores the call may keep busy (`ProcessRequest.threads`).
    var threads: Int
}

/// Decides how an upload's variants are grouped into processor calls.
///
/// One call decodes the source once and makes each variant from the smallest larger variant
/// already made; every extra call decodes the source again. While processors have idle
/// workers, there are two ways to use them for one upload:
///
/// - split the variants over the processors with a free worker: each call decodes again, but
///   a call that needs only small variants decodes at 1/4 or 1/8 of the size where that is
///   cheap (WebP, baseline JPEG shrink-on-load), and makes its variants from that small frame;
/// - keep one call and tell it how many workers are idle (`Request.threads`): the processor
///   decodes once on that many libvips threads and makes the variants in parallel chains.
///
/// Measured on 2 cores (docs/performance.md), splitting is faster for baseline JPEG (its extra
/// decode is cheap and makes the small variants cheaper), one threaded call for progressive
/// JPEG (every scan is entropy-decoded whatever the shrink) and PNG (a second decode costs as
/// much as all the variants). Under load no worker is idle and each upload is one call on one
/// thread: extra CPU then costs throughput.
enum VariantPlanner {
    /// - Parameter shrinksOnLoad: the source decodes at a fraction of its size, for a fraction
    ///   of the cost, when fewer pixels are needed (`ImageFormat.shrinksCheaplyOnLoad`).
    static func calls(_ variants: [Prism_V1_VariantSpec], loads: [ProcessorLoad], split: SplitPolicy, shrinksOnLoad: Bool) -> [PlannedCall] {
        let indices = Array(variants.indices)
        switch split {
        case .always where variants.count > 1 && loads.count > 1:
            return Self.split(variants, into: min(loads.count, variants.count)).map { PlannedCall(members: $0, threads: 1) }
        case .auto:
            let free = loads.filter { $0.inFlight < $0.workers }.count
            if shrinksOnLoad, free > 1, variants.count > 1 {
                return Self.split(variants, into: min(free, variants.count)).map { PlannedCall(members: $0, threads: 1) }
            }
            let idle = loads.reduce(0) { $0 + max(0, $1.workers - $1.inFlight) }
            return [PlannedCall(members: indices, threads: max(1, idle))]
        default:
            return [PlannedCall(members: indices, threads: 1)]
        }
    }

    /// `count` groups of similar cost: longest processing time first onto the cheapest group.
    static func split(_ variants: [Prism_V1_VariantSpec], into count: Int) -> [[Int]] {
        var groups = Array(repeating: (cost: 0.0, members: [Int]()), count: count)
        for index in variants.indices.sorted(by: { cost(variants[$0]) > cost(variants[$1]) }) {
            let target = groups.indices.min { groups[$0].cost < groups[$1].cost }!
            groups[target].cost += cost(variants[index])
            groups[target].members.append(index)
        }
        return groups.map { $0.members.sorted() }
    }

    /// A rough relative cost: output pixels, with blur and encoder effort weighing extra.
    static func cost(_ spec: Prism_V1_VariantSpec) -> Double {
        var pixels = 4_000_000.0  // no resize: the full source
        var extra = 1.0
        for op in spec.operations {
            switch op.op {
            case .resize(let r):
                let w = Double(r.width == 0 ? r.height : r.width)
                let h = Double(r.height == 0 ? r.width : r.height)
                pixels = min(pixels, w * h)
            case .blur(let b):
                extra += Double(b.sigma) / 4
            case .sharpen:
                extra += 0.5
            default:
                break
            }
        }
        if spec.output.format == .avif { extra *= 4 }
        // Every call pays a decode; a variant's own work is on top of its share of it.
        return 250_000 + pixels * extra
    }
}
