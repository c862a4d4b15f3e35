/* A whole decoder layer (llama or gemma3) for one token, in place on x: RMSNorm, the Q/K/V GEMVs,
 * [QK-norm], RoPE, the K/V rows stored into the cache, attention over the visible cells read in the
 * cache's own type, the output GEMV, [post-norm], residual, RMSNorm, gate/up GEMVs, SiLU or GELU(tanh)
 * gate, down GEMV, [post-norm], residual. Compiled once per ISA (see common.h); decode_entry.c picks.
 *
 * GEMVs are the same arithmetic as cellar_gemv_multi (x prepared once per activation format by the
 * table's quant_q8/quant_q8k, each row dotted by the table's dot), so their results are bitwise those
 * of the separate calls. The rest follows llama.cpp's CPU path (no flash attention): RMSNorm sums x*x
 * in double, scale = 1/sqrtf(mean + eps); an f16 (bf16) cache gets the query rounded to f16 (bf16)
 * before the QK dot and the softmax probabilities rounded the same way before the V sum; a q8_0 cache
 * gets the query quantized to q8_0 (as llama.cpp's flash attention does, which a q8_0 V needs there);
 * softmax in f32 with the max subtracted, the sum in double; scores scaled before the mask. The work
 * buffer is the layer's (allocated once by the caller): nothing is allocated here. */
#include <math.h>
#include <stdatomic.h>
#include "common.h"
#include "decode.h"
#include "pool.h"
#ifdef CK_SIMD
#include "simd.h"
#endif

#define NOCONTRACT __attribute__((optimize("fp-contract=off")))

static int act_kind(int type) {
    switch (type) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q8_0: return ACT_Q8;
    case T_Q2_K: case T_Q3_K: case T_Q4_K: case T_Q5_K: case T_Q6_K: return ACT_Q8K;
    default: return ACT_F32;
    }
}

/* Rows a GEMV task takes at a time: a phase's rows in 2 chunks a thread, each 16 KiB to 1 MiB of weights.
 * Coarse on purpose: a thread starting a chunk starts a cold stream (the hardware prefetchers ramp up
 * again; the software prefetch of simd.h ran on past the end of its last chunk), and that costs more
 * than finer chunks buy in balance. One process, settings alternating, Gemma-3 (2 threads): the layers
 * 3.45-3.62 ms a token at 8 chunks a thread and 256 KiB, 3.17-3.31 at 2 and 1 MiB, 4.38-4.53 at 32. */
static int64_t chunk_rows(int64_t rows, int64_t row_bytes, int nth) {
    int64_t c = rows / ((int64_t)nth * 2);
    const int64_t lo = (16384 + row_bytes - 1) / row_bytes, hi = ((1 << 20) + row_bytes - 1) / row_bytes;
    if (c > hi) c = hi;
    if (c < lo) c = lo;
    return c < 1 ? 1 : c;
}

static inline uint16_t to_f16(float f) {
#ifdef CK_SIMD
    return _cvtss_sh(f, 0);
#else
    return dec_f32_to_f16(f);
#endif
}

static inline float from_f16(uint16_t h) {
#ifdef CK_SIMD
    return _cvtsh_ss(h);
#else
    return f16_to_f32(h);
#endif
}

/* ---- GEMVs of one phase: several weights on one x, one pool job ---- */
typedef struct {
    const kernel_table *k;
    int n_w, cols;
    const dmat *m[3];
    const uint8_t *act[3];
    float *out[3];
    int64_t off[4], chunk;
    _Atomic int64_t next;
} gjob;

static void gemv_task(void *p, int ith, int nth) {
    gjob *j = p; (void)ith; (void)nth;
    const int64_t total = j->off[j->n_w];
    for (;;) {
        const int64_t r0 = atomic_fetch_add(&j->next, j->chunk);
        if (r0 >= total) break;
        const int64_t r1 = r0 + j->chunk < total ? r0 + j->chunk : total;
        int i = 0;
        while (j->off[i + 1] <= r0) i++;
        for (int64_t r = r0; r < r1; r++) {
            while (r >= j->off[i + 1]) i++;
            const dmat *m = j->m[i];
            const int64_t lr = r - j->off[i];
            j->out[i][lr] = j->k->dot[m->type](j->cols, (const uint8_t *)m->w + lr * m->row_bytes, j->act[i]);
        }
    }
}

