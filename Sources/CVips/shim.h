// Fixed-arity wrappers around the libvips calls Prism uses.
//
// Swift cannot call C variadic functions, and most of libvips' API is variadic (optional
// arguments as NULL-terminated name/value pairs). Each wrapper here pins the optional arguments
// Prism needs to typed parameters. Every function returns 0 on success and -1 on error (with the
// message in vips' error buffer), like libvips itself.
#ifndef PRISM_CVIPS_SHIM_H
#define PRISM_CVIPS_SHIM_H

#include <vips/vips.h>

// ---- cancellation ---------------------------------------------------------------------------

// Shared between a job (Swift) and libvips' worker threads. `cancelled` is set from any thread;
// `deadline_us` is on g_get_monotonic_time()'s clock, 0 for none. `stopped` is set by the eval
// handler when it kills a computation, so the job can tell a kill from a decode error.
typedef struct {
    int cancelled;
    int stopped;
    gint64 deadline_us;
} PrismCancel;

static inline void prism_cancel_set(PrismCancel *c) {
    __atomic_store_n(&c->cancelled, 1, __ATOMIC_SEQ_CST);
}

static inline int prism_cancel_stopped(PrismCancel *c) {
    return __atomic_load_n(&c->stopped, __ATOMIC_SEQ_CST);
}

static inline int prism_cancel_should_stop(PrismCancel *c) {
    if (__atomic_load_n(&c->cancelled, __ATOMIC_RELAXED)) return 1;
    if (c->deadline_us != 0 && g_get_monotonic_time() >= c->deadline_us) return 2;
    return 0;
}

// libvips emits "eval" on a watched image every time its sink finishes a chunk of work.
static void prism__on_eval(VipsImage *image, VipsProgress *progress, gpointer user) {
    (void)progress;
    PrismCancel *c = (PrismCancel *)user;
    if (prism_cancel_should_stop(c)) {
        __atomic_store_n(&c->stopped, 1, __ATOMIC_SEQ_CST);
        vips_image_set_kill(image, TRUE);
    }
}

// Makes any computation of `image` (a save, a copy to memory) stop soon after `c` says so.
// `c` must outlive the image.
static inline void prism_watch(VipsImage *image, PrismCancel *c) {
    vips_image_set_progress(image, TRUE);
    g_signal_connect(image, "eval", G_CALLBACK(prism__on_eval), c);
}

// Runs every computation of `image` (a save, a copy to memory) on `threads` libvips threads,
// whatever the process-wide concurrency: the thread pool reads VIPS_META_CONCURRENCY from the
// image it computes. Images made from it inherit the field; 0 removes it.
static inline void prism_set_concurrency(VipsImage *image, int threads) {
    if (threads > 0) {
        vips_image_set_int(image, VIPS_META_CONCURRENCY, threads);
    } else {
        vips_image_remove(image, VIPS_META_CONCURRENCY);
    }
}

// ---- loading --------------------------------------------------------------------------------

// A read-only stream over caller-owned memory that fails its next read once `cancel` says stop.
// Decoders run stretches of work libvips cannot interrupt (libjpeg absorbs every scan of a
// progressive JPEG before the first row comes out), but they all read their input as they go,
// and a failed read ends them at once.
typedef struct {
    const unsigned char *data;
    gint64 length;
    gint64 position;
    PrismCancel *cancel;
} PrismReader;

static gint64 prism__reader_read(VipsSourceCustom *source, void *buffer, gint64 length,
                                 gpointer user) {
    (void)source;
    PrismReader *r = (PrismReader *)user;
    if (prism_cancel_should_stop(r->cancel)) {
        __atomic_store_n(&r->cancel->stopped, 1, __ATOMIC_SEQ_CST);
        vips_error("prism", "%s", "read stopped: the job was cancelled");
        return -1;
    }
    gint64 n = r->length - r->position;
    if (n > length) n = length;
    if (n <= 0) return 0;
    memcpy(buffer, r->data + r->position, (size_t)n);
    r->position += n;
    return n;
}

