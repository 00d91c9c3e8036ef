/* Sparse fp32 kernels: CSR and N:M weights times dense activations, fused bias + ReLU.
 *
 * Layout convention shared with lowbit.c: the activations are B samples of K x L values
 * (x[b*K*L + k*L + l]); L = 1 for a Linear layer (x is (B, K)) and L = H_out*W_out for a
 * Conv2d lowered with im2col (x is the (B, K, L) unfold output). The output is
 * y[b*O*L + o*L + l], i.e. (B, O) for Linear and (B, O, L) for Conv2d. N = B*L columns.
 *
 * CSR, few columns (N < 8, Linear): one sparse dot product per (column, output) with a
 * gather. Otherwise the columns are packed into tiles of 16 consecutive columns,
 * work[t][k][0..16) (zero padded), and each output row accumulates 16 columns at once:
 * acc[0..16) += w[o,k] * work[t][k][0..16) over its nonzeros (one AVX-512 FMA per nonzero).
 * The CSR is blocked by 255 columns (see below) so the tile rows a block touches stay in L1.
 * 2:4 weights use a separate kernel vectorised over output channels (wb_nm24_gemm), other
 * N:M patterns the tile kernel.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#include "pool.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))
/* below this many multiply-adds a call stays on one thread (waking a second one costs more) */
#define PARALLEL_MACS 200000

ALWAYS_INLINE int64_t col_offset(int64_t n, int64_t K, int64_t L) {
    return (n / L) * K * L + (n % L);
}
ALWAYS_INLINE int64_t out_offset(int64_t n, int64_t O, int64_t L) {
    return (n / L) * O * L + (n % L);
}

/* work[t][k][j] = x column n = t*BT + j, row k (zero past N and for K <= k < Kc). Rows of
 * the tile are written one after another (64 contiguous bytes for BT = 16) while the BT
 * columns are read as BT streams: each write lands in a line that is still in L1. */
static void pack_tiles(const float *x, float *work, int64_t N, int64_t K, int64_t Kc, int64_t L,
                       int BT, int nthreads) {
    int64_t ntiles = (N + BT - 1) / BT;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && N * K > 262144)
    for (int64_t t = 0; t < ntiles; t++) {
        float *w = work + t * Kc * BT;
        int64_t off[64];
        int full = 1;
        for (int j = 0; j < BT; j++) {
            int64_t n = t * BT + j;
            off[j] = n < N ? col_offset(n, K, L) : -1;
            full &= n < N;
        }
        if (full) {
            for (int64_t k = 0; k < K; k++)
                for (int j = 0; j < BT; j++) w[k * BT + j] = x[off[j] + k * L];
        } else {
            for (int64_t k = 0; k < K; k++)
                for (int j = 0; j < BT; j++) w[k * BT + j] = off[j] >= 0 ? x[off[j] + k * L] : 0.0f;
        }
        memset(w + K * BT, 0, (size_t)(Kc - K) * BT * sizeof(float));
    }
}

ALWAYS_INLINE void store_tile(const float *acc, float *y, float bias, int relu, int64_t o,
                              int64_t n0, int64_t N, int64_t O, int64_t L, int BT) {
    if (L > 1 && n0 % L + BT <= L) {  /* the tile lies in one sample: contiguous output */
        float *yo = y + out_offset(n0, O, L) + o * L;
        int cnt = (int)(N - n0 < BT ? N - n0 : BT);
        for (int j = 0; j < cnt; j++) {
            float v = acc[j] + bias;
            yo[j] = relu && v < 0.0f ? 0.0f : v;
        }
        return;
    }
    for (int j = 0; j < BT && n0 + j < N; j++) {
        float v = acc[j] + bias;
        y[out_offset(n0 + j, O, L) + o * L] = relu && v < 0.0f ? 0.0f : v;
    }
}