static void gemv_phase(const kernel_table *k, uint8_t *a8, uint8_t *a8k, const float *x, int cols,
                       int n_w, const dmat *const *m, float *const *out) {
    gjob j = {.k = k, .n_w = n_w, .cols = cols};
    int need8 = 0, need8k = 0;
    j.off[0] = 0;
    for (int i = 0; i < n_w; i++) {
        const int kind = act_kind(m[i]->type);
        need8 |= kind == ACT_Q8; need8k |= kind == ACT_Q8K;
        j.m[i] = m[i]; j.out[i] = out[i];
        j.off[i + 1] = j.off[i] + m[i]->rows;
        j.act[i] = kind == ACT_Q8 ? a8 : kind == ACT_Q8K ? a8k : (const uint8_t *)x;
    }
    if (need8) k->quant_q8(cols, x, a8);
    if (need8k) k->quant_q8k(cols, x, a8k);
    const int nth = pool_threads();
    const int64_t total = j.off[n_w];
    j.chunk = chunk_rows(total, m[0]->row_bytes, nth);
    atomic_store(&j.next, 0);
    pool_run(gemv_task, &j, total > j.chunk ? nth : 1);
}

/* ---- small vector pieces ---- */
static NOCONTRACT void rms_norm(int n, const float *x, const float *w, float eps, float *y) {
    double sum = 0.0;
    for (int i = 0; i < n; i++) sum += (double)(x[i] * x[i]);
    const float mean = (float)(sum / n);
    const float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++) y[i] = (x[i] * scale) * w[i];
}

static NOCONTRACT void rope(float *v, int n_heads, int head_dim, int n_rot, int neox, const float *cs,
                            const float *sn) {
    const int half = n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *r = v + (int64_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
            const float a = r[i0], b = r[i1], c = cs[i], s = sn[i];
            r[i0] = fmaf(a, c, -(b * s));     /* as ggml's compiled rope: the first product fused */
            r[i1] = fmaf(a, s, b * c);
        }
    }
}

static void store_row(int kv_type, const float *src, int n, uint8_t *dst) {
    if (kv_type == KV_F16) {
        uint16_t *d = (uint16_t *)dst; int i = 0;
#ifdef CK_SIMD
        for (; i + 8 <= n; i += 8) _mm_storeu_si128((__m128i *)(d + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), 0));
#endif
        for (; i < n; i++) d[i] = to_f16(src[i]);
    } else if (kv_type == KV_BF16) {
        uint16_t *d = (uint16_t *)dst;
        for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
    } else {   /* q8_0 as engine/kv_cache.py's quantize_q8_0: d = amax/127 as f16, q = round half away */
        for (int b = 0; b < n / QK; b++) {
            const float *x = src + b * QK;
            uint8_t *blk = dst + b * 34;
            float amax = 0.f;
            for (int i = 0; i < QK; i++) amax = fmaxf(amax, fabsf(x[i]));
            const float d = amax / 127.0f, inv = d > 0.f ? 1.0f / d : 0.f;
            const uint16_t dh = to_f16(d);
            memcpy(blk, &dh, 2);
            for (int i = 0; i < QK; i++) {
                const float v = x[i] * inv;
                const float r = floorf(fabsf(v) + 0.5f);
                blk[2 + i] = (uint8_t)(int8_t)(v < 0 ? -r : r);
            }
        }
    }
}

#ifdef CK_SIMD
/* e^x for x in [-87.3, 88.3] (clamped): 2^n * e^r with |r| <= ln2/2, degree-6 polynomial (~1 ulp) */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3f)), _mm256_set1_ps(-87.3f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145752f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.42860677e-6f), r);
    __m256 p = _mm256_set1_ps(1.f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

/* s[i] = exp(s[i] - mx); returns the sum (in double) */
static double exp_sum(float *s, int n, float mx) {
    double sum = 0.0; int i = 0;
#ifdef CK_SIMD
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), _mm256_set1_ps(mx)));
        _mm256_storeu_ps(s + i, e);
        sum += (double)hsum_ps(e);
    }
#endif
    for (; i < n; i++) { s[i] = expf(s[i] - mx); sum += (double)s[i]; }
    return sum;
}

