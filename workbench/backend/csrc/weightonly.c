/* Weight-only low-bit kernels: fp32 activations times packed int8 / int4 / int2 / int1 codes,
 * de-quantized on the fly (no activation rounding, so the result is the variant's fake-quant
 * layer up to fp32 summation order).
 *
 * Dense packed layout (wb_wq_gemm): outputs in blocks of 32 (two halves of 16 lanes), inputs in
 * loads of G = 8 / bits consecutive inputs; per (block, load, half) 16 bytes, byte j holding
 * output j's G codes as two's complement fields (input l*G + g in bits [g*bits, (g+1)*bits)).
 * Order [block][load][half][16 bytes]. Decoding is a zero-extend plus a shift pair (sign
 * extension of the field), then a convert; 8-bit codes are sign-extended directly. 4-bit codes
 * have their own layout (blocks of 16 outputs, offset-binary nibbles, see wq4_mk_*).
 *
 *   y[n, o] = sw[o] * (sum_k d[o, k] * x[n, k] - zw[o] * xsum[n]) + bias[o]
 *
 * d are the signed codes, zw a float zero point (0 for symmetric codes; binary codes store the
 * bit b = (d < 0) as a 1-bit field, decoded to -b, with sw doubled and zw = -1/2). x arrives as
 * (N, K) rows (Linear inputs or im2col rows); y is written as y[b*O*L + o*L + l] for n = b*L + l.
 *
 * Pruned and quantized weights have their own sparse kernel (rice.c).
 */
#include <stddef.h>
#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* also BMI2 (_pdep_u64) on AVX2-only CPUs */
#endif

#include "pool.h"

#define WQ_PARALLEL_MACS 200000

typedef struct {
    const uint8_t *w;
    const float *sw, *zw, *bias, *x, *xsum;
    float *y;
    int64_t N, L, O, K, nloads;
    int bits, relu;
    const float *xs; /* 4-bit: x scaled per input (see wq4_mk_*), rows of Kp floats */
    int64_t Kp;      /* 4-bit: K rounded up to groups of 8 */
    float zoff;      /* added to every zero point: 8 for the offset-binary 4-bit layout */
} wq_job;

static inline void wq_store(const wq_job *q, int64_t n, int64_t o, float acc) {
    float v = q->sw[o] * (acc - (q->xsum ? (q->zw[o] + q->zoff) * q->xsum[n] : 0.0f)) + q->bias[o];
    if (q->relu && v < 0.0f) v = 0.0f;
    q->y[(n / q->L) * q->O * q->L + o * q->L + (n % q->L)] = v;
}

#if defined(__AVX512F__)
/* Float value of every bits-wide two's complement field, indexed by the low 4 bits of a lane
 * (vpermps reads only those): the field at bit 0 of a lane converts in one permute. */
static inline __m512 wq_table(int bits) {
    float t[16];
    for (int i = 0; i < 16; i++) {
        int f = i & ((1 << bits) - 1);
        t[i] = (float)(f >= (1 << (bits - 1)) ? f - (1 << bits) : f);
    }
    return _mm512_loadu_ps(t);
}

#define WQ_BODY(L_, S_, TAIL_)                                                                      \
        {                                                                                      \
            const int64_t l_ = (L_);                                                           \
            const __m128i *p = (const __m128i *)(w + l_ * 32);                                 \
            __m512i v0, v1;                                                                    \
            if (WB_BITS == 8) {                                                                   \
                v0 = _mm512_cvtepi8_epi32(_mm_loadu_si128(p));                                 \
                v1 = _mm512_cvtepi8_epi32(_mm_loadu_si128(p + 1));                             \
            } else {                                                                           \
                v0 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p));                                 \
                v1 = _mm512_cvtepu8_epi32(_mm_loadu_si128(p + 1));                             \
            }                                                                                  \
            for (int g = 0; g < G; g++) {                                                      \
                const int64_t k = l_ * G + g;                                                  \
                if (TAIL_ && k >= K) break;                                                    \
                __m512 w0, w1;                                                                 \
                if (WB_BITS == 8) {                                                               \
                    w0 = _mm512_cvtepi32_ps(v0);                                               \
                    w1 = _mm512_cvtepi32_ps(v1);                                               \
                } else {                                                                       \
                    w0 = _mm512_permutexvar_ps(g ? _mm512_srli_epi32(v0, g * WB_BITS) : v0, table); \
                    w1 = _mm512_permutexvar_ps(g ? _mm512_srli_epi32(v1, g * WB_BITS) : v1, table); \
                }                                                                              \
                for (int r = 0; r < WB_NR; r++) {                                                 \
                    __m512 xb = _mm512_set1_ps(x0[r * K + k]);                                 \
                    acc[S_][r][0] = _mm512_fmadd_ps(xb, w0, acc[S_][r][0]);                    \
                    acc[S_][r][1] = _mm512_fmadd_ps(xb, w1, acc[S_][r][1]);                    \
                }                                                                              \
            }                                                                                  \
        }

