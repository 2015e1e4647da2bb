internal import CVips
import Foundation
import PrismProto
import Synchronization

/// Process-wide libvips setup. libvips keeps global state, so it is started once per process.
public enum Vips {
    private static let started = Mutex<Bool>(false)

    /// Starts libvips for server use: no operation cache, untrusted loaders (SVG, PDF,
    /// ImageMagick, ...) blocked, `concurrency` threads per pipeline. Later calls only
    /// update the concurrency.
    ///
    /// - Throws: `ImagingError` with code INTERNAL if libvips cannot start.
    public static func start(concurrency: Int = 1) throws(ImagingError) {
        let ok = Self.started.withLock { started -> Bool in
            if started {
                vips_concurrency_set(Int32(concurrency))
                return true
            }
            guard prism_vips_start("prism", Int32(concurrency)) == 0 else { return false }
            started = true
            return true
        }
        guard ok else {
            throw ImagingError(code: .internal, message: "The image library could not start.", detail: takeErrorBuffer())
        }
    }

    /// The libvips version, for logs and the benchmark report.
    public static var version: String {
        String(cString: vips_version_string())
    }

    /// Releases libvips' per-thread buffers; call at the end of a job on a pool thread.
    public static func threadDone() {
        vips_thread_shutdown()
    }
}

/// Reads and clears libvips' (process-wide) error buffer.
func takeErrorBuffer() -> String {
    guard let copy = vips_error_buffer_copy() else { return "" }
    defer { g_free(copy) }
    return String(cString: copy).trimmingCharacters(in: .whitespacesAndNewlines)
}

/// A libvips call failed; the text is internal (it can name files and library internals).
struct VipsFailure: Error {
    var detail: String
}

/// One owned reference to a `VipsImage`, released when this object goes away.
final class VImage {
    let pointer: UnsafeMutablePointer<VipsImage>

    init(owning pointer: UnsafeMutablePointer<VipsImage>) {
        self.pointer = pointer
    }

    deinit {
        g_object_unref(self.pointer)
    }

    /// Runs one libvips operation that writes its result to an out-pointer.
    static func make(_ body: (UnsafeMutablePointer<UnsafeMutablePointer<VipsImage>?>) -> Int32) throws(VipsFailure) -> VImage {
        var out: UnsafeMutablePointer<VipsImage>? = nil
        let status = body(&out)
        guard status == 0, let out else {
            if let out { g_object_unref(out) }
            throw VipsFailure(detail: takeErrorBuffer())
        }
        return VImage(owning: out)
    }

    /// Applies an operation to this image.
    func apply(_ body: (UnsafeMutablePointer<VipsImage>, UnsafeMutablePointer<UnsafeMutablePointer<VipsImage>?>) -> Int32) throws(VipsFailure) -> VImage {
        try VImage.make { out in body(self.pointer, out) }
    }

    var width: Int { Int(vips_image_get_width(self.pointer)) }
    var height: Int { Int(vips_image_get_height(self.pointer)) }
    var bands: Int { Int(vips_image_get_bands(self.pointer)) }
    var size: Size { Size(width: self.width, height: self.height) }
    var hasAlpha: Bool { vips_image_hasalpha(self.pointer) != 0 }
    var interpretation: VipsInterpretation { vips_image_get_interpretation(self.pointer) }
    var bandFormat: VipsBandFormat { vips_image_get_format(self.pointer) }
    var pages: Int { Int(vips_image_get_n_pages(self.pointer)) }
    var orientation: Int { Int(prism_get_orientation(self.pointer)) }
    var hasICCProfile: Bool { prism_has_icc(self.pointer) != 0 }

    /// The libvips threads that compute this image (a save, a copy to memory) when more than
    /// the process-wide default: the image's own `VIPS_META_CONCURRENCY`, which the thread pool
    /// of that computation reads.
    func setConcurrency(_ threads: Int) {
        if threads > 1 { prism_set_concurrency(self.pointer, Int32(threads)) }
    }

    func string(_ field: String) -> String? {
        guard vips_image_get_typeof(self.pointer, field) != 0 else { return nil }
        var value: UnsafePointer<CChar>? = nil
        guard vips_image_get_string(self.pointer, field, &value) == 0, let value else { return nil }
        return String(cString: value)
    }

    /// Computes the whole image into memory, watched by `cancellation`, on `threads` libvips
    /// threads.
    func materialized(_ cancellation: JobCancellation, threads: Int = 1) throws(VipsFailure) -> VImage {
        prism_watch(self.pointer, cancellation.state)
        self.setConcurrency(threads)
        guard let memory = vips_image_copy_memory(self.pointer) else {
            throw VipsFailure(detail: takeErrorBuffer())
        }
        // The copy inherits the field; what is made from it chooses its own threads.
        if threads > 1 { prism_set_concurrency(memory, 0) }
        return VImage(owning: memory)
    }
}
