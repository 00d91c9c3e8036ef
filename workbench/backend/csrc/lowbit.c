/* Low-bit kernels: int8 activations times packed int8 / int4 / int2 / int1 weight codes.
 *
 * Activations are quantized per column (one sample of a Linear layer, one output position of
 * an im2col'd Conv2d) to unsigned 8-bit: xq = clamp(round(x / sx) + zx, 0, 255), with a
 * dynamic (min/max of the column) or a static (calibrated) scale. Weights are signed codes
 * w = code - offset stored packed for AVX-512 VNNI (vpdpbusd: 16 int32 lanes, each summing 4
 * u8*s8 products): output channels in blocks of 32 (two halves of 16 lanes), 4 consecutive
 * inputs per lane; packed loads are ordered [block][load][half][64 bytes] (8 bytes for bits 1).
 *
 *   bits 8: one byte per code,                      64-byte vector = 16 outputs x 4 inputs
 *   bits 4: two codes per byte (unsigned nibble),    low nibbles: inputs 4q.., high: 4(q+1)..
 *   bits 2: four codes per byte (unsigned crumb),    crumb j holds input group q+j
 * (4- and 2-bit codes are stored unsigned, their offset folded into the zero point, so the
 * kernel only masks and shifts them)
 *   bits 1: one bit per code (set = -1, clear = +1), 8 bytes per input group of 4
 *
 * y[n, o] = sx[n] * sw[o] * (sum_k xq*w - zx[n]*wsum[o] - zw[o]*xsum[n] + K*zx[n]*zw[o]) + b[o]
 *
 * Layout convention as in sparse.c: column n = b*L + l reads x[b*K*L + k*L + l] and writes
 * y[b*O*L + o*L + l].
 */
#include <math.h>
#include <stdint.h>
#include <string.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* also BMI2 (_pdep_u64) on AVX2-only CPUs */
#endif
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512F__)
#define WB_VNNI 1
#else
#define WB_VNNI 0
#endif

#include "pool.h"

#define ALWAYS_INLINE static inline __attribute__((always_inline))

int wb_has_vnni(void) { return WB_VNNI; }

