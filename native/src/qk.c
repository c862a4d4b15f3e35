/* k-quant super-block types (Q2_K Q3_K Q4_K Q5_K Q6_K): x quantized to act_q8k (int8 + one scale per
 * 256 values + sums of 16), integer dot products, and row dequantization. Compiled once per ISA. */
#include <math.h>
#include "common.h"
#ifdef CK_SIMD
#include "simd.h"
#define F16(h) f16s(h)
#else
#define F16(h) f16_to_f32(h)
#endif

/* As llama.cpp's quantize_row_q8_K: values round(x * (127 / amax)) to nearest even, d = 1 / (127 / amax)
 * kept in f32 (its iscale = -127/max flips both signs, which leaves every product d * q the same). */
void FN(quant_q8k)(int cols, const float *x, void *out) {
    act_q8k *y = (act_q8k *)out;
    for (int b = 0; b < cols / QK_K; b++, x += QK_K) {
        float amax = 0.f;
        for (int j = 0; j < QK_K; j++) { const float a = fabsf(x[j]); amax = a > amax ? a : amax; }   /* fmaxf: a libm call */
        const float id = amax != 0.f ? 127.f / amax : 0.f;
        for (int j = 0; j < QK_K; j++) y[b].qs[j] = (int8_t)lrintf(x[j] * id);
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += y[b].qs[16 * g + j];
            y[b].bsums[g] = (int16_t)s;
        }
        y[b].d = amax != 0.f ? 1.f / id : 0.f;
    }
}

static inline void scales_mins_k4(const uint8_t *s, int sc[8], int mn[8]) {
    for (int j = 0; j < 8; j++) scale_min_k4(j, s, &sc[j], &mn[j]);
}

/* ---------------- dot products ---------------- */
#ifdef CK_SIMD

static inline __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }
static inline __m256i shr16(__m256i v, int n) { return _mm256_srl_epi16(v, _mm_cvtsi32_si128(n)); }
/* 0x00 / `val` per byte depending on whether `bit` is set in v */
static inline __m256i bit_to(__m256i v, int bit, int val) {
    const __m256i m = _mm256_set1_epi8((char)bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), _mm256_set1_epi8((char)val));
}

static float FN(dot_q2_k)(int cols, const void *vw, const void *vy) {
    const blk_q2_k *w = vw; const act_q8k *y = vy;
    prefetch_ahead(w, cols / QK_K * (int)sizeof(blk_q2_k));
    __m256 acc = _mm256_setzero_ps(); float extra = 0.f;
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int b = 0; b < cols / QK_K; b++) {
        const uint8_t *sc = w[b].scales;
        __m256i sumi = _mm256_setzero_si256();
        for (int n = 0; n < 2; n++) {
            const __m256i Q = ld(w[b].qs + 32 * n);
            for (int j = 0; j < 4; j++) {
                const int is = 8 * n + 2 * j;
                __m256i q = _mm256_and_si256(shr16(Q, 2 * j), m3);
                sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(q, ld(y[b].qs + 128 * n + 32 * j),
                                                              sc[is] & 0xF, sc[is + 1] & 0xF));
            }
        }
        int summ = 0;
        for (int k = 0; k < 16; k++) summ += (sc[k] >> 4) * y[b].bsums[k];
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
        extra -= y[b].d * F16(w[b].dmin) * (float)summ;
    }
    return hsum_ps(acc) + extra;
}