static void swiglu(int n, float *g, const float *u) {   /* g = silu(g) * u */
    int i = 0;
#ifdef CK_SIMD
    const __m256 one = _mm256_set1_ps(1.f);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void geglu(int n, float *g, const float *u, int exact) {  /* g = gelu_tanh(g) * u, ggml's f16 table */
    if (!exact) {
        dec_geglu_row(n, g, u);
        return;
    }
    for (int i = 0; i < n; i++) {
        const float x = g[i];
        g[i] = exact ? 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x))) * u[i]
                     : dec_geglu1(x, u[i]);
    }
}

/* acc[0..n) += p * row (row in the cache's type) */
static void axpy_row(int kv_type, int n, float p, const uint8_t *row, float *acc) {
    int i = 0;
    if (kv_type == KV_F16) {
        const uint16_t *v = (const uint16_t *)row;
#ifdef CK_SIMD
        const __m256 pp = _mm256_set1_ps(p);
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(pp, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + i))),
                                                      _mm256_loadu_ps(acc + i)));
#endif
        for (; i < n; i++) acc[i] += p * from_f16(v[i]);
    } else if (kv_type == KV_BF16) {
        const uint16_t *v = (const uint16_t *)row;
#ifdef CK_SIMD
        const __m256 pp = _mm256_set1_ps(p);
        for (; i + 8 <= n; i += 8) {
            const __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(
                _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(v + i))), 16));
            _mm256_storeu_ps(acc + i, _mm256_fmadd_ps(pp, f, _mm256_loadu_ps(acc + i)));
        }
#endif
        for (; i < n; i++) acc[i] += p * bf16_to_f32(v[i]);
    } else {
        for (int b = 0; b < n / QK; b++) {
            const uint8_t *blk = row + b * 34;
            uint16_t dh; memcpy(&dh, blk, 2);
            const float d = from_f16(dh);
            const int8_t *q = (const int8_t *)(blk + 2);
            float *a = acc + b * QK;
#ifdef CK_SIMD
            const __m256 pp = _mm256_set1_ps(p), dd = _mm256_set1_ps(d);
            for (int t = 0; t < QK; t += 8) {
                const __m256 v = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(q + t)))));
                _mm256_storeu_ps(a + t, _mm256_fmadd_ps(pp, v, _mm256_loadu_ps(a + t)));
            }
#else
            for (int t = 0; t < QK; t++) a[t] += p * (d * q[t]);
#endif
        }
    }
}

/* out[0..dv) = sum_i p[i] * V row vis[i] (at byte offset voff): with SIMD, 64 (32 for q8_0) output
 * values at a time held in registers across the cells */
static void v_sum(int kv_type, int n, const int32_t *vis, const float *p, const uint8_t *vc, int64_t row_bytes,
                  int64_t voff, int dv, float *out) {
#ifdef CK_SIMD
    if (kv_type != KV_Q8_0 && dv % 64 == 0) {
        for (int c0 = 0; c0 < dv; c0 += 64) {
            __m256 a[8];
            for (int t = 0; t < 8; t++) a[t] = _mm256_setzero_ps();
            for (int i = 0; i < n; i++) {
                const uint16_t *v = (const uint16_t *)(vc + vis[i] * row_bytes + voff) + c0;
                const __m256 pp = _mm256_set1_ps(p[i]);
                for (int t = 0; t < 8; t++) {
                    const __m128i h = _mm_loadu_si128((const __m128i *)(v + 8 * t));
                    const __m256 f = kv_type == KV_F16 ? _mm256_cvtph_ps(h)
                        : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
                    a[t] = _mm256_fmadd_ps(pp, f, a[t]);
                }
            }
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(out + c0 + 8 * t, a[t]);
        }
        return;
    }
    if (kv_type == KV_Q8_0) {
        for (int b = 0; b < dv / QK; b++) {
            __m256 a[4];
            for (int t = 0; t < 4; t++) a[t] = _mm256_setzero_ps();
            for (int i = 0; i < n; i++) {
                const uint8_t *blk = vc + vis[i] * row_bytes + voff + b * 34;
                uint16_t dh; memcpy(&dh, blk, 2);
                const __m256 pp = _mm256_set1_ps(p[i]), dd = _mm256_set1_ps(from_f16(dh));
                for (int t = 0; t < 4; t++) {
                    const __m256 v = _mm256_mul_ps(dd, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(
                        _mm_loadl_epi64((const __m128i *)(blk + 2 + 8 * t)))));
                    a[t] = _mm256_fmadd_ps(pp, v, a[t]);
                }
            }
            for (int t = 0; t < 4; t++) _mm256_storeu_ps(out + b * QK + 8 * t, a[t]);
        }
        return;
    }
