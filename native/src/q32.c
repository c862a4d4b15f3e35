/* 32-element block types (Q4_0 Q4_1 Q5_0 Q5_1 Q8_0): x quantized to act_q8, integer dot products,
 * and row dequantization. Compiled once per ISA (see common.h). */
#include <math.h>
#include "common.h"
#ifdef CK_SIMD
#include "simd.h"
#define F16(h) f16s(h)
#else
#define F16(h) f16_to_f32(h)
#endif

/* f rounded to half precision (nearest even) and back: llama.cpp keeps its q8_0 / q8_1 block scales
 * as f16 (GGML_CPU_FP32_TO_FP16), so the dot products use the rounded scale */
#ifdef CK_SIMD
static inline float round_f16(float f) { return _cvtsh_ss(_cvtss_sh(f, 0)); }
#else
static inline float round_f16(float f) {
    uint32_t w; memcpy(&w, &f, 4);
    const uint32_t sign = w & 0x80000000u, shl1 = w + w;
    if (shl1 > 0xFF000000u) return f;                                   /* NaN */
    uint32_t bias = shl1 & 0xFF000000u;
    if (bias < 0x71000000u) bias = 0x71000000u;
    const uint32_t bb = (bias >> 1) + 0x07800000u; float fb; memcpy(&fb, &bb, 4);
    const float base = fb + (fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;    /* the add rounds to 11 bits */
    uint32_t bits; memcpy(&bits, &base, 4);
    return f16_to_f32((f16_t)((sign >> 16) | (((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu))));
}
#endif

/* As llama.cpp's AVX2 quantize_row_q8_0 / q8_1 (the same on every ISA here): d = amax / 127 stored as
 * f16, values round(x * (127 / amax)) to nearest even, s = d * sum(values) (unrounded d) stored as f16. */
void FN(quant_q8)(int cols, const float *x, void *out) {
    act_q8 *y = (act_q8 *)out;
    for (int b = 0; b < cols / QK; b++, x += QK) {
        float amax = 0.f;
        for (int j = 0; j < QK; j++) { const float a = fabsf(x[j]); amax = a > amax ? a : amax; }   /* fmaxf: a libm call */
        const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
        int sum = 0;
        for (int j = 0; j < QK; j++) {
            int q = (int)lrintf(x[j] * id);
            y[b].qs[j] = (int8_t)q;
            sum += q;
        }
        y[b].d = round_f16(d);
        y[b].s = round_f16(d * (float)sum);
    }
}

/* ---------------- dot products ---------------- */

#if defined(CK_SIMD) && CK_ISA >= ISA_AVX512

/* AVX-512: the AVX2 path's arithmetic, bit for bit (so llama.cpp's too: tests/native/
 * test_llamacpp_gemv.py): the same integer block sums and one fused multiply-add chain over the blocks
 * in order. What changes is the work around it: two blocks' f16 scales converted and multiplied at
 * once, and the weights of the next rows prefetched (simd.h). Two chains (even and odd blocks) would
 * run Q4_1 / Q5_0 rows in cache ~20% faster, but part from llama.cpp's floats: measured, the greedy gap
 * noise against its AVX2 build grew (median 0.101 -> 0.117 SmolLM2, 0.112 -> 0.126 Gemma-3). */

/* wd = [dw0, mw0, dw1, mw1] of blocks w0, w1 (their first 4 bytes: d, then m or the next field,
 * unused) and yd = [dy0, sy0, dy1, sy1] of activations y0, y1 */
static inline void scales_x2(const void *w0, const void *w1, const act_q8 *y0, const act_q8 *y1, __m128 *wd, __m128 *yd) {
    uint32_t a, b; memcpy(&a, w0, 4); memcpy(&b, w1, 4);
    *wd = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)a), (int)b, 1));
    *yd = _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd((const double *)y0), (const double *)y1));
}