static float FN(dot_q3_k)(int cols, const void *vw, const void *vy) {
    const blk_q3_k *w = vw; const act_q8k *y = vy;
    prefetch_ahead(w, cols / QK_K * (int)sizeof(blk_q3_k));
    __m256 acc = _mm256_setzero_ps();
    const __m256i m3 = _mm256_set1_epi8(3);
    for (int b = 0; b < cols / QK_K; b++) {
        int8_t sc[16]; scales_q3_k(w[b].scales, sc);
        const __m256i HM = ld(w[b].hmask);
        __m256i sumi = _mm256_setzero_si256();
        for (int n = 0; n < 2; n++) {
            const __m256i Q = ld(w[b].qs + 32 * n);
            for (int j = 0; j < 4; j++) {
                const int is = 8 * n + 2 * j;
                /* stored value q in 0..7 stands for q - 4 */
                __m256i q = _mm256_or_si256(_mm256_and_si256(shr16(Q, 2 * j), m3), bit_to(HM, 1 << (4 * n + j), 4));
                sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(q, ld(y[b].qs + 128 * n + 32 * j), sc[is], sc[is + 1]));
            }
        }
        int corr = 0;
        for (int k = 0; k < 16; k++) corr += sc[k] * y[b].bsums[k];
        sumi = _mm256_sub_epi32(sumi, _mm256_setr_epi32(4 * corr, 0, 0, 0, 0, 0, 0, 0));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

#if CK_ISA < ISA_AVX512
static float FN(dot_q4_k)(int cols, const void *vw, const void *vy) {
    const blk_q4_k *w = vw; const act_q8k *y = vy;
    prefetch_ahead(w, cols / QK_K * (int)sizeof(blk_q4_k));
    __m256 acc = _mm256_setzero_ps(); float extra = 0.f;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int b = 0; b < cols / QK_K; b++) {
        int sc[8], mn[8]; scales_mins_k4(w[b].scales, sc, mn);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i Q = ld(w[b].qs + 32 * j);
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(_mm256_and_si256(Q, m4), ld(y[b].qs + 64 * j),
                                                          sc[2 * j], sc[2 * j]));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(_mm256_and_si256(_mm256_srli_epi16(Q, 4), m4),
                                                          ld(y[b].qs + 64 * j + 32), sc[2 * j + 1], sc[2 * j + 1]));
        }
        int summ = 0;
        for (int k = 0; k < 8; k++) summ += mn[k] * (y[b].bsums[2 * k] + y[b].bsums[2 * k + 1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
        extra -= y[b].d * F16(w[b].dmin) * (float)summ;
    }
    return hsum_ps(acc) + extra;
}

#endif

static float FN(dot_q5_k)(int cols, const void *vw, const void *vy) {
    const blk_q5_k *w = vw; const act_q8k *y = vy;
    prefetch_ahead(w, cols / QK_K * (int)sizeof(blk_q5_k));
    __m256 acc = _mm256_setzero_ps(); float extra = 0.f;
    const __m256i m4 = _mm256_set1_epi8(0xF);
    for (int b = 0; b < cols / QK_K; b++) {
        int sc[8], mn[8]; scales_mins_k4(w[b].scales, sc, mn);
        const __m256i H = ld(w[b].qh);
        __m256i sumi = _mm256_setzero_si256();
        for (int j = 0; j < 4; j++) {
            const __m256i Q = ld(w[b].qs + 32 * j);
            __m256i lo = _mm256_or_si256(_mm256_and_si256(Q, m4), bit_to(H, 1 << (2 * j), 16));
            __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(Q, 4), m4), bit_to(H, 2 << (2 * j), 16));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(lo, ld(y[b].qs + 64 * j), sc[2 * j], sc[2 * j]));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(hi, ld(y[b].qs + 64 * j + 32), sc[2 * j + 1], sc[2 * j + 1]));
        }
        int summ = 0;
        for (int k = 0; k < 8; k++) summ += mn[k] * (y[b].bsums[2 * k] + y[b].bsums[2 * k + 1]);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
        extra -= y[b].d * F16(w[b].dmin) * (float)summ;
    }
    return hsum_ps(acc) + extra;
}

#if CK_ISA < ISA_AVX512
static float FN(dot_q6_k)(int cols, const void *vw, const void *vy) {
    const blk_q6_k *w = vw; const act_q8k *y = vy;
    prefetch_ahead(w, cols / QK_K * (int)sizeof(blk_q6_k));
    __m256 acc = _mm256_setzero_ps();
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    for (int b = 0; b < cols / QK_K; b++) {
        const int8_t *sc = w[b].scales;
        __m256i sumi = _mm256_setzero_si256();
        for (int n = 0; n < 2; n++) {
            const __m256i A = ld(w[b].ql + 64 * n), B = ld(w[b].ql + 64 * n + 32), H = ld(w[b].qh + 32 * n);
            const int8_t *s = sc + 8 * n; const int8_t *yq = y[b].qs + 128 * n;
            __m256i q1 = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
            __m256i q2 = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
            __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
            __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),
                                         _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(q1, ld(yq), s[0], s[1]));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(q2, ld(yq + 32), s[2], s[3]));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(q3, ld(yq + 64), s[4], s[5]));
            sumi = _mm256_add_epi32(sumi, dot_u8i8_scaled(q4, ld(yq + 96), s[6], s[7]));
        }
        /* stored value q in 0..63 stands for q - 32 */
        __m256i corr = _mm256_madd_epi16(ld(y[b].bsums), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc)));
        sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(corr, 5));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc);
}

