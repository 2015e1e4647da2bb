// Limits glibc malloc to one arena in prism-processor, unless the operator chose otherwise.
//
// With several arenas, each keeps the freed space of the last large decode that ran on a thread
// attached to it (a progressive JPEG's coefficient buffer: 88 MB at 5120x2880 4:4:4, allocated
// in pieces under the 32 MB mmap ceiling, so from an arena), and the peak RSS holds all of them:
// in a soak at 4 uploads in flight, processor peaks fell from 235-247 MB with two arenas to
// 192-199 MB with one, at the same CPU per upload (docs/performance.md).
//
// It must happen before the first thread is created: glibc makes a thread's arena on its first
// malloc and never gives it back, and Swift's runtime starts threads before `main` runs any of
// Prism's code. A constructor runs before both.
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "prism_malloc_arena.h"

static int chosen = 0;

__attribute__((constructor)) static void prism_one_malloc_arena(void) {
    const char *tunables = getenv("GLIBC_TUNABLES");
    if (getenv("MALLOC_ARENA_MAX") != NULL || (tunables != NULL && strstr(tunables, "arena_max") != NULL)) {
        return;
    }
#ifdef M_ARENA_MAX
    if (mallopt(M_ARENA_MAX, 1) == 1) {
        chosen = 1;
    }
#endif
}

int prism_malloc_arena_max(void) {
    return chosen;
}
