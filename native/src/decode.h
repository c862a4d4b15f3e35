/* One decoder layer for one token (decode) in one native call: the layer's description, built once
 * at load (weights, norm vectors, KV rows, a work buffer), and what changes each step. Mirrored by the
 * ctypes structures in engine/decode_native.py; change both together. */
#ifndef CELLAR_DECODE_H
#define CELLAR_DECODE_H

#include <stdint.h>
#include "common.h"

#define DEC_GEMMA 1   /* QK-norm, post-attention and post-FFN norms, GELU(tanh) gate */
#define DEC_NEOX 2    /* RoPE pairs (x[i], x[i + n_rot/2]) instead of (x[2i], x[2i+1]) */
#define DEC_F32_ATTN 4  /* the torch path's arithmetic (tests): no f16/bf16 rounding of the query and the
                           probabilities, GELU by its formula rather than ggml's f16 table */
#define DEC_QKNORM 8  /* QK-norm alone (Qwen3): an RMSNorm on each head of Q and K before RoPE */

enum { KV_F16 = 0, KV_BF16 = 1, KV_Q8_0 = 2 };

typedef struct {                 /* a weight matrix in its GGUF blocks */
    const void *w;
    int64_t row_bytes, rows;
    int32_t type, pad;
} dmat;

typedef struct {
    int32_t n_embd, n_head, n_head_kv, head_dim, head_dim_v, n_ff, n_rot;
    int32_t flags, kv_type;
    float eps;
    float q_scale;               /* q multiplied by it after RoPE (1: not at all) */
    float kq_scale;              /* scores multiplied by it before the mask */
    dmat wq, wk, wv, wo, wgate, wup, wdown;
    const float *attn_norm, *ffn_norm, *q_norm, *k_norm, *post_attn_norm, *post_ffw_norm;
    uint8_t *k_cache, *v_cache;  /* cell c's K row at k_cache + c * k_row_bytes */
    int64_t k_row_bytes, v_row_bytes, n_cells;
    uint8_t *work;               /* cellar_decode_work_bytes(layer) bytes, 64-aligned */
    int64_t work_bytes;
    const float *bq, *bk, *bv;   /* NULL, or the Q / K / V biases (Qwen2), added to the products */
} dlayer;

typedef struct {
    int64_t cell;                /* the cell this token's K and V go to */
    int64_t n_kv;                /* attention reads cells [0, n_kv) */
    const float *mask;           /* [n_kv]: 0 where visible, -inf elsewhere */
    const float *cos, *sin;      /* [n_rot / 2] at this token's position */
    const int64_t *cells;        /* NULL, or [n_kv]: attention reads cells[i] for i < n_kv (one sequence's
                                    cells in position order, Step.groups), the mask indexed by i */
} dstep;

/* offsets into the work buffer (bytes) */
typedef struct {
    int64_t h, qkv, att, o, gate, up, act, qh, scores, vis, total;
} dwork;

static inline int64_t dec_align(int64_t n) { return (n + 63) / 64 * 64; }

static inline dwork dec_layout(const dlayer *L) {
    dwork d;
    const int64_t nq = (int64_t)L->n_head * L->head_dim, nk = (int64_t)L->n_head_kv * L->head_dim;
    const int64_t nv = (int64_t)L->n_head_kv * L->head_dim_v, na = (int64_t)L->n_head * L->head_dim_v;
    int64_t widest = L->n_embd > na ? L->n_embd : na;
    if (L->n_ff > widest) widest = L->n_ff;
    int64_t o = 0;
    d.h = o; o += dec_align(4 * (int64_t)L->n_embd);
    d.qkv = o; o += dec_align(4 * (nq + nk + nv));
    d.att = o; o += dec_align(4 * na);
    d.o = o; o += dec_align(4 * (int64_t)L->n_embd);
    d.gate = o; o += dec_align(4 * (int64_t)L->n_ff);
    d.up = o; o += dec_align(4 * (int64_t)L->n_ff);
    /* x prepared for the GEMVs: act_q8 and act_q8k of the widest input, side by side */
    d.act = o; o += dec_align(widest / QK * (int64_t)sizeof(act_q8) + 64) + dec_align(widest / QK_K * (int64_t)sizeof(act_q8k) + 64);
    /* each query head as the KV type's dot wants it (f32 of its f16/bf16 rounding, or act_q8) */
    d.qh = o; o += dec_align(4 * nq + (int64_t)L->n_head * (L->head_dim / QK + 1) * (int64_t)sizeof(act_q8));
    d.scores = o; o += dec_align(4 * (int64_t)L->n_head * L->n_cells);
    d.vis = o; o += dec_align(4 * L->n_cells);
    d.total = o;
    return d;
}

extern uint16_t cellar_gelu_f16[65536];   /* GELU(tanh) of every half, as a half (ggml's table) */

/* f32 -> f16, round to nearest even (portable) */
static inline uint16_t dec_f32_to_f16(float f) {
    uint32_t w; memcpy(&w, &f, 4);
    const uint32_t two_w = w + w, sign = w & 0x80000000u;
    float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;   /* overflow -> inf */
    uint32_t bias = two_w & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    uint32_t bb = (bias >> 1) + 0x07800000u; float b; memcpy(&b, &bb, 4);
    base = b + base;                                                  /* rounds the mantissa */
    uint32_t bits; memcpy(&bits, &base, 4);
    const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
    return (uint16_t)((sign >> 16) | (two_w > 0xFF000000u ? 0x7E00u : nonsign));
}

/* ggml's CPU geglu for one value: gelu(x) * u with GELU from the f16 table, 0 at x <= -10, x * u at
 * x >= 10 (the decode layer's and the prefill's cellar_geglu share it) */
static inline float dec_geglu1(float x, float u) {
    if (x <= -10.0f) return 0.0f;
    if (x >= 10.0f) return x * u;
    return f16_to_f32((f16_t)cellar_gelu_f16[dec_f32_to_f16(x)]) * u;
}

/* g[i] = dec_geglu1(g[i], u[i]) for a row, the same bits: with AVX2 + F16C eight at a time (the
 * hardware's f32 -> f16 rounds to nearest even as dec_f32_to_f16 does; the table read as the 32-bit
 * word holding the entry, which stays inside it) */
static inline void dec_geglu_row(int n, float *g, const float *u) {
    int i = 0;
#ifdef CK_SIMD
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    const __m256i one = _mm256_set1_epi32(1), low16 = _mm256_set1_epi32(0xFFFF);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i), uu = _mm256_loadu_ps(u + i);
        const __m256i h = _mm256_cvtepu16_epi32(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        const __m256i word = _mm256_i32gather_epi32((const int *)cellar_gelu_f16, _mm256_srli_epi32(h, 1), 4);
        const __m256i v = _mm256_and_si256(_mm256_srlv_epi32(word, _mm256_slli_epi32(_mm256_and_si256(h, one), 4)),
                                           low16);
        const __m128i halves = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        __m256 r = _mm256_mul_ps(_mm256_cvtph_ps(halves), uu);
        r = _mm256_blendv_ps(r, _mm256_mul_ps(x, uu), _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        r = _mm256_blendv_ps(r, _mm256_setzero_ps(), _mm256_cmp_ps(x, lo, _CMP_LE_OQ));
        _mm256_storeu_ps(g + i, r);
    }
#endif
    for (; i < n; i++) g[i] = dec_geglu1(g[i], u[i]);
}

#endif
