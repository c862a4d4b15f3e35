/* Prefill GEMM tiles on GGUF blocks (compiled once per ISA, see common.h).
 *
 * out[s, r] = the GEMV's dot of weight row r with activation row s, bitwise: the activations are
 * quantized by the same quant_q8 / quant_q8k and every output accumulates block by block in the same
 * order, with the same integer sums, the same float products and fused multiply-adds and the same
 * final horizontal sum as the dot functions in q32.c / qk.c. What changes is the order of the loops:
 * a weight block is unpacked once (nibbles to bytes, scales decoded) and dotted with the GR rows of a
 * packed activation group (gemm.h), whose scales sit in one vector.
 *
 * Only the SIMD builds have tile kernels; the scalar build (and a type without one) runs the GEMV's
 * dot per pair (gemm_run.c). */
#include <math.h>
#include "gemm.h"
#ifdef CK_SIMD
#include "simd.h"
#define F16(h) f16s(h)
#else
#define F16(h) f16_to_f32(h)
#endif

void FN(quant_q8)(int cols, const float *x, void *out);
void FN(quant_q8k)(int cols, const float *x, void *out);

/* quantize rows x[0..ns) (ns <= GR, rows x_stride floats apart) block by block as the GEMV does and
 * pack them as one group; rows ns..GR-1 are zero */
static void FN(gemm_pack)(int kind, int cols, const float *x, int64_t x_stride, int ns, void *dst) {
    if (kind == ACT_Q8) {
        pk_q8 *p = dst;
        for (int s = 0; s < GR; s++)
            for (int b = 0; b < cols / QK; b++) {
                act_q8 a; memset(&a, 0, sizeof a);
                if (s < ns) FN(quant_q8)(QK, x + s * x_stride + b * QK, &a);
                p[b].d[s] = a.d; p[b].s[s] = a.s;
                memcpy(p[b].qs[s], a.qs, QK);
            }
    } else {
        pk_q8k *p = dst;
        for (int s = 0; s < GR; s++)
            for (int b = 0; b < cols / QK_K; b++) {
                act_q8k a; memset(&a, 0, sizeof a);
                if (s < ns) FN(quant_q8k)(QK_K, x + s * x_stride + b * QK_K, &a);
                p[b].d[s] = a.d;
                memcpy(p[b].bsums[s], a.bsums, sizeof a.bsums);
                memcpy(p[b].qs[s], a.qs, QK_K);
                for (int k = 0; k < 8; k++) {
                    p[b].bs2[k][s][0] = a.bsums[2 * k]; p[b].bs2[k][s][1] = a.bsums[2 * k + 1];
                }
                for (int k = 0; k < 4; k++) {
                    p[b].bp[k][s][0] = (int16_t)(a.bsums[4 * k] + a.bsums[4 * k + 1]);
                    p[b].bp[k][s][1] = (int16_t)(a.bsums[4 * k + 2] + a.bsums[4 * k + 3]);
                }
            }
    }
}

#ifdef CK_SIMD

