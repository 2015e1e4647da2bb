// prism-call: sends one image and one variant spec to a Prism processor and writes the result.
//
// A complete client of the frame protocol (Protos/PROTOCOL.md) in plain C on protobuf-c:
// length-prefixed frames over TCP, Hello handshake, one call, Ping answered, unknown frames
// ignored. Usage:
//
//   prism-call --port 7070 --in photo.jpg --out thumb.webp --width 200 --height 200
//              --fit cover --format webp [--quality 80] [--blur 3] [--token T] [--timeout-ms N]
//
// Prints "WIDTHxHEIGHT FORMAT BYTES" on success. Exits 2 on a usage error, 3 when the processor
// refuses the call (its message on stderr), 4 on a connection or protocol failure.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "prism/v1/prism.pb-c.h"

#define MAX_FRAME (64u << 20)

static void die(int code, const char *what) {
    fprintf(stderr, "prism-call: %s\n", what);
    exit(code);
}

static void write_all(int fd, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die(4, "connection lost while sending");
        p += w;
        n -= (size_t)w;
    }
}

static void read_all(int fd, uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t r = recv(fd, p, n, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) die(4, "the processor closed the connection");
        p += r;
        n -= (size_t)r;
    }
}

// Every frame: 4-byte big-endian length, then a serialised prism.v1.Frame.
static void send_frame(int fd, const Prism__V1__Frame *frame) {
    size_t len = prism__v1__frame__get_packed_size(frame);
    uint8_t *buf = malloc(len + 4);
    if (!buf) die(4, "out of memory");
    uint32_t be = htonl((uint32_t)len);
    memcpy(buf, &be, 4);
    prism__v1__frame__pack(frame, buf + 4);
    write_all(fd, buf, len + 4);
    free(buf);
}

static Prism__V1__Frame *read_frame(int fd) {
    uint8_t header[4];
    read_all(fd, header, 4);
    uint32_t len;
    memcpy(&len, header, 4);
    len = ntohl(len);
    if (len > MAX_FRAME) die(4, "the processor sent a frame larger than announced");
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) die(4, "out of memory");
    read_all(fd, buf, len);
    Prism__V1__Frame *frame = prism__v1__frame__unpack(NULL, len, buf);
    free(buf);
    if (!frame) die(4, "received bytes that are not a prism.v1.Frame");
    return frame;
}

static int connect_to(const char *host, const char *port) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0) die(4, "cannot resolve the processor's host");
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) die(4, "cannot connect to the processor");
    return fd;
}

static uint8_t *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) die(2, "cannot open --in file");
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (n < 0 || (unsigned long)n > MAX_FRAME) die(2, "--in file is too large");
    uint8_t *buf = malloc((size_t)n ? (size_t)n : 1);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) die(2, "cannot read --in file");
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static Prism__V1__Fit parse_fit(const char *s) {
    if (!strcmp(s, "cover")) return PRISM__V1__FIT__COVER;
    if (!strcmp(s, "contain")) return PRISM__V1__FIT__CONTAIN;
    if (!strcmp(s, "fill")) return PRISM__V1__FIT__FILL;
    if (!strcmp(s, "inside")) return PRISM__V1__FIT__INSIDE;
    if (!strcmp(s, "outside")) return PRISM__V1__FIT__OUTSIDE;
    die(2, "--fit must be cover, contain, fill, inside or outside");
    return PRISM__V1__FIT__COVER;
}

static Prism__V1__Format parse_format(const char *s) {
    if (!strcmp(s, "jpeg")) return PRISM__V1__FORMAT__JPEG;
    if (!strcmp(s, "png")) return PRISM__V1__FORMAT__PNG;
    if (!strcmp(s, "webp")) return PRISM__V1__FORMAT__WEBP;
    if (!strcmp(s, "avif")) return PRISM__V1__FORMAT__AVIF;
    if (!strcmp(s, "gif")) return PRISM__V1__FORMAT__GIF;
    die(2, "--format must be jpeg, png, webp, avif or gif");
    return PRISM__V1__FORMAT__JPEG;
}

static const char *format_name(Prism__V1__Format f) {
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(&prism__v1__format__descriptor, f);
    return v ? v->name : "?";
}

