import Foundation

/// ThumbHash, as its author specifies it (https://github.com/evanw/thumbhash, `rgbaToThumbHash`
/// in the JavaScript reference): a DCT of the image's luminance, two colour channels and alpha,
/// packed in at most 25 bytes, from which a front end draws a blurred preview.
///
/// Arithmetic follows the reference line by line (same order of operations, rounding half up as
/// `Math.round` does), so the bytes are the reference's.
public enum ThumbHash {
    /// The hash of a `width` x `height` image (each at most 100) of 8-bit RGBA pixels.
    public static func encode(width w: Int, height h: Int, rgba: UnsafeRawBufferPointer) -> [UInt8] {
        precondition(w > 0 && h > 0 && w <= 100 && h <= 100 && rgba.count >= w * h * 4)
        let pixels = w * h
        var avgR = 0.0, avgG = 0.0, avgB = 0.0, avgA = 0.0
        for i in 0..<pixels {
            let j = i * 4
            let alpha = Double(rgba[j + 3]) / 255
            avgR += alpha / 255 * Double(rgba[j])
            avgG += alpha / 255 * Double(rgba[j + 1])
            avgB += alpha / 255 * Double(rgba[j + 2])
            avgA += alpha
        }
        if avgA > 0 {
            avgR /= avgA
            avgG /= avgA
            avgB /= avgA
        }

        let hasAlpha = avgA < Double(pixels)
        let lLimit = hasAlpha ? 5.0 : 7.0
        let longest = Double(max(w, h))
        let lx = max(1, round(lLimit * Double(w) / longest))
        let ly = max(1, round(lLimit * Double(h) / longest))
        var l = [Double](repeating: 0, count: pixels)
        var p = [Double](repeating: 0, count: pixels)
        var q = [Double](repeating: 0, count: pixels)
        var a = [Double](repeating: 0, count: pixels)
        // RGBA to LPQA, composited atop the average colour.
        for i in 0..<pixels {
            let j = i * 4
            let alpha = Double(rgba[j + 3]) / 255
            let r = avgR * (1 - alpha) + alpha / 255 * Double(rgba[j])
            let g = avgG * (1 - alpha) + alpha / 255 * Double(rgba[j + 1])
            let b = avgB * (1 - alpha) + alpha / 255 * Double(rgba[j + 2])
            l[i] = (r + g + b) / 3
            p[i] = (r + g) / 2 - b
            q[i] = r - g
            a[i] = alpha
        }

        func encodeChannel(_ channel: [Double], _ nx: Int, _ ny: Int) -> (dc: Double, ac: [Double], scale: Double) {
            var dc = 0.0
            var ac: [Double] = []
            var scale = 0.0
            var fx = [Double](repeating: 0, count: w)
            for cy in 0..<ny {
                var cx = 0
                while cx * ny < nx * (ny - cy) {
                    var f = 0.0
                    for x in 0..<w {
                        fx[x] = cos(Double.pi / Double(w) * Double(cx) * (Double(x) + 0.5))
                    }
                    for y in 0..<h {
                        let fy = cos(Double.pi / Double(h) * Double(cy) * (Double(y) + 0.5))
                        for x in 0..<w {
                            f += channel[x + y * w] * fx[x] * fy
                        }
                    }
                    f /= Double(pixels)
                    if cx > 0 || cy > 0 {
                        ac.append(f)
                        scale = max(scale, abs(f))
                    } else {
                        dc = f
                    }
                    cx += 1
                }
            }
            if scale > 0 {
                for i in ac.indices { ac[i] = 0.5 + 0.5 / scale * ac[i] }
            }
            return (dc, ac, scale)
        }

        let lChannel = encodeChannel(l, max(3, lx), max(3, ly))
        let pChannel = encodeChannel(p, 3, 3)
        let qChannel = encodeChannel(q, 3, 3)
        let aChannel = hasAlpha ? encodeChannel(a, 5, 5) : (dc: 1.0, ac: [], scale: 1.0)

        let isLandscape = w > h
        let header24 = round(63 * lChannel.dc)
            | (round(31.5 + 31.5 * pChannel.dc) << 6)
            | (round(31.5 + 31.5 * qChannel.dc) << 12)
            | (round(31 * lChannel.scale) << 18)
            | ((hasAlpha ? 1 : 0) << 23)
        let header16 = (isLandscape ? ly : lx)
            | (round(63 * pChannel.scale) << 3)
            | (round(63 * qChannel.scale) << 9)
            | ((isLandscape ? 1 : 0) << 15)
        var hash: [UInt8] = [
            UInt8(header24 & 255), UInt8((header24 >> 8) & 255), UInt8(header24 >> 16),
            UInt8(header16 & 255), UInt8(header16 >> 8),
        ]
        if hasAlpha {
            hash.append(UInt8(round(15 * aChannel.dc) | (round(15 * aChannel.scale) << 4)))
        }
        let acStart = hash.count
        var acIndex = 0
        let channels = hasAlpha ? [lChannel.ac, pChannel.ac, qChannel.ac, aChannel.ac] : [lChannel.ac, pChannel.ac, qChannel.ac]
        for ac in channels {
            for f in ac {
                let position = acStart + (acIndex >> 1)
                if position == hash.count { hash.append(0) }
                hash[position] |= UInt8(round(15 * f) << ((acIndex & 1) << 2))
                acIndex += 1
            }
        }
        return hash
    }

    /// `Math.round`: half up.
    private static func round(_ value: Double) -> Int {
        Int((value + 0.5).rounded(.down))
    }
}

/// The dominant colour of 8-bit RGBA pixels: the centre of the most populated of 4096 cells
/// (16 levels per channel, as sharp's `stats().dominant`), counting pixels at least half opaque;
/// ties go to the lower cell. Nil when no pixel is.
public func dominantColour(width: Int, height: Int, rgba: UnsafeRawBufferPointer) -> (r: UInt8, g: UInt8, b: UInt8)? {
    var cells = [Int](repeating: 0, count: 4096)
    for i in 0..<(width * height) {
        let j = i * 4
        guard rgba[j + 3] >= 128 else { continue }
        cells[Int(rgba[j] >> 4) << 8 | Int(rgba[j + 1] >> 4) << 4 | Int(rgba[j + 2] >> 4)] += 1
    }
    var best = 0
    for cell in cells.indices where cells[cell] > cells[best] { best = cell }
    guard cells[best] > 0 else { return nil }
    return (UInt8((best >> 8) << 4 | 8), UInt8(((best >> 4) & 15) << 4 | 8), UInt8((best & 15) << 4 | 8))
}
