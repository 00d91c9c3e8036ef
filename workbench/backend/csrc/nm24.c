/* Dedicated 2:4 sparse fp32 kernel (fused bias + ReLU); same x / y layout as sparse.c, columns
 * in the SIMD lanes (lanes.h).
 *
 * Layout: rows in blocks of NM_R = 4 (the last block holds O % 4 rows); within a block, for
 * each group g of 4 input columns and each row r, two kept values val[.] and their positions
 * pos[.] in the group (0..3, a zero value where a group keeps fewer than 2). Row block o0
 * starts at entry o0 * K / 2, so the kernel streams both arrays linearly. The NM_R x NV
 * accumulators stay in registers over the whole K axis and the 4 input rows of a group
 * (4 x 64 floats) are shared by the 4 rows, so the input loads hit L1: measured 1.6x the
 * flat-bitmask walk at batch 64, 1 thread (its 128-256-column tile chunks fill L1).
 */
#include <stdint.h>

#include "lanes.h"
#include "pool.h"

#define NM_R 4
#define TASK_ROWS 32 /* rows per task (8 blocks); a multiple of NM_R */

ALWAYS_INLINE void nm24_block(const float *val, const uint8_t *pos, const float *tile,
                              float *acc, int64_t G, const int R, const int NV) {
    const int BT = LANES * NV;
    v16f a[NM_R][MAX_NV];
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) a[r][v] = (v16f){0};
    for (int64_t g = 0; g < G; g++, val += 2 * R, pos += 2 * R) {
        const float *t = tile + 4 * g * BT;
        for (int r = 0; r < R; r++)
            for (int s = 0; s < 2; s++) {
                const float w = val[2 * r + s];
                const v16f *xr = (const v16f *)(t + pos[2 * r + s] * BT);
                for (int v = 0; v < NV; v++) a[r][v] += w * xr[v];
            }
    }
    for (int r = 0; r < R; r++)
        for (int v = 0; v < NV; v++) ((v16f *)(acc + r * BT))[v] = a[r][v];
}

#define NM24(R, NV)                                                                         \
    static __attribute__((noinline)) void nm24_##R##_##NV(const float *v, const uint8_t *p,  \
                                                          const float *t, float *a, int64_t G) { \
        nm24_block(v, p, t, a, G, R, NV);                                                   \
    }
#define NM24_R(R) NM24(R, 1) NM24(R, 2) NM24(R, 3) NM24(R, 4)
NM24_R(1)
NM24_R(2)
NM24_R(3)
NM24_R(4)

typedef void (*nm24_fn)(const float *, const uint8_t *, const float *, float *, int64_t);
static const nm24_fn NM24_FNS[NM_R][MAX_NV] = {
    {nm24_1_1, nm24_1_2, nm24_1_3, nm24_1_4}, {nm24_2_1, nm24_2_2, nm24_2_3, nm24_2_4},
    {nm24_3_1, nm24_3_2, nm24_3_3, nm24_3_4}, {nm24_4_1, nm24_4_2, nm24_4_3, nm24_4_4}};

typedef struct {
    const float *val, *bias, *x;
    const uint8_t *pos;
    float *y, *tiles;
    int64_t N, K, L, O, nblocks;
    int relu, nv;
} nm24_job;

static void nm24_pack_task(void *ctx, int64_t i, int64_t e) {
    const nm24_job *j = (const nm24_job *)ctx;
    (void)e;
    int64_t t = i / j->nv, bt = LANES * j->nv;
    wb_lanes_pack(j->x, j->tiles + t * j->K * bt, t * bt, (int)(i % j->nv), j->nv, j->N, j->K,
                  j->L);
}

static void nm24_task(void *ctx, int64_t i, int64_t e) {
    const nm24_job *j = (const nm24_job *)ctx;
    (void)e;
    float acc[TASK_ROWS * LANES * MAX_NV] __attribute__((aligned(64)));
    int64_t blk = i % j->nblocks, t = i / j->nblocks, bt = LANES * j->nv, G = j->K / 4;
    int64_t r0 = blk * TASK_ROWS, r1 = r0 + TASK_ROWS < j->O ? r0 + TASK_ROWS : j->O;
    const float *tile = j->tiles + t * j->K * bt;
    for (int64_t o = r0; o < r1; o += NM_R) {
        int R = r1 - o < NM_R ? (int)(r1 - o) : NM_R;
        NM24_FNS[R - 1][j->nv - 1](j->val + o * 2 * G, j->pos + o * 2 * G, tile,
                                   acc + (o - r0) * bt, G);
    }
    wb_lanes_store(acc, (int)(r1 - r0), j->nv, j->bias, j->relu, j->y, r0, t * bt, j->N, j->O,
                   j->L);
}

/* y = x W^T (+ bias, ReLU) for a 2:4 weight in the layout above; K % 4 == 0. work holds
 * wb_work_floats(N, K, .) floats of packed tiles. */
void wb_nm24_spmm(const float *val, const uint8_t *pos, const float *bias, const float *x,
                  float *y, float *work, int64_t B, int64_t K, int64_t L, int64_t O, int relu,
                  int nthreads) {
    int64_t N = B * L;
    int par = sparse_threads(O * K / 2, N, nthreads);
    int nv = lanes_nv(N);
    int64_t bt = LANES * nv, ntiles = (N + bt - 1) / bt, nblocks = (O + TASK_ROWS - 1) / TASK_ROWS;
    nm24_job job = {val, bias, x, pos, y, work, N, K, L, O, nblocks, relu, nv};
    wb_parallel_for(ntiles * nv, nm24_pack_task, &job, par);
    wb_parallel_for(ntiles * nblocks, nm24_task, &job, par);
}
