import Foundation

/// BlurHash (https://blurha.sh), as its reference encoder makes it.
///
/// The arithmetic follows the reference step by step, in the same order and in `Double`, so the
/// string is the reference's own for the same pixels: PrismImagingTests checks it against the
/// `blurhash` package on PyPI (a port of the author's Swift encoder) on real photos.
enum BlurHash {
    static let componentRange = 1...9

    /// Encodes the RGB channels of 8-bit RGBA pixels (alpha is not part of BlurHash).
    ///
    /// - Precondition: `rgba.count == width * height * 4`, components in 1...9. The cost is
    ///   width x height x components, so callers pass a small scaling (at most 100 x 100 here).
    static func encode(width: Int, height: Int, rgba: UnsafeRawBufferPointer, xComponents: Int, yComponents: Int) -> String {
        precondition(rgba.count == width * height * 4 && componentRange.contains(xComponents) && componentRange.contains(yComponents))
        let linear = (0..<256).map { srgbToLinear($0) }
        let w = Double(width)
        let h = Double(height)
        // cos(pi * i * x / width), computed exactly as the reference writes it.
        let cosX = (0..<xComponents).map { i in (0..<width).map { x in cos(Double.pi * Double(i) * Double(x) / w) } }
        let cosY = (0..<yComponents).map { j in (0..<height).map { y in cos(Double.pi * Double(j) * Double(y) / h) } }

        var factors: [(Double, Double, Double)] = []
        factors.reserveCapacity(xComponents * yComponents)
        var maxAC = 0.0
        for j in 0..<yComponents {
            for i in 0..<xComponents {
                let norm = i == 0 && j == 0 ? 1.0 : 2.0
                var r = 0.0, g = 0.0, b = 0.0
                for y in 0..<height {
                    for x in 0..<width {
                        let basis = norm * cosX[i][x] * cosY[j][y]
                        let p = (y * width + x) * 4
                        r += basis * linear[Int(rgba[p])]
                        g += basis * linear[Int(rgba[p + 1])]
                        b += basis * linear[Int(rgba[p + 2])]
                    }
                }
                let scale = w * h
                let factor = (r / scale, g / scale, b / scale)
                factors.append(factor)
                if i != 0 || j != 0 {
                    maxAC = max(maxAC, abs(factor.0), abs(factor.1), abs(factor.2))
                }
            }
        }

        let dc = factors[0]
        let dcValue = (linearToSRGB(dc.0) << 16) + (linearToSRGB(dc.1) << 8) + linearToSRGB(dc.2)
        let quantisedMaxAC = Int(max(0, min(82, (maxAC * 166 - 0.5).rounded(.down))))
        let acNorm = Double(quantisedMaxAC + 1) / 166.0

        var hash = ""
        hash.reserveCapacity(4 + 2 * factors.count)
        base83(xComponents - 1 + (yComponents - 1) * 9, length: 1, into: &hash)
        base83(quantisedMaxAC, length: 1, into: &hash)
        base83(dcValue, length: 4, into: &hash)
        for factor in factors.dropFirst() {
            let value = quantiseAC(factor.0, acNorm) * 19 * 19 + quantiseAC(factor.1, acNorm) * 19 + quantiseAC(factor.2, acNorm)
            base83(value, length: 2, into: &hash)
        }
        return hash
    }

    static func srgbToLinear(_ value: Int) -> Double {
        let v = Double(value) / 255.0
        return v <= 0.04045 ? v / 12.92 : pow((v + 0.055) / 1.055, 2.4)
    }

    static func linearToSRGB(_ value: Double) -> Int {
        let v = max(0.0, min(1.0, value))
        if v <= 0.0031308 { return Int(v * 12.92 * 255 + 0.5) }
        return Int((1.055 * pow(v, 1 / 2.4) - 0.055) * 255 + 0.5)
    }

    static func quantiseAC(_ value: Double, _ norm: Double) -> Int {
        let signed = copysign(pow(abs(value / norm), 0.5), value / norm)
        return Int(max(0.0, min(18.0, (signed * 9.0 + 9.5).rounded(.down))))
    }

    private static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz#$%*+,-.:;=?@[]^_{|}~")

    static func base83(_ value: Int, length: Int, into hash: inout String) {
        var divisor = 1
        for _ in 1..<length { divisor *= 83 }
        for _ in 0..<length {
            hash.append(alphabet[(value / divisor) % 83])
            divisor /= 83
        }
    }
}
