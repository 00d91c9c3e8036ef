/* Sparse fp32 kernels: blocked CSR and N:M weights times dense activations, fused bias + ReLU.
 *
 * Layout convention shared with lowbit.c: the activations are B samples of K x L values
 * (x[b*K*L + k*L + l]); L = 1 for a Linear layer (x is (B, K)) and L = H_out*W_out for a
 * Conv2d lowered with im2col (x is the (B, K, L) unfold output). The output is
 * y[b*O*L + o*L + l], i.e. (B, O) for Linear and (B, O, L) for Conv2d. N = B*L columns.
 *
 * CSR, few columns (N < 8, Linear): one sparse dot product per (column, output) with a
 * gather. Otherwise the columns go into the SIMD lanes (lanes.h): tiles of up to 64 columns,
 * one broadcast weight times up to four vectors per nonzero, the row block's accumulators on
 * the task's stack. The CSR is blocked by 255 columns (see below) so the tile rows a block
 * touches stay in the inner caches. Bitmask and N:M weights: bitmask.c.
 */
#include <stdint.h>
#include <string.h>

#include "lanes.h"
#include "pool.h"

/* Blocked CSR: the columns are cut into chunks of CHUNK (255); within a chunk a column is one
 * byte (its offset in the chunk) and a row's nonzero count is one byte. The nonzeros are
 * stored chunk by chunk, row by row: cnt[c*O + o] of them for row o in chunk c;
 * start[c*nblocks + b] is where rows b*ROWS.. of chunk c begin (running sums give the rest).
 * Together 5 bytes per nonzero + 1 byte per (row, chunk). */
#define CHUNK 255
#define ROWS 32

/* Work buffer floats: the packed tiles of the widest tile kernel. */
int64_t wb_work_floats(int64_t N, int64_t K, int64_t O) {
    int64_t bt = LANES * lanes_nv(N), tiles = (N + bt - 1) / bt;
    (void)O;
    return tiles * K * bt;
}

int wb_tile_width(int64_t N) { return LANES * lanes_nv(N); }  /* columns per packed tile */

typedef struct {
    const int32_t *start;  /* (nchunks, nblocks) */
    const uint8_t *cnt;    /* (nchunks, O) */
    const uint8_t *idx;
    const float *val;
    int64_t O, nchunks, nblocks;
} wb_csr;

/* Rows [r0, r1) of row block blk times one packed tile into acc[r - r0][16*NV]. Independent
 * accumulator sets (S of them) keep 4 FMA chains in flight for any NV. */
ALWAYS_INLINE void csr_lanes_rows(const wb_csr *m, const float *tile, float *acc, int64_t blk,
                                  int64_t r0, int64_t r1, const int NV) {
    const int BT = LANES * NV, S = NV == 1 ? 4 : NV == 2 ? 2 : 1;
    const int64_t O = m->O;
    for (int64_t c = 0; c < m->nchunks; c++) {
        const uint8_t *cnt = m->cnt + c * O;
        const float *tc = tile + c * CHUNK * BT;
        int64_t p = m->start[c * m->nblocks + blk];
        for (int64_t o = r0; o < r1; o++) {
            const int64_t e = p + cnt[o];
            v16f a[4][MAX_NV];
            for (int s = 0; s < S; s++)
                for (int v = 0; v < NV; v++) a[s][v] = (v16f){0};
            int64_t q = p;
            for (; q + S <= e; q += S)
                for (int s = 0; s < S; s++) {
                    const float w = m->val[q + s];
                    const v16f *xr = (const v16f *)(tc + m->idx[q + s] * BT);
                    for (int v = 0; v < NV; v++) a[s][v] += w * xr[v];
                }
            for (; q < e; q++) {
                const float w = m->val[q];
                const v16f *xr = (const v16f *)(tc + m->idx[q] * BT);
                for (int v = 0; v < NV; v++) a[0][v] += w * xr[v];
            }
            p = e;
            v16f *ao = (v16f *)(acc + (o - r0) * BT);
            for (int v = 0; v < NV; v++) {
                v16f sum = a[0][v];
                for (int s = 1; s < S; s++) sum += a[s][v];
                ao[v] = c ? ao[v] + sum : sum;
            }
        }
    }
}

static __attribute__((noinline)) void csr_lanes_1(const wb_csr *m, const float *t, float *a,
                                                  int64_t b, int64_t r0, int64_t r1) {
    csr_lanes_rows(m, t, a, b, r0, r1, 1);
}
static __attribute__((noinline)) void csr_lanes_2(const wb_csr *m, const float *t, float *a,
                                                  int64_t b, int64_t r0, int64_t r1) {
    csr_lanes_rows(m, t, a, b, r0, r1, 2);
}
static __attribute__((noinline)) void csr_lanes_3(const wb_csr *m, const float *t, float *a,
                                                  int64_t b, int64_t r0, int64_t r1) {
    csr_lanes_rows(m, t, a, b, r0, r1, 3);
}
static __attribute__((noinline)) void csr_lanes_4(const wb_csr *m, const float *t, float *a,
                                                  int64_t b, int64_t r0, int64_t r1) {
    csr_lanes_rows(m, t, a, b, r0, r1, 4);
}