/* NR rows x 32 outputs of block ob; the x values of input k of row r are x[(n0 + r) * K + k].
 * With 1 or 2 rows, 4 or 2 accumulator sets (by input) hide the FMA latency. */
#define WQ_MK(NR, BITS)                                                                        \
    static __attribute__((noinline)) void wq_mk_##NR##_##BITS(const wq_job *q, int64_t n0,    \
                                                              int64_t ob) {                   \
        enum { G = 8 / BITS, SETS = NR == 1 ? 4 : (NR == 2 ? 2 : 1), WB_BITS = BITS, WB_NR = NR };            \
        __m512 acc[SETS][NR][2];                                                               \
        for (int s = 0; s < SETS; s++)                                                         \
            for (int r = 0; r < NR; r++) acc[s][r][0] = acc[s][r][1] = _mm512_setzero_ps();    \
        const int64_t K = q->K, nl = q->nloads, full = K / G;                                  \
        const uint8_t *w = q->w + ob * nl * 32;                                                \
        const float *x0 = q->x + n0 * K;                                                       \
        const __m512 table = wq_table(BITS);                                                   \
        (void)table;                                                                           \
        int64_t l = 0;                                                                         \
        for (; l + SETS <= full; l += SETS)                                                    \
            for (int u = 0; u < SETS; u++) WQ_BODY(l + u, u, 0)                                \
        for (; l < full; l++) WQ_BODY(l, 0, 0)                                                 \
        if (full < nl) WQ_BODY(full, 0, 1) /* a partial last load */                           \
        float out[32] __attribute__((aligned(64)));                                            \
        for (int r = 0; r < NR; r++) {                                                         \
            __m512 h0 = acc[0][r][0], h1 = acc[0][r][1];                                       \
            for (int s = 1; s < SETS; s++) {                                                   \
                h0 = _mm512_add_ps(h0, acc[s][r][0]);                                          \
                h1 = _mm512_add_ps(h1, acc[s][r][1]);                                          \
            }                                                                                  \
            _mm512_store_ps(out, h0);                                                          \
            _mm512_store_ps(out + 16, h1);                                                     \
            for (int j = 0; j < 32 && ob * 32 + j < q->O; j++)                                 \
                wq_store(q, n0 + r, ob * 32 + j, out[j]);                                      \
        }                                                                                      \
    }
#else
#define WQ_MK(NR, BITS)                                                                        \
    static void wq_mk_##NR##_##BITS(const wq_job *q, int64_t n0, int64_t ob) {                \
        const int G = 8 / BITS;                                                                \
        const uint8_t *w = q->w + ob * q->nloads * 32;                                         \
        for (int r = 0; r < NR; r++) {                                                         \
            const float *xr = q->x + (n0 + r) * q->K;                                          \
            for (int j = 0; j < 32 && ob * 32 + j < q->O; j++) {                               \
                float acc = 0.0f;                                                              \
                for (int64_t k = 0; k < q->K; k++) {                                           \
                    int64_t l = k / G, g = k % G;                                              \
                    int32_t b = w[l * 32 + j];                                                 \
                    int32_t d = BITS == 8 ? (int8_t)b                                          \
                                          : (int32_t)((uint32_t)b << (32 - (g + 1) * BITS)) >> (32 - BITS); \
                    acc += (float)d * xr[k];                                                   \
                }                                                                              \
                wq_store(q, n0 + r, ob * 32 + j, acc);                                         \
            }                                                                                  \
        }                                                                                      \
    }
#endif

#define WQ_BITS(B) WQ_MK(8, B) WQ_MK(4, B) WQ_MK(2, B) WQ_MK(1, B)
WQ_BITS(8)
WQ_BITS(2)
WQ_BITS(1)


