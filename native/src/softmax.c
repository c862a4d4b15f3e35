/* The prefill attention's mask and rounding around torch's softmax of a block of scores, in place: the
 * scores scaled and the mask added (0 or -inf) in one pass, the mask made here from the cells' positions
 * and sequence bits (kv_cache.CellMask's rule), so no f32 mask tensor exists; after the softmax, the
 * probabilities rounded to an f16 / bf16 cache's type (llama.cpp converts them to it for their product
 * with V). The same bits as torch's mul_, add_ and .to(f16).float(). Compiled once per ISA (common.h).
 * (ggml's own softmax, e^x by ggml_v_expf and the sum in double, was tried here: at the same speed it
 * moved greedy runs, Gemma-3's 'code' past a 0.71 llama.cpp gap; torch's softmax keeps the bits.) */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include "common.h"
#include "decode.h"

enum { RND_NONE = 0, RND_F16 = 1, RND_BF16 = 2 };

static inline int visible(int64_t qpos, int64_t qbits, int64_t cpos, int64_t cseq, int64_t window) {
    return (cseq & qbits) != 0 && cpos <= qpos && (window <= 0 || qpos - cpos < window);
}

static inline float round_to(int kind, float p) {
    if (kind == RND_F16) return f16_to_f32(dec_f32_to_f16(p));
    if (kind == RND_BF16) return bf16_to_f32(f32_to_bf16(p));
    return p;
}

static _Thread_local int32_t *tls_cp;
static _Thread_local int64_t tls_cp_n;

/* row r (n cells) -> r * scale + mask, in place (as torch's s.mul_(scale).add_(mask)); returns the max */
static float mask_row(float *r, int64_t n, float scale, int64_t qp, int64_t qb, const int64_t *cpos,
                      const int64_t *cseq, int64_t window, const int32_t *cp32) {
    float mx = -INFINITY;
    int64_t i = 0;
#ifdef CK_SIMD
    if (cp32) {       /* one sequence: cp32[i] is the cell's position, or INT32_MAX where it is not seen */
        const __m256i q = _mm256_set1_epi32((int32_t)qp), w = _mm256_set1_epi32((int32_t)(window > 0 ? window : 0));
        const __m256 sc = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-INFINITY);
        __m256 m8 = ninf;
        for (; i + 8 <= n; i += 8) {
            const __m256i c = _mm256_loadu_si256((const __m256i *)(cp32 + i));
            __m256i hide = _mm256_cmpgt_epi32(c, q);                                   /* in the future */
            if (window > 0) hide = _mm256_or_si256(hide, _mm256_cmpgt_epi32(_mm256_sub_epi32(q, c),
                                                                             _mm256_sub_epi32(w, _mm256_set1_epi32(1))));
            const __m256 v = _mm256_add_ps(_mm256_mul_ps(_mm256_loadu_ps(r + i), sc),
                                           _mm256_and_ps(_mm256_castsi256_ps(hide), ninf));
            _mm256_storeu_ps(r + i, v);
            m8 = _mm256_max_ps(m8, v);
        }
        float t[8]; _mm256_storeu_ps(t, m8);
        for (int k = 0; k < 8; k++) mx = t[k] > mx ? t[k] : mx;
    }
#endif
    for (; i < n; i++) {
        float v = r[i] * scale;
        v = v + (visible(qp, qb, cpos[i], cseq[i], window) ? 0.0f : -INFINITY);
        r[i] = v;
        mx = v > mx ? v : mx;
    }
    return mx;
}

/* rows [0, n_rows) of s (ss floats apart), n cells each (cells c0 + i of the cache): s * scale + the mask
 * (0 or -inf), in place. The query of s row j is row j % nq (a block's query rows repeated per head), at
 * position qpos[j % nq] with sequence bits qbits[j % nq] (or bits for all when qbits is NULL). */
void FN(pf_mask)(int64_t n_rows, int64_t nq, int64_t n, float *s, int64_t ss, float scale, const int64_t *qpos,
                 const int64_t *qbits, int64_t bits, const int64_t *cpos, const int64_t *cseq, int64_t window) {
    const int32_t *cp32 = NULL;
#ifdef CK_SIMD
    if (!qbits && n < INT32_MAX && window < INT32_MAX) {
        if (n > tls_cp_n) {
            free(tls_cp);
            tls_cp = malloc(sizeof(int32_t) * n);
            tls_cp_n = tls_cp ? n : 0;
        }
        if (tls_cp) {
            int ok = 1;
            for (int64_t i = 0; i < n && ok; i++) {
                const int seen = (cseq[i] & bits) != 0;
                ok = !seen || (cpos[i] >= 0 && cpos[i] < INT32_MAX);
                tls_cp[i] = seen ? (int32_t)cpos[i] : INT32_MAX;
            }
            for (int64_t q = 0; q < nq && ok; q++) ok = qpos[q] >= 0 && qpos[q] < INT32_MAX - 1;
            if (ok) cp32 = tls_cp;
        }
    }
#endif
    for (int64_t j = 0; j < n_rows; j++) {
        const int64_t q = j % nq;
        mask_row(s + j * ss, n, scale, qpos[q], qbits ? qbits[q] : bits, cpos, cseq, window, cp32);
    }
}

/* n_rows rows of n probabilities (ss floats apart) rounded in place to f16 (rnd 1) or bf16 (rnd 2), as
 * llama.cpp converts them for their product with an f16 / bf16 V */
void FN(pf_round)(int64_t n_rows, int64_t n, float *s, int64_t ss, int rnd) {
    for (int64_t j = 0; j < n_rows; j++) {
        float *r = s + j * ss;
        int64_t i = 0;
#ifdef CK_SIMD
        if (rnd == RND_F16)
            for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(r + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(r + i), 0)));
#endif
        for (; i < n; i++) r[i] = round_to(rnd, r[i]);
    }
}

/* the cells [*c0, *c1) of n_cells that any of the nq query rows may see (0, 0 when none) */
void FN(pf_cell_range)(int64_t nq, const int64_t *qpos, const int64_t *qbits, int64_t bits, int64_t n_cells,
                       const int64_t *cpos, const int64_t *cseq, int64_t window, int64_t *c0, int64_t *c1) {
    int64_t qmin = INT64_MAX, qmax = INT64_MIN, any = 0;
    for (int64_t q = 0; q < nq; q++) {
        qmin = qpos[q] < qmin ? qpos[q] : qmin;
        qmax = qpos[q] > qmax ? qpos[q] : qmax;
        any |= qbits ? qbits[q] : bits;
    }
    int64_t lo = -1, hi = -1;
    for (int64_t c = 0; c < n_cells && lo < 0; c++) {
        /* a cell after every query, behind every window, or of none of their sequences: no row sees it */
        if (cpos[c] > qmax || (window > 0 && qmin - cpos[c] >= window) || !(cseq[c] & any)) continue;
        for (int64_t q = 0; q < nq; q++)
            if (visible(qpos[q], qbits ? qbits[q] : bits, cpos[c], cseq[c], window)) { lo = c; break; }
    }
    for (int64_t c = n_cells - 1; c >= 0 && lo >= 0 && hi < 0; c--) {
        if (cpos[c] > qmax || (window > 0 && qmin - cpos[c] >= window) || !(cseq[c] & any)) continue;
        for (int64_t q = 0; q < nq; q++)
            if (visible(qpos[q], qbits ? qbits[q] : bits, cpos[c], cseq[c], window)) { hi = c; break; }
    }
    *c0 = lo < 0 ? 0 : lo;
    *c1 = lo < 0 ? 0 : hi + 1;
}
