// One glibc malloc arena for the processor, set before any thread exists.
#ifndef PRISM_MALLOC_ARENA_H
#define PRISM_MALLOC_ARENA_H

// 1 when this process runs with the one arena set here; 0 when the environment chose
// (MALLOC_ARENA_MAX or GLIBC_TUNABLES with arena_max) or the C library has no such setting.
int prism_malloc_arena_max(void);

#endif