#endif
    memset(out, 0, sizeof(float) * dv);
    for (int i = 0; i < n; i++) axpy_row(kv_type, dv, p[i], vc + vis[i] * row_bytes + voff, out);
}

/* ---- attention: one task per query head ---- */
typedef struct {
    const kernel_table *k;
    const dlayer *L;
    const float *q;            /* roped (and scaled) queries [n_head * head_dim] */
    uint8_t *qh;               /* per head: the query as the cache's dot wants it */
    float *scores;             /* [n_head][n_cells] */
    const int32_t *vis; int nvis;
    float *att;                /* [n_head * head_dim_v] */
    _Atomic int next;
} ajob;

/* the query as an f16 / bf16 cache's dot takes it: rounded to the cache's type (as it is, DEC_F32_ATTN) */
static void round_query(const dlayer *L, const float *qf, float *qr) {
    const int d = L->head_dim;
    if (L->flags & DEC_F32_ATTN) memcpy(qr, qf, sizeof(float) * d);
    else if (L->kv_type == KV_F16) for (int i = 0; i < d; i++) qr[i] = from_f16(to_f16(qf[i]));
    else for (int i = 0; i < d; i++) qr[i] = bf16_to_f32(f32_to_bf16(qf[i]));
}

#ifdef CK_SIMD
/* the table's dot_f16 inlined (two chains, then their sum) for hn queries q + u * qs on one f16 K row,
 * each K value converted once for all of them (hn a constant where it is inlined: the accumulators stay
 * in registers); d a multiple of 16 */
static inline __attribute__((always_inline)) void dots_f16(const uint16_t *kh, const float *q, int64_t qs, int d,
                                                           int hn, float *v) {
    __m256 a0[4], a1[4];
    for (int u = 0; u < hn; u++) a0[u] = a1[u] = _mm256_setzero_ps();
    for (int t = 0; t < d; t += 16) {
        const __m256 k0 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + t)));
        const __m256 k1 = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(kh + t + 8)));
        for (int u = 0; u < hn; u++) {
            a0[u] = _mm256_fmadd_ps(k0, _mm256_loadu_ps(q + u * qs + t), a0[u]);
            a1[u] = _mm256_fmadd_ps(k1, _mm256_loadu_ps(q + u * qs + t + 8), a1[u]);
        }
    }
    for (int u = 0; u < hn; u++) v[u] = hsum_ps(_mm256_add_ps(a0[u], a1[u]));
}
#endif

/* a head's scores s [n] (their max mx) -> probabilities in place: e^(s - mx) / their sum (in double), rounded
 * to an f16 / bf16 cache's type as llama.cpp rounds them before the V product (not with DEC_F32_ATTN) */
static void probabilities(const dlayer *L, float *s, int n, float mx) {
    const double sum = exp_sum(s, n, mx);
    const float inv = (float)(1.0 / sum);
    const int rnd = (L->flags & DEC_F32_ATTN) ? KV_Q8_0 : L->kv_type;      /* KV_Q8_0: no rounding */
    int i = 0;
#ifdef CK_SIMD
    if (rnd == KV_F16) {
        const __m256 iv = _mm256_set1_ps(inv);
        for (; i + 8 <= n; i += 8)
            _mm256_storeu_ps(s + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(_mm256_loadu_ps(s + i), iv), 0)));
    }
#endif
    for (; i < n; i++) {
        float p = s[i] * inv;
        if (rnd == KV_F16) p = from_f16(to_f16(p));
        else if (rnd == KV_BF16) p = bf16_to_f32(f32_to_bf16(p));
        s[i] = p;
    }
}

