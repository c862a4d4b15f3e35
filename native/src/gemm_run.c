/* Prefill GEMM entry points: out = x @ W.T for a ubatch of activation rows, on the raw GGUF blocks.
 *
 * x is quantized once per call (per activation format), by the GEMV's own quant_q8 / quant_q8k, into a
 * buffer of the calling thread that grows to the largest ubatch and is then reused. The work is cut
 * into 2-D tiles (TILE_ROWS weight rows x TILE_GROUPS groups of GR activation rows) handed out through
 * an atomic counter on the pool (pool.c), the caller included; tiles sharing activation rows run one
 * after another, so an activation block is read from L2 by every weight row of the tile.
 *
 * Each output is bitwise what cellar_gemv gives for the same weight row and activation row: the tile
 * kernels (gemm.c) keep the GEMV's per-output arithmetic, and where the ISA has no tile kernel for a
 * type (the scalar build) the GEMV's dot runs per pair on activation rows laid out as the GEMV's. */
#include <stdatomic.h>
#include <stdlib.h>
#include "gemm.h"
#include "pool.h"

const kernel_table *cellar_kernels(void);
int cellar_supports(int type, int64_t cols);

#define GEMM_MAX 8
#define TILE_ROWS 16
#define TILE_GROUPS 8

static int act_kind(int type) {
    switch (type) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: return ACT_Q8;
    case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: return ACT_Q8K;
    default: return ACT_F32;
    }
}

typedef struct {
    const kernel_table *k;
    int n_w, cols, n, groups;
    const float *x; int64_t x_stride;
    /* per activation kind (index ACT_Q8 / ACT_Q8K): packed groups, or GEMV rows (plain) */
    uint8_t *act[3]; int64_t act_stride[3]; int need[3], packed[3];
    int type[GEMM_MAX]; const uint8_t *w[GEMM_MAX]; int64_t row_bytes[GEMM_MAX], rows[GEMM_MAX];
    float *out[GEMM_MAX]; int64_t out_stride[GEMM_MAX];
    int64_t rtiles[GEMM_MAX], toff[GEMM_MAX + 1];   /* row tiles of each weight, first tile of each */
    int gtiles;
    _Atomic int64_t next;
} gemm_job;

static _Thread_local uint8_t *abuf;
static _Thread_local size_t abuf_size;

static uint8_t *act_buffer(size_t n) {
    if (n > abuf_size) {
        free(abuf);
        abuf = aligned_alloc(64, (n + 63) / 64 * 64);
        abuf_size = abuf ? n : 0;
    }
    return abuf;
}

/* bytes of the activations of n rows for one kind: packed groups, or GEMV rows */
static int64_t act_bytes(int kind, int packed, int64_t cols, int n, int64_t *stride) {
    if (packed) {
        *stride = gemm_group_bytes(kind, cols);
        return *stride * ((n + GR - 1) / GR);
    }
    *stride = kind == ACT_Q8 ? cols / QK * (int64_t)sizeof(act_q8) : cols / QK_K * (int64_t)sizeof(act_q8k);
    return *stride * n;
}

/* quantize: one item per (kind, group of GR rows) */
static void pack_task(void *p, int ith, int nth) {
    gemm_job *j = p; (void)ith; (void)nth;
    const int64_t total = 3 * (int64_t)j->groups;
    for (;;) {
        const int64_t i = atomic_fetch_add(&j->next, 1);
        if (i >= total) break;
        const int kind = (int)(i / j->groups), g = (int)(i % j->groups);
        if (!j->need[kind]) continue;
        const int s0 = g * GR, ns = j->n - s0 < GR ? j->n - s0 : GR;
        const float *x = j->x + s0 * j->x_stride;
        if (j->packed[kind]) {
            j->k->gemm_pack(kind, j->cols, x, j->x_stride, ns, j->act[kind] + g * j->act_stride[kind]);
        } else {
            const act_fn q = kind == ACT_Q8 ? j->k->quant_q8 : j->k->quant_q8k;
            for (int s = 0; s < ns; s++)
                q(j->cols, x + s * j->x_stride, j->act[kind] + (s0 + s) * j->act_stride[kind]);
        }
    }
}

static void gemm_task(void *p, int ith, int nth) {
    gemm_job *j = p; (void)ith; (void)nth;
    const int64_t total = j->toff[j->n_w];
    for (;;) {
        const int64_t t = atomic_fetch_add(&j->next, 1);
        if (t >= total) break;
        int i = 0;
        while (t >= j->toff[i + 1]) i++;
        const int64_t lt = t - j->toff[i];
        /* consecutive tiles share an activation block and walk the weight rows */
        const int64_t rt = lt % j->rtiles[i], gt = lt / j->rtiles[i];
        const int64_t r0 = rt * TILE_ROWS, r1 = r0 + TILE_ROWS < j->rows[i] ? r0 + TILE_ROWS : j->rows[i];
        const int g0 = (int)gt * TILE_GROUPS, g1 = g0 + TILE_GROUPS < j->groups ? g0 + TILE_GROUPS : j->groups;
        const int type = j->type[i], kind = act_kind(type);
        if (j->packed[kind]) {
            j->k->gemm[type](j->cols, j->w[i], j->row_bytes[i], r0, r1, j->act[kind], j->act_stride[kind],
                             g0, g1, j->n, j->out[i], j->out_stride[i]);
            continue;
        }
        const dot_fn dot = j->k->dot[type];
        const int s1 = g1 * GR < j->n ? g1 * GR : j->n;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = j->w[i] + r * j->row_bytes[i];
            for (int s = g0 * GR; s < s1; s++)
                j->out[i][s * j->out_stride[i] + r] = dot(j->cols, wr, j->act[kind] + s * j->act_stride[kind]);
        }
    }
}