#else  /* CK_ISA >= ISA_AVX512 */

/* AVX-512 Q4_K / Q6_K: 64 values per register (vpmaddubsw, then vpmaddwd by the sub-blocks' scales as
 * 16-bit words: the pair sums stay below 2^15 for 4- and 6-bit weights). The 16 lane sums folded to 8
 * are the AVX2 path's integers, and the float arithmetic is the AVX2 path's, so the results are
 * bitwise those of the 256-bit kernels (and of gemm.c's tiles). */

/* word index vector: words 0-15 take word a, 16-31 word b (vpermw) */
#define IDX2(a, b) _mm512_set_epi16(b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, \
                                    a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a)
/* words 0-7 a, 8-15 b, 16-23 c, 24-31 d */
#define IDX4(a, b, c, d) _mm512_set_epi16(d, d, d, d, d, d, d, d, c, c, c, c, c, c, c, c, \
                                          b, b, b, b, b, b, b, b, a, a, a, a, a, a, a, a)

static float FN(dot_q4_k)(int cols, const void *vw, const void *vy) {
    const blk_q4_k *w = vw; const act_q8k *y = vy; const int nb = cols / QK_K;
    prefetch_ahead(w, nb * (int)sizeof(blk_q4_k));
    __m256 acc = _mm256_setzero_ps(); float extra = 0.f;
    const __m512i m4 = _mm512_set1_epi8(0xF);
    const __m512i i0 = IDX2(0, 1), i1 = IDX2(2, 3), i2 = IDX2(4, 5), i3 = IDX2(6, 7);
    for (int b = 0; b < nb; b++) {
        /* the 8 scales in bytes 0-7 and the 8 mins in bytes 8-15 (as scale_min_k4) */
        uint32_t u[4]; memcpy(u, w[b].scales, 12);
        u[3] = ((u[2] >> 4) & 0x0f0f0f0f) | (((u[1] >> 6) & 0x03030303) << 4);
        const uint32_t mlo = u[1] & 0x3f3f3f3f;
        u[1] = (u[2] & 0x0f0f0f0f) | (((u[0] >> 6) & 0x03030303) << 4);
        u[2] = mlo;
        u[0] &= 0x3f3f3f3f;
        const __m128i sm = _mm_loadu_si128((const __m128i *)u);
        const __m512i sc = _mm512_castsi128_si512(_mm_cvtepu8_epi16(sm));
        __m512i sumi = _mm512_setzero_si512();
#define Q4K_STEP(j, idx) { \
            __m512i q = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w[b].qs + 32 * (j)))); \
            q = _mm512_and_si512(_mm512_mask_srli_epi16(q, 0xFFFF0000u, q, 4), m4); \
            const __m512i p = _mm512_maddubs_epi16(q, _mm512_loadu_si512(y[b].qs + 64 * (j))); \
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(p, _mm512_permutexvar_epi16(idx, sc))); }
        Q4K_STEP(0, i0) Q4K_STEP(1, i1) Q4K_STEP(2, i2) Q4K_STEP(3, i3)
#undef Q4K_STEP
        /* summ = sum_k mins[k] * (bsums[2k] + bsums[2k+1]) */
        const __m256i mins = _mm256_cvtepu8_epi16(_mm_unpackhi_epi8(sm, sm));
        const int summ = hsum_epi32(_mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[b].bsums), mins));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(halves_epi32(sumi)), acc);
        extra -= y[b].d * F16(w[b].dmin) * (float)summ;
    }
    return hsum_ps(acc) + extra;
}

