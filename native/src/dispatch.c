/* The library's entry points: run-time choice of instruction set, GEMV on GGUF blocks (x quantized
 * once, rows split across the pool) and multi-threaded dequantization into f32 or bf16. */
#include <stdatomic.h>
#include <stdlib.h>
#include "common.h"
#include "pool.h"

#define ABI_VERSION 5

float cellar_f16_table[65536];

#define DECLARE_ISA(sfx) \
    void register_q32_##sfx(kernel_table *); void register_qk_##sfx(kernel_table *); \
    void register_float_##sfx(kernel_table *); \
    void register_gemm_##sfx(kernel_table *); void register_qgemm_##sfx(kernel_table *);
DECLARE_ISA(scalar)
#ifdef HAVE_AVX2
DECLARE_ISA(avx2)
#endif
#ifdef HAVE_AVX512
DECLARE_ISA(avx512)
DECLARE_ISA(avx512vnni)
#endif

static kernel_table tables[ISA_COUNT];
static int isa_best = ISA_SCALAR, isa_cur = ISA_SCALAR;
static const kernel_table *K = &tables[ISA_SCALAR];

static float half_to_float(uint16_t h) {
    const uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    uint32_t u;
    if (e == 0) {
        if (m == 0) u = s;
        else {   /* subnormal: renormalize */
            int k = -1; uint32_t mm = m;
            do { k++; mm <<= 1; } while (!(mm & 0x400));
            u = s | ((uint32_t)(127 - 15 - k) << 23) | ((mm & 0x3ff) << 13);
        }
    } else if (e == 31) u = s | 0x7f800000 | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    float f; memcpy(&f, &u, 4); return f;
}

__attribute__((constructor)) static void cellar_init(void) {
    for (int i = 0; i < 65536; i++) cellar_f16_table[i] = half_to_float((uint16_t)i);
    register_q32_scalar(&tables[ISA_SCALAR]); register_qk_scalar(&tables[ISA_SCALAR]);
    register_float_scalar(&tables[ISA_SCALAR]);
    register_gemm_scalar(&tables[ISA_SCALAR]);
    __builtin_cpu_init();
#ifdef HAVE_AVX2
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
        register_q32_avx2(&tables[ISA_AVX2]); register_qk_avx2(&tables[ISA_AVX2]);
        register_float_avx2(&tables[ISA_AVX2]);
        register_gemm_avx2(&tables[ISA_AVX2]);
        register_qgemm_avx2(&tables[ISA_AVX2]);
        isa_best = ISA_AVX2;
    }
#endif
#ifdef HAVE_AVX512
    if (isa_best == ISA_AVX2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl")) {
        register_q32_avx512(&tables[ISA_AVX512]); register_qk_avx512(&tables[ISA_AVX512]);
        register_float_avx512(&tables[ISA_AVX512]);
        register_gemm_avx512(&tables[ISA_AVX512]);
        register_qgemm_avx512(&tables[ISA_AVX512]);
        isa_best = ISA_AVX512;
        if (__builtin_cpu_supports("avx512vnni")) {
            register_q32_avx512vnni(&tables[ISA_AVX512_VNNI]); register_qk_avx512vnni(&tables[ISA_AVX512_VNNI]);
            register_float_avx512vnni(&tables[ISA_AVX512_VNNI]);
            register_gemm_avx512vnni(&tables[ISA_AVX512_VNNI]);
            register_qgemm_avx512vnni(&tables[ISA_AVX512_VNNI]);
            isa_best = ISA_AVX512_VNNI;
        }
    }
#endif
    isa_cur = isa_best;
    K = &tables[isa_cur];
}

int cellar_abi_version(void) { return ABI_VERSION; }
int cellar_isa_best(void) { return isa_best; }
int cellar_isa(void) { return isa_cur; }
const kernel_table *cellar_kernels(void) { return K; }   /* the table in use (gemm_run.c) */

/* choose a path no better than the best this CPU runs; returns the one in use */
int cellar_set_isa(int isa) {
    if (isa < ISA_SCALAR) isa = ISA_SCALAR;
    if (isa > isa_best) isa = isa_best;
    isa_cur = isa;
    K = &tables[isa_cur];
    return isa_cur;
}

int cellar_set_threads(int n) { return pool_set_threads(n); }
void cellar_pool_rest(void) { pool_rest(); }
int cellar_threads(void) { return pool_threads(); }

static int act_kind(int type) {
    switch (type) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: return ACT_Q8;
    case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: return ACT_Q8K;
    default: return ACT_F32;
    }
}

/* 1 when the type is supported and cols is a whole number of its blocks */
int cellar_supports(int type, int64_t cols) {
    if (type < 0 || type >= T_COUNT || !tables[ISA_SCALAR].dot[type] || cols <= 0 || cols > (1 << 30)) return 0;
    const int kind = act_kind(type);
    return kind == ACT_Q8 ? cols % QK == 0 : kind == ACT_Q8K ? cols % QK_K == 0 : 1;
}

