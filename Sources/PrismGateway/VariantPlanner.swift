import PrismClient
import PrismProto

/// Decides how an upload's variants are grouped into processor calls.
///
/// One call decodes the source once and makes each variant from the smallest larger variant
/// already made; every extra call decodes the source again. Splitting buys latency only while
/// there are idle workers to run the calls in parallel; under load it just burns CPU. So:
/// split over as many processors as have a free worker (at most one call per variant), keep
/// everything in one call otherwise.
enum VariantPlanner {
    static func groups(_ variants: [Prism_V1_VariantSpec], loads: [ProcessorLoad], split: SplitPolicy) -> [[Int]] {
        let indices = Array(variants.indices)
        guard split != .never, variants.count > 1 else { return [indices] }
        let available = split == .always ? loads.count : loads.filter { $0.inFlight < $0.workers }.count
        let count = min(available, variants.count)
        guard count > 1 else { return [indices] }
        // Longest processing time first onto the least loaded group.
        var groups = Array(repeating: (cost: 0.0, members: [Int]()), count: count)
        for index in indices.sorted(by: { cost(variants[$0]) > cost(variants[$1]) }) {
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
