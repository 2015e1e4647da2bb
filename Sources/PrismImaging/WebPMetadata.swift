/// Removes EXIF and XMP chunks from a WebP file in place.
///
/// libvips 8.14's webpsave ignores `strip` and always writes an EXIF chunk (built from whatever
/// metadata fields the image still has). Editing the RIFF container afterwards guarantees that
/// no EXIF (GPS, camera serials) leaves the processor, whatever the libvips version does.
enum WebPMetadata {
    /// - Returns: the new length of the file; the bytes before it are the stripped file.
    static func strip(_ base: UnsafeMutableRawPointer, length: Int) -> Int {
        let bytes = base.assumingMemoryBound(to: UInt8.self)
        func fourCC(_ at: Int) -> String {
            String(decoding: UnsafeBufferPointer(start: bytes + at, count: 4), as: UTF8.self)
        }
        func readLE32(_ at: Int) -> Int {
            Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24
        }
        func writeLE32(_ value: Int, _ at: Int) {
            for i in 0..<4 { bytes[at + i] = UInt8((value >> (8 * i)) & 0xFF) }
        }
        guard length >= 12, fourCC(0) == "RIFF", fourCC(8) == "WEBP" else { return length }

        var read = 12
        var write = 12
        while read + 8 <= length {
            let id = fourCC(read)
            let size = readLE32(read + 4)
            let total = 8 + size + (size & 1)  // chunks are padded to even sizes
            guard read + total <= length else { return length }  // malformed: leave as is
            if id == "EXIF" || id == "XMP " {
                read += total
                continue
            }
            if id == "VP8X", size >= 1 {
                bytes[read + 8] &= ~UInt8(0x08 | 0x04)  // clear the EXIF and XMP flags
            }
            if read != write {
                (base + write).copyMemory(from: base + read, byteCount: total)
            }
            read += total
            write += total
        }
        writeLE32(write - 8, 4)
        return write
    }
}
