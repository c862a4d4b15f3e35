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

/* AVX-512: blocks taken two at a time (their f16 scales in one conversion and one multiply; for
 * Q5_0 / Q5_1 their int8 products in one 512-bit vpdpbusd too). The integer block sums are those of
 * the AVX2 path; the float order differs: block b's scaled sum goes into an 8-lane fused multiply-add
 * chain E for even b and O for odd b, so two chains run at once instead of one (the AVX2 path, as
 * llama.cpp's, is bound by that one chain's latency on small rows in cache). Result: hsum_ps(E + O), plus for Q4_1 / Q5_1 the terms m * s of the even blocks in one
 * fused multiply-add chain plus those of the odd blocks in another. gemm.c's AVX-512 tiles keep
 * this order, so the prefill GEMM stays bitwise the GEMV. */

#ifndef PF_BYTES
#define PF_BYTES 0
#endif

/* the weight bytes PF_BYTES past this row's, toward the next rows (a matrix is read row after row;
 * the page cache's 4 KiB pages stop the hardware prefetcher at every page) */
static inline void prefetch_ahead(const void *w, int bytes) {
    if (PF_BYTES > 0) {
        const char *p = (const char *)w + PF_BYTES;
        for (int o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
    }
}

/* wd = [dw0, mw0, dw1, mw1] of blocks w0, w1 (their first 4 bytes: d, then m or the next field,
 * unused) and yd = [dy0, sy0, dy1, sy1] of activations y0, y1 */
static inline void scales_x2(const void *w0, const void *w1, const act_q8 *y0, const act_q8 *y1, __m128 *wd, __m128 *yd) {
    uint32_t a, b; memcpy(&a, w0, 4); memcpy(&b, w1, 4);
    *wd = _mm_cvtph_ps(_mm_insert_epi32(_mm_cvtsi32_si128((int)a), (int)b, 1));
    *yd = _mm_castpd_ps(_mm_loadh_pd(_mm_load_sd((const double *)y0), (const double *)y1));
}

/* bits of two blocks' qh as a byte mask: bit i <-> byte i of nibbles_x2 */
static inline __mmask64 bits_x2(const uint8_t *h0, const uint8_t *h1) {
    uint32_t a, b; memcpy(&a, h0, 4); memcpy(&b, h1, 4);
    return _cvtu64_mask64(((uint64_t)b << 32) | a);
}

static inline __m256i ld32(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

static inline __m512i q5_0_pair(const uint8_t *q0, const uint8_t *q1, __mmask64 bits, __m512i y) {
    const __m512i nib = nibbles_x2(q0, q1);
    const __mmask64 neg = _knot_mask64(bits);
    return dot_u8i8_x2(_mm512_mask_sub_epi8(nib, neg, _mm512_set1_epi8(16), nib),
                       _mm512_mask_sub_epi8(y, neg, _mm512_setzero_si512(), y));
}

static inline __m512i q5_1_pair(const uint8_t *q0, const uint8_t *q1, __mmask64 bits, __m512i y) {
    const __m512i nib = nibbles_x2(q0, q1);
    return dot_u8i8_x2(_mm512_mask_add_epi8(nib, bits, nib, _mm512_set1_epi8(0x10)), y);
}

/* lane 1 + lane 3 */
static inline float ex_sum(__m128 ex) {
    const __m128 t = _mm_movehdup_ps(ex);
    return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehl_ps(t, t)));
}

/* PAIR: the 16 int32 lane sums of blocks b, b+1; ONE: the 8 of block b alone (an odd count's last) */
#define DOT_X2(NAME, T, HAS_M, MFIELD, PAIR, ONE) \
static float FN(NAME)(int cols, const void *vw, const void *vy) { \
    const T *w = (const T *)vw; const act_q8 *y = (const act_q8 *)vy; const int nb = cols / QK; \
    prefetch_ahead(w, nb * (int)sizeof(T)); \
    const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2); \
    __m512 acc = _mm512_setzero_ps(); __m128 ex = _mm_setzero_ps(); \
    int b = 0; \
    for (; b + 1 < nb; b += 2) { \
        const __m512i p = PAIR; \
        __m128 wd, yd; scales_x2(&w[b], &w[b + 1], &y[b], &y[b + 1], &wd, &yd); \
        const __m512 sc = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(_mm_mul_ps(wd, yd))); \
        acc = _mm512_fmadd_ps(sc, _mm512_cvtepi32_ps(p), acc); \
        if (HAS_M) ex = _mm_mask3_fmadd_ps(wd, yd, ex, 0xA); \
    } \
    __m256 e = _mm512_castps512_ps256(acc); \
    const __m256 o = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)); \
    if (b < nb) { \
        const __m256i p = ONE; \
        e = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), e); \
        if (HAS_M) ex = _mm_mask3_fmadd_ps(_mm_set1_ps(F16(w[b].MFIELD)), _mm_set1_ps(y[b].s), ex, 0x2); \
    } \
    float r = hsum_ps(_mm256_add_ps(e, o)); \
    if (HAS_M) r += ex_sum(ex); \
    return r; \
}