/* Blocked CSR: the columns are cut into chunks of CHUNK (255) so one chunk of a packed tile
 * (CHUNK x 16 floats, 16 KB) stays in L1 while the output rows visit it; within a chunk a
 * column is one byte (its offset in the chunk) and a row's nonzero count is one byte.
 * The nonzeros are stored chunk by chunk, row by row: cnt[c*O + o] of them for row o in chunk
 * c; start[c*nblocks + b] is where rows b*ROWS.. of chunk c begin (running sums give the
 * rest). Together ~5 bytes per nonzero + 1 byte per (row, chunk). */
#define CHUNK 255
#define TILE 16
#define ROWS 32

typedef float v16f __attribute__((vector_size(64)));

/* One row of one chunk times the chunk's tile rows: four accumulator chains hide FMA latency. */
ALWAYS_INLINE v16f csr_chunk_row(const uint8_t *idx, const float *val, int64_t s, int64_t e,
                                 const float *tile) {
    v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    int64_t p = s;
    for (; p + 4 <= e; p += 4) {
        a0 += val[p] * *(const v16f *)(tile + idx[p] * TILE);
        a1 += val[p + 1] * *(const v16f *)(tile + idx[p + 1] * TILE);
        a2 += val[p + 2] * *(const v16f *)(tile + idx[p + 2] * TILE);
        a3 += val[p + 3] * *(const v16f *)(tile + idx[p + 3] * TILE);
    }
    for (; p < e; p++) a0 += val[p] * *(const v16f *)(tile + idx[p] * TILE);
    return (a0 + a1) + (a2 + a3);
}

/* Work buffer floats: packed tiles + one accumulator row per output. */
int64_t wb_work_floats(int64_t N, int64_t K, int64_t O) {
    return ((N + TILE - 1) / TILE) * K * TILE + O * TILE;
}

typedef struct {
    const int32_t *start;  /* (nchunks, nblocks) */
    const uint8_t *cnt;    /* (nchunks, O) */
    const uint8_t *idx;
    const float *val;
    int64_t O, nchunks, nblocks;
} wb_csr;

/* Accumulate rows [o0, o1) (o0 a multiple of ROWS) of every chunk for one tile into acc[o][16],
 * then add the bias, apply ReLU and store the tile's columns. */
