// prism-call: sends one image and one variant spec to a Prism processor and writes the result.
//
// A complete client of the frame protocol (Protos/PROTOCOL.md) in plain C on protobuf-c:
// length-prefixed frames over TCP (or TLS, with OpenSSL), Hello handshake, one call, Ping
// answered, unknown frames ignored. Usage:
//
//   prism-call --port 7070 --in photo.jpg --out thumb.webp --width 200 --height 200
//              --fit cover --format webp [--quality 80] [--blur 3] [--token T] [--timeout-ms N]
//              [--tls [--ca FILE] [--cert FILE --key FILE] [--server-name NAME]]
//
// --tls speaks TLS 1.2+ and checks the processor's certificate against --ca (default: the
// system's CAs) and its name against --server-name (default: --host), sent as SNI unless it is
// an IP address. --cert/--key present a client certificate to processors that require one.
//
// Prints "WIDTHxHEIGHT FORMAT BYTES" on success. Exits 2 on a usage error, 3 when the processor
// refuses the call (its message on stderr), 4 on a connection, TLS or protocol failure.
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "prism/v1/prism.pb-c.h"

#define MAX_FRAME (64u << 20)

// One connection: a socket, and the TLS session over it when --tls is given.
typedef struct {
    int fd;
    SSL *ssl;
} Conn;

static void die(int code, const char *what) {
    fprintf(stderr, "prism-call: %s\n", what);
    exit(code);
}

// Dies with `what` and OpenSSL's reason (the certificate check's verdict first, when that is
// what failed: "unable to get local issuer certificate", "hostname mismatch", ...).
static void die_tls(const char *what, SSL *ssl) {
    char reason[256] = "";
    long verify = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
    unsigned long e = ERR_get_error();
    if (verify != X509_V_OK) {
        snprintf(reason, sizeof reason, "certificate verify failed: %s", X509_verify_cert_error_string(verify));
    } else if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL &&
               (ERR_GET_REASON(e) == SSL_R_WRONG_VERSION_NUMBER || ERR_GET_REASON(e) == SSL_R_PACKET_LENGTH_TOO_LONG)) {
        snprintf(reason, sizeof reason, "the processor did not answer with TLS (is TLS turned on at the processor?)");
    } else if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
        snprintf(reason, sizeof reason, "the processor requires a client certificate: pass --cert and --key");
    } else if (e != 0 && ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_TLSV1_ALERT_UNKNOWN_CA) {
        snprintf(reason, sizeof reason, "the processor does not trust --cert (unknown CA): use one its --tls-client-ca signed");
    } else if (e != 0) {
        ERR_error_string_n(e, reason, sizeof reason);
    } else {
        snprintf(reason, sizeof reason, "the processor closed the connection (does it speak TLS on this port?)");
    }
    fprintf(stderr, "prism-call: %s: %s\n", what, reason);
    exit(4);
}

static void write_all(Conn *c, const uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t w;
        if (c->ssl) {
            int k = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
            if (k <= 0) die_tls("connection lost while sending", NULL);
            w = k;
        } else {
            w = send(c->fd, p, n, MSG_NOSIGNAL);
            if (w < 0 && errno == EINTR) continue;
            if (w <= 0) die(4, "connection lost while sending");
        }
        p += w;
        n -= (size_t)w;
    }
}

static void read_all(Conn *c, uint8_t *p, size_t n) {
    while (n > 0) {
        ssize_t r;
        if (c->ssl) {
            int k = SSL_read(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
            if (k <= 0) {
                if (SSL_get_error(c->ssl, k) == SSL_ERROR_ZERO_RETURN) die(4, "the processor closed the connection");
                die_tls("the connection failed", NULL);
            }
            r = k;
        } else {
            r = recv(c->fd, p, n, 0);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) die(4, "the processor closed the connection");
        }
        p += r;
        n -= (size_t)r;
    }
}

