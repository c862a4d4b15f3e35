/* The batched (prefill) layer's small ops over a ubatch, rows shared between the pool's threads:
 * RMSNorm, the residual add (with Gemma-3's post-norm before it and the next norm after it), RoPE on Q or
 * K (with Gemma-3's per-head norm before it and the query scale after it) and the gated feed-forward's
 * SiLU or GELU(tanh) product. Inputs and outputs are f32 or bf16 rows (PF_F32 / PF_BF16), so a bf16
 * matmul's product is read as it is and the next matmul's input is written in its type: no conversion
 * pass and no temporary. Compiled once per ISA (common.h); prefill_entry.c picks.
 *
 * Arithmetic as llama.cpp's CPU ops round it:
 * - RMSNorm: the f32 squares summed in double in order (four rows interleaved, each row's sum
 *   sequential), mean rounded to f32, scale = 1.0f / sqrtf(mean + eps), then (x * scale) * w;
 * - RoPE: x0*cos - x1*sin and x0*sin + x1*cos with the first product fused (ggml's compiled loop);
 * - SiLU: x / (1 + e^-x) with ggml_v_expf, the polynomial of ggml-cpu/vec.h (its AVX2 form, here in
 *   scalar fmaf where there is no SIMD: the same bits on every ISA), times up;
 * - GELU(tanh): ggml's f16 table (decode.h dec_geglu1). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "common.h"
#include "decode.h"
#include "pool.h"
#include "ggml_exp.h"

#define NOCONTRACT __attribute__((optimize("fp-contract=off")))

enum { PF_F32 = 0, PF_BF16 = 1 };
enum { PF_SILU = 0, PF_GELU = 1 };

/* ---- rows in and out ---- */
static inline void load_f32(int kind, const void *src, int n, float *dst) {
    if (kind == PF_F32) { if (dst != src) memcpy(dst, src, sizeof(float) * n); return; }
    const uint16_t *s = src;
    for (int i = 0; i < n; i++) dst[i] = bf16_to_f32(s[i]);
}

static inline void store_kind(int kind, const float *src, int n, void *dst) {
    if (kind == PF_F32) { if (dst != src) memcpy(dst, src, sizeof(float) * n); return; }
    uint16_t *d = dst;
    for (int i = 0; i < n; i++) d[i] = f32_to_bf16(src[i]);
}

static inline size_t kind_size(int kind) { return kind == PF_BF16 ? 2 : 4; }

static _Thread_local float *tls_buf;
static _Thread_local size_t tls_n;

static float *row_buf(size_t n) {           /* per-thread work rows, kept for the next call */
    if (n > tls_n) {
        free(tls_buf);
        tls_buf = aligned_alloc(64, (n * sizeof(float) + 63) / 64 * 64);
        tls_n = tls_buf ? n : 0;
    }
    return tls_buf;
}

/* ---- RMSNorm ---- */
/* sums of squares of k <= 4 rows of n values, each in double and in order (llama.cpp's loop) */
static NOCONTRACT void sum_sq(int k, int n, float *const *r, double *out) {
    if (k == 4) {
        const float *a = r[0], *b = r[1], *c = r[2], *d = r[3];
        double s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0;
        for (int i = 0; i < n; i++) {
            s0 += (double)(a[i] * a[i]); s1 += (double)(b[i] * b[i]);
            s2 += (double)(c[i] * c[i]); s3 += (double)(d[i] * d[i]);
        }
        out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
        return;
    }
    for (int j = 0; j < k; j++) {
        const float *a = r[j];
        double s = 0.0;
        for (int i = 0; i < n; i++) s += (double)(a[i] * a[i]);
        out[j] = s;
    }
}

static NOCONTRACT float rms_scale(double sum, int n, float eps) {
    const float mean = (float)(sum / n);
    return 1.0f / sqrtf(mean + eps);
}

static NOCONTRACT void scale_mul(int n, float *x, float s, const float *w) {   /* x = (x * s) * w */
    for (int i = 0; i < n; i++) x[i] = (x[i] * s) * w[i];
}

/* k <= 4 rows of n values normalized in place */
static void norm_rows(int k, int n, float *const *r, const float *w, float eps) {
    double s[4];
    sum_sq(k, n, r, s);
    for (int j = 0; j < k; j++) scale_mul(n, r[j], rms_scale(s[j], n, eps), w);
}

