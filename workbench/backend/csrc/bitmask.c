/* Bitmask sparse fp32 kernels (fused bias + ReLU); same x / y layout as sparse.c.
 *
 * A weight matrix is cut into blocks of 64 columns per row; each (row, block) has a 64-bit
 * mask of its nonzeros and the nonzero values are packed row by row in column order, with no
 * padding (rowptr[b] = where the values of rows 32b.. begin, rowptr[ceil(O/32)] = nnz; a row's
 * own start is a running sum of its masks' popcounts). Two ways to store the masks:
 *   flat     (kind 0): the 64-bit masks themselves, 1 bit per weight (dense-ish layers, 2:4);
 *   nibbles  (kind 1): a 16-bit mask of the non-empty groups of 4 columns, then the 4-bit
 *                      masks of those groups, packed (nptr[b] = where rows 32b.. begin).
 *                      ~0.25 + 4 * P(group non-empty) bits per weight: 5.9 bits per nonzero at
 *                      10 % density, where one byte per column index costs 8.
 * The kernels expand a nibble block back into its 64-bit mask with two PDEPs. Per nonzero they
 * then walk the set bits (TZCNT / BLSR) as a CSR kernel walks its indices; with N >= 8 the
 * columns sit in the SIMD lanes (lanes.h). With few columns and density >= 1/5 (2:4 layers)
 * they instead expand 16 packed values into a dense vector per 16 columns (VEXPANDPS) and do
 * dense FMAs against contiguous inputs: no gather at all.
 */
#include <stdint.h>
#include <string.h>

#include "lanes.h"
#include "pool.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* also BMI2 (_pdep_u64) on AVX2-only CPUs */
#endif

#define ROWS 32
#define BLOCK 64
#define CHUNK_BLOCKS 4 /* 256 columns: byte offsets */
#define ROW_PIECE_BLOCKS 64 /* 4096 columns: uint16 offsets, 8 KB */

typedef struct {
    int kind;
    const uint64_t *flat;   /* kind 0: (O, nb) masks */
    const uint16_t *groups; /* kind 1: (O, nb) group masks */
    const uint8_t *nib;     /* kind 1: packed 4-bit group masks, low nibble first */
    const int32_t *nptr;    /* kind 1: nibble offset of every block of ROWS rows, + the end */
    const int32_t *rowptr;  /* value offset of every block of ROWS rows, + nnz */
    const float *val;
    int64_t O, K, nb;
} wb_bitmask;

ALWAYS_INLINE uint64_t spread_groups(uint64_t g) {
#if defined(__BMI2__)
    return _pdep_u64(g, 0x1111111111111111ull) * 0xF;
#else
    uint64_t s = 0;
    for (int i = 0; i < 16; i++) if (g >> i & 1) s |= 0xFull << (4 * i);
    return s;
#endif
}

ALWAYS_INLINE uint64_t deposit(uint64_t bits, uint64_t mask) {
#if defined(__BMI2__)
    return _pdep_u64(bits, mask);
#else
    uint64_t out = 0;
    for (uint64_t m = mask; m; m &= m - 1) {
        if (bits & 1) out |= m & -m;
        bits >>= 1;
    }
    return out;
#endif
}

/* The 64-bit mask of block blk of row o; *q is the row's running nibble offset. */
ALWAYS_INLINE uint64_t block_mask(const wb_bitmask *m, int64_t o, int64_t blk, int64_t *q) {
    if (m->kind == 0) return m->flat[o * m->nb + blk];
    uint64_t g = m->groups[o * m->nb + blk];
    if (!g) return 0;
    int cnt = __builtin_popcountll(g);
    int64_t at = *q;
    uint64_t bits;
    memcpy(&bits, m->nib + (at >> 1), 8);  /* the stream is padded by 8 bytes */
    bits >>= 4 * (at & 1);
    if (cnt == 16 && (at & 1)) bits |= (uint64_t)(m->nib[(at >> 1) + 8] & 0xF) << 60;
    *q = at + cnt;
    return deposit(bits, spread_groups(g));
}

/* Row o's number of nonzeros; *q (its nibble offset) moves past the row. Popcounts of the
 * masks, or of the row's nibble stream 64 bits at a time: no decoding. */