static void csr_rows_tile(const wb_csr *m, const float *bias, float *y, const float *tile,
                          float *acc, int64_t o0, int64_t o1, int64_t n0, int64_t N, int64_t K,
                          int64_t L, int relu) {
    const int64_t O = m->O;
    for (int64_t r0 = o0; r0 < o1; r0 += ROWS) {
        int64_t r1 = r0 + ROWS < o1 ? r0 + ROWS : o1;
        for (int64_t c = 0; c < m->nchunks; c++) {
            const uint8_t *cnt = m->cnt + c * O;
            const float *tc = tile + c * CHUNK * TILE;
            int64_t p = m->start[c * m->nblocks + r0 / ROWS];
            for (int64_t o = r0; o < r1; o++) {
                int64_t e = p + cnt[o];
                v16f r = csr_chunk_row(m->idx, m->val, p, e, tc);
                p = e;
                v16f *a = (v16f *)(acc + o * TILE);
                *a = c ? *a + r : r;
            }
        }
    }
    for (int64_t o = o0; o < o1; o++) {
        const float *a = acc + o * TILE;
        float b = bias ? bias[o] : 0.0f;
        if (L > 1 && n0 % L + TILE <= L) {  /* the tile lies in one sample: contiguous output */
            float *yo = y + out_offset(n0, O, L) + o * L;
            int cnt = (int)(N - n0 < TILE ? N - n0 : TILE);
            for (int j = 0; j < cnt; j++) {
                float v = a[j] + b;
                yo[j] = relu && v < 0.0f ? 0.0f : v;
            }
        } else {
            for (int j = 0; j < TILE && n0 + j < N; j++) {
                float v = a[j] + b;
                y[out_offset(n0 + j, O, L) + o * L] = relu && v < 0.0f ? 0.0f : v;
            }
        }
    }
    (void)K;
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

int wb_tile_width(int64_t N) { (void)N; return TILE; }  /* every tiled kernel uses 16 */

typedef struct {
    const wb_csr *m;
    const float *bias, *x;
    float *y, *tiles, *acc;
    int64_t N, K, L, Kc, ntiles;
    int relu, gather;
} csr_job;

/* One block of ROWS output rows, all columns. */
static void csr_task(void *ctx, int64_t b, int64_t e) {
    const csr_job *j = (const csr_job *)ctx;
    (void)e;
    int64_t o0 = b * ROWS, o1 = o0 + ROWS < j->m->O ? o0 + ROWS : j->m->O;
    if (j->gather) {
        csr_gather_rows(j->m, j->bias, j->x, j->y, j->N, j->K, o0, o1, j->relu);
        return;
    }
    for (int64_t t = 0; t < j->ntiles; t++)
        csr_rows_tile(j->m, j->bias, j->y, j->tiles + t * j->Kc * TILE, j->acc, o0, o1,
                      t * TILE, j->N, j->K, j->L, j->relu);
}

void wb_csr_spmm(const int32_t *start, const uint8_t *cnt, const uint8_t *idx, const float *val,
                 const float *bias, const float *x, float *y, float *work, int64_t B, int64_t K,
                 int64_t L, int64_t O, int relu, int nthreads) {
    int64_t N = B * L;
    int64_t nchunks = (K + CHUNK - 1) / CHUNK, Kc = K;  /* a partial last chunk needs no padding */
    int64_t nblocks = (O + ROWS - 1) / ROWS;
    wb_csr m = {start, cnt, idx, val, O, nchunks, nblocks};
    int64_t nnz = 0;
    for (int64_t o = 0; o < O; o++) nnz += cnt[(nchunks - 1) * O + o];
    nnz += start[(nchunks - 1) * nblocks];  /* nonzeros before the last chunk + in it */
    int gather = L == 1 && N < 8;
    int64_t ntiles = (N + TILE - 1) / TILE;
    float *tiles = work, *acc = work + ntiles * Kc * TILE;
    if (!gather) pack_tiles(x, tiles, N, K, Kc, L, TILE, nthreads);
    int par = nthreads > 1 && nnz * (gather ? N : ntiles * TILE) > PARALLEL_MACS;
    csr_job job = {&m, bias, x, y, tiles, acc, N, K, L, Kc, ntiles, relu, gather};
    wb_parallel_for(nblocks, csr_task, &job, par ? nthreads : 1);
}

/* N:M weights: every output row keeps n of each group of m inputs; vals (O, K/m*n) and the
 * in-group positions pos (same shape, uint8). Runs through the CSR kernels by building the
 * column index on the fly would cost a division per nonzero, so rows are expanded here. */
ALWAYS_INLINE void nm_row_tile(const float *val, const uint8_t *pos, int64_t o, int64_t G,
                               int n, int m, const float *tile, float *out, int BT) {
    v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    const float *v = val + o * G * n;
    const uint8_t *p = pos + o * G * n;
    for (int64_t g = 0; g < G; g++) {
        for (int i = 0; i < n; i++) {
            const float w = v[g * n + i];
            const v16f *xr = (const v16f *)(tile + (g * m + p[g * n + i]) * BT);
            a0 += w * xr[0];
            if (BT >= 32) a1 += w * xr[1];
            if (BT >= 64) { a2 += w * xr[2]; a3 += w * xr[3]; }
        }
    }
    v16f *r = (v16f *)out;
    r[0] = a0;
    if (BT >= 32) r[1] = a1;
    if (BT >= 64) { r[2] = a2; r[3] = a3; }
}

#define NM_JOB(BTW)                                                                           \
    static __attribute__((noinline)) void nm_job_##BTW(                                      \
        const float *val, const uint8_t *pos, int n, int m, const float *bias, float *y,     \
        const float *work, int64_t t, int64_t o, int64_t N, int64_t K, int64_t L,            \
        int64_t O, int relu) {                                                               \
        float acc[64] __attribute__((aligned(64)));                                                                       \
        if (n == 2 && m == 4)                                                                \
            nm_row_tile(val, pos, o, K / 4, 2, 4, work + t * K * BTW, acc, BTW);             \
        else                                                                                 \
            nm_row_tile(val, pos, o, K / m, n, m, work + t * K * BTW, acc, BTW);             \
        store_tile(acc, y, bias ? bias[o] : 0.0f, relu, o, t * BTW, N, O, L, BTW);          \
    }
