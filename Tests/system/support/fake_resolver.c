// A resolver the tests steer, loaded with LD_PRELOAD into a gateway: getaddrinfo() for the
// name in FAKE_DNS_NAME answers from the file FAKE_DNS_FILE, read on every lookup:
//   - one IPv4/IPv6 address per line: the answer;
//   - an empty file: the name does not exist (EAI_NONAME, what NXDOMAIN gives);
//   - a first line "FAIL": the lookup fails (EAI_AGAIN, what a DNS timeout or SERVFAIL gives).
// Every other name goes to the real getaddrinfo. Built by the test that uses it (gcc, -ldl).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*getaddrinfo_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res) {
    static getaddrinfo_fn real;
    if (!real) real = (getaddrinfo_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    const char *name = getenv("FAKE_DNS_NAME"), *path = getenv("FAKE_DNS_FILE");
    if (!node || !name || !path || strcmp(node, name) != 0) return real(node, service, hints, res);

    FILE *file = fopen(path, "r");
    if (!file) return EAI_AGAIN;
    struct addrinfo numeric = {0};
    if (hints) numeric = *hints;
    numeric.ai_flags |= AI_NUMERICHOST;
    struct addrinfo *head = NULL, **tail = &head;
    char line[256];
    int status = EAI_NONAME;
    while (fgets(line, sizeof line, file)) {
        line[strcspn(line, " \t\r\n")] = 0;
        if (strcmp(line, "FAIL") == 0 && !head) { status = EAI_AGAIN; break; }
        struct addrinfo *one = NULL;
        if (line[0] && real(line, service, &numeric, &one) == 0) {
            *tail = one;
            while (*tail) tail = &(*tail)->ai_next;
        }
    }
    fclose(file);
    if (!head) return status;
    *res = head;
    return 0;
}