static float FN(dot_q6_k)(int cols, const void *vw, const void *vy) {
    const blk_q6_k *w = vw; const act_q8k *y = vy; const int nb = cols / QK_K;
    prefetch_ahead(w, nb * (int)sizeof(blk_q6_k));
    __m256 acc = _mm256_setzero_ps();
    const __m512i m4 = _mm512_set1_epi8(0xF), m30 = _mm512_set1_epi8(0x30);
    const __m512i i0 = IDX4(0, 1, 2, 3), i1 = IDX4(4, 5, 6, 7), i2 = IDX4(8, 9, 10, 11), i3 = IDX4(12, 13, 14, 15);
    for (int b = 0; b < nb; b++) {
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[b].scales));
        const __m512i sc = _mm512_castsi256_si512(sc16);
        __m512i sumi = _mm512_setzero_si512();
#define Q6K_HALF(n, ia, ib) { \
            const __m512i AB = _mm512_loadu_si512(w[b].ql + 64 * (n)); \
            const __m512i H = _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)(w[b].qh + 32 * (n)))); \
            /* values 0-31: ql low nibbles | qh bits 0-1 (A), 32-63: | bits 2-3 (B) */ \
            const __m512i h12 = _mm512_mask_slli_epi16(_mm512_slli_epi16(H, 2), 0x0000FFFFu, H, 4); \
            const __m512i q12 = _mm512_ternarylogic_epi32(_mm512_and_si512(AB, m4), h12, m30, 0xF8); \
            /* values 64-95: high nibbles | bits 4-5, 96-127: | bits 6-7 */ \
            const __m512i h34 = _mm512_mask_srli_epi16(H, 0xFFFF0000u, H, 2); \
            const __m512i q34 = _mm512_ternarylogic_epi32(_mm512_and_si512(_mm512_srli_epi16(AB, 4), m4), h34, m30, 0xF8); \
            const int8_t *yq = y[b].qs + 128 * (n); \
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(_mm512_maddubs_epi16(q12, _mm512_loadu_si512(yq)), \
                                                            _mm512_permutexvar_epi16(ia, sc))); \
            sumi = _mm512_add_epi32(sumi, _mm512_madd_epi16(_mm512_maddubs_epi16(q34, _mm512_loadu_si512(yq + 64)), \
                                                            _mm512_permutexvar_epi16(ib, sc))); }
        Q6K_HALF(0, i0, i1) Q6K_HALF(1, i2, i3)
#undef Q6K_HALF
        /* stored value q in 0..63 stands for q - 32 */
        const __m256i corr = _mm256_madd_epi16(_mm256_loadu_si256((const __m256i *)y[b].bsums), sc16);
        const __m256i si = _mm256_sub_epi32(halves_epi32(sumi), _mm256_slli_epi32(corr, 5));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(y[b].d * F16(w[b].d)), _mm256_cvtepi32_ps(si), acc);
    }
    return hsum_ps(acc);
}

#endif

#else  /* portable */

static float FN(dot_q2_k)(int cols, const void *vw, const void *vy) {
    const blk_q2_k *w = vw; const act_q8k *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK_K; b++) {
        int isum = 0, summ = 0;
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int h = 0; h < 2; h++) {
                    const int is = 8 * n + 2 * j + h; int s = 0;
                    for (int l = 16 * h; l < 16 * h + 16; l++)
                        s += ((w[b].qs[32 * n + l] >> (2 * j)) & 3) * y[b].qs[128 * n + 32 * j + l];
                    isum += (w[b].scales[is] & 0xF) * s;
                    summ += (w[b].scales[is] >> 4) * y[b].bsums[is];
                }
        sum += y[b].d * (f16_to_f32(w[b].d) * isum - f16_to_f32(w[b].dmin) * summ);
    }
    return sum;
}