static inline __m256i ld32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* PAIR(p0, p1) sets the 8 int32 lane sums of blocks b and b + 1; ONE those of block b alone (an odd
 * count's last). Per block, in order: acc = fma(dw * dy, float(sums), acc) and, with a min,
 * extra = fma(mw, sy, extra); the result is hsum_ps(acc) + extra, as on AVX2. */
#define DOT_PAIRS(NAME, T, HAS_M, MFIELD, PAIR, ONE) \
static float FN(NAME)(int cols, const void *vw, const void *vy) { \
    const T *w = (const T *)vw; const act_q8 *y = (const act_q8 *)vy; const int nb = cols / QK; \
    prefetch_ahead(w, nb * (int)sizeof(T)); \
    __m256 acc = _mm256_setzero_ps(); __m128 ex = _mm_setzero_ps(); \
    int b = 0; \
    for (; b + 1 < nb; b += 2) { \
        __m256i p0, p1; PAIR; \
        __m128 wd, yd; scales_x2(&w[b], &w[b + 1], &y[b], &y[b + 1], &wd, &yd); \
        const __m128 sc = _mm_mul_ps(wd, yd); \
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p0), acc); \
        acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehl_ps(sc, sc)), _mm256_cvtepi32_ps(p1), acc); \
        if (HAS_M) { \
            const __m128 m = _mm_movehdup_ps(wd), s = _mm_movehdup_ps(yd); \
            ex = _mm_fmadd_ss(m, s, ex); \
            ex = _mm_fmadd_ss(_mm_movehl_ps(m, m), _mm_movehl_ps(s, s), ex); \
        } \
    } \
    if (b < nb) { \
        const __m256i p = ONE; \
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc); \
        if (HAS_M) ex = _mm_fmadd_ss(_mm_set_ss(F16(w[b].MFIELD)), _mm_set_ss(y[b].s), ex); \
    } \
    return hsum_ps(acc) + _mm_cvtss_f32(ex); \
}

#define Q4_0_ONE(b) dot_i8i8(_mm256_sub_epi8(bytes_from_nibbles(w[b].qs), _mm256_set1_epi8(8)), ld32(y[b].qs))
#define Q4_1_ONE(b) dot_u8i8(bytes_from_nibbles(w[b].qs), ld32(y[b].qs))
#define Q8_0_ONE(b) dot_i8i8(ld32(w[b].qs), ld32(y[b].qs))
/* the fifth bits through a mask register (AVX-512 BW + VL): one masked byte add (a nibble plus 0x10 or
 * 0xF0 carries nothing: the OR) where the AVX2 path spends a shuffle, an OR, a compare and an AND-NOT on
 * turning 32 bits into 32 bytes; the same bytes */
static inline __m256i nibbles_or_where(const uint8_t *qs, uint32_t bits, char v) {
    const __m256i n = bytes_from_nibbles(qs);
    return _mm256_mask_add_epi8(n, (__mmask32)bits, n, _mm256_set1_epi8(v));
}
static inline uint32_t qh32(const uint8_t *qh) { uint32_t h; memcpy(&h, qh, 4); return h; }
#define Q5_0_ONE(b) dot_i8i8(nibbles_or_where(w[b].qs, ~qh32(w[b].qh), (char)0xF0), ld32(y[b].qs))
#define Q5_1_ONE(b) dot_u8i8(nibbles_or_where(w[b].qs, qh32(w[b].qh), 0x10), ld32(y[b].qs))
/* The integer sums stay on 256 bits: one chain's latency bounds these kernels on rows in cache, and
 * joining two blocks in a 512-bit register (tried: Q5_0 with its high bits as one 64-bit mask) costs
 * more shuffles than the second vpdpbusd saves. (The types without a min name their d as MFIELD; it
 * is never read.) */
DOT_PAIRS(dot_q4_0, blk_q4_0, 0, d, { p0 = Q4_0_ONE(b); p1 = Q4_0_ONE(b + 1); }, Q4_0_ONE(b))
DOT_PAIRS(dot_q4_1, blk_q4_1, 1, m, { p0 = Q4_1_ONE(b); p1 = Q4_1_ONE(b + 1); }, Q4_1_ONE(b))
DOT_PAIRS(dot_q8_0, blk_q8_0, 0, d, { p0 = Q8_0_ONE(b); p1 = Q8_0_ONE(b + 1); }, Q8_0_ONE(b))
DOT_PAIRS(dot_q5_0, blk_q5_0, 0, d, { p0 = Q5_0_ONE(b); p1 = Q5_0_ONE(b + 1); }, Q5_0_ONE(b))
DOT_PAIRS(dot_q5_1, blk_q5_1, 1, m, { p0 = Q5_1_ONE(b); p1 = Q5_1_ONE(b + 1); }, Q5_1_ONE(b))