int main(int argc, char **argv) {
    const char *host = "127.0.0.1", *port = "7070", *in = NULL, *out = NULL, *token = "";
    const char *fit = "cover", *format = "jpeg";
    unsigned width = 0, height = 0, quality = 0, timeout_ms = 30000;
    float blur = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const char *k = argv[i], *v = argv[i + 1];
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--port")) port = v;
        else if (!strcmp(k, "--in")) in = v;
        else if (!strcmp(k, "--out")) out = v;
        else if (!strcmp(k, "--token")) token = v;
        else if (!strcmp(k, "--width")) width = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(k, "--height")) height = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(k, "--fit")) fit = v;
        else if (!strcmp(k, "--format")) format = v;
        else if (!strcmp(k, "--quality")) quality = (unsigned)strtoul(v, NULL, 10);
        else if (!strcmp(k, "--blur")) blur = strtof(v, NULL);
        else if (!strcmp(k, "--timeout-ms")) timeout_ms = (unsigned)strtoul(v, NULL, 10);
        else die(2, "unknown option (see the comment at the top of prism-call.c)");
    }
    if (!in || !out || (width == 0 && height == 0)) die(2, "--in, --out and --width or --height are required");

    int fd = connect_to(host, port);

    // Handshake: our Hello, then the server's.
    Prism__V1__Hello hello = PRISM__V1__HELLO__INIT;
    hello.protocol_version = 1;
    hello.max_frame_size = MAX_FRAME;
    hello.auth_token = (char *)token;
    hello.agent = "prism-call-c/1";
    Prism__V1__Frame frame = PRISM__V1__FRAME__INIT;
    frame.kind_case = PRISM__V1__FRAME__KIND_HELLO;
    frame.hello = &hello;
    send_frame(fd, &frame);
    Prism__V1__Frame *reply = read_frame(fd);
    if (reply->kind_case == PRISM__V1__FRAME__KIND_ERROR) {
        fprintf(stderr, "prism-call: the processor refused the connection: %s\n", reply->error->message);
        return 3;
    }
    if (reply->kind_case != PRISM__V1__FRAME__KIND_HELLO || reply->hello->protocol_version != 1)
        die(4, "the processor did not answer with a version 1 Hello");
    prism__v1__frame__free_unpacked(reply, NULL);

    // One call: the source and one variant spec.
    size_t source_len = 0;
    uint8_t *source = read_file(in, &source_len);
    Prism__V1__Resize resize = PRISM__V1__RESIZE__INIT;
    resize.width = width;
    resize.height = height;
    resize.fit = parse_fit(fit);
    Prism__V1__Operation op_resize = PRISM__V1__OPERATION__INIT;
    op_resize.op_case = PRISM__V1__OPERATION__OP_RESIZE;
    op_resize.resize = &resize;
    Prism__V1__Blur blur_op = PRISM__V1__BLUR__INIT;
    blur_op.sigma = blur;
    Prism__V1__Operation op_blur = PRISM__V1__OPERATION__INIT;
    op_blur.op_case = PRISM__V1__OPERATION__OP_BLUR;
    op_blur.blur = &blur_op;
    Prism__V1__Operation *ops[2] = {&op_resize, &op_blur};
    Prism__V1__Output output = PRISM__V1__OUTPUT__INIT;
    output.format = parse_format(format);
    output.quality = quality;
    Prism__V1__VariantSpec spec = PRISM__V1__VARIANT_SPEC__INIT;
    spec.name = "c-client";
    spec.n_operations = blur > 0 ? 2 : 1;
    spec.operations = ops;
    spec.output = &output;
    Prism__V1__VariantSpec *specs[1] = {&spec};
    Prism__V1__Request request = PRISM__V1__REQUEST__INIT;
    request.source.data = source;
    request.source.len = source_len;
    request.n_variants = 1;
    request.variants = specs;
    request.timeout_ms = timeout_ms;
    request.request_id = "prism-call-c";
    Prism__V1__Frame call = PRISM__V1__FRAME__INIT;
    call.call_id = 1;
    call.kind_case = PRISM__V1__FRAME__KIND_REQUEST;
    call.request = &request;
    send_frame(fd, &call);
    free(source);

    // Frames until the call's last one: Response(s), then Complete or Error.
    int status = 4;
    for (;;) {
        Prism__V1__Frame *f = read_frame(fd);
        if (f->kind_case == PRISM__V1__FRAME__KIND_PING) {
            Prism__V1__Pong pong = PRISM__V1__PONG__INIT;
            pong.payload = f->ping->payload;
            Prism__V1__Frame answer = PRISM__V1__FRAME__INIT;
            answer.kind_case = PRISM__V1__FRAME__KIND_PONG;
            answer.pong = &pong;
            send_frame(fd, &answer);
        } else if (f->call_id == 1 && f->kind_case == PRISM__V1__FRAME__KIND_RESPONSE) {
            Prism__V1__Response *r = f->response;
            FILE *o = fopen(out, "wb");
            if (!o || fwrite(r->data.data, 1, r->data.len, o) != r->data.len || fclose(o) != 0)
                die(4, "cannot write --out file");
            printf("%ux%u %s %zu\n", r->width, r->height, format_name(r->format), r->data.len);
        } else if (f->call_id == 1 && f->kind_case == PRISM__V1__FRAME__KIND_COMPLETE) {
            status = 0;
        } else if (f->kind_case == PRISM__V1__FRAME__KIND_ERROR) {
            fprintf(stderr, "prism-call: the processor refused the call: %s\n", f->error->message);
            status = f->call_id == 1 ? 3 : 4;
        } else {
            // go_away or a frame kind this client does not know: nothing to do.
            prism__v1__frame__free_unpacked(f, NULL);
            continue;
        }
        int done = f->call_id == 1 && (f->kind_case == PRISM__V1__FRAME__KIND_COMPLETE ||
                                       f->kind_case == PRISM__V1__FRAME__KIND_ERROR);
        done = done || (f->call_id == 0 && f->kind_case == PRISM__V1__FRAME__KIND_ERROR);
        prism__v1__frame__free_unpacked(f, NULL);
        if (done) break;
    }
    close(fd);
    return status;
}