NM_JOB(64)
NM_JOB(32)
NM_JOB(16)

void wb_nm_spmm(const float *val, const uint8_t *pos, int n, int m, const float *bias,
                const float *x, float *y, float *work, int64_t B, int64_t K, int64_t L,
                int64_t O, int relu, int nthreads) {
    int64_t N = B * L, G = K / m;
    if (L == 1 && N < 8) {
        #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && O * G * n * N > PARALLEL_MACS)
        for (int64_t o = 0; o < O; o++) {
            const float *v = val + o * G * n;
            const uint8_t *p = pos + o * G * n;
            for (int64_t c = 0; c < N; c++) {
                const float *xc = x + c * K;
                float acc = 0.0f;
                for (int64_t g = 0; g < G; g++)
                    for (int i = 0; i < n; i++) acc += v[g * n + i] * xc[g * m + p[g * n + i]];
                acc += bias ? bias[o] : 0.0f;
                y[c * O + o] = relu && acc < 0.0f ? 0.0f : acc;
            }
        }
        return;
    }
    int BT = wb_tile_width(N);
    pack_tiles(x, work, N, K, K, L, BT, nthreads);
    int64_t ntiles = (N + BT - 1) / BT, jobs = ntiles * O;
    int64_t work_macs = O * G * n * ntiles * BT;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && work_macs > PARALLEL_MACS)
    for (int64_t job = 0; job < jobs; job++) {
        int64_t t = job / O, o = job % O;
        if (BT == 64)
            nm_job_64(val, pos, n, m, bias, y, work, t, o, N, K, L, O, relu);
        else if (BT == 32)
            nm_job_32(val, pos, n, m, bias, y, work, t, o, N, K, L, O, relu);
        else
            nm_job_16(val, pos, n, m, bias, y, work, t, o, N, K, L, O, relu);
    }
}

/* 2:4 sparse weights, vectorised over output channels: for a block of 16 outputs and a group
 * of 4 inputs the two kept weights are vals[ob][g][0..1][16] and their in-group positions are
 * packed in pos[ob][g][16] (bits 0-1 and 2-3). The 4 inputs of a group are broadcast to every
 * 128-bit lane and each output lane picks its two with an in-lane permute (vpermilps), so one
 * group costs 2 FMAs for 16 outputs where dense needs 4. x is (N, K) rows, y is (N, O). */