static inline __m256i ld(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* GR horizontal sums, each added exactly as hsum_ps() adds one vector, plus the extra term e (lane s
 * for row s), stored to out[s * out_stride] for s < ns */
static inline void finish(const __m256 a[GR], __m256 e, float *out, int64_t out_stride, int ns) {
    /* lo + hi halves */
    __m256 t0 = _mm256_add_ps(_mm256_permute2f128_ps(a[0], a[1], 0x20), _mm256_permute2f128_ps(a[0], a[1], 0x31));
    __m256 t1 = _mm256_add_ps(_mm256_permute2f128_ps(a[2], a[3], 0x20), _mm256_permute2f128_ps(a[2], a[3], 0x31));
    __m256 t2 = _mm256_add_ps(_mm256_permute2f128_ps(a[4], a[5], 0x20), _mm256_permute2f128_ps(a[4], a[5], 0x31));
    __m256 t3 = _mm256_add_ps(_mm256_permute2f128_ps(a[6], a[7], 0x20), _mm256_permute2f128_ps(a[6], a[7], 0x31));
    /* lanes 0,1 + lanes 2,3 */
    __m256 u0 = _mm256_add_ps(_mm256_shuffle_ps(t0, t1, 0x44), _mm256_shuffle_ps(t0, t1, 0xEE));
    __m256 u1 = _mm256_add_ps(_mm256_shuffle_ps(t2, t3, 0x44), _mm256_shuffle_ps(t2, t3, 0xEE));
    /* lane 0 + lane 1: rows in the order 0 2 4 6 | 1 3 5 7 */
    __m256 v = _mm256_add_ps(_mm256_shuffle_ps(u0, u1, 0x88), _mm256_shuffle_ps(u0, u1, 0xDD));
    v = _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    float o[GR];
    _mm256_storeu_ps(o, _mm256_add_ps(v, e));
    for (int s = 0; s < ns; s++) out[s * out_stride] = o[s];
}

/* the products go through memory and come back as broadcast loads (a load port, no shuffles) */
#define SPILL() __asm__ volatile("" ::: "memory")

#define TILE_ARGS int cols, const uint8_t *w, int64_t row_bytes, int64_t r0, int64_t r1, \
                  const uint8_t *act, int64_t gbytes, int g0, int g1, int n, float *out, int64_t out_stride

/* 32-value types: q is the block's 32 weights as bytes (unsigned, or signed when SIGNED), the
 * offset term m * s is accumulated when HAS_M (Q4_1, Q5_1) as the GEMV's extra */
#define LEGACY_TILE(NAME, T, QEXPR, SIGNED, HAS_M, MFIELD) \
static void FN(NAME)(TILE_ARGS) { \
    const int nb = cols / QK; \
    for (int g = g0; g < g1; g++) { \
        const pk_q8 *y = (const pk_q8 *)(act + (int64_t)g * gbytes); \
        const int ns = n - g * GR < GR ? n - g * GR : GR; \
        for (int64_t r = r0; r < r1; r++) { \
            const T *x = (const T *)(w + r * row_bytes); \
            __m256 acc[GR], e = _mm256_setzero_ps(); \
            for (int s = 0; s < GR; s++) acc[s] = _mm256_setzero_ps(); \
            for (int b = 0; b < nb; b++) { \
                const __m256i q = QEXPR; \
                float sc[GR] __attribute__((aligned(32))); \
                _mm256_store_ps(sc, _mm256_mul_ps(_mm256_set1_ps(F16(x[b].d)), _mm256_loadu_ps(y[b].d))); \
                SPILL(); \
                if (HAS_M) e = _mm256_fmadd_ps(_mm256_set1_ps(F16(x[b].MFIELD)), _mm256_loadu_ps(y[b].s), e); \
                const __m256i aq = SIGNED ? _mm256_sign_epi8(q, q) : q; \
                _Pragma("GCC unroll 8") \
                for (int s = 0; s < GR; s++) { \
                    const __m256i yv = ld(y[b].qs[s]); \
                    const __m256i p = dot_u8i8(aq, SIGNED ? _mm256_sign_epi8(yv, q) : yv); \
                    acc[s] = _mm256_fmadd_ps(_mm256_broadcast_ss(&sc[s]), _mm256_cvtepi32_ps(p), acc[s]); \
                } \
            } \
            finish(acc, e, out + (int64_t)g * GR * out_stride + r, out_stride, ns); \
        } \
    } \
}

/* (the types without a min name their d as MFIELD; it is never read) */
LEGACY_TILE(gemm_q4_1, blk_q4_1, bytes_from_nibbles(x[b].qs), 0, 1, m)
LEGACY_TILE(gemm_q5_1, blk_q5_1,
            _mm256_or_si256(bytes_from_nibbles(x[b].qs),
                            _mm256_and_si256(bytes_from_bits(x[b].qh), _mm256_set1_epi8(0x10))), 0, 1, m)
LEGACY_TILE(gemm_q4_0, blk_q4_0, _mm256_sub_epi8(bytes_from_nibbles(x[b].qs), _mm256_set1_epi8(8)), 1, 0, d)
LEGACY_TILE(gemm_q5_0, blk_q5_0,
            _mm256_or_si256(bytes_from_nibbles(x[b].qs),
                            _mm256_andnot_si256(bytes_from_bits(x[b].qh), _mm256_set1_epi8((char)0xF0))), 1, 0, d)
LEGACY_TILE(gemm_q8_0, blk_q8_0, ld(x[b].qs), 1, 0, d)

/* 0x00 / `val` per byte depending on whether `bit` is set in v (as qk.c) */
static inline __m256i bit_to(__m256i v, int bit, int val) {
    const __m256i m = _mm256_set1_epi8((char)bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, m), m), _mm256_set1_epi8((char)val));
}

/* Q4_K and Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins; HIGH adds Q5_K's fifth bit. The
 * scales of a pass of weight rows are decoded once, not once per activation group. */