/* The same order with 256-bit integer work: ONE of block b and of block b + 1, each into its chain */
#define DOT_Y2(NAME, T, HAS_M, MFIELD, ONE) \
static float FN(NAME)(int cols, const void *vw, const void *vy) { \
    const T *w = (const T *)vw; const act_q8 *y = (const act_q8 *)vy; const int nb = cols / QK; \
    prefetch_ahead(w, nb * (int)sizeof(T)); \
    __m256 e = _mm256_setzero_ps(), o = _mm256_setzero_ps(); __m128 ex = _mm_setzero_ps(); \
    int b = 0; \
    for (; b + 1 < nb; b += 2) { \
        const __m256i p0 = ONE; __m256i p1; \
        { const int b_at = b + 1; { const int b = b_at; p1 = ONE; } } \
        __m128 wd, yd; scales_x2(&w[b], &w[b + 1], &y[b], &y[b + 1], &wd, &yd); \
        const __m128 sc = _mm_mul_ps(wd, yd); \
        e = _mm256_fmadd_ps(_mm256_broadcastss_ps(sc), _mm256_cvtepi32_ps(p0), e); \
        o = _mm256_fmadd_ps(_mm256_broadcastss_ps(_mm_movehl_ps(sc, sc)), _mm256_cvtepi32_ps(p1), o); \
        if (HAS_M) ex = _mm_mask3_fmadd_ps(wd, yd, ex, 0xA); \
    } \
    if (b < nb) { \
        const __m256i p = ONE; \
        e = _mm256_fmadd_ps(_mm256_set1_ps(F16(w[b].d) * y[b].d), _mm256_cvtepi32_ps(p), e); \
        if (HAS_M) ex = _mm_mask3_fmadd_ps(_mm_set1_ps(F16(w[b].MFIELD)), _mm_set1_ps(y[b].s), ex, 0x2); \
    } \
    float r = hsum_ps(_mm256_add_ps(e, o)); \
    if (HAS_M) r += ex_sum(ex); \
    return r; \
}

/* Which width pays (this Xeon, one core, weights in cache): Q5_0 / Q5_1 on 512 bits (their high bits
 * as one 64-bit mask); Q4_0, Q4_1 and Q8_0 on 256 bits, where the conversions and shuffles that join
 * two blocks cost more than the second vpdpbusd saves. (The types without a min name their d as
 * MFIELD; it is never read.) */
DOT_Y2(dot_q4_0, blk_q4_0, 0, d, dot_i8i8(_mm256_sub_epi8(bytes_from_nibbles(w[b].qs), _mm256_set1_epi8(8)), ld32(y[b].qs)))
DOT_Y2(dot_q4_1, blk_q4_1, 1, m, dot_u8i8(bytes_from_nibbles(w[b].qs), ld32(y[b].qs)))
DOT_Y2(dot_q8_0, blk_q8_0, 0, d, dot_i8i8(ld32(w[b].qs), ld32(y[b].qs)))
/* Q5_0: value = nibble + 16 * bit - 16, negative exactly where the bit is clear: |value| = 16 - nibble
 * there, and y's sign flips there */
DOT_X2(dot_q5_0, blk_q5_0, 0, d,
       q5_0_pair(w[b].qs, w[b + 1].qs, bits_x2(w[b].qh, w[b + 1].qh), load_x2(y[b].qs, y[b + 1].qs)),
       dot_i8i8(_mm256_or_si256(bytes_from_nibbles(w[b].qs),
                                _mm256_andnot_si256(bytes_from_bits(w[b].qh), _mm256_set1_epi8((char)0xF0))), ld32(y[b].qs)))
DOT_X2(dot_q5_1, blk_q5_1, 1, m,
       q5_1_pair(w[b].qs, w[b + 1].qs, bits_x2(w[b].qh, w[b + 1].qh), load_x2(y[b].qs, y[b + 1].qs)),
       dot_u8i8(_mm256_or_si256(bytes_from_nibbles(w[b].qs),
                                _mm256_and_si256(bytes_from_bits(w[b].qh), _mm256_set1_epi8(0x10))), ld32(y[b].qs)))

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