#if defined(__AVX512F__)
#include <immintrin.h>
#define NM24(NR)                                                                               \
    static __attribute__((noinline)) void nm24_##NR(                                          \
        const float *vals, const uint8_t *pos, const float *bias, const float *x, float *y,   \
        int64_t ob, int64_t n0, int64_t K, int64_t O, int relu) {                              \
        __m512 a0[NR], a1[NR];                                                                 \
        for (int r = 0; r < NR; r++) a0[r] = a1[r] = _mm512_setzero_ps();                      \
        const int64_t G = K / 4;                                                               \
        const float *v = vals + ob * G * 32;                                                   \
        const uint8_t *p = pos + ob * G * 16;                                                  \
        const __m512i three = _mm512_set1_epi32(3);                                            \
        for (int64_t g = 0; g < G; g++) {                                                      \
            __m512 v0 = _mm512_load_ps(v + g * 32), v1 = _mm512_load_ps(v + g * 32 + 16);      \
            __m512i pb = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p + g * 16))); \
            __m512i i0 = _mm512_and_si512(pb, three);                                          \
            __m512i i1 = _mm512_and_si512(_mm512_srli_epi32(pb, 2), three);                   \
            for (int r = 0; r < NR; r++) {                                                     \
                __m512 xb = _mm512_broadcast_f32x4(_mm_loadu_ps(x + (n0 + r) * K + g * 4));    \
                a0[r] = _mm512_fmadd_ps(v0, _mm512_permutevar_ps(xb, i0), a0[r]);              \
                a1[r] = _mm512_fmadd_ps(v1, _mm512_permutevar_ps(xb, i1), a1[r]);              \
            }                                                                                  \
        }                                                                                      \
        int64_t o0 = ob * 16;                                                                  \
        __mmask16 m = o0 + 16 <= O ? 0xFFFF : (__mmask16)((1u << (O - o0)) - 1);               \
        __m512 b = _mm512_maskz_loadu_ps(m, bias + o0);                                        \
        for (int r = 0; r < NR; r++) {                                                         \
            __m512 out = _mm512_add_ps(_mm512_add_ps(a0[r], a1[r]), b);                        \
            if (relu) out = _mm512_max_ps(out, _mm512_setzero_ps());                           \
            _mm512_mask_storeu_ps(y + (n0 + r) * O + o0, m, out);                              \
        }                                                                                      \
    }
#else
#define NM24(NR)                                                                               \
    static void nm24_##NR(const float *vals, const uint8_t *pos, const float *bias,           \
                          const float *x, float *y, int64_t ob, int64_t n0, int64_t K,        \
                          int64_t O, int relu) {                                               \
        const int64_t G = K / 4;                                                               \
        for (int r = 0; r < NR; r++)                                                           \
            for (int lane = 0; lane < 16 && ob * 16 + lane < O; lane++) {                      \
                float acc = bias[ob * 16 + lane];                                              \
                for (int64_t g = 0; g < G; g++) {                                              \
                    uint8_t q = pos[(ob * G + g) * 16 + lane];                                 \
                    const float *xg = x + (n0 + r) * K + g * 4;                                \
                    acc += vals[(ob * G + g) * 32 + lane] * xg[q & 3]                          \
                         + vals[(ob * G + g) * 32 + 16 + lane] * xg[(q >> 2) & 3];             \
                }                                                                              \
                y[(n0 + r) * O + ob * 16 + lane] = relu && acc < 0.0f ? 0.0f : acc;            \
            }                                                                                  \
    }
#endif
NM24(8)
NM24(4)
NM24(1)

typedef struct {
    const float *vals, *bias, *x;
    const uint8_t *pos;
    float *y;
    int64_t N, K, O, NB;
    int relu;
} nm24_job;

static void nm24_task(void *ctx, int64_t j, int64_t e) {
    const nm24_job *q = (const nm24_job *)ctx;
    (void)e;
    int64_t ob = j / q->NB, n0 = (j % q->NB) * 8, left = q->N - n0;
    if (left >= 8) {
        nm24_8(q->vals, q->pos, q->bias, q->x, q->y, ob, n0, q->K, q->O, q->relu);
    } else {
        int64_t n = n0;
        if (left >= 4) { nm24_4(q->vals, q->pos, q->bias, q->x, q->y, ob, n, q->K, q->O, q->relu); n += 4; }
        for (; n < q->N; n++) nm24_1(q->vals, q->pos, q->bias, q->x, q->y, ob, n, q->K, q->O, q->relu);
    }
}

void wb_nm24_gemm(const float *vals, const uint8_t *pos, const float *bias, const float *x,
                  float *y, int64_t N, int64_t K, int64_t O, int relu, int nthreads) {
    int64_t OB = (O + 15) / 16, NB = (N + 7) / 8;
    nm24_job job = {vals, bias, x, pos, y, N, K, O, NB, relu};
    int par = nthreads > 1 && O * K * N / 2 > PARALLEL_MACS;
    wb_parallel_for(OB * NB, nm24_task, &job, par ? nthreads : 1);
}
