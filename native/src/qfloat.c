/* Float weight types (F32 F16 BF16): dot with the f32 activation as is, row conversion, and
 * f32 -> bf16 rounding for dequantization into bf16 buffers. Compiled once per ISA. */
#include "common.h"
#ifdef CK_SIMD
#include "simd.h"

static float FN(dot_f32)(int cols, const void *vw, const void *vx) {
    const float *w = vw, *x = vx; __m256 a0 = _mm256_setzero_ps(), a1 = a0; int i = 0;
    for (; i + 16 <= cols; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < cols; i++) s += w[i] * x[i];
    return s;
}

static float FN(dot_f16)(int cols, const void *vw, const void *vx) {
    const f16_t *w = vw; const float *x = vx; __m256 a0 = _mm256_setzero_ps(), a1 = a0; int i = 0;
    for (; i + 16 <= cols; i += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i + 8))), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < cols; i++) s += f16s(w[i]) * x[i];
    return s;
}

static inline __m256 bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

static float FN(dot_bf16)(int cols, const void *vw, const void *vx) {
    const uint16_t *w = vw; const float *x = vx; __m256 a0 = _mm256_setzero_ps(), a1 = a0; int i = 0;
    for (; i + 16 <= cols; i += 16) {
        a0 = _mm256_fmadd_ps(bf16x8(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(bf16x8(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
    }
    float s = hsum_ps(_mm256_add_ps(a0, a1));
    for (; i < cols; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}

static void FN(deq_f16)(int cols, const void *vw, float *o) {
    const f16_t *w = vw; int i = 0;
    for (; i + 8 <= cols; i += 8) _mm256_storeu_ps(o + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(w + i))));
    for (; i < cols; i++) o[i] = f16s(w[i]);
}

#else

static float FN(dot_f32)(int cols, const void *vw, const void *vx) {
    const float *w = vw, *x = vx; float s = 0.f;
    for (int i = 0; i < cols; i++) s += w[i] * x[i];
    return s;
}

static float FN(dot_f16)(int cols, const void *vw, const void *vx) {
    const f16_t *w = vw; const float *x = vx; float s = 0.f;
    for (int i = 0; i < cols; i++) s += f16_to_f32(w[i]) * x[i];
    return s;
}

static float FN(dot_bf16)(int cols, const void *vw, const void *vx) {
    const uint16_t *w = vw; const float *x = vx; float s = 0.f;
    for (int i = 0; i < cols; i++) s += bf16_to_f32(w[i]) * x[i];
    return s;
}

static void FN(deq_f16)(int cols, const void *vw, float *o) {
    const f16_t *w = vw;
    for (int i = 0; i < cols; i++) o[i] = f16_to_f32(w[i]);
}

#endif

static void FN(deq_f32)(int cols, const void *vw, float *o) { memcpy(o, vw, (size_t)cols * 4); }

static void FN(deq_bf16)(int cols, const void *vw, float *o) {
    const uint16_t *w = vw;
    for (int i = 0; i < cols; i++) o[i] = bf16_to_f32(w[i]);
}

static void FN(to_bf16)(int n, const float *in, uint16_t *out) {
    for (int i = 0; i < n; i++) out[i] = f32_to_bf16(in[i]);
}

void FN(register_float)(kernel_table *t) {
    t->dot[T_F32] = FN(dot_f32); t->deq[T_F32] = FN(deq_f32);
    t->dot[T_F16] = FN(dot_f16); t->deq[T_F16] = FN(deq_f16);
    t->dot[T_BF16] = FN(dot_bf16); t->deq[T_BF16] = FN(deq_bf16);
    t->f32_to_bf16 = FN(to_bf16);
}
