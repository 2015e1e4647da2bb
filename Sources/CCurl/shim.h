// Fixed-arity wrappers around libcurl's variadic curl_easy_setopt/getinfo, plus the C
// callbacks that collect a response, so Swift never passes a closure into C.
#ifndef PRISM_CCURL_SHIM_H
#define PRISM_CCURL_SHIM_H

#define CURL_DISABLE_TYPECHECK 1
#include <curl/curl.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static inline CURLcode prism_curl_set_long(CURL *h, CURLoption o, long v) {
    return curl_easy_setopt(h, o, v);
}

static inline CURLcode prism_curl_set_str(CURL *h, CURLoption o, const char *v) {
    return curl_easy_setopt(h, o, v);
}

static inline CURLcode prism_curl_set_ptr(CURL *h, CURLoption o, void *v) {
    return curl_easy_setopt(h, o, v);
}

static inline CURLcode prism_curl_set_off(CURL *h, CURLoption o, curl_off_t v) {
    return curl_easy_setopt(h, o, v);
}

static inline long prism_curl_response_code(CURL *h) {
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    return code;
}

static inline void *prism_curl_private(CURL *h) {
    char *p = NULL;
    curl_easy_getinfo(h, CURLINFO_PRIVATE, &p);
    return p;
}

// A finished transfer's message: the easy handle and its result, out of CURLMsg's union.
static inline CURL *prism_curl_done(CURLM *multi, CURLcode *result) {
    int left = 0;
    CURLMsg *msg;
    while ((msg = curl_multi_info_read(multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE) {
            *result = msg->data.result;
            return msg->easy_handle;
        }
    }
    return NULL;
}

// What a transfer received: the body (up to `limit` bytes) and the ETag header.
typedef struct {
    char *data;
    size_t length;
    size_t capacity;
    size_t limit;
    int overflow;
    char etag[256];
} PrismCurlResponse;

static size_t prism__on_body(char *ptr, size_t size, size_t count, void *user) {
    PrismCurlResponse *r = (PrismCurlResponse *)user;
    size_t n = size * count;
    if (r->length + n > r->limit) {
        r->overflow = 1;
        return 0;  // aborts the transfer with CURLE_WRITE_ERROR
    }
    if (r->length + n > r->capacity) {
        size_t cap = r->capacity ? r->capacity * 2 : 16384;
        while (cap < r->length + n) cap *= 2;
        char *grown = (char *)realloc(r->data, cap);
        if (!grown) return 0;
        r->data = grown;
        r->capacity = cap;
    }
    memcpy(r->data + r->length, ptr, n);
    r->length += n;
    return n;
}

static size_t prism__on_header(char *ptr, size_t size, size_t count, void *user) {
    PrismCurlResponse *r = (PrismCurlResponse *)user;
    size_t n = size * count;
    if (n > 5 && strncasecmp(ptr, "etag:", 5) == 0) {
        size_t start = 5, end = n;
        while (start < end && (ptr[start] == ' ' || ptr[start] == '\t')) start++;
        while (end > start && (ptr[end - 1] == '\r' || ptr[end - 1] == '\n' || ptr[end - 1] == ' ')) end--;
        size_t len = end - start < sizeof(r->etag) - 1 ? end - start : sizeof(r->etag) - 1;
        memcpy(r->etag, ptr + start, len);
        r->etag[len] = 0;
    }
    return n;
}

// Sends the response body and headers of `h` into `r`.
static inline void prism_curl_capture(CURL *h, PrismCurlResponse *r) {
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, prism__on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, prism__on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, r);
}

// Sends a request body from the caller's read callback (and rewinds it through the seek
// callback), so libcurl never copies the body; `user` reaches both.
static inline void prism_curl_read_from(CURL *h, curl_read_callback read, curl_seek_callback seek, void *user) {
    curl_easy_setopt(h, CURLOPT_READFUNCTION, read);
    curl_easy_setopt(h, CURLOPT_READDATA, user);
    curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, seek);
    curl_easy_setopt(h, CURLOPT_SEEKDATA, user);
}

static inline void prism_curl_response_free(PrismCurlResponse *r) {
    free(r->data);
    r->data = NULL;
    r->length = r->capacity = 0;
}

#endif