static void attend_head(const ajob *j, int h) {
    const dlayer *L = j->L;
    const int d = L->head_dim, dv = L->head_dim_v, kvh = h / (L->n_head / L->n_head_kv);
    const float *qf = j->q + (int64_t)h * d;
    const void *qarg; dot_fn dot; int64_t koff, voff;
    if (L->kv_type == KV_Q8_0) {
        act_q8 *qa = (act_q8 *)(j->qh + 4 * (int64_t)L->n_head * d) + (int64_t)h * (d / QK);
        j->k->quant_q8(d, qf, qa);
        qarg = qa; dot = j->k->dot[T_Q8_0];
        koff = (int64_t)kvh * (d / QK) * 34; voff = (int64_t)kvh * (dv / QK) * 34;
    } else {
        float *qr = (float *)j->qh + (int64_t)h * d;
        round_query(L, qf, qr);
        qarg = qr; dot = j->k->dot[L->kv_type == KV_F16 ? T_F16 : T_BF16];
        koff = (int64_t)kvh * d * 2; voff = (int64_t)kvh * dv * 2;
    }
    float *s = j->scores + (int64_t)h * L->n_cells;
    float *out = j->att + (int64_t)h * dv;
    const int n = j->nvis;
    if (n == 0) { memset(out, 0, sizeof(float) * dv); return; }
    /* q8_0 K against the f32 query (DEC_F32_ATTN): each K row dequantized first, as the torch path reads it */
    float *kf = L->kv_type == KV_Q8_0 && (L->flags & DEC_F32_ATTN) ? (float *)j->qh + (int64_t)h * d : NULL;
    float mx = -INFINITY;
    for (int i = 0; i < n; i++) {
        const uint8_t *kr = L->k_cache + j->vis[i] * L->k_row_bytes + koff;
        float v;
        if (kf) { j->k->deq[T_Q8_0](d, kr, kf); v = j->k->dot[T_F32](d, kf, qf); }
#ifdef CK_SIMD
        else if (L->kv_type == KV_F16 && d % 16 == 0) dots_f16((const uint16_t *)kr, qarg, 0, d, 1, &v);
#endif
        else v = dot(d, kr, qarg);
        v *= L->kq_scale;
        s[i] = v;
        mx = v > mx ? v : mx;
    }
    probabilities(L, s, n, mx);
    v_sum(L->kv_type, n, j->vis, s, L->v_cache, L->v_row_bytes, voff, dv, out);
}

static void attn_task(void *p, int ith, int nth) {
    ajob *j = p; (void)ith; (void)nth;
    for (;;) {
        const int h = atomic_fetch_add(&j->next, 1);
        if (h >= j->L->n_head) break;
        attend_head(j, h);
    }
}

/* ---- attention over many cells: three passes, each shared between the threads ----
 * A query head's K and V rows are those of its K/V head, which n_head / n_head_kv query heads share;
 * attend_head reads them once per query head, and past what the caches hold (a long context: the
 * weights stream through L3 every token) that is n_head / n_head_kv reads from memory. Here:
 *   1. scores: chunks of cells, each K row read once for every query head of its K/V head;
 *   2. softmax: a head at a time;
 *   3. V sums: per K/V head, VW output columns at a time for all of its query heads, each V row once.
 * Every value is made by the same operations in the same order as in attend_head (the dot's two chains
 * and their sum, the max, exp_sum, the rounding, one FMA per cell into each output): the same bits.
 * f16 / bf16 caches with SIMD and dv a multiple of 64 (attend_head's v_sum condition) only. */
#ifdef CK_SIMD
#define SCORE_CHUNK 32
#define SCORE_AHEAD 8              /* cells between a K / V row's prefetch and its use */
extern int cellar_decode_many_cells;   /* decode_entry.c: 0, or a fixed threshold (tests) */
#define VSUM_ACC 12                /* ymm accumulators a V-sum task keeps (AVX2 has 16 registers) */

static int many_ok(const dlayer *L) {
    return (L->kv_type == KV_F16 || L->kv_type == KV_BF16) && L->head_dim_v % 64 == 0;
}

/* the visible cells from which the three passes pay (measured on 2 threads, docs/speed.md): 256 where
 * the query heads split evenly between the threads (Gemma-3's 4), 32 where one pass per head leaves a
 * thread idle for a head's time (SmolLM2's 9: 5 / 4) */
static int many_cells(const dlayer *L) {
    if (cellar_decode_many_cells > 0) return cellar_decode_many_cells;
    return L->n_head % pool_threads() ? 32 : 256;
}

static void prepare_queries(const ajob *j) {   /* attend_head's query rounding, for every head */
    for (int h = 0; h < j->L->n_head; h++)
        round_query(j->L, j->q + (int64_t)h * j->L->head_dim, (float *)j->qh + (int64_t)h * j->L->head_dim);
}