/* ---- the pool: rows in chunks through an atomic counter ---- */
typedef struct pf_job pf_job;
typedef void (*pf_rows_fn)(const pf_job *, int64_t r0, int64_t r1);
struct pf_job {
    pf_rows_fn fn;
    int64_t rows, chunk;
    _Atomic int64_t next;
    int cols, kind_a, kind_b, kind_out, heads, head_dim, n_rot, neox, op;
    float eps, scale;
    float *x; int64_t xs;                 /* residual rows (f32) */
    const void *a; int64_t as;            /* first input rows */
    const void *b; int64_t bs;            /* second input rows */
    void *out; int64_t os;                /* output rows */
    const float *w1, *w2;                 /* norm weights */
    const float *cos, *sin; int64_t cs;   /* per row: n_rot / 2 values */
};

static void pf_task(void *p, int ith, int nth) {
    pf_job *j = p; (void)ith; (void)nth;
    for (;;) {
        const int64_t r0 = atomic_fetch_add(&j->next, j->chunk);
        if (r0 >= j->rows) break;
        j->fn(j, r0, r0 + j->chunk < j->rows ? r0 + j->chunk : j->rows);
    }
}

static void pf_run(pf_job *j, int64_t values_per_row) {
    const int nth = pool_threads();
    int64_t c = j->rows / ((int64_t)nth * 4);
    c = (c + 3) / 4 * 4;                  /* whole groups of four rows */
    j->chunk = c < 4 ? 4 : c;
    atomic_store(&j->next, 0);
    /* below ~16k values a handoff to another thread costs more than it saves */
    pool_run(pf_task, j, j->rows > j->chunk && j->rows * values_per_row >= 16384 ? nth : 1);
}

/* ---- RMSNorm of rows: out = rms_norm(a) * w1 ---- */
static void rms_rows(const pf_job *j, int64_t r0, int64_t r1) {
    const int n = j->cols;
    float *buf = row_buf((size_t)4 * n);
    if (!buf) return;
    for (int64_t r = r0; r < r1; r += 4) {
        const int k = r1 - r < 4 ? (int)(r1 - r) : 4;
        float *rows[4];
        for (int t = 0; t < k; t++) {
            rows[t] = buf + (size_t)t * n;
            load_f32(j->kind_a, (const uint8_t *)j->a + (r + t) * j->as * kind_size(j->kind_a), n, rows[t]);
        }
        norm_rows(k, n, rows, j->w1, j->eps);
        for (int t = 0; t < k; t++)
            store_kind(j->kind_out, rows[t], n, (uint8_t *)j->out + (r + t) * j->os * kind_size(j->kind_out));
    }
}

/* ---- residual: x += (w1 ? rms_norm(a) * w1 : a); then, with w2, out = rms_norm(x) * w2 ---- */
static NOCONTRACT void add_into(int n, float *x, const float *y) {
    for (int i = 0; i < n; i++) x[i] = x[i] + y[i];
}

static void residual_rows(const pf_job *j, int64_t r0, int64_t r1) {
    const int n = j->cols;
    float *buf = row_buf((size_t)4 * n);
    if (!buf) return;
    for (int64_t r = r0; r < r1; r += 4) {
        const int k = r1 - r < 4 ? (int)(r1 - r) : 4;
        float *ys[4], *xs[4];
        for (int t = 0; t < k; t++) {
            ys[t] = buf + (size_t)t * n;
            xs[t] = j->x + (r + t) * j->xs;
            load_f32(j->kind_a, (const uint8_t *)j->a + (r + t) * j->as * kind_size(j->kind_a), n, ys[t]);
        }
        if (j->w1) norm_rows(k, n, ys, j->w1, j->eps);
        for (int t = 0; t < k; t++) add_into(n, xs[t], ys[t]);
        if (!j->w2) continue;
        for (int t = 0; t < k; t++) memcpy(ys[t], xs[t], sizeof(float) * n);
        norm_rows(k, n, ys, j->w2, j->eps);
        for (int t = 0; t < k; t++)
            store_kind(j->kind_out, ys[t], n, (uint8_t *)j->out + (r + t) * j->os * kind_size(j->kind_out));
    }
}

/* ---- RoPE of Q or K rows: per head [rms_norm * w1], rotated, [* scale]; out f32 ---- */
static NOCONTRACT void rope_head(float *v, int n_rot, int neox, const float *cs, const float *sn) {
    const int half = n_rot / 2;
    for (int i = 0; i < half; i++) {
        const int i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        const float a = v[i0], b = v[i1], c = cs[i], s = sn[i];
        v[i0] = fmaf(a, c, -(b * s));     /* as ggml's compiled rope: the first product fused */
        v[i1] = fmaf(a, s, b * c);
    }
}

static NOCONTRACT void scale_row(int n, float *v, float s) {
    for (int i = 0; i < n; i++) v[i] *= s;
}