ALWAYS_INLINE int64_t row_nnz(const wb_bitmask *m, int64_t o, int64_t *q) {
    int64_t n = 0, groups = 0;
    if (m->kind == 0) {
        for (int64_t blk = 0; blk < m->nb; blk++)
            n += __builtin_popcountll(m->flat[o * m->nb + blk]);
        return n;
    }
    for (int64_t blk = 0; blk < m->nb; blk++)
        groups += __builtin_popcount(m->groups[o * m->nb + blk]);
    int64_t bit = 4 * *q, end = 4 * (*q + groups);
    *q += groups;
    while (bit < end) {
        uint64_t w;
        memcpy(&w, m->nib + (bit >> 3), 8);  /* the stream is padded by 8 bytes */
        const int shift = (int)(bit & 7), take = end - bit < 64 - shift ? (int)(end - bit)
                                                                          : 64 - shift;
        w >>= shift;
        if (take < 64) w &= (1ull << take) - 1;
        n += __builtin_popcountll(w);
        bit += take;
    }
    return n;
}

static const uint8_t IOTA[64] __attribute__((aligned(64))) = {
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25,
    26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 45, 46, 47, 48,
    49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63};

/* Row o's nonzeros in blocks [b0, b1) as offsets from column b0*64, written to out as bytes
 * (wide = 0: at most CHUNK_BLOCKS blocks) or uint16 (wide = 1: at most ROW_PIECE_BLOCKS), up
 * to 64 entries past the last: VPCOMPRESSB of 0..63 by each 64-bit mask (widened to words),
 * branch-free. */
ALWAYS_INLINE int decode_offsets(const wb_bitmask *m, int64_t o, int64_t b0, int64_t b1,
                                 int64_t *q, void *out, const int wide) {
    uint8_t *ib = (uint8_t *)out;
    uint16_t *iw = (uint16_t *)out;
    int n = 0;
    for (int64_t blk = b0; blk < b1; blk++) {
        uint64_t mk = block_mask(m, o, blk, q);
        if (!mk) continue;
        const int base = (int)((blk - b0) * BLOCK);
#if defined(__AVX512VBMI2__)
        const __m512i c = _mm512_maskz_compress_epi8(mk, _mm512_load_si512((const void *)IOTA));
        const int cnt = __builtin_popcountll(mk);
        if (!wide) {
            _mm512_storeu_si512((void *)(ib + n),
                                _mm512_add_epi8(c, _mm512_set1_epi8((char)base)));
        } else {
            const __m512i b = _mm512_set1_epi16((short)base);
            const __m512i lo = _mm512_cvtepu8_epi16(_mm512_castsi512_si256(c));
            _mm512_storeu_si512((void *)(iw + n), _mm512_add_epi16(lo, b));
            if (cnt > 32)
                _mm512_storeu_si512((void *)(iw + n + 32),
                                    _mm512_add_epi16(_mm512_cvtepu8_epi16(
                                                         _mm512_extracti64x4_epi64(c, 1)), b));
        }
        n += cnt;
#else
        for (; mk; mk &= mk - 1) {
            const int at = base + __builtin_ctzll(mk);
            if (wide)
                iw[n++] = (uint16_t)at;
            else
                ib[n++] = (uint8_t)at;
        }
#endif
    }
    return n;
}

/* Rows [r0, r1) times one packed tile into acc[r - r0][16*NV], columns in the lanes; the K
 * axis is walked in chunks of at most 256 columns (rows inner) so the chunk stays in cache;
 * per-row cursors remember where each row's values and nibbles continue. */