/* the scores of query heads [h0, h0 + hn) at cell i from its f16 K row */
static inline __attribute__((always_inline)) void score_f16(const ajob *j, const uint16_t *kh, int h0, int hn,
                                                            int64_t i) {
    const dlayer *L = j->L;
    float v[4];
    dots_f16(kh, (const float *)j->qh + (int64_t)h0 * L->head_dim, L->head_dim, L->head_dim, hn, v);
    for (int u = 0; u < hn; u++) {
        v[u] *= L->kq_scale;
        j->scores[(int64_t)(h0 + u) * L->n_cells + i] = v[u];
    }
}

static void score_task(void *p, int ith, int nth) {
    ajob *j = p; (void)ith; (void)nth;
    const dlayer *L = j->L;
    const int d = L->head_dim, g = L->n_head / L->n_head_kv;
    const float *qr = (const float *)j->qh;
    const dot_fn dot = j->k->dot[L->kv_type == KV_F16 ? T_F16 : T_BF16];
    const int inline_f16 = L->kv_type == KV_F16 && d % 16 == 0;
    for (;;) {
        const int64_t i0 = atomic_fetch_add(&j->next, SCORE_CHUNK);
        if (i0 >= j->nvis) break;
        const int64_t i1 = i0 + SCORE_CHUNK < j->nvis ? i0 + SCORE_CHUNK : j->nvis;
        for (int64_t i = i0; i < i1; i++) {
            if (i + SCORE_AHEAD < j->nvis) {   /* a cell's K row from memory: asked for a few cells early */
                const char *ahead = (const char *)(L->k_cache + j->vis[i + SCORE_AHEAD] * L->k_row_bytes);
                for (int64_t b = 0; b < L->k_row_bytes; b += 64) _mm_prefetch(ahead + b, _MM_HINT_T0);
            }
            for (int kvh = 0; kvh < L->n_head_kv; kvh++) {
                const uint8_t *kr = L->k_cache + j->vis[i] * L->k_row_bytes + (int64_t)kvh * d * 2;
                for (int h0 = kvh * g; h0 < (kvh + 1) * g; h0 += 4) {
                    const int hn = (kvh + 1) * g - h0 < 4 ? (kvh + 1) * g - h0 : 4;
                    if (inline_f16) {
                        const uint16_t *kh = (const uint16_t *)kr;
                        switch (hn) {
                        case 4: score_f16(j, kh, h0, 4, i); break;
                        case 3: score_f16(j, kh, h0, 3, i); break;
                        case 2: score_f16(j, kh, h0, 2, i); break;
                        default: score_f16(j, kh, h0, 1, i); break;
                        }
                    } else {
                        for (int u = 0; u < hn; u++) {
                            float v = dot(d, kr, qr + (int64_t)(h0 + u) * d);
                            v *= L->kq_scale;
                            j->scores[(int64_t)(h0 + u) * L->n_cells + i] = v;
                        }
                    }
                }
            }
        }
    }
}

static void softmax_task(void *p, int ith, int nth) {
    ajob *j = p; (void)ith; (void)nth;
    const dlayer *L = j->L;
    const int n = j->nvis;
    for (;;) {
        const int h = atomic_fetch_add(&j->next, 1);
        if (h >= L->n_head) break;
        float *s = j->scores + (int64_t)h * L->n_cells;
        float mx = -INFINITY;
        for (int i = 0; i < n; i++) mx = s[i] > mx ? s[i] : mx;
        probabilities(L, s, n, mx);
    }
}

