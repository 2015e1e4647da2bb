// One glibc malloc arena for the processor, set before any thread exists.
#ifndef PRISM_MALLOC_ARENA_H
#define PRISM_MALLOC_ARENA_H

// The arena limit this process runs with: 1 when set here, 0 when the environment chose
// (MALLOC_ARENA_MAX or GLIBC_TUNABLES with arena_max), for the startup log.
int prism_malloc_arena_max(void);

#endif
