/* AVX2 / AVX-512 helpers shared by the kernel sources (only included when CK_SIMD is set).
 * With AVX-512 VNNI the u8 x i8 dot products use vpdpbusd; otherwise vpmaddubsw + vpmaddwd. */
#ifndef CELLAR_SIMD_H
#define CELLAR_SIMD_H

#include <immintrin.h>

#if CK_ISA == ISA_AVX512_VNNI
#  define CK_VNNI 1
#endif

static inline float hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

/* 8 int32 lanes, lane i = sum of the 4 products q[4i..4i+3] * y[4i..4i+3]; q unsigned, y signed */
static inline __m256i dot_u8i8(__m256i q, __m256i y) {
#ifdef CK_VNNI
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), _mm256_set1_epi16(1));
#endif
}

/* both signed: move x's sign onto y */
static inline __m256i dot_i8i8(__m256i x, __m256i y) {
    return dot_u8i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* as dot_u8i8, the low 16 bytes' sums multiplied by s_lo and the high 16 bytes' by s_hi
 * (|q| < 64, |y| <= 127 keeps the 16-bit pair sums exact) */
static inline __m256i dot_u8i8_scaled(__m256i q, __m256i y, int s_lo, int s_hi) {
#ifdef CK_VNNI
    __m256i sc = _mm256_set_m128i(_mm_set1_epi32(s_hi), _mm_set1_epi32(s_lo));
    return _mm256_mullo_epi32(_mm256_dpbusd_epi32(_mm256_setzero_si256(), q, y), sc);
#else
    __m256i sc = _mm256_set_m128i(_mm_set1_epi16((short)s_hi), _mm_set1_epi16((short)s_lo));
    return _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), sc);
#endif
}

/* 32 bits -> 32 bytes, byte i = 0xFF when bit i is set */
static inline __m256i bytes_from_bits(const uint8_t *p) {
    uint32_t x; memcpy(&x, p, 4);
    const __m256i shuf = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                           0x0101010101010101, 0x0000000000000000);
    __m256i b = _mm256_shuffle_epi8(_mm256_set1_epi32((int)x), shuf);
    b = _mm256_or_si256(b, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe));
    return _mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1));
}

/* 16 bytes of nibbles -> 32 bytes: low nibbles first, then high nibbles */
static inline __m256i bytes_from_nibbles(const uint8_t *p) {
    __m128i t = _mm_loadu_si128((const __m128i *)p);
    __m256i b = _mm256_set_m128i(_mm_srli_epi16(t, 4), t);
    return _mm256_and_si256(b, _mm256_set1_epi8(0x0F));
}

#if CK_ISA >= ISA_AVX512
/* ---- 512-bit (qk.c: 64 values of a super-block per register) ---- */

/* the two halves of 16 int32 lanes added: lane i + lane i + 8 */
static inline __m256i halves_epi32(__m512i v) {
    return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}
#endif

/* Software prefetch: the weight bytes PF_BYTES past a row's, toward the next rows (a GEMV reads a
 * matrix row after row; the page cache's 4 KiB pages stop the hardware prefetcher at every page).
 * On the AVX-512 paths only, where it was measured (Xeon, 2 threads, decode: the layer matrices read
 * ~2-3x faster out of memory, the output head ~1.5x; 1-8 KiB tried, 2 KiB best); no cost in cache. */
#ifndef PF_BYTES
#  if CK_ISA >= ISA_AVX512
#    define PF_BYTES 2048
#  else
#    define PF_BYTES 0
#  endif
#endif

static inline void prefetch_ahead(const void *w, int bytes) {
    if (PF_BYTES > 0) {
        const char *p = (const char *)w + PF_BYTES;
        for (int o = 0; o < bytes; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
    }
}

static inline float f16s(f16_t h) { return _cvtsh_ss(h); }

#endif
