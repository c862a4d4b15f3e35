/* e^x as llama.cpp's CPU ops compute it for SiLU and softmax: ggml_v_expf of ggml-cpu/vec.h (adapted
 * there from an Arm optimized routine; max error ~1.5 ulp), in its AVX2 / SSE form: the same bits from
 * the 8-lane version and the one-value version (fmaf), so every ISA gives the same results. */
#ifndef CELLAR_GGML_EXP_H
#define CELLAR_GGML_EXP_H
#include <math.h>
#include <string.h>
#include <stdint.h>
#ifdef CK_SIMD
#include <immintrin.h>
#endif

static inline float ggml_expf1(float x) {
    const float r = 0x1.8p23f;
    const float z = fmaf(x, 0x1.715476p+0f, r);
    const float n = z - r;
    const float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
    uint32_t zi; memcpy(&zi, &z, 4);
    const uint32_t e = zi << 23;
    const uint32_t ki = e + 0x3f800000u;
    float k; memcpy(&k, &ki, 4);
    const float u = b * b;
    const float jj = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                          0x1.ffffecp-1f * b);
    if (!(fabsf(n) > 126.0f)) return fmaf(jj, k, k);
    const uint32_t g = n <= 0.0f ? 0x82000000u : 0u;
    const uint32_t s1i = g + 0x7f000000u, s2i = e - g;
    float s1, s2; memcpy(&s1, &s1i, 4); memcpy(&s2, &s2i, 4);
    if (fabsf(n) > 192.0f) return s1 * s1;
    return fmaf(s2, jj, s2) * s1;
}

#ifdef CK_SIMD
static inline __m256 ggml_expf8(__m256 x) {     /* ggml-cpu/vec.h ggml_v_expf, AVX2 */
    const __m256 r = _mm256_set1_ps(0x1.8p23f);
    const __m256 z = _mm256_fmadd_ps(x, _mm256_set1_ps(0x1.715476p+0f), r);
    const __m256 n = _mm256_sub_ps(z, r);
    const __m256 b = _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.7f7d1cp-20f),
                                      _mm256_fnmadd_ps(n, _mm256_set1_ps(0x1.62e4p-1f), x));
    const __m256i e = _mm256_slli_epi32(_mm256_castps_si256(z), 23);
    const __m256 k = _mm256_castsi256_ps(_mm256_add_epi32(e, _mm256_castps_si256(_mm256_set1_ps(1))));
    const __m256i c = _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n),
                                                        _mm256_set1_ps(126), _CMP_GT_OQ));
    const __m256 u = _mm256_mul_ps(b, b);
    const __m256 j = _mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_fmadd_ps(_mm256_set1_ps(0x1.0e4020p-7f), b,
                                                                     _mm256_set1_ps(0x1.573e2ep-5f)), u,
                                                     _mm256_fmadd_ps(_mm256_set1_ps(0x1.555e66p-3f), b,
                                                                     _mm256_set1_ps(0x1.fffdb6p-2f))),
                                     u, _mm256_mul_ps(_mm256_set1_ps(0x1.ffffecp-1f), b));
    if (!_mm256_movemask_ps(_mm256_castsi256_ps(c))) return _mm256_fmadd_ps(j, k, k);
    const __m256i g = _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(n, _mm256_setzero_ps(), _CMP_LE_OQ)),
                                       _mm256_set1_epi32((int)0x82000000u));
    const __m256 s1 = _mm256_castsi256_ps(_mm256_add_epi32(g, _mm256_set1_epi32(0x7f000000)));
    const __m256 s2 = _mm256_castsi256_ps(_mm256_sub_epi32(e, g));
    const __m256i d = _mm256_castps_si256(_mm256_cmp_ps(_mm256_andnot_ps(_mm256_set1_ps(-0.f), n),
                                                        _mm256_set1_ps(192), _CMP_GT_OQ));
    return _mm256_or_ps(
        _mm256_and_ps(_mm256_castsi256_ps(d), _mm256_mul_ps(s1, s1)),
        _mm256_andnot_ps(_mm256_castsi256_ps(d),
                         _mm256_or_ps(_mm256_and_ps(_mm256_castsi256_ps(c), _mm256_mul_ps(_mm256_fmadd_ps(s2, j, s2), s1)),
                                      _mm256_andnot_ps(_mm256_castsi256_ps(c), _mm256_fmadd_ps(k, j, k)))));
}
#endif

#endif