/* ---- work split: rows handed out in chunks through an atomic counter ---- */
typedef struct {
    const kernel_table *k;
    int type, cols, n;
    const uint8_t *w; int64_t row_bytes, row0, rows, chunk;
    _Atomic int64_t next;
    /* gemv */
    const uint8_t *act; int64_t act_stride; float *out; int64_t out_stride;
    /* dequant */
    void *dst; int64_t dst_stride; int bf16;
} job_t;

/* up to 1 MiB of weights a chunk: the output head's GEMV (Gemma-3: 178 MB) 5.22-5.54 -> 4.91-5.39 ms a
 * token from 256 KiB chunks (decode.c's chunk_rows says why coarse chunks read faster) */
static int64_t chunk_rows(int64_t rows, int64_t row_bytes, int nth) {
    int64_t c = rows / ((int64_t)nth * 8);
    const int64_t lo = (16384 + row_bytes - 1) / row_bytes, hi = ((1 << 20) + row_bytes - 1) / row_bytes;
    if (c > hi) c = hi;
    if (c < lo) c = lo;
    return c < 1 ? 1 : c;
}

static void gemv_task(void *p, int ith, int nth) {
    job_t *j = p; (void)ith; (void)nth;
    const dot_fn dot = j->k->dot[j->type];
    for (;;) {
        const int64_t r0 = atomic_fetch_add(&j->next, j->chunk);
        if (r0 >= j->rows) break;
        const int64_t r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = j->w + r * j->row_bytes;
            for (int s = 0; s < j->n; s++)
                j->out[s * j->out_stride + r] = dot(j->cols, wr, j->act + s * j->act_stride);
        }
    }
}

static _Thread_local void *scratch;
static _Thread_local size_t scratch_size;

static void *get_scratch(size_t n) {
    if (n > scratch_size) {
        free(scratch);
        scratch = aligned_alloc(64, (n + 63) / 64 * 64);
        scratch_size = scratch ? n : 0;
    }
    return scratch;
}

/* out[s, r] = sum_c W[r, c] * x[s, c] for r < rows, s < n. x rows x_stride floats apart, out rows
 * out_stride floats apart. Returns 0, or -1 for an unsupported type/shape, -2 when out of memory. */
int cellar_gemv(int type, const void *w, int64_t row_bytes, int64_t rows, int64_t cols,
                const float *x, int n, int64_t x_stride, float *out, int64_t out_stride) {
    if (!cellar_supports(type, cols) || n < 1 || rows < 0) return -1;
    if (rows == 0) return 0;
    const kernel_table *k = K;
    job_t j = {.k = k, .type = type, .cols = (int)cols, .n = n, .w = w, .row_bytes = row_bytes,
               .rows = rows, .out = out, .out_stride = out_stride};
    const int kind = act_kind(type);
    if (kind == ACT_F32) {
        j.act = (const uint8_t *)x; j.act_stride = x_stride * 4;
    } else {
        const size_t per = kind == ACT_Q8 ? (size_t)cols / QK * sizeof(act_q8) : (size_t)cols / QK_K * sizeof(act_q8k);
        uint8_t *buf = get_scratch(per * n);
        if (!buf) return -2;
        for (int s = 0; s < n; s++)
            (kind == ACT_Q8 ? k->quant_q8 : k->quant_q8k)((int)cols, x + s * x_stride, buf + s * per);
        j.act = buf; j.act_stride = (int64_t)per;
    }
    const int nth = pool_threads();
    j.chunk = chunk_rows(rows, row_bytes * n, nth);
    atomic_store(&j.next, 0);
    pool_run(gemv_task, &j, rows > j.chunk ? nth : 1);
    return 0;
}

static void dequant_task(void *p, int ith, int nth) {
    job_t *j = p; (void)ith; (void)nth;
    const deq_fn deq = j->k->deq[j->type];
    float *tmp = NULL;
    if (j->bf16 && !(tmp = get_scratch((size_t)j->cols * 4))) return;
    for (;;) {
        const int64_t r0 = atomic_fetch_add(&j->next, j->chunk);
        if (r0 >= j->rows) break;
        const int64_t r1 = r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows;
        for (int64_t r = r0; r < r1; r++) {
            const uint8_t *wr = j->w + (j->row0 + r) * j->row_bytes;
            if (j->bf16) {
                deq(j->cols, wr, tmp);
                j->k->f32_to_bf16(j->cols, tmp, (uint16_t *)j->dst + r * j->dst_stride);
            } else {
                deq(j->cols, wr, (float *)j->dst + r * j->dst_stride);
            }
        }
    }
}

