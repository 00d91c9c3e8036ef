/* Weight-only sparse kernel on Rice-coded column gaps (wb_wq_rice): pruned and quantized
 * weights stored near their information-theoretic size, fp32 activations (as weightonly.c):
 *
 *   y[n, o] = sw[o] * sum_k d[o, k] * x[n, k] + bias[o]   (then ReLU if relu)
 *
 * x arrives as (N, K) rows (Linear inputs or im2col rows); y is written as y[b*O*L + o*L + l]
 * for n = b*L + l.
 *
 * Layout. Row by row, the stored codes' columns c_0 < c_1 < ... are coded as gaps
 * g_i = c_i - c_{i-1} - 1 (c_{-1} = -1), each Rice(k): its k low bits and its quotient g >> k.
 * The two halves live in separate bit streams, so that decoding is vectorised 16 codes at a
 * time (positions of a unary word's one bits by VPCOMPRESSB, low bits by VPERMB, columns by a
 * prefix sum) instead of a serial bit-by-bit walk:
 *   lows   k bits per code, code i at bit i*k (random access);
 *   unary  per code, q = g >> k zero bits then a one bit (a long gap skips zero words);
 *   counts each row's number of codes, Rice(kc) coded (low bits, then unary);
 * all little-endian bit streams (bit j is bit j % 8 of byte j / 8) with 8 bytes of padding, so
 * 8-byte reads never leave them. Rows come in blocks of WR_ROWS, and per block three uint32:
 * the counts-stream bit of its first row, the unary-stream bit of its first code, and the index
 * of its first code; the rows of a block are decoded one after the other. The codes
 * (code - zero point) are stored apart, row-major: int8, or int4 two per byte (low nibble
 * first). The sizes are those of interleaved Rice codes (k + q + 1 bits per gap).
 *
 * Measured on the 2-core development machine (1024x1024, 1 thread, 70-95 % sparse), against
 * the one-byte-index kernel this replaced: 0.7-1.2x its time at batch 64, 1.2-2.0x at batch 1.
 */
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* also BMI2 (_pdep_u64) on AVX2-only CPUs */
#endif

#include "pool.h"

#define WR_ROWS 16
#define WR_PARALLEL_MACS 200000
#define WR_CHUNK 64 /* codes of a row decoded at a time into (column, float code) buffers */

typedef struct {
    const uint8_t *counts, *unary, *lows;
    const uint32_t *blocks;    /* per block of WR_ROWS rows: counts bit, unary bit, first code */
    const uint8_t *val;        /* codes: int8, or two int4 per byte (low nibble first) */
    const float *sw, *bias, *x;
    float *y, *tiles;
    int64_t N, L, O, K, ntiles;
    int bits, kg, kc, relu;
#if defined(__AVX512VBMI__)
    /* for a first low bit at bit h of a byte (h = 0..7): the vpermb indices that put the 4
     * bytes holding code j's low bits into lane j, and the shift that aligns them */
    __m512i lowperm[8], lowshift[8];
#endif
} wr_job;