static float FN(dot_q3_k)(int cols, const void *vw, const void *vy) {
    const blk_q3_k *w = vw; const act_q8k *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK_K; b++) {
        int8_t sc[16]; scales_q3_k(w[b].scales, sc);
        int isum = 0;
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int h = 0; h < 2; h++) {
                    const int is = 8 * n + 2 * j + h, m = 1 << (4 * n + j); int s = 0;
                    for (int l = 16 * h; l < 16 * h + 16; l++) {
                        int q = ((w[b].qs[32 * n + l] >> (2 * j)) & 3) - ((w[b].hmask[l] & m) ? 0 : 4);
                        s += q * y[b].qs[128 * n + 32 * j + l];
                    }
                    isum += sc[is] * s;
                }
        sum += y[b].d * f16_to_f32(w[b].d) * isum;
    }
    return sum;
}

static float FN(dot_q4_k)(int cols, const void *vw, const void *vy) {
    const blk_q4_k *w = vw; const act_q8k *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK_K; b++) {
        int sc[8], mn[8]; scales_mins_k4(w[b].scales, sc, mn);
        int isum = 0, summ = 0;
        for (int j = 0; j < 4; j++) {
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                s0 += (w[b].qs[32 * j + l] & 0xF) * y[b].qs[64 * j + l];
                s1 += (w[b].qs[32 * j + l] >> 4) * y[b].qs[64 * j + 32 + l];
            }
            isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
        }
        for (int k = 0; k < 8; k++) summ += mn[k] * (y[b].bsums[2 * k] + y[b].bsums[2 * k + 1]);
        sum += y[b].d * (f16_to_f32(w[b].d) * isum - f16_to_f32(w[b].dmin) * summ);
    }
    return sum;
}

static float FN(dot_q5_k)(int cols, const void *vw, const void *vy) {
    const blk_q5_k *w = vw; const act_q8k *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK_K; b++) {
        int sc[8], mn[8]; scales_mins_k4(w[b].scales, sc, mn);
        int isum = 0, summ = 0;
        for (int j = 0; j < 4; j++) {
            int s0 = 0, s1 = 0;
            for (int l = 0; l < 32; l++) {
                int h0 = (w[b].qh[l] >> (2 * j)) & 1, h1 = (w[b].qh[l] >> (2 * j + 1)) & 1;
                s0 += ((w[b].qs[32 * j + l] & 0xF) + 16 * h0) * y[b].qs[64 * j + l];
                s1 += ((w[b].qs[32 * j + l] >> 4) + 16 * h1) * y[b].qs[64 * j + 32 + l];
            }
            isum += sc[2 * j] * s0 + sc[2 * j + 1] * s1;
        }
        for (int k = 0; k < 8; k++) summ += mn[k] * (y[b].bsums[2 * k] + y[b].bsums[2 * k + 1]);
        sum += y[b].d * (f16_to_f32(w[b].d) * isum - f16_to_f32(w[b].dmin) * summ);
    }
    return sum;
}

static float FN(dot_q6_k)(int cols, const void *vw, const void *vy) {
    const blk_q6_k *w = vw; const act_q8k *y = vy; float sum = 0.f;
    for (int b = 0; b < cols / QK_K; b++) {
        int isum = 0;
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = w[b].ql + 64 * n, *qh = w[b].qh + 32 * n;
            const int8_t *sc = w[b].scales + 8 * n, *yq = y[b].qs + 128 * n;
            for (int h = 0; h < 2; h++) {
                int s1 = 0, s2 = 0, s3 = 0, s4 = 0;
                for (int l = 16 * h; l < 16 * h + 16; l++) {
                    s1 += (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32) * yq[l];
                    s2 += (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32) * yq[l + 32];
                    s3 += (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32) * yq[l + 64];
                    s4 += (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32) * yq[l + 96];
                }
                isum += sc[h] * s1 + sc[2 + h] * s2 + sc[4 + h] * s3 + sc[6 + h] * s4;
            }
        }
        sum += y[b].d * f16_to_f32(w[b].d) * isum;
    }
    return sum;
}

#endif

/* ---------------- dequantization ---------------- */

static void FN(deq_q2_k)(int cols, const void *vw, float *o) {
    const blk_q2_k *w = vw;
    for (int b = 0; b < cols / QK_K; b++, o += QK_K) {
        const float d = F16(w[b].d), dmin = F16(w[b].dmin);
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    const uint8_t s = w[b].scales[8 * n + 2 * j + l / 16];
                    o[128 * n + 32 * j + l] = d * (s & 0xF) * ((w[b].qs[32 * n + l] >> (2 * j)) & 3) - dmin * (s >> 4);
                }
    }
}

