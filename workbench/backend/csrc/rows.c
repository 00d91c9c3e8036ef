/* Row-major 8-bit codes for layers with few outputs, where the packed layouts of weightonly.c
 * and lowbit.c (outputs in blocks of 32) would store mostly padding: LeNet-5's layers have 6 to
 * 120 outputs, and their blocks cost 30-50 % more bytes than the codes. Here output o's K signed
 * codes d[o, 0..K) are stored as they are (int8), and every (column, output) pair is one dot
 * product; such layers are small, so simple loops do.
 *
 *   wb_wq_rows      fp32 activations (weight-only):
 *                   y = sw[o] * (sum_k d*x - zw[o] * sum_k x) + bias[o]
 *   wb_lowbit_rows  uint8 activations quantized per column (wb_lowbit_quantize_input, lowbit.c),
 *                   the same integer arithmetic and epilogue as wb_lowbit_gemm's scalar one:
 *                   y = sx[n] * sw[o] * (sum_k xq*d - zx[n]*wsum[o] - zw[o]*xsum[n]
 *                                         + K*zx[n]*zw[o]) + bias[o]
 *
 * x arrives as (N, K) rows (Linear inputs or im2col rows); y is written as y[b*O*L + o*L + l]
 * for n = b*L + l. ReLU is fused.
 */
#include <stdint.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* also BMI2 (_pdep_u64) on AVX2-only CPUs */
#endif

#include "pool.h"

#define ROWS_PARALLEL_MACS 200000

void wb_lowbit_quantize_input(const float *x, uint8_t *work, int64_t B, int64_t L, int64_t K,
                              int64_t Kp, float static_scale, int32_t static_zp, int x_rows,
                              int nthreads, float **sx, int32_t **zx, int32_t **xsum);

typedef struct {
    const int8_t *w;
    const float *sw, *zw, *bias, *x, *sx;
    const uint8_t *xq;
    const int32_t *izw, *wsum, *zx, *xsum;
    float *y;
    int64_t L, O, K, Kp;
    int relu;
} rows_job;

static inline void rows_store(const rows_job *q, int64_t n, int64_t o, float v) {
    q->y[(n / q->L) * q->O * q->L + o * q->L + (n % q->L)] = q->relu && v < 0.0f ? 0.0f : v;
}

static void wq_rows_task(void *ctx, int64_t n, int64_t e) {
    const rows_job *q = (const rows_job *)ctx;
    (void)e;
    const int64_t K = q->K;
    const float *x = q->x + n * K;
    float xsum = 0.0f;
    if (q->zw)
        for (int64_t k = 0; k < K; k++) xsum += x[k];
    for (int64_t o = 0; o < q->O; o++) {
        const int8_t *w = q->w + o * K;
        float acc;
#if defined(__AVX512F__)
        __m512 a = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = K - k >= 16 ? 0xFFFF : (__mmask16)((1u << (K - k)) - 1);
            const __m512 wv = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, w + k)));
            a = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + k), a);
        }
        acc = _mm512_reduce_add_ps(a);
#else
        acc = 0.0f;
        for (int64_t k = 0; k < K; k++) acc += (float)w[k] * x[k];
#endif
        rows_store(q, n, o, q->sw[o] * (acc - (q->zw ? q->zw[o] * xsum : 0.0f)) + q->bias[o]);
    }
}

void wb_wq_rows(const float *x, const int8_t *w, const float *sw, const float *zw,
                const float *bias, float *y, int64_t B, int64_t L, int64_t O, int64_t K,
                int relu, int nthreads) {
    rows_job q = {w, sw, zw, bias, x, 0, 0, 0, 0, 0, 0, y, L, O, K, K, relu};
    const int64_t N = B * L;
    wb_parallel_for(N, wq_rows_task, &q, nthreads > 1 && N * O * K > ROWS_PARALLEL_MACS
                                             ? nthreads : 1);
}

static void lowbit_rows_task(void *ctx, int64_t n, int64_t e) {
    const rows_job *q = (const rows_job *)ctx;
    (void)e;
    const int64_t K = q->K;
    const uint8_t *xq = q->xq + n * q->Kp;
    for (int64_t o = 0; o < q->O; o++) {
        const int8_t *w = q->w + o * K;
        int64_t acc = 0;
#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
        __m512i a = _mm512_setzero_si512();
        for (int64_t k = 0; k < K; k += 64) {
            const __mmask64 m = K - k >= 64 ? ~0ull : (1ull << (K - k)) - 1;
            a = _mm512_dpbusd_epi32(a, _mm512_maskz_loadu_epi8(m, xq + k),
                                    _mm512_maskz_loadu_epi8(m, w + k));
        }
        acc = _mm512_reduce_add_epi32(a);
#else
        for (int64_t k = 0; k < K; k++) acc += (int64_t)xq[k] * w[k];
#endif
        const int64_t corr = (int64_t)q->zx[n] * q->wsum[o] + (int64_t)q->izw[o] * q->xsum[n]
                             - K * q->zx[n] * q->izw[o];
        rows_store(q, n, o, q->sx[n] * q->sw[o] * (float)(acc - corr) + q->bias[o]);
    }
}

/* work: wb_lowbit_work_bytes(B * L, Kp) bytes with Kp = K rounded up to 16 (lowbit.c). */
void wb_lowbit_rows(const float *x, uint8_t *work, const int8_t *w, const float *sw,
                    const int32_t *zw, const int32_t *wsum, const float *bias, float *y,
                    int64_t B, int64_t L, int64_t O, int64_t K, float static_scale,
                    int32_t static_zp, int relu, int x_rows, int nthreads) {
    const int64_t N = B * L, Kp = (K + 15) / 16 * 16;
    float *sx;
    int32_t *zx, *xsum;
    wb_lowbit_quantize_input(x, work, B, L, K, Kp, static_scale, static_zp, x_rows, nthreads,
                             &sx, &zx, &xsum);
    rows_job q = {w, sw, 0, bias, 0, sx, work, zw, wsum, zx, xsum, y, L, O, K, Kp, relu};
    wb_parallel_for(N, lowbit_rows_task, &q, nthreads > 1 && N * O * K > ROWS_PARALLEL_MACS
                                                 ? nthreads : 1);
}