// Every frame: 4-byte big-endian length, then a serialised prism.v1.Frame.
static void send_frame(Conn *fd, const Prism__V1__Frame *frame) {
    size_t len = prism__v1__frame__get_packed_size(frame);
    uint8_t *buf = malloc(len + 4);
    if (!buf) die(4, "out of memory");
    uint32_t be = htonl((uint32_t)len);
    memcpy(buf, &be, 4);
    prism__v1__frame__pack(frame, buf + 4);
    write_all(fd, buf, len + 4);
    free(buf);
}

static Prism__V1__Frame *read_frame(Conn *fd) {
    uint8_t header[4];
    read_all(fd, header, 4);
    // A TLS record (alert 0x15 or handshake 0x16, version 3.x) where a frame should be: the
    // port speaks TLS and this connection does not.
    if (!fd->ssl && (header[0] == 0x15 || header[0] == 0x16) && header[1] == 0x03)
        die(4, "the processor answered with TLS; connect with --tls");
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

static int is_ip_address(const char *s) {
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

// TLS over a connected socket: TLS 1.2 or later, the chain checked against `ca` (or the
// system's CAs), the name checked (SSL_set1_host; an IP address against the certificate's IP
// addresses), SNI sent for a DNS name.
static SSL *start_tls(int fd, const char *name, const char *ca, const char *cert, const char *key) {
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) die_tls("cannot set up TLS", NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    if (ca) {
        if (SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) die_tls("cannot load --ca (is it a PEM CA bundle?)", NULL);
    } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
        die_tls("cannot load the system's CAs", NULL);
    }
    if (cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) die_tls("cannot load --cert (is it a PEM certificate?)", NULL);
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) die_tls("cannot load --key (is it an unencrypted PEM key?)", NULL);
        if (SSL_CTX_check_private_key(ctx) != 1) die_tls("--key does not belong to --cert", NULL);
    }
    SSL *ssl = SSL_new(ctx);
    SSL_CTX_free(ctx);  // the SSL holds its own reference
    if (!ssl) die_tls("cannot set up TLS", NULL);
    if (is_ip_address(name)) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        if (X509_VERIFY_PARAM_set1_ip_asc(param, name) != 1) die(2, "--server-name is not a valid IP address");
    } else {
        if (SSL_set1_host(ssl, name) != 1) die(2, "--server-name is not a valid host name");
        if (SSL_set_tlsext_host_name(ssl, name) != 1) die_tls("cannot set SNI", NULL);
    }
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) die_tls("TLS handshake with the processor failed", ssl);
    return ssl;
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
    const char *ca = NULL, *cert = NULL, *key = NULL, *server_name = NULL;
    int tls = 0;
    unsigned width = 0, height = 0, quality = 0, timeout_ms = 30000;
    float blur = 0;
    for (int i = 1; i < argc; i += 2) {
        const char *k = argv[i];
        if (!strcmp(k, "--tls")) {
            tls = 1;
            i -= 1;  // a switch: no value follows
            continue;
        }
        if (i + 1 >= argc) die(2, "every option but --tls takes a value");
        const char *v = argv[i + 1];
        if (!strcmp(k, "--host")) host = v;
        else if (!strcmp(k, "--ca")) ca = v;
        else if (!strcmp(k, "--cert")) cert = v;
        else if (!strcmp(k, "--key")) key = v;
        else if (!strcmp(k, "--server-name")) server_name = v;
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
    if (!cert != !key) die(2, "--cert and --key go together");
    if ((ca || cert || server_name) && !tls) die(2, "--ca, --cert, --key and --server-name need --tls");

    Conn conn = {connect_to(host, port), NULL};
    Conn *fd = &conn;
    if (tls) conn.ssl = start_tls(conn.fd, server_name ? server_name : host, ca, cert, key);

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
    if (conn.ssl) {
        SSL_shutdown(conn.ssl);  // close_notify: a clean end of the TLS stream
        SSL_free(conn.ssl);
    }
    close(conn.fd);
    return status;
}
