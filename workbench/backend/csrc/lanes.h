/* Batch-in-lanes tiles shared by the sparse kernels (csr in sparse.c, bitmask.c).
 *
 * For N >= 8 columns (batch x output positions) the sparse kernels put the columns in the
 * SIMD lanes: the input is packed into tiles of BT = 16*NV consecutive columns (NV = 1..4
 * AVX-512 vectors), tile[k][0..BT), so every nonzero weight w[o,k] costs NV FMAs with a
 * broadcast weight and no permute or gather: acc[o][0..BT) += w[o,k] * tile[k][0..BT).
 * A task accumulates a block of rows in a small buffer on its own stack and stores it with
 * the bias and ReLU (transposed back to (N, O) for Linear, or into (B, O, L) for Conv2d).
 */
#ifndef WB_LANES_H
#define WB_LANES_H
#include <stdint.h>
#include <string.h>

#define ALWAYS_INLINE static inline __attribute__((always_inline))
#define LANES 16
#define MAX_NV 4

typedef float v16f __attribute__((vector_size(64), aligned(64)));
typedef float v16fu __attribute__((vector_size(64), aligned(4)));

/* Vectors per tile: as many as the columns need, at most 4 (64 columns). */
ALWAYS_INLINE int lanes_nv(int64_t N) {
    int64_t nv = (N + LANES - 1) / LANES;
    return nv > MAX_NV ? MAX_NV : (int)nv;
}

/* Threads for a sparse call with nnz weights on N columns: one below ~20 µs of work. Waking a
 * helper costs microseconds and it then spins, taking a core from torch's threads in the layers
 * in between (the default CNN's 1,008-weight layer at batch 64 ran the whole model 1.9x slower
 * than torch eager on 2 threads). Below 8 columns a nonzero costs about one scalar FMA per
 * column; from 8 on the columns sit in the lanes, one vector FMA per 16 of them. A call waits
 * for every item a helper claimed, so a helper the OS preempts stalls it: below 8 columns a
 * call goes parallel only from ~0.2 ms of work (MLP at batch 1 on 2 threads, 1024-wide 90 %
 * layers: median 0.47 ms parallel vs 0.35 ms on one thread next to other busy threads). */
#define PARALLEL_WORK 50000
#define PARALLEL_WORK_FEW 400000
ALWAYS_INLINE int sparse_threads(int64_t nnz, int64_t N, int nthreads) {
    if (N < 8) return nthreads > 1 && nnz * N > PARALLEL_WORK_FEW ? nthreads : 1;
    return nthreads > 1 && nnz * ((N + LANES - 1) / LANES) > PARALLEL_WORK ? nthreads : 1;
}

/* Pack columns [n0 + 16*v, n0 + 16*v + 16) of x (B samples of K x L, column n = b*L + l)
 * into vector v of tile[k][16*nv] (zero past N). For L == 1 x is (N, K) rows: a 16 x 16 block transpose
 * through a strided gather; for L > 1 a 16-column piece inside one sample is one load. */
void wb_lanes_pack(const float *x, float *tile, int64_t n0, int v, int nv, int64_t N,
                   int64_t K, int64_t L);

/* Store acc[r][16*nv] (rows o0 + r, r < R) + bias, ReLU, into y at columns [n0, ...). */
void wb_lanes_store(const float *acc, int R, int nv, const float *bias, int relu, float *y,
                    int64_t o0, int64_t n0, int64_t N, int64_t O, int64_t L);

#endif
