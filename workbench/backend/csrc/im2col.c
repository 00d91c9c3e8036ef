/* im2col for Conv2d (zero padding, any stride / dilation, groups = 1): x is (B, C, H, W);
 * the column of output position l = oh*Wo + ow of sample b holds the C*kh*kw inputs it sees,
 * ordered (c, i, j) like weight.reshape(O, -1). rows = 0 writes (B, K, L) (the layout of
 * torch.nn.functional.unfold), rows = 1 writes (B*L, K): one contiguous row per position. */
#include <stdint.h>

void wb_im2col(const float *x, float *out, int64_t B, int64_t C, int64_t H, int64_t W, int kh,
               int kw, int sh, int sw, int ph, int pw, int dh, int dw, int64_t Ho, int64_t Wo,
               int rows, int nthreads) {
    const int64_t K = C * kh * kw, L = Ho * Wo;
    #pragma omp parallel for num_threads(nthreads) schedule(static) if (nthreads > 1 && B * K * L > 262144)
    for (int64_t b = 0; b < B; b++) {
        for (int64_t c = 0; c < C; c++) {
            const float *xc = x + (b * C + c) * H * W;
            for (int i = 0; i < kh; i++) {
                for (int j = 0; j < kw; j++) {
                    const int64_t k = (c * kh + i) * kw + j;
                    /* output columns whose input column is inside the image: [lo, hi) */
                    const int64_t off = (int64_t)j * dw - pw;
                    int64_t lo = off >= 0 ? 0 : (-off + sw - 1) / sw;
                    int64_t hi = W - 1 - off < 0 ? 0 : (W - 1 - off) / sw + 1;
                    lo = lo < Wo ? lo : Wo;
                    hi = hi < Wo ? hi : Wo;
                    hi = hi > lo ? hi : lo;
                    for (int64_t oh = 0; oh < Ho; oh++) {
                        const int64_t ih = oh * sh - ph + (int64_t)i * dh;
                        const int inside = ih >= 0 && ih < H;
                        const float *xr = xc + ih * W + off;
                        if (rows) {
                            float *o = out + (b * L + oh * Wo) * K + k;
                            for (int64_t ow = 0; ow < Wo; ow++)
                                o[ow * K] = inside && ow >= lo && ow < hi ? xr[ow * sw] : 0.0f;
                        } else {
                            float *o = out + (b * K + k) * L + oh * Wo;
                            if (!inside) {
                                for (int64_t ow = 0; ow < Wo; ow++) o[ow] = 0.0f;
                                continue;
                            }
                            for (int64_t ow = 0; ow < lo; ow++) o[ow] = 0.0f;
                            for (int64_t ow = lo; ow < hi; ow++) o[ow] = xr[ow * sw];
                            for (int64_t ow = hi; ow < Wo; ow++) o[ow] = 0.0f;
                        }
                    }
                }
            }
        }
    }
}