/* 4-bit layout (wb_wq_gemm with bits = 4): outputs in blocks of 16, inputs in groups of 8; per
 * (block, group) 16 little-endian uint32, word j for output 16b+j holding in bits [4g, 4g+4)
 * the offset-binary field f = d[o, 8l+g] + 8 (0..15); order [block][group][16 words], outputs
 * padded to 16 and inputs to groups of 8 with zero fields. The kernel masks nibble g in place
 * (one AND) and converts the word to f * 16^g (exact), so the matching x is pre-scaled by 16^-g
 * (exact, into xs, zero-padded to Kp); the +8 offset leaves y = sw*(acc - (zw + 8)*xsum) + bias,
 * so each 16 weights cost an AND, a convert and an FMA (no shuffles). */
#if defined(__AVX512F__)
#ifndef WQ4_PREFETCH
#define WQ4_PREFETCH 4096 /* bytes ahead in the weight stream: 0.54 -> 0.46 ms (1 thread, 4096², weights in DRAM) */
#endif
#define WQ4_MK(NR)                                                                             \
    static __attribute__((noinline)) void wq4_mk_##NR(const wq_job *q, int64_t n0, int64_t ob) { \
        enum { SETS = NR == 1 ? 8 : (NR == 2 ? 4 : (NR == 4 ? 2 : 1)) };                       \
        __m512 acc[NR][SETS];                                                                  \
        for (int r = 0; r < NR; r++)                                                           \
            for (int s = 0; s < SETS; s++) acc[r][s] = _mm512_setzero_ps();                    \
        const int64_t Kp = q->Kp, ng = Kp / 8;                                                 \
        const uint8_t *w = q->w + ob * ng * 64;                                                \
        const float *xs = q->xs + n0 * Kp;                                                     \
        for (int64_t l = 0; l < ng; l++) {                                                     \
            _mm_prefetch((const char *)(w + l * 64) + WQ4_PREFETCH, _MM_HINT_T0);             \
            const __m512i v = _mm512_loadu_si512(w + l * 64);                                  \
            for (int g = 0; g < 8; g++) {                                                      \
                const __m512i f = _mm512_and_si512(v, _mm512_set1_epi32((int)(0xFu << (4 * g)))); \
                const __m512 wv = g == 7 ? _mm512_cvtepu32_ps(f) : _mm512_cvtepi32_ps(f);      \
                for (int r = 0; r < NR; r++)                                                   \
                    acc[r][g % SETS] = _mm512_fmadd_ps(wv, _mm512_set1_ps(xs[r * Kp + l * 8 + g]), \
                                                       acc[r][g % SETS]);                      \
            }                                                                                  \
        }                                                                                      \
        float out[16] __attribute__((aligned(64)));                                            \
        for (int r = 0; r < NR; r++) {                                                         \
            __m512 h = acc[r][0];                                                              \
            for (int s = 1; s < SETS; s++) h = _mm512_add_ps(h, acc[r][s]);                    \
            _mm512_store_ps(out, h);                                                           \
            for (int j = 0; j < 16 && ob * 16 + j < q->O; j++)                                 \
                wq_store(q, n0 + r, ob * 16 + j, out[j]);                                      \
        }                                                                                      \
    }
#else
#define WQ4_MK(NR)                                                                             \
    static void wq4_mk_##NR(const wq_job *q, int64_t n0, int64_t ob) {                        \
        const int64_t ng = q->Kp / 8;                                                          \
        const uint8_t *w = q->w + ob * ng * 64;                                                \
        for (int r = 0; r < NR; r++) {                                                         \
            const float *xr = q->x + (n0 + r) * q->K;                                          \
            for (int j = 0; j < 16 && ob * 16 + j < q->O; j++) {                               \
                float acc = 0.0f;                                                              \
                for (int64_t k = 0; k < q->K; k++) {                                           \
                    const uint8_t *b = w + (k / 8) * 64 + j * 4 + (k % 8) / 2;                 \
                    acc += (float)((*b >> (4 * (k % 2))) & 15) * xr[k];                        \
                }                                                                              \
                wq_store(q, n0 + r, ob * 16 + j, acc);                                         \
            }                                                                                  \
        }                                                                                      \
    }
#endif
WQ4_MK(8) WQ4_MK(4) WQ4_MK(2) WQ4_MK(1)