typedef struct { int32_t mpair[4]; int16_t sc[8]; float d, dmin; } k4_scales;
#define K4_DEC 1024     /* decoded super-blocks per pass (40 KiB of stack) */

#define K4_TILE(NAME, T, HIGH, QH) \
static void FN(NAME)(TILE_ARGS) { \
    const int nb = cols / QK_K; \
    const __m256i m4 = _mm256_set1_epi8(0xF); \
    k4_scales dec[K4_DEC]; \
    const int64_t pass = nb >= K4_DEC ? 1 : K4_DEC / nb; \
    for (int64_t p0 = r0; p0 < r1; p0 += pass) { \
      const int64_t p1 = p0 + pass < r1 ? p0 + pass : r1; \
      for (int64_t r = p0; r < p1; r++) { \
        const T *x = (const T *)(w + r * row_bytes); \
        for (int b = 0; b < nb; b++) { \
            k4_scales *k = &dec[(r - p0) * nb + b]; \
            int sc[8], mn[8]; \
            for (int j = 0; j < 8; j++) { scale_min_k4(j, x[b].scales, &sc[j], &mn[j]); k->sc[j] = (int16_t)sc[j]; } \
            for (int j = 0; j < 4; j++) \
                k->mpair[j] = (int32_t)((uint32_t)(uint16_t)mn[2 * j] | ((uint32_t)mn[2 * j + 1] << 16)); \
            k->d = F16(x[b].d); k->dmin = F16(x[b].dmin); \
        } \
      } \
      for (int g = g0; g < g1; g++) { \
        const pk_q8k *y = (const pk_q8k *)(act + (int64_t)g * gbytes); \
        const int ns = n - g * GR < GR ? n - g * GR : GR; \
        for (int64_t r = p0; r < p1; r++) { \
            const T *x = (const T *)(w + r * row_bytes); \
            const k4_scales *kd = &dec[(r - p0) * nb]; \
            __m256 acc[GR], e = _mm256_setzero_ps(); \
            for (int s = 0; s < GR; s++) acc[s] = _mm256_setzero_ps(); \
            for (int b = 0; b < nb; b++) { \
                const k4_scales *k = &kd[b]; \
                __m256i sumi[GR]; \
                for (int s = 0; s < GR; s++) sumi[s] = _mm256_setzero_si256(); \
                for (int j = 0; j < 4; j++) { \
                    const __m256i Q = ld(x[b].qs + 32 * j); \
                    __m256i lo = _mm256_and_si256(Q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(Q, 4), m4); \
                    if (HIGH) { \
                        const __m256i H = ld(x[b].QH); \
                        lo = _mm256_or_si256(lo, bit_to(H, 1 << (2 * j), 16)); \
                        hi = _mm256_or_si256(hi, bit_to(H, 2 << (2 * j), 16)); \
                    } \
                    const int s0 = k->sc[2 * j], s1 = k->sc[2 * j + 1]; \
                    _Pragma("GCC unroll 8") \
                    for (int s = 0; s < GR; s++) { \
                        sumi[s] = _mm256_add_epi32(sumi[s], dot_u8i8_scaled(lo, ld(y[b].qs[s] + 64 * j), s0, s0)); \
                        sumi[s] = _mm256_add_epi32(sumi[s], dot_u8i8_scaled(hi, ld(y[b].qs[s] + 64 * j + 32), s1, s1)); \
                    } \
                } \
                /* summ of each row: sum_k mn[k] * (bsums[2k] + bsums[2k+1]) */ \
                __m256i summ = _mm256_setzero_si256(); \
                for (int q = 0; q < 4; q++) \
                    summ = _mm256_add_epi32(summ, _mm256_madd_epi16(ld(y[b].bp[q]), _mm256_set1_epi32(k->mpair[q]))); \
                const __m256 dy = _mm256_loadu_ps(y[b].d); \
                float scl[GR] __attribute__((aligned(32))); \
                _mm256_store_ps(scl, _mm256_mul_ps(dy, _mm256_set1_ps(k->d))); \
                SPILL(); \
                e = _mm256_fnmadd_ps(_mm256_mul_ps(dy, _mm256_set1_ps(k->dmin)), _mm256_cvtepi32_ps(summ), e); \
                for (int s = 0; s < GR; s++) \
                    acc[s] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scl[s]), _mm256_cvtepi32_ps(sumi[s]), acc[s]); \
            } \
            finish(acc, e, out + (int64_t)g * GR * out_stride + r, out_stride, ns); \
        } \
      } \
    } \
}

