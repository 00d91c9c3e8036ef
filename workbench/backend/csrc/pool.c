/* Work-sharing thread pool: the calling thread and up to WB_MAX_THREADS-1 persistent helpers
 * claim items from an atomic counter; the caller only waits for items that were claimed.
 *
 * Why not OpenMP: on a loaded machine a libgomp parallel region waits at its closing barrier
 * for every team thread, including one the scheduler has not run yet (measured: ~10 ms per
 * region on a 2-core machine with 8 busy processes), while here such a helper just misses the
 * job. Protocol: `gen` is odd while the caller (re)writes the job and even once it is
 * published; a helper registers in `active`, re-checks `gen`, then claims items. */
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>

#define WB_MAX_THREADS 64
/* How long an idle helper spins before it sleeps. Kernel calls of one forward pass follow each
 * other within microseconds, so a short window keeps the helpers awake between them; a longer
 * one takes a core from torch's own threads in the layers in between (20000 PAUSEs were 0.55 ms
 * on an AMD EPYC: the default CNN at batch 64 on 2 threads ran 1.9x slower than torch eager). */
#ifndef WB_SPIN_NS
#define WB_SPIN_NS 50000
#endif
/* How long a caller spins for the items its helpers claimed before it yields its core to them.
 * It spun for 20000 PAUSEs (0.55 ms) before: a helper preempted by another busy thread then
 * stalled the call that long (4096² int4 at batch 1 on 2 threads: median 0.72 ms against
 * 0.62 ms on one). */
#ifndef WB_WAIT_NS
#define WB_WAIT_NS 20000
#endif

static struct {
    wb_task fn;
    void *ctx;
    int64_t n;
    atomic_llong next, done;
    atomic_long gen;
    atomic_int active, sleeping, helpers, wanted;
    pthread_mutex_t lock;
    pthread_cond_t wake;
} P = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static pthread_mutex_t start_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t call_lock = PTHREAD_MUTEX_INITIALIZER;  /* one job at a time */

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void run_items(void) {
    int64_t i;
    while ((i = atomic_fetch_add_explicit(&P.next, 1, memory_order_relaxed)) < P.n) {
        P.fn(P.ctx, i, i + 1);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
    }
}

static void *helper(void *arg) {
    long index = (long)arg, seen = atomic_load(&P.gen);
    for (;;) {
        long g;
        int spins = 0;
        int64_t until = now_ns() + WB_SPIN_NS;
        while ((g = atomic_load_explicit(&P.gen, memory_order_acquire)) == seen || (g & 1)) {
            if (++spins % 32 || now_ns() < until) {
                relax();
                continue;
            }
            pthread_mutex_lock(&P.lock);
            atomic_fetch_add(&P.sleeping, 1);
            while ((g = atomic_load(&P.gen)) == seen || (g & 1)) pthread_cond_wait(&P.wake, &P.lock);
            atomic_fetch_sub(&P.sleeping, 1);
            pthread_mutex_unlock(&P.lock);
            break;
        }
        seen = g;
        if (index >= atomic_load(&P.wanted)) continue;  /* this job uses fewer threads */
        atomic_fetch_add(&P.active, 1);
        if (atomic_load_explicit(&P.gen, memory_order_acquire) == g) run_items();
        atomic_fetch_sub(&P.active, 1);
    }
    return 0;
}

/* A forked child has none of the helpers (fork copies only the calling thread). */
static void after_fork_in_child(void) {
    atomic_store(&P.helpers, 0);
    atomic_store(&P.active, 0);
    atomic_store(&P.sleeping, 0);
    pthread_mutex_init(&P.lock, 0);
    pthread_cond_init(&P.wake, 0);
    pthread_mutex_init(&start_lock, 0);
    pthread_mutex_init(&call_lock, 0);
}

void wb_parallel_for(int64_t n, wb_task fn, void *ctx, int nthreads) {
    if (nthreads > WB_MAX_THREADS) nthreads = WB_MAX_THREADS;
    if (nthreads <= 1 || n <= 1 || pthread_mutex_trylock(&call_lock)) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i, i + 1);  /* serial (or pool busy) */
        return;
    }
    if (atomic_load(&P.helpers) < nthreads - 1) {
        pthread_mutex_lock(&start_lock);
        static int registered = 0;
        if (!registered) registered = !pthread_atfork(0, 0, after_fork_in_child);
        while (atomic_load(&P.helpers) < nthreads - 1) {
            pthread_t t;
            long index = atomic_load(&P.helpers) + 1;
            if (pthread_create(&t, 0, helper, (void *)index)) break;
            pthread_detach(t);
            atomic_fetch_add(&P.helpers, 1);
        }
        pthread_mutex_unlock(&start_lock);
    }
    atomic_fetch_add_explicit(&P.gen, 1, memory_order_acq_rel);  /* odd: writing */
    while (atomic_load_explicit(&P.active, memory_order_acquire)) relax();
    P.fn = fn;
    P.ctx = ctx;
    P.n = n;
    atomic_store(&P.wanted, nthreads);
    atomic_store_explicit(&P.next, 0, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&P.gen, 1, memory_order_release);  /* even: published */
    if (atomic_load(&P.sleeping)) {
        pthread_mutex_lock(&P.lock);
        pthread_cond_broadcast(&P.wake);
        pthread_mutex_unlock(&P.lock);
    }
    run_items();
    /* the items left are a helper's; if the OS preempted it, the yield lets it run here */
    int spins = 0;
    int64_t until = now_ns() + WB_WAIT_NS;
    while (atomic_load_explicit(&P.done, memory_order_acquire) < n) {
        if (++spins % 32 || now_ns() < until) relax();
        else sched_yield();
    }
    pthread_mutex_unlock(&call_lock);
}