static inline uint64_t wr_load(const uint8_t *p) {
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

static inline uint64_t wr_peek(const uint8_t *s, uint64_t pos) {
    return wr_load(s + (pos >> 3)) >> (pos & 7); /* >= 57 valid bits, zeros above them */
}

/* One Rice(k) symbol of the counts stream at *pos (low bits first, then the unary part). */
static uint64_t wr_get(const uint8_t *s, uint64_t *pos, int k) {
    uint64_t t = wr_peek(s, *pos), low = t & ((1ull << k) - 1), p = *pos + k, q = 0;
    while ((t = wr_peek(s, p)) == 0) { /* 56 zero bits for sure */
        q += 56;
        p += 56;
    }
    const int z = __builtin_ctzll(t);
    *pos = p + z + 1;
    return ((q + z) << k) | low;
}

/* Decoding state of a block: the unary word being consumed and the last one-bit position. */
typedef struct {
    const uint8_t *unary;
    uint64_t w, base;
    int64_t prev;
} wr_cursor;

static inline wr_cursor wr_start(const wr_job *q, int64_t b) {
    const uint64_t u = q->blocks[3 * b + 1];
    wr_cursor r = {q->unary, wr_load(q->unary + (u >> 6) * 8) & (~0ull << (u & 63)),
                   (u >> 6) * 64, (int64_t)u - 1};
    return r;
}

static inline float wr_code(const uint8_t *val, int64_t i, int bits) {
    if (bits == 8) return (float)(int8_t)val[i];
    int32_t b = val[i >> 1];
    return (float)((int32_t)((uint32_t)b << (28 - 4 * (i & 1))) >> 28);
}

#if defined(__AVX512F__)
/* The inclusive prefix sum of 16 int32 lanes (x plus x shifted up by 1, 2, 4, 8 lanes). */
static inline __m512i wr_prefix(__m512i x) {
    const __m512i z = _mm512_setzero_si512();
    x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 15));
    x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 14));
    x = _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 12));
    return _mm512_add_epi32(x, _mm512_alignr_epi32(x, z, 8));
}

/* 16 codes from code i on (mask mk) as floats. */
static inline __m512 wr_codes16(const uint8_t *val, int64_t i, __mmask16 mk, int bits) {
    if (bits == 8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(mk, val + i)));
    const int h = (int)(i & 1), nbytes = (__builtin_popcount(mk) + h + 1) / 2;
    const __m512i perm = h ? _mm512_setr_epi32(0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8)
                           : _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
    const __m512i shift = h ? _mm512_setr_epi32(4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0)
                            : _mm512_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4, 0, 4);
    __m512i b = _mm512_cvtepu8_epi32(
        _mm_maskz_loadu_epi8((__mmask16)((1u << nbytes) - 1), val + (i >> 1)));
    b = _mm512_srlv_epi32(_mm512_permutexvar_epi32(perm, b), shift);
    /* the signed value of a nibble, indexed by the low 4 bits of the lane */
    const __m512 table = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, -8, -7, -6, -5, -4, -3, -2, -1);
    return _mm512_permutexvar_ps(b, table);
}
#endif

/* Columns (col) and float codes (v) of codes i .. i + m - 1 of one row (1 <= m <= WR_CHUNK); *c
 * is the column of the row's previous code (-1 at its start). Only the unary positions P_j are
 * serial (a TZCNT and a BLSR per code); the low bits, gaps and their running sum are vectorised:
 * col_j = c + ((P_j - P_{-1} - (j + 1)) << k) + sum_{t <= j} low_t + (j + 1). */
