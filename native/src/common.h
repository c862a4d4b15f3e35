/* Block layouts of the GGUF quantized types, the activation formats, and the per-ISA function table.
 *
 * The kernel sources (q32.c, qk.c, qfloat.c) are compiled once per instruction set with
 * -DCK_ISA=<level> and suffix every exported symbol through FN(); dispatch.c picks a table at run time.
 */
#ifndef CELLAR_COMMON_H
#define CELLAR_COMMON_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define QK 32      /* elements in a legacy block */
#define QK_K 256   /* elements in a k-quant super-block */

typedef uint16_t f16_t;

typedef struct { f16_t d; uint8_t qs[16]; } blk_q4_0;
typedef struct { f16_t d, m; uint8_t qs[16]; } blk_q4_1;
typedef struct { f16_t d; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_0;
typedef struct { f16_t d, m; uint8_t qh[4]; uint8_t qs[16]; } blk_q5_1;
typedef struct { f16_t d; int8_t qs[32]; } blk_q8_0;
typedef struct { uint8_t scales[16]; uint8_t qs[64]; f16_t d, dmin; } blk_q2_k;
typedef struct { uint8_t hmask[32]; uint8_t qs[64]; uint8_t scales[12]; f16_t d; } blk_q3_k;
typedef struct { f16_t d, dmin; uint8_t scales[12]; uint8_t qs[128]; } blk_q4_k;
typedef struct { f16_t d, dmin; uint8_t scales[12]; uint8_t qh[32]; uint8_t qs[128]; } blk_q5_k;
typedef struct { uint8_t ql[128]; uint8_t qh[64]; int8_t scales[16]; f16_t d; } blk_q6_k;

/* Activation formats (internal, not GGUF): x quantized once per call. */
typedef struct { float d; float s; int8_t qs[32]; } act_q8;            /* s = d * sum(qs) */
typedef struct { float d; int16_t bsums[16]; int8_t qs[256]; } act_q8k; /* bsums: sums of 16 */

/* ggml type numbers */
enum {
    T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q4_1 = 3, T_Q5_0 = 6, T_Q5_1 = 7, T_Q8_0 = 8,
    T_Q2_K = 10, T_Q3_K = 11, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14, T_BF16 = 30, T_COUNT = 31
};

/* how x is prepared for a weight type */
enum { ACT_F32 = 0, ACT_Q8 = 1, ACT_Q8K = 2 };

#define ISA_SCALAR 0
#define ISA_AVX2 1
#define ISA_AVX512 2
#define ISA_AVX512_VNNI 3
#define ISA_COUNT 4

/* dot of one weight row (cols elements) with one prepared activation row */
typedef float (*dot_fn)(int cols, const void *w, const void *x);
/* dequantize one row to f32 */
typedef void (*deq_fn)(int cols, const void *w, float *out);
/* prepare one activation row */
typedef void (*act_fn)(int cols, const float *x, void *out);
/* prefill tile: weight rows [r0, r1) x packed activation groups [g0, g1) (gemm.h) */
typedef void (*gemm_fn)(int cols, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, const uint8_t *act, int64_t group_bytes, int g0, int g1, int n, float *out, int64_t out_stride);
typedef void (*pack_fn)(int kind, int cols, const float *x, int64_t x_stride, int ns, void *dst);

typedef struct {
    dot_fn dot[T_COUNT];
    deq_fn deq[T_COUNT];
    act_fn quant_q8;
    act_fn quant_q8k;
    void (*f32_to_bf16)(int n, const float *in, uint16_t *out);
    gemm_fn gemm[T_COUNT];   /* prefill tiles (gemm.c); NULL: the dot per pair (gemm_run.c) */
    pack_fn gemm_pack;       /* quantize + pack GR activation rows (gemm.c) */
    /* int8 prefill GEMM on unpacked panels (qgemm.c, the VNNI build only; NULL elsewhere) */
    int (*qgemm)(int n_w, const int *types, const void *const *ws, const int64_t *row_bytes, const int64_t *rows,
                 int64_t cols, const void *x, int x_kind, int n, int64_t x_stride, void *const *outs,
                 const int64_t *out_strides, int out_kind);
    int (*qgemm_supports)(int type, int64_t rows, int64_t cols);
    int64_t (*qgemm_buffer_bytes)(void);
} kernel_table;

/* ---- half precision helpers (portable) ---- */
extern float cellar_f16_table[65536];

static inline float f16_to_f32(f16_t h) { return cellar_f16_table[h]; }

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f;
}

static inline uint16_t f32_to_bf16(float f) {   /* round to nearest even; NaN stays NaN */
    uint32_t u; memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* 6-bit scale and min j of a Q4_K / Q5_K super-block */
static inline void scale_min_k4(int j, const uint8_t *q, int *d, int *m) {
    if (j < 4) { *d = q[j] & 63; *m = q[j + 4] & 63; }
    else {
        *d = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

/* the 16 signed 6-bit scales of a Q3_K super-block (already minus 32) */
static inline void scales_q3_k(const uint8_t *s, int8_t out[16]) {
    uint32_t a[4]; memcpy(a, s, 12);
    const uint32_t m1 = 0x03030303, m2 = 0x0f0f0f0f;
    uint32_t t = a[2];
    a[2] = ((a[0] >> 4) & m2) | (((t >> 4) & m1) << 4);
    a[3] = ((a[1] >> 4) & m2) | (((t >> 6) & m1) << 4);
    a[0] = (a[0] & m2) | (((t >> 0) & m1) << 4);
    a[1] = (a[1] & m2) | (((t >> 2) & m1) << 4);
    memcpy(out, a, 16);
    for (int i = 0; i < 16; i++) out[i] = (int8_t)(out[i] - 32);
}

/* ---- per-ISA naming ---- */
#ifdef CK_ISA
#  if CK_ISA == ISA_SCALAR
#    define FN(name) name##_scalar
#  elif CK_ISA == ISA_AVX2
#    define FN(name) name##_avx2
#  elif CK_ISA == ISA_AVX512
#    define FN(name) name##_avx512
#  else
#    define FN(name) name##_avx512vnni
#  endif
#  if CK_ISA >= ISA_AVX2
#    include <immintrin.h>
#    define CK_SIMD 1
#  endif
#endif

#endif