K4_TILE(gemm_q4_k, blk_q4_k, 0, qs)   /* (Q4_K has no qh; never read) */
K4_TILE(gemm_q5_k, blk_q5_k, 1, qh)

static void FN(gemm_q6_k)(TILE_ARGS) {
    const int nb = cols / QK_K;
    const __m256i m4 = _mm256_set1_epi8(0xF), m30 = _mm256_set1_epi8(0x30);
    for (int g = g0; g < g1; g++) {
        const pk_q8k *y = (const pk_q8k *)(act + (int64_t)g * gbytes);
        const int ns = n - g * GR < GR ? n - g * GR : GR;
        for (int64_t r = r0; r < r1; r++) {
            const blk_q6_k *x = (const blk_q6_k *)(w + r * row_bytes);
            __m256 acc[GR];
            for (int s = 0; s < GR; s++) acc[s] = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                const int8_t *sc = x[b].scales;
                __m256i sumi[GR];
                for (int s = 0; s < GR; s++) sumi[s] = _mm256_setzero_si256();
                for (int h = 0; h < 2; h++) {
                    const __m256i A = ld(x[b].ql + 64 * h), B = ld(x[b].ql + 64 * h + 32), H = ld(x[b].qh + 32 * h);
                    const int8_t *s8 = sc + 8 * h;
                    const __m256i q1 = _mm256_or_si256(_mm256_and_si256(A, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30));
                    const __m256i q2 = _mm256_or_si256(_mm256_and_si256(B, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30));
                    _Pragma("GCC unroll 8")
                    for (int s = 0; s < GR; s++) {
                        const int8_t *yq = y[b].qs[s] + 128 * h;
                        sumi[s] = _mm256_add_epi32(sumi[s], dot_u8i8_scaled(q1, ld(yq), s8[0], s8[1]));
                        sumi[s] = _mm256_add_epi32(sumi[s], dot_u8i8_scaled(q2, ld(yq + 32), s8[2], s8[3]));
                    }
                    const __m256i q3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(A, 4), m4), _mm256_and_si256(H, m30));
                    const __m256i q4 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(B, 4), m4),
                                                       _mm256_and_si256(_mm256_srli_epi16(H, 2), m30));
                    _Pragma("GCC unroll 8")
                    for (int s = 0; s < GR; s++) {
                        const int8_t *yq = y[b].qs[s] + 128 * h;
                        sumi[s] = _mm256_add_epi32(sumi[s], dot_u8i8_scaled(q3, ld(yq + 64), s8[4], s8[5]));
                        sumi[s] = _mm256_add_epi32(sumi[s], dot_u8i8_scaled(q4, ld(yq + 96), s8[6], s8[7]));
                    }
                }
                /* stored value q in 0..63 stands for q - 32 */
                const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sc));
                float scl[GR] __attribute__((aligned(32)));
                _mm256_store_ps(scl, _mm256_mul_ps(_mm256_loadu_ps(y[b].d), _mm256_set1_ps(F16(x[b].d))));
                SPILL();
                for (int s = 0; s < GR; s++) {
                    const __m256i corr = _mm256_madd_epi16(ld(y[b].bsums[s]), sc16);
                    const __m256i si = _mm256_sub_epi32(sumi[s], _mm256_slli_epi32(corr, 5));
                    acc[s] = _mm256_fmadd_ps(_mm256_broadcast_ss(&scl[s]), _mm256_cvtepi32_ps(si), acc[s]);
                }
            }
            finish(acc, _mm256_setzero_ps(), out + (int64_t)g * GR * out_stride + r, out_stride, ns);
        }
    }
}

#endif

void FN(register_gemm)(kernel_table *t) {
    t->gemm_pack = FN(gemm_pack);
#ifdef CK_SIMD
    t->gemm[T_Q4_0] = FN(gemm_q4_0); t->gemm[T_Q4_1] = FN(gemm_q4_1);
    t->gemm[T_Q5_0] = FN(gemm_q5_0); t->gemm[T_Q5_1] = FN(gemm_q5_1);
    t->gemm[T_Q8_0] = FN(gemm_q8_0);
    t->gemm[T_Q4_K] = FN(gemm_q4_k); t->gemm[T_Q5_K] = FN(gemm_q5_k); t->gemm[T_Q6_K] = FN(gemm_q6_k);
#endif
}