ALWAYS_INLINE void bitmask_lanes_rows(const wb_bitmask *m, const float *tile, float *acc,
                                      int64_t r0, int64_t r1, const int NV) {
    const int BT = LANES * NV, S = NV == 1 ? 4 : NV == 2 ? 2 : 1;
    /* blocks per chunk: 32 KB of the tile (measured: 16 KB chunks ran 2.5x slower at 2:4) */
    const int cb = NV == 1 ? CHUNK_BLOCKS : NV == 2 ? 4 : 2;
    int64_t vcur[ROWS], qcur[ROWS];
    int cnt[ROWS];
    /* decoded offsets of every row of the chunk first: reading a byte right after the vector
     * store that wrote it would stall on store forwarding */
    uint8_t idx[ROWS][CHUNK_BLOCKS * BLOCK + BLOCK];
    int64_t at = m->rowptr[r0 / ROWS], q = m->kind ? m->nptr[r0 / ROWS] : 0;
    for (int64_t o = r0; o < r1; o++) {  /* each row's start: popcounts of the rows before */
        vcur[o - r0] = at;
        qcur[o - r0] = q;
        at += row_nnz(m, o, &q);
    }
    for (int64_t b0 = 0; b0 < m->nb; b0 += cb) {
        int64_t b1 = b0 + cb < m->nb ? b0 + cb : m->nb;
        const float *tc = tile + b0 * BLOCK * BT;
        for (int64_t o = r0; o < r1; o++)
            cnt[o - r0] = decode_offsets(m, o, b0, b1, &qcur[o - r0], idx[o - r0], 0);
        for (int64_t o = r0; o < r1; o++) {
            const int n = cnt[o - r0];
            const uint8_t *ix = idx[o - r0];
            const float *val = m->val + vcur[o - r0];
            vcur[o - r0] += n;
            v16f a[4][MAX_NV];
            for (int s = 0; s < S; s++)
                for (int v = 0; v < NV; v++) a[s][v] = (v16f){0};
            int i = 0;
            for (; i + S <= n; i += S)
                for (int s = 0; s < S; s++) {
                    const float w = val[i + s];
                    const v16f *xr = (const v16f *)(tc + ix[i + s] * BT);
                    for (int v = 0; v < NV; v++) a[s][v] += w * xr[v];
                }
            for (; i < n; i++) {
                const v16f *xr = (const v16f *)(tc + ix[i] * BT);
                for (int v = 0; v < NV; v++) a[0][v] += val[i] * xr[v];
            }
            v16f *ao = (v16f *)(acc + (o - r0) * BT);
            for (int v = 0; v < NV; v++) {
                v16f sum = a[0][v];
                for (int s = 1; s < S; s++) sum += a[s][v];
                ao[v] = b0 ? ao[v] + sum : sum;
            }
        }
    }
}

#define LANES_NV(NV)                                                                         \
    static __attribute__((noinline, optimize("no-tree-vectorize"))) void bitmask_lanes_##NV(                                \
        const wb_bitmask *m, const float *t, float *a, int64_t r0, int64_t r1) {             \
        bitmask_lanes_rows(m, t, a, r0, r1, NV);                                             \
    }
LANES_NV(1)
LANES_NV(2)
LANES_NV(3)
LANES_NV(4)

ALWAYS_INLINE float finish(float v, const float *bias, int64_t o, int relu) {
    v += bias ? bias[o] : 0.0f;
    return relu && v < 0.0f ? 0.0f : v;
}

/* Few columns (N < 8, Linear): each row's offsets decoded as words, one scalar FMA per nonzero
 * and column with four accumulator chains per column. A row is walked in one loop (pieces of
 * ROW_PIECE_BLOCKS blocks): cut into 256-column chunks with byte offsets, the loop exits and
 * their mispredictions cost ~0.2 ns per nonzero at 10 % density (1024-wide rows: 25 % of
 * the call at batch 1). */