static inline void wr_decode(const wr_job *q, wr_cursor *r, int64_t i, int m, int64_t *c,
                             int32_t *col, float *v) {
    int32_t d[WR_CHUNK + 64] __attribute__((aligned(64))); /* P_j - P_{-1} */
#if defined(__AVX512VBMI2__)
    /* the positions of a word's one bits, all at once: VPCOMPRESSB of 0..63 by the word */
    const __m512i iota = _mm512_set_epi64(0x3f3e3d3c3b3a3938, 0x3736353433323130,
                                          0x2f2e2d2c2b2a2928, 0x2726252423222120,
                                          0x1f1e1d1c1b1a1918, 0x1716151413121110,
                                          0x0f0e0d0c0b0a0908, 0x0706050403020100);
    uint8_t pos[64] __attribute__((aligned(64)));
    for (int j = 0; j < m;) {
        while (__builtin_expect(r->w == 0, 0)) {
            r->base += 64;
            r->w = wr_load(r->unary + r->base / 8);
        }
        const int cnt = __builtin_popcountll(r->w), take = cnt < m - j ? cnt : m - j;
        _mm512_store_si512((__m512i *)pos, _mm512_maskz_compress_epi8(r->w, iota));
        const __m512i off = _mm512_set1_epi32((int32_t)((int64_t)r->base - r->prev));
        for (int t = 0; t < take; t += 16)
            _mm512_storeu_si512((__m512i *)(d + j + t), _mm512_add_epi32(
                _mm512_cvtepu8_epi32(_mm_load_si128((const __m128i *)(pos + t))), off));
        r->w = take == cnt ? 0 : r->w & (~0ull << (pos[take - 1] + 1));
        j += take;
    }
#else
    for (int j = 0; j < m; j++) {
        while (__builtin_expect(r->w == 0, 0)) {
            r->base += 64;
            r->w = wr_load(r->unary + r->base / 8);
        }
        d[j] = (int32_t)((int64_t)r->base + __builtin_ctzll(r->w) - r->prev);
        r->w &= r->w - 1;
    }
#endif
    r->prev += d[m - 1];
    const int k = q->kg;
#if defined(__AVX512F__)
    const __m512i one_to_16 = _mm512_setr_epi32(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                                15, 16);
    const __m512i jk = _mm512_mullo_epi32(_mm512_sub_epi32(one_to_16, _mm512_set1_epi32(1)),
                                          _mm512_set1_epi32(k));
    const __m512i lowmask = _mm512_set1_epi32((1 << k) - 1), seven = _mm512_set1_epi32(7);
    int32_t cb = (int32_t)*c, db = 0;
    for (int j = 0; j < m; j += 16) {
        const __mmask16 mk = m - j >= 16 ? 0xFFFF : (__mmask16)((1u << (m - j)) - 1);
        const uint64_t bit0 = (uint64_t)(i + j) * k;
        const __m512i rel = _mm512_add_epi32(_mm512_set1_epi32((int)(bit0 & 7)), jk);
#if defined(__AVX512VBMI__)
        (void)rel;
        (void)seven;
        const int nb = (int)(((bit0 & 7) + 16 * k + 7) / 8) + 1; /* bytes read, <= 26 */
        const __m512i win = _mm512_maskz_loadu_epi8((1ull << nb) - 1, q->lows + (bit0 >> 3));
        __m512i low = _mm512_permutexvar_epi8(q->lowperm[bit0 & 7], win);
        low = _mm512_and_si512(_mm512_srlv_epi32(low, q->lowshift[bit0 & 7]), lowmask);
#else
        __m512i low = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mk,
                                                  _mm512_srli_epi32(rel, 3),
                                                  q->lows + (bit0 >> 3), 1);
        low = _mm512_and_si512(_mm512_srlv_epi32(low, _mm512_and_si512(rel, seven)), lowmask);
#endif
        const __m512i dj = _mm512_sub_epi32(_mm512_maskz_load_epi32(mk, d + j),
                                            _mm512_set1_epi32(db));
        __m512i cv = _mm512_sll_epi32(_mm512_sub_epi32(dj, one_to_16), _mm_cvtsi32_si128(k));
        cv = _mm512_add_epi32(cv, _mm512_add_epi32(wr_prefix(low), one_to_16));
        _mm512_mask_store_epi32(col + j, mk, _mm512_add_epi32(cv, _mm512_set1_epi32(cb)));
        _mm512_mask_store_ps(v + j, mk, wr_codes16(q->val, i + j, mk, q->bits));
        if (j + 16 < m) {
            cb = col[j + 15];
            db = d[j + 15];
        }
    }
    *c = col[m - 1];
#else
    int64_t cc = *c, prev = 0;
    for (int j = 0; j < m; j++) {
        const uint64_t bit = (uint64_t)(i + j) * k;
        const int64_t low = (int64_t)(wr_peek(q->lows, bit) & ((1ull << k) - 1));
        cc += (((int64_t)d[j] - prev - 1) << k) + low + 1;
        prev = d[j];
        col[j] = (int32_t)cc;
        v[j] = wr_code(q->val, i + j, q->bits);
    }
    *c = cc;
#endif
}

static inline void wr_out(const wr_job *q, int64_t n, int64_t o, float acc) {
    float v = q->sw[o] * acc + q->bias[o];
    if (q->relu && v < 0.0f) v = 0.0f;
    q->y[(n / q->L) * q->O * q->L + o * q->L + (n % q->L)] = v;
}