static gint64 prism__reader_seek(VipsSourceCustom *source, gint64 offset, int whence,
                                 gpointer user) {
    (void)source;
    PrismReader *r = (PrismReader *)user;
    gint64 base;
    switch (whence) {
    case SEEK_SET: base = 0; break;
    case SEEK_CUR: base = r->position; break;
    case SEEK_END: base = r->length; break;
    default: return -1;
    }
    if (base + offset < 0 || base + offset > r->length) return -1;
    r->position = base + offset;
    return r->position;
}

// A source over `buf` (not copied) whose reads fail once `cancel` says stop. The source owns
// its reader state; `buf` and `cancel` must outlive it.
static inline VipsSource *prism_watched_source(const void *buf, size_t len, PrismCancel *cancel) {
    VipsSourceCustom *source = vips_source_custom_new();
    if (source == NULL) return NULL;
    PrismReader *r = g_new0(PrismReader, 1);
    r->data = (const unsigned char *)buf;
    r->length = (gint64)len;
    r->cancel = cancel;
    g_object_set_data_full(G_OBJECT(source), "prism-reader", r, g_free);
    g_signal_connect(source, "read", G_CALLBACK(prism__reader_read), r);
    g_signal_connect(source, "seek", G_CALLBACK(prism__reader_seek), r);
    return VIPS_SOURCE(source);
}

// Opens `buf` (not copied: it must stay alive as long as the image) lazily: only the header is
// read here. `shrink` (1, 2, 4, 8) asks JPEG and WebP loaders to decode at reduced size.
// `sequential` streams top to bottom (one pass); otherwise random access.
// `strict` fails on any decoder warning (corrupt entropy data...), else only on errors and
// truncation. With `cancel`, JPEG and PNG are read through prism_watched_source (other loaders
// would copy a non-memory source whole, so they read the buffer directly).
static inline int prism_load(const void *buf, size_t len, const char *loader, int shrink,
                             int sequential, int strict, PrismCancel *cancel, VipsImage **out) {
    VipsAccess access = sequential ? VIPS_ACCESS_SEQUENTIAL : VIPS_ACCESS_RANDOM;
    VipsFailOn fail_on = strict ? VIPS_FAIL_ON_WARNING : VIPS_FAIL_ON_TRUNCATED;
    int is_jpeg = loader != NULL && strcmp(loader, "VipsForeignLoadJpegBuffer") == 0;
    int is_png = loader != NULL && strcmp(loader, "VipsForeignLoadPngBuffer") == 0;
    if (cancel != NULL && (is_jpeg || is_png)) {
        VipsSource *source = prism_watched_source(buf, len, cancel);
        if (source == NULL) return -1;
        int r = is_jpeg
            ? vips_jpegload_source(source, out, "shrink", shrink, "access", access,
                                   "fail_on", fail_on, NULL)
            : vips_pngload_source(source, out, "access", access, "fail_on", fail_on, NULL);
        g_object_unref(source);  // the loader holds its own reference while it needs one
        return r;
    }
    if (is_jpeg) {
        return vips_jpegload_buffer((void *)buf, len, out, "shrink", shrink, "access", access,
                                    "fail_on", fail_on, NULL);
    }
    if (loader != NULL && strcmp(loader, "VipsForeignLoadWebpBuffer") == 0) {
        return vips_webpload_buffer((void *)buf, len, out, "scale", 1.0 / (double)shrink,
                                    "access", access, "fail_on", fail_on, NULL);
    }
    VipsImage *img = vips_image_new_from_buffer(buf, len, "", "access", access,
                                                "fail_on", fail_on, NULL);
    if (img == NULL) return -1;
    *out = img;
    return 0;
}

// ---- header ---------------------------------------------------------------------------------

static inline int prism_get_orientation(VipsImage *image) {
    int o = 1;
    if (vips_image_get_typeof(image, VIPS_META_ORIENTATION) != 0 &&
        vips_image_get_int(image, VIPS_META_ORIENTATION, &o) == 0 && o >= 1 && o <= 8) {
        return o;
    }
    return 1;
}

static inline int prism_has_icc(VipsImage *image) {
    return vips_image_get_typeof(image, VIPS_META_ICC_NAME) != 0;
}

// ---- operations -----------------------------------------------------------------------------

static inline int prism_autorot(VipsImage *in, VipsImage **out) {
    return vips_autorot(in, out, NULL);
}