/* Rows [o0, o1) for few columns with L == 1: one sparse dot product per (column, output). */
static void csr_gather_rows(const wb_csr *m, const float *bias, const float *x, float *y,
                            int64_t N, int64_t K, int64_t o0, int64_t o1, int relu) {
    const int64_t O = m->O;
    for (int64_t r0 = o0; r0 < o1; r0 += ROWS) {
        int64_t r1 = r0 + ROWS < o1 ? r0 + ROWS : o1;
        float acc[ROWS * 8];
        for (int64_t i = 0; i < (r1 - r0) * N; i++) acc[i] = 0.0f;
        for (int64_t c = 0; c < m->nchunks; c++) {
            const uint8_t *cnt = m->cnt + c * O;
            int64_t p = m->start[c * m->nblocks + r0 / ROWS];
            for (int64_t o = r0; o < r1; o++) {
                int64_t e = p + cnt[o];
                for (int64_t n = 0; n < N; n++) {
                    const float *xc = x + n * K + c * CHUNK;
                    float a0 = 0.0f, a1 = 0.0f;
                    int64_t q = p;
                    for (; q + 2 <= e; q += 2) {
                        a0 += m->val[q] * xc[m->idx[q]];
                        a1 += m->val[q + 1] * xc[m->idx[q + 1]];
                    }
                    if (q < e) a0 += m->val[q] * xc[m->idx[q]];
                    acc[(o - r0) * N + n] += a0 + a1;
                }
                p = e;
            }
        }
        for (int64_t o = r0; o < r1; o++)
            for (int64_t n = 0; n < N; n++) {
                float v = acc[(o - r0) * N + n] + (bias ? bias[o] : 0.0f);
                y[n * O + o] = relu && v < 0.0f ? 0.0f : v;
            }
    }
}


typedef struct {
    const wb_csr *m;
    const float *bias, *x;
    float *y, *tiles;
    int64_t N, K, L, ntiles;
    int relu, nv;
} csr_job;

static void csr_gather_task(void *ctx, int64_t b, int64_t e) {
    const csr_job *j = (const csr_job *)ctx;
    (void)e;
    int64_t o0 = b * ROWS, o1 = o0 + ROWS < j->m->O ? o0 + ROWS : j->m->O;
    csr_gather_rows(j->m, j->bias, j->x, j->y, j->N, j->K, o0, o1, j->relu);
}

static void csr_pack_task(void *ctx, int64_t i, int64_t e) {
    const csr_job *j = (const csr_job *)ctx;
    (void)e;
    int64_t t = i / j->nv, bt = LANES * j->nv;
    wb_lanes_pack(j->x, j->tiles + t * j->K * bt, t * bt, (int)(i % j->nv), j->nv, j->N, j->K,
                  j->L);
}

/* One block of ROWS output rows times one tile. */
static void csr_lanes_task(void *ctx, int64_t i, int64_t e) {
    const csr_job *j = (const csr_job *)ctx;
    (void)e;
    float acc[ROWS * LANES * MAX_NV] __attribute__((aligned(64)));
    int64_t blk = i % j->m->nblocks, t = i / j->m->nblocks, bt = LANES * j->nv;
    int64_t o0 = blk * ROWS, o1 = o0 + ROWS < j->m->O ? o0 + ROWS : j->m->O;
    const float *tile = j->tiles + t * j->K * bt;
    switch (j->nv) {
        case 1: csr_lanes_1(j->m, tile, acc, blk, o0, o1); break;
        case 2: csr_lanes_2(j->m, tile, acc, blk, o0, o1); break;
        case 3: csr_lanes_3(j->m, tile, acc, blk, o0, o1); break;
        default: csr_lanes_4(j->m, tile, acc, blk, o0, o1); break;
    }
    wb_lanes_store(acc, (int)(o1 - o0), j->nv, j->bias, j->relu, j->y, o0, t * bt, j->N,
                   j->m->O, j->L);
}

void wb_csr_spmm(const int32_t *start, const uint8_t *cnt, const uint8_t *idx, const float *val,
                 const float *bias, const float *x, float *y, float *work, int64_t B, int64_t K,
                 int64_t L, int64_t O, int relu, int nthreads) {
    int64_t N = B * L;
    int64_t nchunks = (K + CHUNK - 1) / CHUNK;
    int64_t nblocks = (O + ROWS - 1) / ROWS;
    wb_csr m = {start, cnt, idx, val, O, nchunks, nblocks};
    int64_t nnz = 0;
    for (int64_t o = 0; o < O; o++) nnz += cnt[(nchunks - 1) * O + o];
    nnz += start[(nchunks - 1) * nblocks];  /* nonzeros before the last chunk + in it */
    int par = sparse_threads(nnz, N, nthreads);
    int nv = lanes_nv(N);
    int64_t bt = LANES * nv, ntiles = (N + bt - 1) / bt;
    csr_job job = {&m, bias, x, y, work, N, K, L, ntiles, relu, nv};
    if (L == 1 && N < 8) {
        wb_parallel_for(nblocks, csr_gather_task, &job, par);
        return;
    }
    wb_parallel_for(ntiles * nv, csr_pack_task, &job, par);
    wb_parallel_for(ntiles * nblocks, csr_lanes_task, &job, par);
}