/* no-tree-vectorize: gcc 12 turns the index loop into spilled AVX-512 gathers (10x slower) */
__attribute__((optimize("no-tree-vectorize")))
static void bitmask_bits_rows(const wb_bitmask *m, const float *bias, const float *x, float *y,
                              int64_t N, int64_t r0, int64_t r1, int relu) {
    const int64_t K = m->K, nc = (m->nb + ROW_PIECE_BLOCKS - 1) / ROW_PIECE_BLOCKS;
    /* (row, piece) pairs in order, each decoded one step ahead: reading an offset right after
     * the vector store that wrote it would stall on store forwarding */
    uint16_t idx[2][ROW_PIECE_BLOCKS * BLOCK + BLOCK];
    int cnt[2];
    int64_t q = m->kind ? m->nptr[r0 / ROWS] : 0, next_o = r0, next_c = 0;
    #define DECODE_NEXT(slot)                                                                 \
        if (next_o < r1) {                                                                    \
            int64_t b0 = next_c * ROW_PIECE_BLOCKS;                                           \
            int64_t b1 = b0 + ROW_PIECE_BLOCKS < m->nb ? b0 + ROW_PIECE_BLOCKS : m->nb;       \
            cnt[slot] = decode_offsets(m, next_o, b0, b1, &q, idx[slot], 1);                 \
            if (++next_c == nc) { next_c = 0; next_o++; }                                     \
        }
    DECODE_NEXT(0)
    int slot = 0;
    const float *val = m->val + m->rowptr[r0 / ROWS];  /* runs on through the rows */
    for (int64_t o = r0; o < r1; o++) {
        float acc[8] = {0};
        for (int64_t c = 0; c < nc; c++, slot ^= 1) {
            DECODE_NEXT(slot ^ 1)
            const int n = cnt[slot];
            const uint16_t *ix = idx[slot];
            for (int64_t j = 0; j < N; j++) {
                const float *xc = x + j * K + c * ROW_PIECE_BLOCKS * BLOCK;
                float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f;
                int i = 0;
                for (; i + 4 <= n; i += 4) {
                    a0 += val[i] * xc[ix[i]];
                    a1 += val[i + 1] * xc[ix[i + 1]];
                    a2 += val[i + 2] * xc[ix[i + 2]];
                    a3 += val[i + 3] * xc[ix[i + 3]];
                }
                for (; i < n; i++) a0 += val[i] * xc[ix[i]];
                acc[j] += (a0 + a1) + (a2 + a3);
            }
            val += n;
        }
        for (int64_t j = 0; j < N; j++) y[j * m->O + o] = finish(acc[j], bias, o, relu);
    }
    #undef DECODE_NEXT
}

/* Few columns, density >= 1/5: VEXPANDPS turns 16 packed values into a dense weight vector;
 * the four 16-column pieces of a block feed four accumulator chains per column. */
#if defined(__AVX512F__)
ALWAYS_INLINE void expand_rows(const wb_bitmask *m, const float *bias, const float *x,
                               float *y, int64_t r0, int64_t r1, int relu, const int N) {
    const int64_t K = m->K;
    const float *val = m->val + m->rowptr[r0 / ROWS];  /* both run on through the rows */
    int64_t q = m->kind ? m->nptr[r0 / ROWS] : 0;
    for (int64_t o = r0; o < r1; o++) {
        __m512 a[4][8];
        for (int p = 0; p < 4; p++)
            for (int n = 0; n < N; n++) a[p][n] = _mm512_setzero_ps();
        for (int64_t blk = 0; blk < m->nb; blk++) {
            const uint64_t mk = block_mask(m, o, blk, &q);
            for (int p = 0; p < 4; p++) {
                const __mmask16 pm = (__mmask16)(mk >> (16 * p));
                /* reads only the popcount(pm) values it needs: no padding past the last */
                const __m512 w = _mm512_maskz_expandloadu_ps(pm, val);
                val += __builtin_popcount(pm);
                const float *xp = x + blk * BLOCK + p * 16;
                for (int n = 0; n < N; n++)  /* masked: never reads past K */
                    a[p][n] = _mm512_fmadd_ps(w, _mm512_maskz_loadu_ps(pm, xp + n * K), a[p][n]);
            }
        }
        for (int n = 0; n < N; n++) {
            __m512 t = _mm512_add_ps(_mm512_add_ps(a[0][n], a[1][n]),
                                     _mm512_add_ps(a[2][n], a[3][n]));
            y[n * m->O + o] = finish(_mm512_reduce_add_ps(t), bias, o, relu);
        }
    }
}
#define EXPAND_N(NN)                                                                          \
    static __attribute__((noinline)) void expand_##NN(const wb_bitmask *m, const float *b,    \
                                                      const float *x, float *y, int64_t r0,   \
                                                      int64_t r1, int relu) {                  \
        expand_rows(m, b, x, y, r0, r1, relu, NN);                                            \
    }
EXPAND_N(1)
EXPAND_N(2)
EXPAND_N(3)
EXPAND_N(4)
EXPAND_N(5)
EXPAND_N(6)
EXPAND_N(7)
#endif