#if WB_VNNI
/* One contiguous column (L == 1): min/max, then round / clamp / narrow 16 values at a time. */
static void quantize_contiguous(const float *xc, uint8_t *q, int64_t K, int64_t Kp,
                                float static_scale, int32_t static_zp, float *sx, int32_t *zx,
                                int32_t *xsum) {
    float s;
    int32_t z;
    if (static_scale > 0.0f) {
        s = static_scale;
        z = static_zp;
    } else {
        __m512 lo = _mm512_setzero_ps(), hi = _mm512_setzero_ps();
        int64_t k = 0;
        for (; k + 16 <= K; k += 16) {
            __m512 v = _mm512_loadu_ps(xc + k);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        if (k < K) {
            __mmask16 m = (__mmask16)((1u << (K - k)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(m, xc + k);
            lo = _mm512_min_ps(lo, v);
            hi = _mm512_max_ps(hi, v);
        }
        float l = _mm512_reduce_min_ps(lo), h = _mm512_reduce_max_ps(hi);
        s = (h - l) / 255.0f;
        if (!(s > 0.0f)) s = 1.0f;
        z = (int32_t)lrintf(-l / s);
        z = z < 0 ? 0 : (z > 255 ? 255 : z);
    }
    const __m512 vs = _mm512_set1_ps(s);
    const __m512i vz = _mm512_set1_epi32(z), zero = _mm512_setzero_si512(),
                  top = _mm512_set1_epi32(255);
    __m512i sum = _mm512_setzero_si512();
    for (int64_t k = 0; k < Kp; k += 16) {
        __mmask16 m = k + 16 <= K ? 0xFFFF : (k < K ? (__mmask16)((1u << (K - k)) - 1) : 0);
        __m512 v = _mm512_maskz_loadu_ps(m, xc + k);
        __m512i r = _mm512_cvtps_epi32(_mm512_roundscale_ps(_mm512_div_ps(v, vs),
                                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        r = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(r, vz), zero), top);
        r = _mm512_maskz_mov_epi32(m, r);
        sum = _mm512_add_epi32(sum, r);
        _mm_storeu_si128((__m128i *)(q + k), _mm512_cvtepi32_epi8(r));
    }
    *sx = s;
    *zx = z;
    *xsum = _mm512_reduce_add_epi32(sum);
}
#endif

/* Quantize columns to uint8 rows xq[n*Kp + k] (zero padded to Kp, a multiple of 16). With
 * static_scale > 0 every column uses the given scale / zero point (calibrated activations),
 * else the min/max of the column (widened to include 0). */
typedef struct {
    const float *x;
    uint8_t *xq;
    float *sx;
    int32_t *zx, *xsum;
    int64_t N, K, L, Kp;
    float static_scale;
    int32_t static_zp;
} quant_job;

#define QUANT_ROWS 8  /* columns per pool item */

static void quantize_task(void *ctx, int64_t item, int64_t e) {
    const quant_job *j = (const quant_job *)ctx;
    (void)e;
    const float *x = j->x;
    uint8_t *xq = j->xq;
    float *sx = j->sx, static_scale = j->static_scale;
    int32_t *zx = j->zx, *xsum = j->xsum, static_zp = j->static_zp;
    const int64_t K = j->K, L = j->L, Kp = j->Kp;
    const int64_t end = (item + 1) * QUANT_ROWS < j->N ? (item + 1) * QUANT_ROWS : j->N;
    for (int64_t n = item * QUANT_ROWS; n < end; n++) {
        const float *xc = x + (n / L) * K * L + (n % L);
        uint8_t *q = xq + n * Kp;
#if WB_VNNI
        if (L == 1) {
            quantize_contiguous(xc, q, K, Kp, static_scale, static_zp, sx + n, zx + n, xsum + n);
            continue;
        }
#endif
        float s;
        int32_t z;
        if (static_scale > 0.0f) {
            s = static_scale;
            z = static_zp;
        } else {
            float lo = 0.0f, hi = 0.0f;  /* the range always contains 0 (exact zeros) */
            for (int64_t k = 0; k < K; k++) {
                float v = xc[k * L];
                lo = v < lo ? v : lo;
                hi = v > hi ? v : hi;
            }
            s = (hi - lo) / 255.0f;
            if (!(s > 0.0f)) s = 1.0f;
            z = (int32_t)lrintf(-lo / s);
            z = z < 0 ? 0 : (z > 255 ? 255 : z);
        }
        int32_t sum = 0;
        for (int64_t k = 0; k < K; k++) {
            float r = nearbyintf(xc[k * L] / s) + (float)z;  /* as torch: x / scale */
            r = r < 0.0f ? 0.0f : (r > 255.0f ? 255.0f : r);
            q[k] = (uint8_t)r;
            sum += q[k];
        }
        for (int64_t k = K; k < Kp; k++) q[k] = 0;
        sx[n] = s;
        zx[n] = z;
        xsum[n] = sum;
    }
}

/* Items of QUANT_ROWS columns on the work-sharing pool (from 32k values on). */
void wb_quantize_columns(const float *x, uint8_t *xq, float *sx, int32_t *zx, int32_t *xsum,
                         int64_t B, int64_t K, int64_t L, int64_t Kp, float static_scale,
                         int32_t static_zp, int nthreads) {
    int64_t N = B * L, items = (N + QUANT_ROWS - 1) / QUANT_ROWS;
    quant_job job = {x, xq, sx, zx, xsum, N, K, L, Kp, static_scale, static_zp};
    wb_parallel_for(items, quantize_task, &job, nthreads > 1 && N * K >= 32768 ? nthreads : 1);
}

typedef struct {
    const uint8_t *w;      /* packed codes */
    const float *sw;       /* per output scale (Op) */
    const int32_t *zw;     /* per output zero point of the signed codes (Op) */
    const int32_t *wsum;   /* per output sum of signed codes over the real K (Op) */
    const float *bias;     /* Op or NULL */
    int64_t O, K, Kp, L;
    int bits, relu;
} wb_packed;


ALWAYS_INLINE void store_block(const wb_packed *p, const int32_t *acc, int64_t n, int64_t ob,
                               const float *sx, const int32_t *zx, const int32_t *xsum, float *y) {
    int64_t L = p->L, O = p->O;
    float *yn = y + (n / L) * O * L + (n % L);
#if WB_VNNI
    const __m512i vzx = _mm512_set1_epi32(zx[n]), vxs = _mm512_set1_epi32(xsum[n]),
                  vkz = _mm512_set1_epi32((int32_t)p->K * zx[n]);
    const __m512 vsx = _mm512_set1_ps(sx[n]);
    for (int h = 0; h < 2; h++) {
        int64_t o0 = ob * 32 + h * 16;
        if (o0 >= O) break;
        __mmask16 m = o0 + 16 <= O ? 0xFFFF : (__mmask16)((1u << (O - o0)) - 1);
        /* zw, wsum, sw and bias are padded to a multiple of 32 outputs */
        __m512i zw = _mm512_loadu_si512((const void *)(p->zw + o0));
        __m512i corr = _mm512_add_epi32(_mm512_mullo_epi32(vzx, _mm512_loadu_si512((const void *)(p->wsum + o0))),
                                        _mm512_mullo_epi32(zw, _mm512_sub_epi32(vxs, vkz)));
        __m512i a = _mm512_sub_epi32(_mm512_load_si512((const void *)(acc + h * 16)), corr);
        __m512 v = _mm512_fmadd_ps(_mm512_mul_ps(vsx, _mm512_loadu_ps(p->sw + o0)),
                                   _mm512_cvtepi32_ps(a), _mm512_loadu_ps(p->bias + o0));
        if (p->relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
        if (L == 1) {
            _mm512_mask_storeu_ps(yn + o0, m, v);
        } else {
            float tmp[16] __attribute__((aligned(64)));
            _mm512_store_ps(tmp, v);
            for (int j = 0; j < 16 && o0 + j < O; j++) yn[(o0 + j) * L] = tmp[j];
        }
    }
#else
    for (int j = 0; j < 32; j++) {
        int64_t o = ob * 32 + j;
        if (o >= O) break;
        int64_t corr = (int64_t)zx[n] * p->wsum[o] + (int64_t)p->zw[o] * xsum[n]
                       - (int64_t)p->K * zx[n] * p->zw[o];
        float v = sx[n] * p->sw[o] * (float)((int64_t)acc[j] - corr) + p->bias[o];
        yn[o * L] = p->relu && v < 0.0f ? 0.0f : v;
    }
#endif
}

#if WB_VNNI
/* Decode one 64-byte packed load into G vectors of signed bytes (16 outputs x 4 inputs each). */
#define DECODE(BITS, ptr, wv)                                                                  \
    if (BITS == 8) {                                                                           \
        wv[0] = _mm512_load_si512((const void *)(ptr));                                        \
    } else if (BITS == 4) {                                                                    \
        __m512i v = _mm512_load_si512((const void *)(ptr));                                    \
        wv[0] = _mm512_and_si512(v, low4);                                                     \
        wv[1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low4);                               \
    } else if (BITS == 2) {                                                                    \
        __m512i v = _mm512_load_si512((const void *)(ptr));                                    \
        wv[0] = _mm512_and_si512(v, low2);                                                     \
        wv[1] = _mm512_and_si512(_mm512_srli_epi16(v, 2), low2);                               \
        wv[2] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low2);                               \
        wv[3] = _mm512_and_si512(_mm512_srli_epi16(v, 6), low2);                               \
    } else {                                                                                   \
        __mmask64 m = *(const uint64_t *)(ptr);                                                \
        wv[0] = _mm512_mask_blend_epi8(m, plus, minus);                                        \
    }

/* Micro-kernel: 32 outputs (two 16-lane halves) x NR rows. Rows 1 and 2 use two accumulator
 * sets (even / odd loads) to hide the vpdpbusd latency. */
#define MK(NR, BITS)                                                                           \
    static __attribute__((noinline)) void mk_##NR##_##BITS(                                   \
        const wb_packed *p, const uint8_t *xq, int64_t n0, int64_t ob, const float *sx,       \
        const int32_t *zx, const int32_t *xsum, float *y) {                                   \
        enum { G = BITS == 8 ? 1 : (BITS == 4 ? 2 : (BITS == 2 ? 4 : 1)),                      \
               LB = BITS == 1 ? 8 : 64, SETS = NR <= 2 ? 2 : 1 };                              \
        __m512i acc[SETS][NR][2];                                                              \
        for (int s = 0; s < SETS; s++)                                                         \
            for (int r = 0; r < NR; r++) acc[s][r][0] = acc[s][r][1] = _mm512_setzero_si512(); \
        const int64_t Kp = p->Kp, nloads = Kp / 4 / G;                                         \
        const uint8_t *w = p->w + ob * nloads * 2 * LB;                                        \
        const uint8_t *x0 = xq + n0 * Kp;                                                      \
        const __m512i low4 = _mm512_set1_epi8(0x0F), low2 = _mm512_set1_epi8(0x03);           \
        const __m512i plus = _mm512_set1_epi8(1), minus = _mm512_set1_epi8(-1);               \
        (void)low4; (void)low2; (void)plus; (void)minus;                      \
        for (int64_t l = 0; l < nloads; l++) {                                                 \
            const int s = SETS == 2 ? (int)(l & 1) : 0;                                        \
            __m512i w0[4], w1[4];                                                              \
            DECODE(BITS, w + (2 * l) * LB, w0)                                                 \
            DECODE(BITS, w + (2 * l + 1) * LB, w1)                                             \
            for (int g = 0; g < G; g++) {                                                      \
                const uint8_t *xg = x0 + (l * G + g) * 4;                                      \
                for (int r = 0; r < NR; r++) {                                                 \
                    __m512i xb = _mm512_set1_epi32(*(const int32_t *)(xg + r * Kp));           \
                    acc[s][r][0] = _mm512_dpbusd_epi32(acc[s][r][0], xb, w0[g]);               \
                    acc[s][r][1] = _mm512_dpbusd_epi32(acc[s][r][1], xb, w1[g]);               \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
        int32_t out[32] __attribute__((aligned(64)));                                          \
        for (int r = 0; r < NR; r++) {                                                         \
            __m512i h0 = acc[0][r][0], h1 = acc[0][r][1];                                      \
            if (SETS == 2) {                                                                   \
                h0 = _mm512_add_epi32(h0, acc[SETS - 1][r][0]);                                \
                h1 = _mm512_add_epi32(h1, acc[SETS - 1][r][1]);                                \
            }                                                                                  \
            _mm512_store_si512((void *)out, h0);                                               \
            _mm512_store_si512((void *)(out + 16), h1);                                        \
            store_block(p, out, n0 + r, ob, sx, zx, xsum, y);                                  \
        }                                                                                      \
    }
#else
/* Portable fallback: decode each code from the same packed layout. */
ALWAYS_INLINE int decode(const uint8_t *w, int bits, int64_t ob, int64_t ngroups, int64_t q,
                         int lane, int i) {
    /* lane in [0, 32): half = lane / 16; group q lives in load q / G */
    int G = bits == 8 ? 1 : (bits == 4 ? 2 : (bits == 2 ? 4 : 1)), LB = bits == 1 ? 8 : 64;
    int64_t nloads = ngroups / G, l = q / G, g = q % G;
    const uint8_t *v = w + ((ob * nloads + l) * 2 + lane / 16) * LB;
    int byte = (lane % 16) * 4 + i;
    if (bits == 8) return (int8_t)v[byte];
    if (bits == 4) return (v[byte] >> (4 * g)) & 15;
    if (bits == 2) return (v[byte] >> (2 * g)) & 3;
    return (*(const uint64_t *)v >> byte) & 1 ? -1 : 1;
}
#define MK(NR, BITS)                                                                           \
    static void mk_##NR##_##BITS(const wb_packed *p, const uint8_t *xq, int64_t n0,           \
                                 int64_t ob, const float *sx, const int32_t *zx,               \
                                 const int32_t *xsum, float *y) {                              \
        const int64_t Kp = p->Kp, ngroups = Kp / 4;                                            \
        for (int r = 0; r < NR; r++) {                                                         \
            int32_t out[32] = {0};                                                             \
            const uint8_t *xr = xq + (n0 + r) * Kp;                                            \
            for (int64_t q = 0; q < ngroups; q++)                                              \
                for (int lane = 0; lane < 32; lane++)                                          \
                    for (int i = 0; i < 4; i++)                                                \
                        out[lane] += xr[q * 4 + i] * decode(p->w, BITS, ob, ngroups, q, lane, i); \
            store_block(p, out, n0 + r, ob, sx, zx, xsum, y);                                  \
        }                                                                                      \
    }
#endif

#define MK_BITS(BITS) MK(8, BITS) MK(4, BITS) MK(2, BITS) MK(1, BITS)
MK_BITS(8)
MK_BITS(4)
MK_BITS(2)
MK_BITS(1)

#if WB_VNNI
/* 8-bit codes, NR rows x 32 outputs with every accumulator a named variable: gcc keeps the
 * generic MK's accumulator arrays partly on the stack (a spill and reload in every k step);
 * this runs the batch-64 1024² product 2-9 % faster (min / median, loaded 2-core machine). */
#define ACC_DECL(r) __m512i c##r##a = _mm512_setzero_si512(), c##r##b = _mm512_setzero_si512();
#define ACC_STEP(r)                                                                            \
    {                                                                                          \
        __m512i xb = _mm512_set1_epi32(*(const int32_t *)(x0 + (r) * Kp + 4 * l));             \
        c##r##a = _mm512_dpbusd_epi32(c##r##a, xb, w0);                                        \
        c##r##b = _mm512_dpbusd_epi32(c##r##b, xb, w1);                                        \
    }
#define ACC_OUT(r)                                                                             \
    _mm512_store_si512((void *)out, c##r##a);                                                  \
    _mm512_store_si512((void *)(out + 16), c##r##b);                                           \
    store_block(p, out, n0 + (r), ob, sx, zx, xsum, y);
#define ROWS4(M) M(0) M(1) M(2) M(3)
#define ROWS8(M) ROWS4(M) M(4) M(5) M(6) M(7)
#define MK8(NR)                                                                                \
    static __attribute__((noinline)) void mk8_##NR(const wb_packed *p, const uint8_t *xq,    \
                                                   int64_t n0, int64_t ob, const float *sx,    \
                                                   const int32_t *zx, const int32_t *xsum,     \
                                                   float *y) {                                 \
        ROWS##NR(ACC_DECL)                                                                     \
        const int64_t Kp = p->Kp, nloads = Kp / 4;                                             \
        const uint8_t *w = p->w + ob * nloads * 128;                                           \
        const uint8_t *x0 = xq + n0 * Kp;                                                      \
        for (int64_t l = 0; l < nloads; l++) {                                                 \
            __m512i w0 = _mm512_load_si512((const void *)(w + 128 * l));                       \
            __m512i w1 = _mm512_load_si512((const void *)(w + 128 * l + 64));                  \
            ROWS##NR(ACC_STEP)                                                                 \
        }                                                                                      \
        int32_t out[32] __attribute__((aligned(64)));                                          \
        ROWS##NR(ACC_OUT)                                                                      \
    }
MK8(8)
MK8(4)
#endif

typedef void (*mk_fn)(const wb_packed *, const uint8_t *, int64_t, int64_t, const float *,
                      const int32_t *, const int32_t *, float *);

static mk_fn pick(int nr, int bits) {
#define PICK(BITS) \
    if (bits == BITS) return nr == 8 ? mk_8_##BITS : (nr == 4 ? mk_4_##BITS : (nr == 2 ? mk_2_##BITS : mk_1_##BITS));
#if WB_VNNI
    if (bits == 8 && nr == 8) return mk8_8;
    if (bits == 8 && nr == 4) return mk8_4;
#endif
    PICK(8) PICK(4) PICK(2) PICK(1)
#undef PICK
    return 0;
}

/* y = dequant(xq) @ dequant(w).T (+ bias, ReLU). Rows are processed in blocks of 8 (then 4, 2,
 * 1 for the remainder); jobs are (output block, row block) pairs, output-block major so one
 * block of weights stays in L1 while the rows stream by. */
typedef struct {
    const wb_packed *p;
    const uint8_t *xq;
    const float *sx;
    const int32_t *zx, *xsum;
    float *y;
    int64_t nb, full, rest;
    int bits;
} gemm_job;

/* Job j: output block j / nb, row block j % nb (8 rows, then the remainder as 4, 2, 1). */
static void gemm_task(void *ctx, int64_t j, int64_t e) {
    const gemm_job *q = (const gemm_job *)ctx;
    (void)e;
    int64_t ob = j / q->nb, r = j % q->nb, start, size;
    if (r < q->full) {
        start = r * 8;
        size = 8;
    } else {
        start = q->full * 8;
        size = 0;
        for (int64_t s = 4, i = q->full; s >= 1; s /= 2) {
            if (!(q->rest & s)) continue;
            if (i == r) { size = s; break; }
            start += s;
            i++;
        }
    }
    pick((int)size, q->bits)(q->p, q->xq, start, ob, q->sx, q->zx, q->xsum, q->y);
}

void wb_lowbit_gemm(const uint8_t *w, int bits, const float *sw, const int32_t *zw,
                    const int32_t *wsum, const float *bias, const uint8_t *xq, const float *sx,
                    const int32_t *zx, const int32_t *xsum, float *y, int64_t B, int64_t L,
                    int64_t O, int64_t K, int64_t Kp, int relu, int nthreads) {
    wb_packed p = {w, sw, zw, wsum, bias, O, K, Kp, L, bits, relu};
    int64_t N = B * L, OB = (O + 31) / 32;
    int64_t full = N / 8, rest = N % 8;
    int64_t nb = full + __builtin_popcountll((unsigned long long)rest);
    int64_t jobs = OB * nb;
    gemm_job job = {&p, xq, sx, zx, xsum, y, nb, full, rest, bits};
    int par = nthreads > 1 && jobs > 1 && O * K * N > 4 * 200000;
    wb_parallel_for(jobs, gemm_task, &job, par ? nthreads : 1);
}

/* Fully binary layer (XNOR-Net): weights and activations are signs, packed 64 per word
 * (bit set = -1). dot = K - 2 * popcount(w ^ x); y = sw[o] * sx[n] * dot + bias. */
void wb_binarize_columns(const float *x, uint64_t *xb, float *sx, int64_t B, int64_t K,
                         int64_t L, int64_t Kw, int nthreads) {
    int64_t N = B * L;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && N * K > 262144)
    for (int64_t n = 0; n < N; n++) {
        const float *xc = x + (n / L) * K * L + (n % L);
        uint64_t *q = xb + n * Kw;
        float mag = 0.0f;
#if defined(__AVX512F__)
        if (L == 1) {
            __m512 m = _mm512_setzero_ps();
            const __m512 zero = _mm512_setzero_ps();
            for (int64_t i = 0; i < Kw; i++) {
                uint64_t word = 0;
                for (int part = 0; part < 4; part++) {
                    int64_t k = i * 64 + part * 16;
                    __mmask16 valid = k + 16 <= K ? 0xFFFF : (k < K ? (__mmask16)((1u << (K - k)) - 1) : 0);
                    __m512 v = _mm512_maskz_loadu_ps(valid, xc + k);
                    m = _mm512_add_ps(m, _mm512_abs_ps(v));
                    word |= (uint64_t)_mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ) << (16 * part);
                }
                q[i] = word;
            }
            sx[n] = _mm512_reduce_add_ps(m) / (float)K;
            continue;
        }
#endif
        for (int64_t i = 0; i < Kw; i++) {
            uint64_t word = 0;
            for (int64_t k = i * 64; k < K && k < i * 64 + 64; k++) {
                float v = xc[k * L];
                mag += fabsf(v);
                word |= (uint64_t)(v < 0.0f) << (k & 63);
            }
            q[i] = word;
        }
        sx[n] = mag / (float)K;
    }
}

/* Weights are packed [o / 8][word][8 outputs] (outputs padded to a multiple of 8 with zero
 * words; sw and bias padded too): one 512-bit load holds a word of 8 outputs, XORed with a
 * broadcast activation word and popcounted per 64-bit lane (VPOPCNTQ), NR rows at a time. */
#if defined(__AVX512VPOPCNTDQ__) && defined(__AVX512DQ__)
#define XNOR_NR(NR)                                                                            \
    static __attribute__((noinline)) void xnor_##NR(                                           \
        const uint64_t *w, const float *sw, const float *bias, const uint64_t *xb,            \
        const float *sx, float *y, int64_t Kw, int64_t ob, int64_t n0, int64_t K, int64_t O,   \
        int64_t L, int relu) {                                                                 \
        __m512i acc[NR];                                                                       \
        for (int r = 0; r < NR; r++) acc[r] = _mm512_setzero_si512();                          \
        const uint64_t *wo = w + ob * Kw * 8;                                                  \
        const uint64_t *x0 = xb + n0 * Kw;                                                     \
        for (int64_t i = 0; i < Kw; i++) {                                                     \
            __m512i wv = _mm512_load_si512((const void *)(wo + i * 8));                        \
            for (int r = 0; r < NR; r++) {                                                     \
                __m512i xv = _mm512_set1_epi64((long long)x0[r * Kw + i]);                     \
                acc[r] = _mm512_add_epi64(acc[r], _mm512_popcnt_epi64(_mm512_xor_si512(wv, xv))); \
            }                                                                                  \
        }                                                                                      \
        const __m256 s8 = _mm256_loadu_ps(sw + ob * 8), b8 = _mm256_loadu_ps(bias + ob * 8);    \
        const __m512i vk = _mm512_set1_epi64(K);                                               \
        __mmask8 m = ob * 8 + 8 <= O ? 0xFF : (__mmask8)((1u << (O - ob * 8)) - 1);            \
        for (int r = 0; r < NR; r++) {                                                         \
            int64_t n = n0 + r;                                                                \
            __m512i dot = _mm512_sub_epi64(vk, _mm512_add_epi64(acc[r], acc[r]));              \
            __m256 v = _mm256_fmadd_ps(_mm256_mul_ps(s8, _mm256_set1_ps(sx[n])),               \
                                       _mm512_cvtepi64_ps(dot), b8);                           \
            if (relu) v = _mm256_max_ps(v, _mm256_setzero_ps());                               \
            float *yn = y + (n / L) * O * L + (n % L) + ob * 8 * L;                            \
            if (L == 1) {                                                                      \
                _mm256_mask_storeu_ps(yn, m, v);                                               \
            } else {                                                                           \
                float t[8];                                                                    \
                _mm256_storeu_ps(t, v);                                                        \
                for (int c = 0; c < 8 && ob * 8 + c < O; c++) yn[c * L] = t[c];               \
            }                                                                                  \
        }                                                                                      \
    }
#else
#define XNOR_NR(NR)                                                                            \
    static void xnor_##NR(const uint64_t *w, const float *sw, const float *bias,              \
                          const uint64_t *xb, const float *sx, float *y, int64_t Kw,           \
                          int64_t ob, int64_t n0, int64_t K, int64_t O, int64_t L, int relu) { \
        for (int r = 0; r < NR; r++) {                                                         \
            int64_t n = n0 + r;                                                                \
            for (int c = 0; c < 8 && ob * 8 + c < O; c++) {                                    \
                int64_t cnt = 0, o = ob * 8 + c;                                               \
                for (int64_t i = 0; i < Kw; i++)                                               \
                    cnt += __builtin_popcountll(w[(ob * Kw + i) * 8 + c] ^ xb[n * Kw + i]);    \
                float v = sw[o] * sx[n] * (float)(K - 2 * cnt) + bias[o];                      \
                y[(n / L) * O * L + o * L + (n % L)] = relu && v < 0.0f ? 0.0f : v;            \
            }                                                                                  \
        }                                                                                      \
    }
#endif
XNOR_NR(8)
XNOR_NR(1)

typedef struct {
    const uint64_t *w, *xb;
    const float *sw, *bias, *sx;
    float *y;
    int64_t N, L, O, K, Kw, NB;
    int relu;
} xnor_job;

static void xnor_task(void *ctx, int64_t j, int64_t e) {
    const xnor_job *q = (const xnor_job *)ctx;
    (void)e;
    int64_t ob = j / q->NB, n0 = (j % q->NB) * 8;
    if (q->N - n0 >= 8)
        xnor_8(q->w, q->sw, q->bias, q->xb, q->sx, q->y, q->Kw, ob, n0, q->K, q->O, q->L, q->relu);
    else
        for (int64_t n = n0; n < q->N; n++)
            xnor_1(q->w, q->sw, q->bias, q->xb, q->sx, q->y, q->Kw, ob, n, q->K, q->O, q->L, q->relu);
}

void wb_xnor_gemm(const uint64_t *w, const float *sw, const float *bias, const uint64_t *xb,
                  const float *sx, float *y, int64_t B, int64_t L, int64_t O, int64_t K,
                  int64_t Kw, int relu, int nthreads) {
    int64_t N = B * L, OB = (O + 7) / 8, NB = (N + 7) / 8;
    xnor_job job = {w, xb, sw, bias, sx, y, N, L, O, K, Kw, NB, relu};
    int par = nthreads > 1 && O * K * N > 32 * 200000;
    wb_parallel_for(OB * NB, xnor_task, &job, par ? nthreads : 1);
}

/* Bytes of workspace wb_lowbit_forward needs for N columns of Kp (padded) inputs. */
int64_t wb_lowbit_work_bytes(int64_t N, int64_t Kp) { return N * Kp + N * 16 + 64; }

/* Quantize a layer's input into work (wb_lowbit_work_bytes of it): uint8 rows xq of Kp, then
 * per column sx, zx and xsum, whose addresses are returned. x_rows: x is already (B*L, K) rows
 * (im2col rows), else B samples of K x L values. */
void wb_lowbit_quantize_input(const float *x, uint8_t *work, int64_t B, int64_t L, int64_t K,
                              int64_t Kp, float static_scale, int32_t static_zp, int x_rows,
                              int nthreads, float **sx, int32_t **zx, int32_t **xsum) {
    const int64_t N = B * L;
    *sx = (float *)(work + N * Kp + (64 - (N * Kp) % 64) % 64);
    *zx = (int32_t *)(*sx + N);
    *xsum = *zx + N;
    if (x_rows)
        wb_quantize_columns(x, work, *sx, *zx, *xsum, N, K, 1, Kp, static_scale, static_zp,
                            nthreads);
    else
        wb_quantize_columns(x, work, *sx, *zx, *xsum, B, K, L, Kp, static_scale, static_zp,
                            nthreads);
}

/* Quantize the input and multiply in one call (one Python -> C transition per layer); the
 * output is (B, O, L) either way. */
void wb_lowbit_forward(const float *x, uint8_t *work, const uint8_t *w, int bits, const float *sw,
                       const int32_t *zw, const int32_t *wsum, const float *bias, float *y,
                       int64_t B, int64_t L, int64_t O, int64_t K, int64_t Kp, float static_scale,
                       int32_t static_zp, int relu, int x_rows, int nthreads) {
    float *sx;
    int32_t *zx, *xsum;
    wb_lowbit_quantize_input(x, work, B, L, K, Kp, static_scale, static_zp, x_rows, nthreads,
                             &sx, &zx, &xsum);
    wb_lowbit_gemm(w, bits, sw, zw, wsum, bias, work, sx, zx, xsum, y, B, L, O, K, Kp, relu,
                   nthreads);
}
