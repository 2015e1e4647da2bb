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
///   a call that needs only smaller variants decodes at 1/2, 1/4 or 1/8 of the size where that
///   is cheap (WebP, baseline JPEG shrink-on-load), and makes its variants from that frame;
/// - keep one call and tell it how many workers are idle (`Request.threads`): the processor
///   decodes once on that many libvips threads and makes the variants in parallel chains.
///
/// Measured on 2 cores (docs/performance.md), splitting is faster for baseline JPEG (its extra
/// decode is cheap and makes the small variants cheaper), one threaded call for progressive
/// JPEG (every scan is entropy-decoded whatever the shrink) and PNG (a second decode costs as
/// much as all the variants). Under load no worker is idle and each upload is one call on one
/// thread: extra CPU then costs throughput.
///
/// Which variants go together matters as much as splitting: a group's decode can shrink on
/// load only as far as its largest member allows, and each member is made from the smallest
/// frame already in the call. When the source's header is known, every grouping is estimated
/// with `CallCost` and the one whose slowest call is fastest is taken; the call that also
/// makes the placeholder comes first (the coordinator gives it to call 0).
enum VariantPlanner {
    /// - Parameters:
    ///   - shrinksOnLoad: the source decodes at a fraction of its size, for a fraction of the
    ///     cost, when fewer pixels are needed (`ImageFormat.shrinksCheaplyOnLoad`).
    ///   - source: the source's header, when it could be read; without it (a truncated frame
    ///     header, an unknown WebP chunk) a split groups by a fixed per-variant cost.
    ///   Both are read only when a split is possible.
    static func calls(
        _ variants: [Prism_V1_VariantSpec], loads: [ProcessorLoad], split: SplitPolicy,
        shrinksOnLoad: @autoclosure () -> Bool, source: @autoclosure () -> SourceHeader? = nil
    ) -> [PlannedCall] {
        let indices = Array(variants.indices)
        switch split {
        case .always where variants.count > 1 && loads.count > 1:
            return Self.split(variants, into: min(loads.count, variants.count)).map { PlannedCall(members: $0, threads: 1) }
        case .auto:
            let free = loads.filter { $0.inFlight < $0.workers }.count
            let idle = loads.reduce(0) { $0 + max(0, $1.workers - $1.inFlight) }
            // A readable header is only returned for sources that shrink on load; without one,
            // ask (one walk over the JPEG's markers, not two).
            let header = free > 1 && variants.count > 1 ? source() : nil
            if free > 1, variants.count > 1, header != nil || shrinksOnLoad() {
                if let source = header, let groups = Self.cheapestGroups(variants, into: min(free, 3), source: source) {
                    // One call when it is estimated fastest (rare: a second decode would have
                    // to cost more than the split saves).
                    guard groups.count > 1 else { return [PlannedCall(members: indices, threads: max(1, idle))] }
                    // The slowest call also gets a second thread when the others are clearly
                    // shorter: they end first, and their core then works on it (a lone 2048 px
                    // variant from 4 MP: 101 -> 96 ms beside the other call, 82 -> 61 alone).
                    let costs = groups.map(\.cost).sorted(by: >)
                    let lopsided = costs[0] >= Self.secondThreadAbove * costs[1]
                    return groups.map { PlannedCall(members: $0.members, threads: lopsided && $0.cost == costs[0] ? 2 : 1) }
                }
                return Self.split(variants, into: min(free, variants.count)).map { PlannedCall(members: $0, threads: 1) }
            }
            return [PlannedCall(members: indices, threads: max(1, idle))]
        default:
            return [PlannedCall(members: indices, threads: 1)]
        }
    }

    /// Every way of putting the variants into at most `count` calls, estimated with `CallCost`:
    /// the one whose slowest call (with the placeholder on the call where it costs least) is
    /// fastest, and of equals the one with the least work in all. The placeholder's call is
    /// first. Nil when there are too many variants to try every grouping (more than 8).
    static func cheapestGroups(_ variants: [Prism_V1_VariantSpec], into count: Int, source: SourceHeader) -> [(members: [Int], cost: Double)]? {
        let n = variants.count
        guard n <= 8, count >= 1, source.width > 0, source.height > 0 else { return nil }
        let estimates = variants.map { CallCost.variant($0, source: source) }
        // Costs by member set (a bit mask), without and with the placeholder.
        var costs = [Double?](repeating: nil, count: 2 << n)
        func cost(_ mask: Int, placeholder: Bool) -> Double {
            let slot = mask << 1 | (placeholder ? 1 : 0)
            if let known = costs[slot] { return known }
            let members = (0..<n).filter { mask & (1 << $0) != 0 }.map { estimates[$0] }
            let value = CallCost.call(members, source: source, placeholder: placeholder)
            costs[slot] = value
            return value
        }
        var candidates: [(slowest: Double, total: Double, calls: [(mask: Int, cost: Double)])] = []
        // Set partitions as restricted growth strings: variant i goes to an existing group or
        // opens the next one, so each grouping is visited once.
        var assignment = [Int](repeating: 0, count: n)
        func visit(_ index: Int, groups: Int) {
            if index == n {
                var masks = [Int](repeating: 0, count: groups)
                for (variant, group) in assignment.enumerated() { masks[group] |= 1 << variant }
                let plain = masks.map { cost($0, placeholder: false) }
                // The placeholder on each call in turn: the one that keeps the slowest call
                // fastest, and of equals the one where it costs least.
                var choice: (slowest: Double, extra: Double, holder: Int) = (.infinity, .infinity, 0)
                for holder in masks.indices {
                    let extra = cost(masks[holder], placeholder: true) - plain[holder]
                    var slowest = plain[holder] + extra
                    for other in masks.indices where other != holder { slowest = max(slowest, plain[other]) }
                    if (slowest, extra) < (choice.slowest, choice.extra) { choice = (slowest, extra, holder) }
                }
                var each = plain
                each[choice.holder] = cost(masks[choice.holder], placeholder: true)
                var ordered = zip(masks, each).map { (mask: $0, cost: $1) }
                ordered.swapAt(0, choice.holder)
                candidates.append((choice.slowest, each.reduce(0, +), ordered))
                return
            }
            for group in 0..<min(groups + 1, count) {
                assignment[index] = group
                visit(index + 1, groups: max(groups, group + 1))
            }
        }
        visit(0, groups: 0)
        let best = candidates.min { ($0.slowest, $0.total) < ($1.slowest, $1.total) }
        return best.map { $0.calls.map { call in (members: (0..<n).filter { call.mask & (1 << $0) != 0 }, cost: call.cost) } }
    }

    /// How much slower than the next the slowest call of a split must be estimated to get a
    /// second thread.
    static let secondThreadAbove = 1.25

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