static void bitmask_expand_rows(const wb_bitmask *m, const float *bias, const float *x,
                                float *y, int64_t N, int64_t r0, int64_t r1, int relu) {
#if defined(__AVX512F__)
    switch (N) {
        case 1: expand_1(m, bias, x, y, r0, r1, relu); break;
        case 2: expand_2(m, bias, x, y, r0, r1, relu); break;
        case 3: expand_3(m, bias, x, y, r0, r1, relu); break;
        case 4: expand_4(m, bias, x, y, r0, r1, relu); break;
        case 5: expand_5(m, bias, x, y, r0, r1, relu); break;
        case 6: expand_6(m, bias, x, y, r0, r1, relu); break;
        default: expand_7(m, bias, x, y, r0, r1, relu); break;
    }
#else
    bitmask_bits_rows(m, bias, x, y, N, r0, r1, relu);
#endif
}

typedef struct {
    const wb_bitmask *m;
    const float *bias, *x;
    float *y, *tiles;
    int64_t N, L, ntiles, nblocks;
    int relu, nv, expand;
} bitmask_job;

static void small_task(void *ctx, int64_t b, int64_t e) {
    const bitmask_job *j = (const bitmask_job *)ctx;
    (void)e;
    int64_t r0 = b * ROWS, r1 = r0 + ROWS < j->m->O ? r0 + ROWS : j->m->O;
    if (j->expand)
        bitmask_expand_rows(j->m, j->bias, j->x, j->y, j->N, r0, r1, j->relu);
    else
        bitmask_bits_rows(j->m, j->bias, j->x, j->y, j->N, r0, r1, j->relu);
}

static void pack_task(void *ctx, int64_t i, int64_t e) {
    const bitmask_job *j = (const bitmask_job *)ctx;
    (void)e;
    int64_t t = i / j->nv, bt = LANES * j->nv;
    wb_lanes_pack(j->x, j->tiles + t * j->m->K * bt, t * bt, (int)(i % j->nv), j->nv, j->N,
                  j->m->K, j->L);
}

static void lanes_task(void *ctx, int64_t i, int64_t e) {
    const bitmask_job *j = (const bitmask_job *)ctx;
    (void)e;
    float acc[ROWS * LANES * MAX_NV] __attribute__((aligned(64)));
    int64_t blk = i % j->nblocks, t = i / j->nblocks, bt = LANES * j->nv;
    int64_t r0 = blk * ROWS, r1 = r0 + ROWS < j->m->O ? r0 + ROWS : j->m->O;
    const float *tile = j->tiles + t * j->m->K * bt;
    switch (j->nv) {
        case 1: bitmask_lanes_1(j->m, tile, acc, r0, r1); break;
        case 2: bitmask_lanes_2(j->m, tile, acc, r0, r1); break;
        case 3: bitmask_lanes_3(j->m, tile, acc, r0, r1); break;
        default: bitmask_lanes_4(j->m, tile, acc, r0, r1); break;
    }
    wb_lanes_store(acc, (int)(r1 - r0), j->nv, j->bias, j->relu, j->y, r0, t * bt, j->N,
                   j->m->O, j->L);
}

void wb_bitmask_spmm(int kind, const void *masks, const uint8_t *nib, const int32_t *nptr,
                     const int32_t *rowptr, const float *val, const float *bias, const float *x,
                     float *y, float *work, int64_t B, int64_t K, int64_t L, int64_t O, int relu,
                     int nthreads) {
    int64_t N = B * L, nb = (K + BLOCK - 1) / BLOCK, nnz = rowptr[(O + ROWS - 1) / ROWS];
    wb_bitmask m = {kind, (const uint64_t *)masks, (const uint16_t *)masks, nib, nptr, rowptr,
                    val, O, K, nb};
    int par = sparse_threads(nnz, N, nthreads);
    int nv = lanes_nv(N);
    int64_t bt = LANES * nv, ntiles = (N + bt - 1) / bt, nblocks = (O + ROWS - 1) / ROWS;
    bitmask_job job = {&m, bias, x, y, work, N, L, ntiles, nblocks, relu, nv,
                       5 * nnz >= O * K};
    if (L == 1 && N < 8) {
        wb_parallel_for(nblocks, small_task, &job, par);
        return;
    }
    wb_parallel_for(ntiles * nv, pack_task, &job, par);
    wb_parallel_for(ntiles * nblocks, lanes_task, &job, par);
}
