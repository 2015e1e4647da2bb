// SHA-256 and MD5 from OpenSSL's libcrypto, through its non-variadic one-shot EVP call.
#ifndef PRISM_CCRYPTO_SHIM_H
#define PRISM_CCRYPTO_SHIM_H

#include <openssl/evp.h>

// Writes the 32-byte SHA-256 of data[0..<len] to out. Returns 1 on success.
static inline int prism_sha256(const void *data, size_t len, unsigned char out[32]) {
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

// Writes the 16-byte MD5 of data[0..<len] to out (S3-compatible ETags). Returns 1 on success.
static inline int prism_md5(const void *data, size_t len, unsigned char out[16]) {
    unsigned int n = 0;
    return EVP_Digest(data, len, out, &n, EVP_md5(), NULL);
}

#endif