#elif defined(CK_SIMD)

#define BLOCK_LOOP(T) \
    const T *w = (const T *)vw; const act_q8 *y = (const act_q8 *)vy; \
    __m256 acc = _mm256_setzero_ps(); float extra = 0.f; (void)extra; \
    for (int b = 0; b < cols / QK; b++)

static float FN(dot_q4_0)(int cols, const void *vw, const void *vy) {
    BLOCK_LOOP(blk_q4_0) {
        __m256i q = _mm256_sub_epi8(bytes_from_nibbles(w[b].qs), _mm256_set1_epi8(8));
        __m256i p = dot_i8i8(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

static float FN(dot_q4_1)(int cols, const void *vw, const void *vy) {
    BLOCK_LOOP(blk_q4_1) {
        __m256i p = dot_u8i8(bytes_from_nibbles(w[b].qs), _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc);
        extra += F16(w[b].m) * y[b].s;
    }
    return hsum_ps(acc) + extra;
}

static float FN(dot_q5_0)(int cols, const void *vw, const void *vy) {
    BLOCK_LOOP(blk_q5_0) {
        /* nibble | (bit ? 0 : 0xF0) read as int8 == nibble + 16*bit - 16 */
        __m256i hi = _mm256_andnot_si256(bytes_from_bits(w[b].qh), _mm256_set1_epi8((char)0xF0));
        __m256i q = _mm256_or_si256(bytes_from_nibbles(w[b].qs), hi);
        __m256i p = dot_i8i8(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

static float FN(dot_q5_1)(int cols, const void *vw, const void *vy) {
    BLOCK_LOOP(blk_q5_1) {
        __m256i hi = _mm256_and_si256(bytes_from_bits(w[b].qh), _mm256_set1_epi8(0x10));
        __m256i q = _mm256_or_si256(bytes_from_nibbles(w[b].qs), hi);
        __m256i p = dot_u8i8(q, _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc);
        extra += F16(w[b].m) * y[b].s;
    }
    return hsum_ps(acc) + extra;
}

static float FN(dot_q8_0)(int cols, const void *vw, const void *vy) {
    BLOCK_LOOP(blk_q8_0) {
        __m256i p = dot_i8i8(_mm256_loadu_si256((const __m256i *)w[b].qs),
                             _mm256_loadu_si256((const __m256i *)y[b].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum_ps(acc);
}

#else  /* portable */

static float FN(dot_q4_0)(int cols, const void *vw, const void *vy) {
    const blk_q4_0 *w = vw; const act_q8 *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK; b++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += ((w[b].qs[j] & 0xF) - 8) * y[b].qs[j] + ((w[b].qs[j] >> 4) - 8) * y[b].qs[j + 16];
        sum += (float)s * f16_to_f32(w[b].d) * y[b].d;
    }
    return sum;
}

static float FN(dot_q4_1)(int cols, const void *vw, const void *vy) {
    const blk_q4_1 *w = vw; const act_q8 *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK; b++) {
        int s = 0;
        for (int j = 0; j < 16; j++)
            s += (w[b].qs[j] & 0xF) * y[b].qs[j] + (w[b].qs[j] >> 4) * y[b].qs[j + 16];
        sum += (float)s * f16_to_f32(w[b].d) * y[b].d + f16_to_f32(w[b].m) * y[b].s;
    }
    return sum;
}

static float FN(dot_q5_0)(int cols, const void *vw, const void *vy) {
    const blk_q5_0 *w = vw; const act_q8 *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK; b++) {
        uint32_t qh; memcpy(&qh, w[b].qh, 4);
        int s = 0;
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            s += (((w[b].qs[j] & 0xF) | h0) - 16) * y[b].qs[j] + (((w[b].qs[j] >> 4) | h1) - 16) * y[b].qs[j + 16];
        }
        sum += (float)s * f16_to_f32(w[b].d) * y[b].d;
    }
    return sum;
}

static float FN(dot_q5_1)(int cols, const void *vw, const void *vy) {
    const blk_q5_1 *w = vw; const act_q8 *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK; b++) {
        uint32_t qh; memcpy(&qh, w[b].qh, 4);
        int s = 0;
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            s += ((w[b].qs[j] & 0xF) | h0) * y[b].qs[j] + ((w[b].qs[j] >> 4) | h1) * y[b].qs[j + 16];
        }
        sum += (float)s * f16_to_f32(w[b].d) * y[b].d + f16_to_f32(w[b].m) * y[b].s;
    }
    return sum;
}

static float FN(dot_q8_0)(int cols, const void *vw, const void *vy) {
    const blk_q8_0 *w = vw; const act_q8 *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK; b++) {
        int s = 0;
        for (int j = 0; j < QK; j++) s += w[b].qs[j] * y[b].qs[j];
        sum += (float)s * f16_to_f32(w[b].d) * y[b].d;
    }
    return sum;
}

#endif

/* ---------------- dequantization ---------------- */

static void FN(deq_q4_0)(int cols, const void *vw, float *o) {
    const blk_q4_0 *w = vw;
    for (int b = 0; b < cols / QK; b++, o += QK) {
        const float d = F16(w[b].d);
        for (int j = 0; j < 16; j++) {
            o[j] = d * ((w[b].qs[j] & 0xF) - 8);
            o[j + 16] = d * ((w[b].qs[j] >> 4) - 8);
        }
    }
}

static void FN(deq_q4_1)(int cols, const void *vw, float *o) {
    const blk_q4_1 *w = vw;
    for (int b = 0; b < cols / QK; b++, o += QK) {
        const float d = F16(w[b].d), m = F16(w[b].m);
        for (int j = 0; j < 16; j++) {
            o[j] = d * (w[b].qs[j] & 0xF) + m;
            o[j + 16] = d * (w[b].qs[j] >> 4) + m;
        }
    }
}

static void FN(deq_q5_0)(int cols, const void *vw, float *o) {
    const blk_q5_0 *w = vw;
    for (int b = 0; b < cols / QK; b++, o += QK) {
        const float d = F16(w[b].d);
        uint32_t qh; memcpy(&qh, w[b].qh, 4);
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            o[j] = d * (((w[b].qs[j] & 0xF) | h0) - 16);
            o[j + 16] = d * (((w[b].qs[j] >> 4) | h1) - 16);
        }
    }
}

static void FN(deq_q5_1)(int cols, const void *vw, float *o) {
    const blk_q5_1 *w = vw;
    for (int b = 0; b < cols / QK; b++, o += QK) {
        const float d = F16(w[b].d), m = F16(w[b].m);
        uint32_t qh; memcpy(&qh, w[b].qh, 4);
        for (int j = 0; j < 16; j++) {
            int h0 = ((qh >> j) << 4) & 0x10, h1 = (qh >> (j + 12)) & 0x10;
            o[j] = d * ((w[b].qs[j] & 0xF) | h0) + m;
            o[j + 16] = d * ((w[b].qs[j] >> 4) | h1) + m;
        }
    }
}

static void FN(deq_q8_0)(int cols, const void *vw, float *o) {
    const blk_q8_0 *w = vw;
    for (int b = 0; b < cols / QK; b++, o += QK) {
        const float d = F16(w[b].d);
        for (int j = 0; j < QK; j++) o[j] = d * w[b].qs[j];
    }
}

void FN(register_q32)(kernel_table *t) {
    t->quant_q8 = FN(quant_q8);
    t->dot[T_Q4_0] = FN(dot_q4_0); t->deq[T_Q4_0] = FN(deq_q4_0);
    t->dot[T_Q4_1] = FN(dot_q4_1); t->deq[T_Q4_1] = FN(deq_q4_1);
    t->dot[T_Q5_0] = FN(dot_q5_0); t->deq[T_Q5_0] = FN(deq_q5_0);
    t->dot[T_Q5_1] = FN(dot_q5_1); t->deq[T_Q5_1] = FN(deq_q5_1);
    t->dot[T_Q8_0] = FN(dot_q8_0); t->deq[T_Q8_0] = FN(deq_q8_0);
}