/* one task: K/V head kvh's query heads [h0, h0 + hn), output columns [c0, c0 + 8 * nv) */
static inline __attribute__((always_inline)) void vsum_block(const ajob *j, int kvh, int h0, int hn, int c0,
                                                             int nv) {
    const dlayer *L = j->L;
    const int dv = L->head_dim_v, f16 = L->kv_type == KV_F16;
    const int64_t voff = (int64_t)kvh * dv * 2;
    __m256 a[32];
    for (int t = 0; t < hn * nv; t++) a[t] = _mm256_setzero_ps();
    for (int i = 0; i < j->nvis; i++) {
        const uint16_t *v = (const uint16_t *)(L->v_cache + j->vis[i] * L->v_row_bytes + voff) + c0;
        if (i + SCORE_AHEAD < j->nvis)
            _mm_prefetch((const char *)(L->v_cache + j->vis[i + SCORE_AHEAD] * L->v_row_bytes + voff) + 2 * c0,
                         _MM_HINT_T0);
        for (int t = 0; t < nv; t++) {
            const __m128i hv = _mm_loadu_si128((const __m128i *)(v + 8 * t));
            const __m256 f = f16 ? _mm256_cvtph_ps(hv) : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(hv), 16));
            for (int u = 0; u < hn; u++)
                a[u * nv + t] = _mm256_fmadd_ps(_mm256_set1_ps(j->scores[(int64_t)(h0 + u) * L->n_cells + i]), f,
                                                a[u * nv + t]);
        }
    }
    for (int u = 0; u < hn; u++)
        for (int t = 0; t < nv; t++) _mm256_storeu_ps(j->att + (int64_t)(h0 + u) * dv + c0 + 8 * t, a[u * nv + t]);
}

/* the V-sum tasks: per K/V head, groups of query heads of gh, column chunks of 8 * nv */
static void vsum_shape(const dlayer *L, int *gh, int *nv) {
    const int g = L->n_head / L->n_head_kv;
    *gh = g < 4 ? g : 4;
    *nv = *gh == 1 ? 8 : *gh == 4 ? 2 : 4;       /* gh * nv <= VSUM_ACC, nv a power of two */
}

static void vsum_task(void *p, int ith, int nth) {
    ajob *j = p; (void)ith; (void)nth;
    const dlayer *L = j->L;
    const int g = L->n_head / L->n_head_kv, dv = L->head_dim_v;
    int gh, nv;
    vsum_shape(L, &gh, &nv);
    const int groups = (g + gh - 1) / gh, chunks = dv / (8 * nv);
    const int total = L->n_head_kv * groups * chunks;
    for (;;) {
        const int t = atomic_fetch_add(&j->next, 1);
        if (t >= total) break;
        const int kvh = t / (groups * chunks), r = t % (groups * chunks);
        const int h0 = kvh * g + (r / chunks) * gh, c0 = (r % chunks) * 8 * nv;
        const int hn = kvh * g + g - h0 < gh ? kvh * g + g - h0 : gh;
        switch (hn * 16 + nv) {   /* constant counts: the accumulators stay in registers */
#define VSUM_CASE(H, NV) case H * 16 + NV: vsum_block(j, kvh, h0, H, c0, NV); break;
        VSUM_CASE(1, 8) VSUM_CASE(1, 4) VSUM_CASE(1, 2) VSUM_CASE(1, 1)
        VSUM_CASE(2, 8) VSUM_CASE(2, 4) VSUM_CASE(2, 2) VSUM_CASE(2, 1)
        VSUM_CASE(3, 4) VSUM_CASE(3, 2) VSUM_CASE(3, 1)
        VSUM_CASE(4, 2) VSUM_CASE(4, 1)
#undef VSUM_CASE
        default: for (int u = 0; u < hn; u++) vsum_block(j, kvh, h0 + u, 1, c0, nv); break;
        }
    }
}

static void attend_many(ajob *j) {
    prepare_queries(j);
    const int nth = pool_threads();
    atomic_store(&j->next, 0);
    pool_run(score_task, j, nth);
    atomic_store(&j->next, 0);
    pool_run(softmax_task, j, nth);
    atomic_store(&j->next, 0);
    pool_run(vsum_task, j, nth);
}
#endif

static NOCONTRACT void add_into(int n, float *x, const float *y) {
    for (int i = 0; i < n; i++) x[i] = x[i] + y[i];
}