/* Few rows (N <= 4): job = a block of rows; x is gathered 16 decoded codes at a time. */
static inline __attribute__((always_inline)) void wr_gather_rows(const wr_job *q, int64_t b,
                                                                  const int N) {
    const int64_t K = q->K;
    uint64_t cpos = q->blocks[3 * b];
    int64_t i = q->blocks[3 * b + 2];
    wr_cursor r = wr_start(q, b);
    int32_t col[WR_CHUNK] __attribute__((aligned(64)));
    float v[WR_CHUNK] __attribute__((aligned(64)));
    for (int64_t o = b * WR_ROWS; o < (b + 1) * WR_ROWS && o < q->O; o++) {
        int64_t n_left = (int64_t)wr_get(q->counts, &cpos, q->kc), c = -1;
        float acc[4] = {0};
#if defined(__AVX512F__)
        __m512 va[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                        _mm512_setzero_ps()};
#endif
        while (n_left > 0) {
            const int m = n_left < WR_CHUNK ? (int)n_left : WR_CHUNK;
            wr_decode(q, &r, i, m, &c, col, v);
            i += m;
            n_left -= m;
#if defined(__AVX512F__)
            for (int j = 0; j < m; j += 16) {
                const __mmask16 mk = m - j >= 16 ? 0xFFFF : (__mmask16)((1u << (m - j)) - 1);
                const __m512i cv = _mm512_maskz_load_epi32(mk, col + j);
                const __m512 wv = _mm512_maskz_load_ps(mk, v + j);
                for (int n = 0; n < N; n++)
                    va[n] = _mm512_fmadd_ps(
                        wv, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), mk, cv, q->x + n * K, 4),
                        va[n]);
            }
#else
            for (int j = 0; j < m; j++)
                for (int n = 0; n < N; n++) acc[n] += v[j] * q->x[n * K + col[j]];
#endif
        }
#if defined(__AVX512F__)
        for (int n = 0; n < N; n++) acc[n] = _mm512_reduce_add_ps(va[n]);
#endif
        for (int n = 0; n < N; n++) wr_out(q, n, o, acc[n]);
    }
}

static void wr_gather_task(void *ctx, int64_t b, int64_t e) {
    const wr_job *q = (const wr_job *)ctx;
    (void)e;
    switch (q->N) {
    case 4: wr_gather_rows(q, b, 4); break;
    case 3: wr_gather_rows(q, b, 3); break;
    case 2: wr_gather_rows(q, b, 2); break;
    default: wr_gather_rows(q, b, 1); break;
    }
}

/* Many rows: inputs transposed into tiles of 16 rows ([tile][k][16]); job = (block of rows,
 * group of up to 4 tiles), so every decoded code feeds T FMAs of 16 lanes. */
static inline __attribute__((always_inline)) void wr_tile_rows(const wr_job *q, int64_t b,
                                                                int64_t t0, const int T) {
    const float *tile = q->tiles + t0 * q->K * 16;
    const int64_t tk = q->K * 16;
    uint64_t cpos = q->blocks[3 * b];
    int64_t i = q->blocks[3 * b + 2];
    wr_cursor r = wr_start(q, b);
    int32_t col[WR_CHUNK] __attribute__((aligned(64)));
    float v[WR_CHUNK] __attribute__((aligned(64)));
    for (int64_t o = b * WR_ROWS; o < (b + 1) * WR_ROWS && o < q->O; o++) {
        int64_t n_left = (int64_t)wr_get(q->counts, &cpos, q->kc), c = -1;
#if defined(__AVX512F__)
        __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                         _mm512_setzero_ps()};
#endif
        float out[4][16] __attribute__((aligned(64))) = {{0}};
        while (n_left > 0) {
            const int m = n_left < WR_CHUNK ? (int)n_left : WR_CHUNK;
            wr_decode(q, &r, i, m, &c, col, v);
            i += m;
            n_left -= m;
            for (int j = 0; j < m; j++) {
                const float *xt = tile + (int64_t)col[j] * 16;
#if defined(__AVX512F__)
                const __m512 wv = _mm512_set1_ps(v[j]);
                for (int t = 0; t < T; t++)
                    acc[t] = _mm512_fmadd_ps(wv, _mm512_load_ps(xt + t * tk), acc[t]);
#else
                for (int t = 0; t < T; t++)
                    for (int l = 0; l < 16; l++) out[t][l] += v[j] * xt[t * tk + l];
#endif
            }
        }
#if defined(__AVX512F__)
        for (int t = 0; t < T; t++) _mm512_store_ps(out[t], acc[t]);
#endif
        for (int t = 0; t < T; t++)
            for (int l = 0; l < 16 && (t0 + t) * 16 + l < q->N; l++)
                wr_out(q, (t0 + t) * 16 + l, o, out[t][l]);
    }
}