static inline int prism_resize(VipsImage *in, VipsImage **out, double hscale, double vscale) {
    return vips_resize(in, out, hscale, "vscale", vscale, "kernel", VIPS_KERNEL_LANCZOS3, NULL);
}

static inline int prism_premultiply(VipsImage *in, VipsImage **out) {
    return vips_premultiply(in, out, NULL);
}

static inline int prism_unpremultiply(VipsImage *in, VipsImage **out) {
    return vips_unpremultiply(in, out, NULL);
}

static inline int prism_cast(VipsImage *in, VipsImage **out, VipsBandFormat format) {
    return vips_cast(in, out, format, NULL);
}

static inline int prism_extract(VipsImage *in, VipsImage **out, int left, int top, int width,
                                int height) {
    return vips_extract_area(in, out, left, top, width, height, NULL);
}

static inline int prism_smartcrop(VipsImage *in, VipsImage **out, int width, int height,
                                  VipsInteresting interesting) {
    return vips_smartcrop(in, out, width, height, "interesting", interesting, NULL);
}

// Pads `in` to width x height with `in` placed at (x, y); `background` has one value per band.
static inline int prism_embed(VipsImage *in, VipsImage **out, int x, int y, int width, int height,
                              const double *background, int n) {
    VipsArrayDouble *bg = vips_array_double_new(background, n);
    int r = vips_embed(in, out, x, y, width, height, "extend", VIPS_EXTEND_BACKGROUND,
                       "background", bg, NULL);
    vips_area_unref(VIPS_AREA(bg));
    return r;
}

static inline int prism_gaussblur(VipsImage *in, VipsImage **out, double sigma) {
    return vips_gaussblur(in, out, sigma, NULL);
}

static inline int prism_sharpen(VipsImage *in, VipsImage **out, double sigma) {
    return vips_sharpen(in, out, "sigma", sigma, NULL);
}

static inline int prism_rot(VipsImage *in, VipsImage **out, VipsAngle angle) {
    return vips_rot(in, out, angle, NULL);
}

static inline int prism_flip(VipsImage *in, VipsImage **out, VipsDirection direction) {
    return vips_flip(in, out, direction, NULL);
}

static inline int prism_colourspace(VipsImage *in, VipsImage **out, VipsInterpretation space) {
    return vips_colourspace(in, out, space, NULL);
}

// Converts from the embedded ICC profile to sRGB, 8 bits per channel.
static inline int prism_icc_to_srgb(VipsImage *in, VipsImage **out) {
    return vips_icc_transform(in, out, "srgb", "embedded", TRUE, "intent",
                              VIPS_INTENT_RELATIVE, "depth", 8, NULL);
}

static inline int prism_flatten(VipsImage *in, VipsImage **out, const double *background, int n) {
    VipsArrayDouble *bg = vips_array_double_new(background, n);
    int r = vips_flatten(in, out, "background", bg, NULL);
    vips_area_unref(VIPS_AREA(bg));
    return r;
}

// Adds an opaque alpha band (for padding with a transparent colour).
static inline int prism_add_alpha(VipsImage *in, VipsImage **out) {
    return vips_addalpha(in, out, NULL);
}

// A shallow copy whose metadata can be changed without touching `in`.
static inline int prism_copy(VipsImage *in, VipsImage **out) {
    return vips_copy(in, out, NULL);
}

// Removes EXIF, XMP, IPTC and ICC metadata. webpsave in libvips 8.14 ignores `strip` and writes
// EXIF from these fields, so stripping has to happen on the image itself.
static inline void prism_remove_metadata(VipsImage *image) {
    gchar **fields = vips_image_get_fields(image);
    for (int i = 0; fields[i] != NULL; i++) {
        const char *f = fields[i];
        if (g_str_has_prefix(f, "exif-") || g_str_has_prefix(f, "xmp-") ||
            g_str_has_prefix(f, "iptc-") || g_str_has_prefix(f, "icc-") ||
            strcmp(f, VIPS_META_ORIENTATION) == 0 || strcmp(f, "gif-comment") == 0 ||
            g_str_has_prefix(f, "png-comment") || strcmp(f, "heif-primary") == 0) {
            vips_image_remove(image, f);
        }
    }
    g_strfreev(fields);
}

// ---- saving ---------------------------------------------------------------------------------