int FN(decode_layer)(const kernel_table *k, const dlayer *L, const dstep *S, float *x) {
    const dwork W = dec_layout(L);
    if (!L->work || L->work_bytes < W.total || S->cell < 0 || S->cell >= L->n_cells || S->n_kv < 0 ||
        S->n_kv > L->n_cells)
        return -1;
    const int E = L->n_embd, d = L->head_dim, gemma = (L->flags & DEC_GEMMA) != 0;
    const int64_t nq = (int64_t)L->n_head * d, nk = (int64_t)L->n_head_kv * d;
    const int64_t na = (int64_t)L->n_head * L->head_dim_v;
    int64_t widest = E > na ? E : na;
    if (L->n_ff > widest) widest = L->n_ff;
    uint8_t *wk = L->work;
    float *h = (float *)(wk + W.h), *q = (float *)(wk + W.qkv), *kk = q + nq, *vv = kk + nk;
    float *att = (float *)(wk + W.att), *o = (float *)(wk + W.o);
    float *gate = (float *)(wk + W.gate), *up = (float *)(wk + W.up);
    uint8_t *a8 = wk + W.act, *a8k = a8 + dec_align(widest / QK * (int64_t)sizeof(act_q8) + 64);

    /* attention */
    rms_norm(E, x, L->attn_norm, L->eps, h);
    {
        const dmat *m[3] = {&L->wq, &L->wk, &L->wv};
        float *out[3] = {q, kk, vv};
        gemv_phase(k, a8, a8k, h, E, 3, m, out);
    }
    if (L->bq) add_into((int)nq, q, L->bq);          /* as llama.cpp: the f32 product, then + bias */
    if (L->bk) add_into((int)nk, kk, L->bk);
    if (L->bv) add_into((int)((int64_t)L->n_head_kv * L->head_dim_v), vv, L->bv);
    if (gemma || (L->flags & DEC_QKNORM)) {
        for (int i = 0; i < L->n_head; i++) rms_norm(d, q + (int64_t)i * d, L->q_norm, L->eps, q + (int64_t)i * d);
        for (int i = 0; i < L->n_head_kv; i++) rms_norm(d, kk + (int64_t)i * d, L->k_norm, L->eps, kk + (int64_t)i * d);
    }
    rope(q, L->n_head, d, L->n_rot, (L->flags & DEC_NEOX) != 0, S->cos, S->sin);
    rope(kk, L->n_head_kv, d, L->n_rot, (L->flags & DEC_NEOX) != 0, S->cos, S->sin);
    if (L->q_scale != 1.0f)
        for (int64_t i = 0; i < nq; i++) q[i] *= L->q_scale;
    store_row(L->kv_type, kk, (int)nk, L->k_cache + S->cell * L->k_row_bytes);
    store_row(L->kv_type, vv, (int)((int64_t)L->n_head_kv * L->head_dim_v), L->v_cache + S->cell * L->v_row_bytes);
    int32_t *vis = (int32_t *)(wk + W.vis);
    int nvis = 0;
    if (S->cells) {
        for (int64_t i = 0; i < S->n_kv; i++) {
            const int64_t c = S->cells[i];
            if (c < 0 || c >= L->n_cells) return -1;
            if (S->mask[i] == 0.0f) vis[nvis++] = (int32_t)c;
        }
    } else {
        for (int64_t c = 0; c < S->n_kv; c++)
            if (S->mask[c] == 0.0f) vis[nvis++] = (int32_t)c;
    }
    {
        ajob j = {.k = k, .L = L, .q = q, .qh = wk + W.qh, .scores = (float *)(wk + W.scores), .vis = vis,
                  .nvis = nvis, .att = att};
        atomic_store(&j.next, 0);
#ifdef CK_SIMD
        if (nvis >= many_cells(L) && many_ok(L))
            attend_many(&j);
        else
#endif
        /* a few hundred cells per head are not worth a handoff to another thread */
        pool_run(attn_task, &j, (int64_t)nvis * L->n_head * d >= 65536 ? pool_threads() : 1);
    }
    {
        const dmat *m[1] = {&L->wo};
        float *out[1] = {o};
        gemv_phase(k, a8, a8k, att, (int)na, 1, m, out);
    }
    if (gemma) rms_norm(E, o, L->post_attn_norm, L->eps, o);
    add_into(E, x, o);

    /* feed-forward */
    rms_norm(E, x, L->ffn_norm, L->eps, h);
    {
        const dmat *m[2] = {&L->wgate, &L->wup};
        float *out[2] = {gate, up};
        gemv_phase(k, a8, a8k, h, E, 2, m, out);
    }
    if (gemma) geglu(L->n_ff, gate, up, (L->flags & DEC_F32_ATTN) != 0);
    else swiglu(L->n_ff, gate, up);
    {
        const dmat *m[1] = {&L->wdown};
        float *out[1] = {o};
        gemv_phase(k, a8, a8k, gate, L->n_ff, 1, m, out);
    }
    if (gemma) rms_norm(E, o, L->post_ffw_norm, L->eps, o);
    add_into(E, x, o);
    return 0;
}