static void rope_rows(const pf_job *j, int64_t r0, int64_t r1) {
    const int hd = j->head_dim, nh = j->heads, width = nh * hd;
    for (int64_t r = r0; r < r1; r++) {
        float *o = (float *)j->out + r * j->os;
        load_f32(j->kind_a, (const uint8_t *)j->a + r * j->as * kind_size(j->kind_a), width, o);
        if (j->w1)
            for (int h = 0; h < nh; h += 4) {
                const int k = nh - h < 4 ? nh - h : 4;
                float *rows[4];
                for (int t = 0; t < k; t++) rows[t] = o + (int64_t)(h + t) * hd;
                norm_rows(k, hd, rows, j->w1, j->eps);
            }
        const float *cs = j->cos + r * j->cs, *sn = j->sin + r * j->cs;
        for (int h = 0; h < nh; h++) rope_head(o + (int64_t)h * hd, j->n_rot, j->neox, cs, sn);
        if (j->scale != 1.0f) scale_row(width, o, j->scale);
    }
}

/* ---- gated feed-forward: out = act(a) * b ---- */
/* g = silu(g) * u (ggml_vec_swiglu_f32) */
static void swiglu_row(int n, float *g, const float *u) {
    int i = 0;
#ifdef CK_SIMD
    const __m256 one = _mm256_set1_ps(1.0f);
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 s = _mm256_div_ps(x, _mm256_add_ps(one, ggml_expf8(_mm256_sub_ps(_mm256_setzero_ps(), x))));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
#endif
    for (; i < n; i++) g[i] = g[i] / (1.0f + ggml_expf1(0.0f - g[i])) * u[i];
}

static void glu_rows(const pf_job *j, int64_t r0, int64_t r1) {
    const int n = j->cols;
    float *g = row_buf((size_t)2 * n);
    if (!g) return;
    float *u = g + n;
    for (int64_t r = r0; r < r1; r++) {
        /* f32 rows are read and written where they are (the product lands on gate: no copies) */
        float *gr = j->kind_out == PF_F32 ? (float *)j->out + r * j->os : g;
        const float *ur = u;
        load_f32(j->kind_a, (const uint8_t *)j->a + r * j->as * kind_size(j->kind_a), n, gr);
        if (j->kind_b == PF_F32) ur = (const float *)j->b + r * j->bs;
        else load_f32(j->kind_b, (const uint8_t *)j->b + r * j->bs * kind_size(j->kind_b), n, u);
        if (j->op == PF_GELU) dec_geglu_row(n, gr, ur);
        else swiglu_row(n, gr, ur);
        if (gr == g) store_kind(j->kind_out, g, n, (uint8_t *)j->out + r * j->os * kind_size(j->kind_out));
    }
}

/* ---- entry points (prefill_entry.c); strides in elements ---- */
void FN(pf_rms_norm)(int64_t rows, int cols, const void *a, int64_t as, int kind_a, const float *w, float eps,
                     void *out, int64_t os, int kind_out) {
    pf_job j = {.fn = rms_rows, .rows = rows, .cols = cols, .a = a, .as = as, .kind_a = kind_a, .w1 = w,
                .eps = eps, .out = out, .os = os, .kind_out = kind_out};
    pf_run(&j, cols);
}

void FN(pf_residual)(int64_t rows, int cols, float *x, int64_t xs, const void *a, int64_t as, int kind_a,
                     const float *w_post, const float *w_next, float eps, void *out, int64_t os, int kind_out) {
    pf_job j = {.fn = residual_rows, .rows = rows, .cols = cols, .x = x, .xs = xs, .a = a, .as = as,
                .kind_a = kind_a, .w1 = w_post, .w2 = w_next, .eps = eps, .out = out, .os = os, .kind_out = kind_out};
    pf_run(&j, cols);
}

void FN(pf_rope)(int64_t rows, int heads, int head_dim, int n_rot, int neox, const void *a, int64_t as, int kind_a,
                 const float *w_norm, float eps, float scale, const float *cos, const float *sin, int64_t cs,
                 float *out, int64_t os) {
    pf_job j = {.fn = rope_rows, .rows = rows, .heads = heads, .head_dim = head_dim, .n_rot = n_rot, .neox = neox,
                .a = a, .as = as, .kind_a = kind_a, .w1 = w_norm, .eps = eps, .scale = scale, .cos = cos, .sin = sin,
                .cs = cs, .out = out, .os = os};
    pf_run(&j, (int64_t)heads * head_dim);
}

void FN(pf_glu)(int op, int64_t rows, int cols, const void *g, int64_t gs, int kind_g, const void *u, int64_t us,
                int kind_u, void *out, int64_t os, int kind_out) {
    pf_job j = {.fn = glu_rows, .op = op, .rows = rows, .cols = cols, .a = g, .as = gs, .kind_a = kind_g, .b = u,
                .bs = us, .kind_b = kind_u, .out = out, .os = os, .kind_out = kind_out};
    pf_run(&j, cols);
}