/* rows [row0, row1) of W into dst (row row0 at dst), dst rows dst_stride elements apart, f32 or bf16;
 * on the pool's threads, or on the calling thread alone when alone != 0 (callers that split the work
 * themselves, e.g. a matmul done in row chunks on several threads) */
int cellar_dequant(int type, const void *w, int64_t row_bytes, int64_t row0, int64_t row1, int64_t cols,
                   void *dst, int64_t dst_stride, int bf16, int alone) {
    if (!cellar_supports(type, cols) || row0 < 0 || row1 < row0) return -1;
    if (row1 == row0) return 0;
    job_t j = {.k = K, .type = type, .cols = (int)cols, .w = w, .row_bytes = row_bytes, .row0 = row0,
               .rows = row1 - row0, .dst = dst, .dst_stride = dst_stride, .bf16 = bf16};
    const int nth = alone ? 1 : pool_threads();
    j.chunk = alone ? j.rows : chunk_rows(j.rows, cols * 4, nth);
    atomic_store(&j.next, 0);
    if (alone) dequant_task(&j, 0, 1);
    else pool_run(dequant_task, &j, j.rows > j.chunk ? nth : 1);
    return 0;
}

/* ---- several GEMVs on one x (decode: Q, K, V; gate, up): x prepared once per activation format,
 * one pool job over the rows of all of them ---- */
#define MULTI_MAX 8
typedef struct {
    const kernel_table *k;
    int n_w, cols;
    int type[MULTI_MAX]; const uint8_t *w[MULTI_MAX]; int64_t row_bytes[MULTI_MAX];
    int64_t off[MULTI_MAX + 1];            /* first global row of each weight; off[n_w] = total */
    const uint8_t *act[MULTI_MAX]; float *out[MULTI_MAX];
    int64_t chunk;
    _Atomic int64_t next;
} multi_t;

static void multi_task(void *p, int ith, int nth) {
    multi_t *j = p; (void)ith; (void)nth;
    const int64_t total = j->off[j->n_w];
    for (;;) {
        const int64_t r0 = atomic_fetch_add(&j->next, j->chunk);
        if (r0 >= total) break;
        const int64_t r1 = r0 + j->chunk < total ? r0 + j->chunk : total;
        int i = 0;
        while (j->off[i + 1] <= r0) i++;
        for (int64_t r = r0; r < r1; r++) {
            while (r >= j->off[i + 1]) i++;
            const int64_t lr = r - j->off[i];
            j->out[i][lr] = j->k->dot[j->type[i]](j->cols, j->w[i] + lr * j->row_bytes[i], j->act[i]);
        }
    }
}

/* out_i[r] = sum_c W_i[r, c] * x[c] for n_w weights sharing cols. Returns 0, -1 (bad type/shape), -2
 * (out of memory). */
int cellar_gemv_multi(int n_w, const int *types, const void *const *ws, const int64_t *row_bytes,
                      const int64_t *rows, int64_t cols, const float *x, float *const *outs) {
    if (n_w < 1 || n_w > MULTI_MAX) return -1;
    const kernel_table *k = K;
    multi_t j = {.k = k, .n_w = n_w, .cols = (int)cols};
    int need_q8 = 0, need_q8k = 0;
    j.off[0] = 0;
    for (int i = 0; i < n_w; i++) {
        if (!cellar_supports(types[i], cols) || rows[i] < 0) return -1;
        const int kind = act_kind(types[i]);
        need_q8 |= kind == ACT_Q8; need_q8k |= kind == ACT_Q8K;
        j.type[i] = types[i]; j.w[i] = ws[i]; j.row_bytes[i] = row_bytes[i]; j.out[i] = outs[i];
        j.off[i + 1] = j.off[i] + rows[i];
    }
    const size_t per8 = (size_t)cols / QK * sizeof(act_q8);
    const size_t per8k = cols % QK_K == 0 ? (size_t)cols / QK_K * sizeof(act_q8k) : 0;
    uint8_t *buf = get_scratch((need_q8 ? per8 : 0) + (need_q8k ? per8k : 0) + 64);
    if (!buf) return -2;
    uint8_t *a8 = buf, *a8k = buf + (need_q8 ? (per8 + 63) / 64 * 64 : 0);
    if (need_q8) k->quant_q8((int)cols, x, a8);
    if (need_q8k) k->quant_q8k((int)cols, x, a8k);
    for (int i = 0; i < n_w; i++) {
        const int kind = act_kind(types[i]);
        j.act[i] = kind == ACT_Q8 ? a8 : kind == ACT_Q8K ? a8k : (const uint8_t *)x;
    }
    const int64_t total = j.off[n_w];
    if (total == 0) return 0;
    const int nth = pool_threads();
    j.chunk = chunk_rows(total, row_bytes[0], nth);
    atomic_store(&j.next, 0);
    pool_run(multi_task, &j, total > j.chunk ? nth : 1);
    return 0;
}