typedef void (*wq_fn)(const wq_job *, int64_t, int64_t);

static wq_fn wq_pick(int nr, int bits) {
#define WQ_PICK(B) \
    if (bits == B) return nr == 8 ? wq_mk_8_##B : (nr == 4 ? wq_mk_4_##B : (nr == 2 ? wq_mk_2_##B : wq_mk_1_##B));
    if (bits == 4) return nr == 8 ? wq4_mk_8 : (nr == 4 ? wq4_mk_4 : (nr == 2 ? wq4_mk_2 : wq4_mk_1));
    WQ_PICK(8) WQ_PICK(2) WQ_PICK(1)
#undef WQ_PICK
    return 0;
}

/* Job j: output block j / nrb, row block j % nrb (8 rows, then 4, 2, 1 for the remainder). */
static void wq_task(void *ctx, int64_t j, int64_t e) {
    const wq_job *q = (const wq_job *)ctx;
    (void)e;
    int64_t full = q->N / 8, rest = q->N % 8;
    int64_t nrb = full + __builtin_popcountll((unsigned long long)rest);
    int64_t ob = j / nrb, r = j % nrb, start = r * 8, size = 8;
    if (r >= full) {
        start = full * 8;
        size = 0;
        for (int64_t s = 4, i = full; s >= 1; s /= 2) {
            if (!(rest & s)) continue;
            if (i == r) { size = s; break; }
            start += s;
            i++;
        }
    }
    wq_pick((int)size, q->bits)(q, start, ob);
}

/* Per-row sums of x (needed when a zero point is nonzero, always for 4 bits); for 4 bits also
 * the rows of x scaled by 16^-(k % 8), zero-padded to Kp (see the 4-bit layout). */
static void wq_prep_task(void *ctx, int64_t n, int64_t e) {
    const wq_job *q = (const wq_job *)ctx;
    (void)e;
    const float *xr = q->x + n * q->K;
    float s = 0.0f;
    for (int64_t k = 0; k < q->K; k++) s += xr[k];
    ((float *)q->xsum)[n] = s;
    if (q->bits != 4) return;
    static const float sc[8] = {1.0f, 0x1p-4f, 0x1p-8f, 0x1p-12f, 0x1p-16f, 0x1p-20f, 0x1p-24f,
                                0x1p-28f};
    float *xs = (float *)q->xs + n * q->Kp;
    for (int64_t k = 0; k < q->K; k++) xs[k] = xr[k] * sc[k & 7];
    for (int64_t k = q->K; k < q->Kp; k++) xs[k] = 0.0f;
}

/* Floats of workspace wb_wq_gemm needs in xsum_work: N row sums, plus for 4 bits the scaled
 * rows (64-byte aligned). Other widths may pass NULL when every zero point is 0. */
int64_t wb_wq_work(int bits, int64_t N, int64_t K) {
    return bits == 4 ? N + 16 + N * ((K + 7) / 8 * 8) : N;
}

/* Dense packed weight-only GEMM; xsum_work holds wb_wq_work floats (or NULL if bits != 4 and
 * every zw is 0). */
void wb_wq_gemm(const float *x, const uint8_t *w, int bits, const float *sw, const float *zw,
                const float *bias, float *y, float *xsum_work, int64_t B, int64_t L, int64_t O,
                int64_t K, int relu, int nthreads) {
    int64_t N = B * L, G = 8 / bits, OB = bits == 4 ? (O + 15) / 16 : (O + 31) / 32;
    wq_job q = {w, sw, zw, bias, x, xsum_work, y, N, L, O, K, (K + G - 1) / G, bits, relu,
                NULL, (K + 7) / 8 * 8, bits == 4 ? 8.0f : 0.0f};
    if (bits == 4)
        q.xs = (const float *)(((uintptr_t)(xsum_work + N) + 63) & ~(uintptr_t)63);
    int64_t nrb = N / 8 + __builtin_popcountll((unsigned long long)(N % 8));
    int par = nthreads > 1 && OB * nrb > 1 && O * K * N > WQ_PARALLEL_MACS;
    if (xsum_work)
        wb_parallel_for(N, wq_prep_task, &q, par && N * K > 65536 ? nthreads : 1);
    wb_parallel_for(OB * nrb, wq_task, &q, par ? nthreads : 1);
}
