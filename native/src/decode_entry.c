/* Entry points of the one-call decode layer (decode.c, compiled per ISA): the check of a layer's
 * description, its work-buffer size, and the call on the instruction set dispatch.c has chosen. */
#include <math.h>
#include "common.h"
#include "decode.h"

const kernel_table *cellar_kernels(void);
int cellar_isa(void);
int cellar_supports(int type, int64_t cols);

#define DECLARE_DECODE(sfx) int decode_layer_##sfx(const kernel_table *, const dlayer *, const dstep *, float *);
DECLARE_DECODE(scalar)
#ifdef HAVE_AVX2
DECLARE_DECODE(avx2)
#endif
#ifdef HAVE_AVX512
DECLARE_DECODE(avx512)
DECLARE_DECODE(avx512vnni)
#endif

uint16_t cellar_gelu_f16[65536];

__attribute__((constructor)) static void decode_init(void) {
    /* ggml's GELU(tanh) table: the f32 formula on every half, rounded to a half */
    for (int i = 0; i < 65536; i++) {
        const float x = f16_to_f32((f16_t)i);
        const float y = 0.5f * x * (1.0f + tanhf(0.79788456080286535587989211986876f * x * (1.0f + 0.044715f * x * x)));
        cellar_gelu_f16[i] = dec_f32_to_f16(y);
    }
}

int64_t cellar_decode_work_bytes(const dlayer *L) { return dec_layout(L).total; }

/* visible cells from which a layer's attention runs in three passes (decode.c's attend_many) instead of
 * one per query head; 0: chosen per layer (decode.c's many_cells). The same bits either way, so only
 * speed (and the tests comparing the two) care */
int cellar_decode_many_cells = 0;

int cellar_set_decode_many_cells(int n) {
    const int before = cellar_decode_many_cells;
    cellar_decode_many_cells = n < 0 ? 0 : n;
    return before;
}

static int mat_ok(const dmat *m, int64_t rows, int64_t cols) {
    return m->w && m->rows == rows && m->row_bytes > 0 && cellar_supports(m->type, cols);
}

/* 0 when the layer can run here; -1 otherwise (the caller keeps its own path) */
int cellar_decode_check(const dlayer *L) {
    if (L->n_embd <= 0 || L->n_head <= 0 || L->n_head_kv <= 0 || L->n_head % L->n_head_kv || L->head_dim <= 0 ||
        L->head_dim_v <= 0 || L->n_ff <= 0 || L->n_rot <= 0 || L->n_rot > L->head_dim || L->n_rot % 2 ||
        L->kv_type < KV_F16 || L->kv_type > KV_Q8_0 || L->n_cells <= 0 || L->n_cells > (1 << 30))
        return -1;
    if (L->kv_type == KV_Q8_0 && (L->head_dim % QK || L->head_dim_v % QK)) return -1;
    const int64_t E = L->n_embd, nq = (int64_t)L->n_head * L->head_dim, nk = (int64_t)L->n_head_kv * L->head_dim;
    const int64_t nv = (int64_t)L->n_head_kv * L->head_dim_v, na = (int64_t)L->n_head * L->head_dim_v;
    if (!mat_ok(&L->wq, nq, E) || !mat_ok(&L->wk, nk, E) || !mat_ok(&L->wv, nv, E) || !mat_ok(&L->wo, E, na) ||
        !mat_ok(&L->wgate, L->n_ff, E) || !mat_ok(&L->wup, L->n_ff, E) || !mat_ok(&L->wdown, E, L->n_ff))
        return -1;
    if (!L->attn_norm || !L->ffn_norm || !L->k_cache || !L->v_cache) return -1;
    if ((L->flags & DEC_GEMMA) && (!L->q_norm || !L->k_norm || !L->post_attn_norm || !L->post_ffw_norm)) return -1;
    if ((L->flags & DEC_QKNORM) && (!L->q_norm || !L->k_norm)) return -1;
    const int64_t kb = L->kv_type == KV_Q8_0 ? nk / QK * 34 : nk * 2, vb = L->kv_type == KV_Q8_0 ? nv / QK * 34 : nv * 2;
    if (L->k_row_bytes < kb || L->v_row_bytes < vb) return -1;
    if (!L->work || L->work_bytes < dec_layout(L).total) return -1;
    return 0;
}

/* x [n_embd] f32 through layer L for one token; 0, or -1 for a bad step */
int cellar_decode_layer(const dlayer *L, const dstep *S, float *x) {
    const kernel_table *k = cellar_kernels();
    switch (cellar_isa()) {
#ifdef HAVE_AVX512
    case ISA_AVX512_VNNI: return decode_layer_avx512vnni(k, L, S, x);
    case ISA_AVX512: return decode_layer_avx512(k, L, S, x);
#endif
#ifdef HAVE_AVX2
    case ISA_AVX2: return decode_layer_avx2(k, L, S, x);
#endif
    default: return decode_layer_scalar(k, L, S, x);
    }
}

/* x through every layer of a one-token step in one call: layer i is L[i] with step S[i] (the layers of
 * one cache share a step). 0, or -(i + 1) where layer i refused its step (nothing after it ran). One
 * call a token instead of one a layer: the caller's per-layer overhead (ctypes, checks) goes. */
int cellar_decode_layers(int n, const dlayer *const *L, const dstep *const *S, float *x) {
    for (int i = 0; i < n; i++)
        if (cellar_decode_layer(L[i], S[i], x) != 0) return -(i + 1);
    return 0;
}

/* g[i] = GELU(tanh)(g[i]) * u[i] for n values as the decode layer's geglu does (ggml's f16 table, 0 at
 * x <= -10, x at x >= 10): the prefill's GEGLU over a whole ubatch in one pass */
void cellar_geglu(int64_t n, float *g, const float *u) {
    for (int64_t i = 0; i < n; i++) g[i] = dec_geglu1(g[i], u[i]);
}