static inline int prism_jpegsave(VipsImage *in, void **buf, size_t *len, int quality,
                                 int progressive, int strip) {
    return vips_jpegsave_buffer(in, buf, len, "Q", quality, "interlace", progressive,
                                "optimize_coding", TRUE, "strip", strip, NULL);
}

static inline int prism_pngsave(VipsImage *in, void **buf, size_t *len, int compression,
                                int interlace, int strip) {
    return vips_pngsave_buffer(in, buf, len, "compression", compression, "interlace", interlace,
                               "strip", strip, NULL);
}

static inline int prism_webpsave(VipsImage *in, void **buf, size_t *len, int quality,
                                 int lossless, int effort, int strip) {
    return vips_webpsave_buffer(in, buf, len, "Q", quality, "lossless", lossless, "effort",
                                effort, "strip", strip, NULL);
}

static inline int prism_avifsave(VipsImage *in, void **buf, size_t *len, int quality,
                                 int lossless, int effort, int strip) {
    return vips_heifsave_buffer(in, buf, len, "Q", quality, "lossless", lossless, "effort",
                                effort, "compression", VIPS_FOREIGN_HEIF_COMPRESSION_AV1,
                                "strip", strip, NULL);
}

static inline int prism_gifsave(VipsImage *in, void **buf, size_t *len, int interlace,
                                int strip) {
    return vips_gifsave_buffer(in, buf, len, "interlace", interlace, "strip", strip, NULL);
}

// ---- measuring (tests, benchmarks) --------------------------------------------------------

// Mean of all pixels in all bands.
static inline int prism_avg(VipsImage *in, double *out) {
    return vips_avg(in, out, NULL);
}

// Mean absolute difference between two images of the same size and bands.
static inline int prism_mean_abs_difference(VipsImage *a, VipsImage *b, double *out) {
    VipsImage *d = NULL, *m = NULL;
    int r = vips_subtract(a, b, &d, NULL);
    if (r == 0) r = vips_abs(d, &m, NULL);
    if (r == 0) r = vips_avg(m, out, NULL);
    if (d) g_object_unref(d);
    if (m) g_object_unref(m);
    return r;
}

// Opens an encoded image from memory (copied, so the caller may free `buf`), all access.
static inline VipsImage *prism_decode_copy(const void *buf, size_t len) {
    VipsBlob *blob = vips_blob_copy(buf, len);
    VipsImage *img = vips_image_new_from_buffer(VIPS_AREA(blob)->data, len, "", NULL);
    if (img) {
        // The image keeps the blob alive.
        g_object_set_data_full(G_OBJECT(img), "prism-blob", blob, (GDestroyNotify)vips_area_unref);
    } else {
        vips_area_unref(VIPS_AREA(blob));
    }
    return img;
}

// ---- process-wide setup ---------------------------------------------------------------------

// Starts libvips for a server: no operation cache (a stateless processor never sees the same
// image twice), untrusted loaders blocked, `concurrency` threads per pipeline.
static GLogWriterOutput prism__log_writer(GLogLevelFlags level, const GLogField *fields,
                                          gsize n_fields, gpointer user) {
    (void)user;
    if (level & (G_LOG_LEVEL_WARNING | G_LOG_LEVEL_MESSAGE | G_LOG_LEVEL_INFO | G_LOG_LEVEL_DEBUG)) {
        for (gsize i = 0; i < n_fields; i++) {
            if (strcmp(fields[i].key, "GLIB_DOMAIN") == 0 && fields[i].length < 0 &&
                strcmp((const char *)fields[i].value, "VIPS") == 0) {
                return G_LOG_WRITER_HANDLED;
            }
        }
    }
    return g_log_writer_default(level, fields, n_fields, NULL);
}

// libvips prints warnings about individual images ("ignoring nclx profile", "error in tile")
// to stderr. A server reports failures through its own errors; these would only flood logs.
static inline int prism_vips_start(const char *argv0, int concurrency) {
    if (VIPS_INIT(argv0) != 0) return -1;
    g_log_set_writer_func(prism__log_writer, NULL, NULL);
    vips_cache_set_max(0);
    vips_cache_set_max_mem(0);
    vips_cache_set_max_files(0);
    vips_block_untrusted_set(TRUE);
    vips_concurrency_set(concurrency);
    return 0;
}

#endif
