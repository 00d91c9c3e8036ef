/* A small work-sharing thread pool for the kernels (see pool.c). */
#ifndef WB_POOL_H
#define WB_POOL_H
#include <stdint.h>

typedef void (*wb_task)(void *ctx, int64_t begin, int64_t end);

/* Run fn(ctx, i, i + 1) for every i in [0, n) on up to nthreads threads (the caller is one):
 * items are claimed one at a time from a shared counter, so a helper thread that the OS has
 * not scheduled yet simply takes no items instead of stalling the call. */
void wb_parallel_for(int64_t n, wb_task fn, void *ctx, int nthreads);

#endif