static void wr_tile_task(void *ctx, int64_t j, int64_t e) {
    const wr_job *q = (const wr_job *)ctx;
    (void)e;
    const int64_t nb = (q->O + WR_ROWS - 1) / WR_ROWS, t0 = (j / nb) * 4, b = j % nb;
    switch (q->ntiles - t0 >= 4 ? 4 : q->ntiles - t0) {
    case 4: wr_tile_rows(q, b, t0, 4); break;
    case 3: wr_tile_rows(q, b, t0, 3); break;
    case 2: wr_tile_rows(q, b, t0, 2); break;
    default: wr_tile_rows(q, b, t0, 1); break;
    }
}

static void wr_pack_task(void *ctx, int64_t t, int64_t e) {
    const wr_job *q = (const wr_job *)ctx;
    (void)e;
    float *tile = q->tiles + t * q->K * 16;
    for (int64_t k = 0; k < q->K; k++)
        for (int r = 0; r < 16; r++) {
            int64_t n = t * 16 + r;
            tile[k * 16 + r] = n < q->N ? q->x[n * q->K + k] : 0.0f;
        }
}

/* Floats of workspace wb_wq_rice needs (64-byte aligned tiles; none below 5 rows). */
int64_t wb_wq_rice_work(int64_t N, int64_t K) {
    return N <= 4 ? 16 : ((N + 15) / 16) * K * 16 + 16;
}

void wb_wq_rice(const uint8_t *counts, const uint8_t *unary, const uint8_t *lows,
                const uint32_t *blocks, const uint8_t *val, int bits, int kg, int kc,
                const float *sw, const float *bias, const float *x, float *y, float *work,
                int64_t B, int64_t L, int64_t O, int64_t K, int64_t nnz, int relu,
                int nthreads) {
    int64_t N = B * L, ntiles = (N + 15) / 16, nb = (O + WR_ROWS - 1) / WR_ROWS;
    float *tiles = (float *)(((uintptr_t)work + 63) & ~(uintptr_t)63);
    wr_job q = {counts, unary, lows, blocks, val, sw, bias, x, y, tiles, N, L, O, K, ntiles,
                bits, kg, kc, relu};
#if defined(__AVX512VBMI__)
    for (int h = 0; h < 8; h++) {
        uint8_t idx[64];
        int32_t sh[16];
        for (int j = 0; j < 16; j++) {
            for (int b = 0; b < 4; b++) idx[4 * j + b] = (uint8_t)((h + j * kg) / 8 + b);
            sh[j] = (h + j * kg) % 8;
        }
        q.lowperm[h] = _mm512_loadu_si512(idx);
        q.lowshift[h] = _mm512_loadu_si512(sh);
    }
#endif
    int par = nthreads > 1 && nnz * N > WR_PARALLEL_MACS;
    if (N <= 4) {
        wb_parallel_for(nb, wr_gather_task, &q, par ? nthreads : 1);
        return;
    }
    wb_parallel_for(ntiles, wr_pack_task, &q, par ? nthreads : 1);
    wb_parallel_for(((ntiles + 3) / 4) * nb, wr_tile_task, &q, par ? nthreads : 1);
}
