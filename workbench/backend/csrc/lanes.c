/* Packing into and storing out of batch-in-lanes tiles (see lanes.h). */
#include "lanes.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h> /* also BMI2 (_pdep_u64) on AVX2-only CPUs */
#endif

void wb_lanes_pack(const float *x, float *tile, int64_t n0, int v, int nv, int64_t N,
                   int64_t K, int64_t L) {
    const int BT = LANES * nv;
    {
        int64_t first = n0 + v * LANES;
        int cnt = first >= N ? 0 : (int)(N - first < LANES ? N - first : LANES);
        float *t = tile + v * LANES;
        if (cnt == 0) {
            for (int64_t k = 0; k < K; k++) memset(t + k * BT, 0, LANES * sizeof(float));
            return;
        }
        if (L == 1) {
#if defined(__AVX512F__)
            __mmask16 m = (__mmask16)((1u << cnt) - 1);
            __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7,
                                                               6, 5, 4, 3, 2, 1, 0),
                                              _mm512_set1_epi32((int)K));
            const float *base = x + first * K;
            for (int64_t k = 0; k < K; k++)
                _mm512_store_ps(t + k * BT, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m,
                                                                     rows, base + k, 4));
#else
            for (int64_t k = 0; k < K; k++)
                for (int j = 0; j < LANES; j++)
                    t[k * BT + j] = j < cnt ? x[(first + j) * K + k] : 0.0f;
#endif
            return;
        }
        int64_t b = first / L, l = first % L;
        if (l + cnt <= L) {  /* one sample: a contiguous piece of every row k */
            const float *src = x + b * K * L + l;
            for (int64_t k = 0; k < K; k++) {
                float *d = t + k * BT;
                for (int j = 0; j < cnt; j++) d[j] = src[k * L + j];
                for (int j = cnt; j < LANES; j++) d[j] = 0.0f;
            }
            return;
        }
        int64_t off[LANES];
        for (int j = 0; j < LANES; j++) {
            off[j] = j < cnt ? b * K * L + l : -1;
            if (++l == L) { l = 0; b++; }
        }
        for (int64_t k = 0; k < K; k++)
            for (int j = 0; j < LANES; j++)
                t[k * BT + j] = off[j] >= 0 ? x[off[j] + k * L] : 0.0f;
    }
}

ALWAYS_INLINE float epilogue(float v, float b, int relu) {
    v += b;
    return relu && v < 0.0f ? 0.0f : v;
}

void wb_lanes_store(const float *acc, int R, int nv, const float *bias, int relu, float *y,
                    int64_t o0, int64_t n0, int64_t N, int64_t O, int64_t L) {
    const int BT = LANES * nv;
    int cnt = (int)(N - n0 < BT ? N - n0 : BT);
    if (L == 1) {  /* y is (N, O): column n of the tile is 16 consecutive outputs per store */
#if defined(__AVX512F__)
        __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6,
                                                           5, 4, 3, 2, 1, 0),
                                          _mm512_set1_epi32(BT));
        for (int r = 0; r < R; r += LANES) {
            int rows_left = R - r < LANES ? R - r : LANES;
            __mmask16 m = (__mmask16)((1u << rows_left) - 1);
            __m512 b = bias ? _mm512_maskz_loadu_ps(m, bias + o0 + r) : _mm512_setzero_ps();
            for (int j = 0; j < cnt; j++) {
                __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), m, rows,
                                                    acc + r * BT + j, 4);
                v = _mm512_add_ps(v, b);
                if (relu) v = _mm512_max_ps(v, _mm512_setzero_ps());
                _mm512_mask_storeu_ps(y + (n0 + j) * O + o0 + r, m, v);
            }
        }
#else
        for (int j = 0; j < cnt; j++)
            for (int r = 0; r < R; r++)
                y[(n0 + j) * O + o0 + r] = epilogue(acc[r * BT + j], bias ? bias[o0 + r] : 0.0f,
                                                    relu);
#endif
        return;
    }
    int64_t b = n0 / L, l = n0 % L;
    if (l + cnt <= L) {  /* the tile lies in one sample: contiguous output rows */
        for (int r = 0; r < R; r++) {
            float *yo = y + b * O * L + (o0 + r) * L + l;
            float bb = bias ? bias[o0 + r] : 0.0f;
            for (int j = 0; j < cnt; j++) yo[j] = epilogue(acc[r * BT + j], bb, relu);
        }
        return;
    }
    int64_t off[LANES * MAX_NV];
    for (int j = 0; j < cnt; j++) {
        off[j] = b * O * L + l;
        if (++l == L) { l = 0; b++; }
    }
    for (int r = 0; r < R; r++) {
        float bb = bias ? bias[o0 + r] : 0.0f;
        for (int j = 0; j < cnt; j++)
            y[off[j] + (o0 + r) * L] = epilogue(acc[r * BT + j], bb, relu);
    }
}