static void FN(deq_q3_k)(int cols, const void *vw, float *o) {
    const blk_q3_k *w = vw;
    for (int b = 0; b < cols / QK_K; b++, o += QK_K) {
        const float d = F16(w[b].d);
        int8_t sc[16]; scales_q3_k(w[b].scales, sc);
        for (int n = 0; n < 2; n++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    int q = ((w[b].qs[32 * n + l] >> (2 * j)) & 3) - ((w[b].hmask[l] & (1 << (4 * n + j))) ? 0 : 4);
                    o[128 * n + 32 * j + l] = d * sc[8 * n + 2 * j + l / 16] * q;
                }
    }
}

static void FN(deq_q4_k)(int cols, const void *vw, float *o) {
    const blk_q4_k *w = vw;
    for (int b = 0; b < cols / QK_K; b++, o += QK_K) {
        const float d = F16(w[b].d), dmin = F16(w[b].dmin);
        int sc[8], mn[8]; scales_mins_k4(w[b].scales, sc, mn);
        for (int j = 0; j < 4; j++) {
            const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j], d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
            for (int l = 0; l < 32; l++) {
                o[64 * j + l] = d1 * (w[b].qs[32 * j + l] & 0xF) - m1;
                o[64 * j + 32 + l] = d2 * (w[b].qs[32 * j + l] >> 4) - m2;
            }
        }
    }
}

static void FN(deq_q5_k)(int cols, const void *vw, float *o) {
    const blk_q5_k *w = vw;
    for (int b = 0; b < cols / QK_K; b++, o += QK_K) {
        const float d = F16(w[b].d), dmin = F16(w[b].dmin);
        int sc[8], mn[8]; scales_mins_k4(w[b].scales, sc, mn);
        for (int j = 0; j < 4; j++) {
            const float d1 = d * sc[2 * j], m1 = dmin * mn[2 * j], d2 = d * sc[2 * j + 1], m2 = dmin * mn[2 * j + 1];
            for (int l = 0; l < 32; l++) {
                const int h0 = (w[b].qh[l] >> (2 * j)) & 1, h1 = (w[b].qh[l] >> (2 * j + 1)) & 1;
                o[64 * j + l] = d1 * ((w[b].qs[32 * j + l] & 0xF) + 16 * h0) - m1;
                o[64 * j + 32 + l] = d2 * ((w[b].qs[32 * j + l] >> 4) + 16 * h1) - m2;
            }
        }
    }
}

static void FN(deq_q6_k)(int cols, const void *vw, float *o) {
    const blk_q6_k *w = vw;
    for (int b = 0; b < cols / QK_K; b++, o += QK_K) {
        const float d = F16(w[b].d);
        for (int n = 0; n < 2; n++) {
            const uint8_t *ql = w[b].ql + 64 * n, *qh = w[b].qh + 32 * n;
            const int8_t *sc = w[b].scales + 8 * n; float *y = o + 128 * n;
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                y[l] = d * sc[is] * (((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32);
                y[l + 32] = d * sc[is + 2] * (((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32);
                y[l + 64] = d * sc[is + 4] * (((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                y[l + 96] = d * sc[is + 6] * (((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
    }
}

void FN(register_qk)(kernel_table *t) {
    t->quant_q8k = FN(quant_q8k);
    t->dot[T_Q2_K] = FN(dot_q2_k); t->deq[T_Q2_K] = FN(deq_q2_k);
    t->dot[T_Q3_K] = FN(dot_q3_k); t->deq[T_Q3_K] = FN(deq_q3_k);
    t->dot[T_Q4_K] = FN(dot_q4_k); t->deq[T_Q4_K] = FN(deq_q4_k);
    t->dot[T_Q5_K] = FN(dot_q5_k); t->deq[T_Q5_K] = FN(deq_q5_k);
    t->dot[T_Q6_K] = FN(dot_q6_k); t->deq[T_Q6_K] = FN(deq_q6_k);
}