/* out_i[s, r] = sum_c W_i[r, c] * x[s, c] for n_w weights sharing cols (Q/K/V, gate/up), s < n; x rows
 * x_stride floats apart, out_i rows out_strides[i] floats apart. Bitwise equal to cellar_gemv on every
 * pair. Returns 0, -1 (bad type/shape), -2 (out of memory). */
int cellar_gemm_multi(int n_w, const int *types, const void *const *ws, const int64_t *row_bytes,
                      const int64_t *rows, int64_t cols, const float *x, int n, int64_t x_stride,
                      float *const *outs, const int64_t *out_strides) {
    if (n_w < 1 || n_w > GEMM_MAX || n < 0) return -1;
    const kernel_table *k = cellar_kernels();
    gemm_job j = {.k = k, .n_w = n_w, .cols = (int)cols, .n = n, .x = x, .x_stride = x_stride};
    j.toff[0] = 0;
    for (int i = 0; i < n_w; i++) {
        const int kind = act_kind(types[i]);
        if (!cellar_supports(types[i], cols) || kind == ACT_F32 || rows[i] < 0) return -1;
        j.need[kind] = 1;
        j.type[i] = types[i]; j.w[i] = ws[i]; j.row_bytes[i] = row_bytes[i]; j.rows[i] = rows[i];
        j.out[i] = outs[i]; j.out_stride[i] = out_strides[i];
    }
    if (n == 0) return 0;
    /* tile kernels when every weight of a kind has one, else the dot per pair */
    for (int kind = ACT_Q8; kind <= ACT_Q8K; kind++) j.packed[kind] = j.need[kind] && k->gemm_pack;
    for (int i = 0; i < n_w; i++)
        if (!k->gemm[j.type[i]]) j.packed[act_kind(j.type[i])] = 0;
    j.groups = (n + GR - 1) / GR;
    j.gtiles = (j.groups + TILE_GROUPS - 1) / TILE_GROUPS;
    int64_t off[3] = {0, 0, 0}, total = 0;
    for (int kind = ACT_Q8; kind <= ACT_Q8K; kind++)
        if (j.need[kind]) {
            off[kind] = total;
            total += (act_bytes(kind, j.packed[kind], cols, n, &j.act_stride[kind]) + 63) / 64 * 64;
        }
    uint8_t *buf = act_buffer((size_t)total);
    if (!buf) return -2;
    for (int kind = ACT_Q8; kind <= ACT_Q8K; kind++) j.act[kind] = buf + off[kind];
    const int nth = pool_threads();
    atomic_store(&j.next, 0);
    pool_run(pack_task, &j, j.groups > 1 ? nth : 1);
    for (int i = 0; i < n_w; i++) {
        j.rtiles[i] = (rows[i] + TILE_ROWS - 1) / TILE_ROWS;
        j.toff[i + 1] = j.toff[i] + j.rtiles[i] * j.gtiles;
    }
    if (j.toff[n_w] == 0) return 0;
    atomic_store(&j.next, 0);
    pool_run(gemm_task, &j, j.toff[n_w] > 1 ? nth : 1);
    return 0;
}

int cellar_gemm(int type, const void *w, int64_t row_bytes, int64_t rows, int64_t cols,
                const float *x, int n, int64_t x_stride, float *out, int64_t out_stride) {
    return cellar_gemm_multi(1, &type, &w, &row_bytes, &rows, cols, x, n, x_stride, &out, &out_stride);
}

/* 1 when the path in use has a tile kernel for the type (else the GEMM runs the dot per pair) */
int cellar_gemm_tiled(int type) {
    return type >= 0 && type < T_COUNT && cellar_kernels()->gemm[type] != NULL;
}

/* bytes of the calling thread's activation buffer (grown to the largest call so far) */
int64_t cellar_gemm_buffer_bytes(void) { return (int64_t)abuf_size; }

/* the int8 GEMM on unpacked panels (qgemm.c): cellar_gemm_multi's arguments, x and the outs in f32 (kind
 * 0) or bf16 (1); -1 where the path in use has none or a weight's type / shape is not one it takes */
int cellar_qgemm_multi(int n_w, const int *types, const void *const *ws, const int64_t *row_bytes,
                       const int64_t *rows, int64_t cols, const void *x, int x_kind, int n, int64_t x_stride,
                       void *const *outs, const int64_t *out_strides, int out_kind) {
    const kernel_table *k = cellar_kernels();
    if (!k->qgemm) return -1;
    for (int i = 0; i < n_w && i < GEMM_MAX; i++)
        if (!cellar_supports(types[i], cols)) return -1;
    return k->qgemm(n_w, types, ws, row_bytes, rows, cols, x, x_kind, n, x_stride, outs, out_strides, out_kind);
}

/* 1 when the path in use has the int8 GEMM for a weight of this type and shape */
int cellar_qgemm_supports(int type, int64_t rows, int64_t cols) {
    const kernel_table *k = cellar_kernels();
    return k->qgemm_supports && type >= 0 && type < T_COUNT && k->qgemm_supports(type, rows, cols);
}

int64_t cellar_qgemm_buffer_bytes(void) {
    const kernel_table *k = cellar_kernels();
    return k->qgemm_buffer_bytes ? k->qgemm_buffer_bytes() : 0;
}
