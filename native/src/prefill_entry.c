/* Entry points of the prefill's small ops (prefill.c, compiled per ISA): the call on the instruction
 * set dispatch.c has chosen. Kinds: 0 f32, 1 bf16; strides in elements. */
#include "common.h"

int cellar_isa(void);

#define DECLARE_PREFILL(sfx) \
    void pf_rms_norm_##sfx(int64_t, int, const void *, int64_t, int, const float *, float, void *, int64_t, int); \
    void pf_residual_##sfx(int64_t, int, float *, int64_t, const void *, int64_t, int, const float *, const float *, \
                           float, void *, int64_t, int); \
    void pf_rope_##sfx(int64_t, int, int, int, int, const void *, int64_t, int, const float *, float, float, \
                       const float *, const float *, int64_t, float *, int64_t); \
    void pf_glu_##sfx(int, int64_t, int, const void *, int64_t, int, const void *, int64_t, int, void *, int64_t, int); \
    void pf_mask_##sfx(int64_t, int64_t, int64_t, float *, int64_t, float, const int64_t *, const int64_t *, int64_t, \
                       const int64_t *, const int64_t *, int64_t); \
    void pf_round_##sfx(int64_t, int64_t, float *, int64_t, int); \
    void pf_cell_range_##sfx(int64_t, const int64_t *, const int64_t *, int64_t, int64_t, const int64_t *, \
                             const int64_t *, int64_t, int64_t *, int64_t *);
DECLARE_PREFILL(scalar)
#ifdef HAVE_AVX2
DECLARE_PREFILL(avx2)
#endif
#ifdef HAVE_AVX512
DECLARE_PREFILL(avx512)
DECLARE_PREFILL(avx512vnni)
#endif

#ifdef HAVE_AVX512
#define PICK_512(name, ...) case ISA_AVX512_VNNI: name##_avx512vnni(__VA_ARGS__); return; \
                            case ISA_AVX512: name##_avx512(__VA_ARGS__); return;
#else
#define PICK_512(name, ...)
#endif
#ifdef HAVE_AVX2
#define PICK_2(name, ...) case ISA_AVX2: name##_avx2(__VA_ARGS__); return;
#else
#define PICK_2(name, ...)
#endif
#define PICK(name, ...) switch (cellar_isa()) { PICK_512(name, __VA_ARGS__) PICK_2(name, __VA_ARGS__) \
                                                default: name##_scalar(__VA_ARGS__); return; }

/* out = rms_norm(a) * w, row by row */
void cellar_pf_rms_norm(int64_t rows, int cols, const void *a, int64_t as, int kind_a, const float *w, float eps,
                        void *out, int64_t os, int kind_out) {
    PICK(pf_rms_norm, rows, cols, a, as, kind_a, w, eps, out, os, kind_out)
}

/* x += (w_post ? rms_norm(a) * w_post : a); then with w_next, out = rms_norm(x) * w_next */
void cellar_pf_residual(int64_t rows, int cols, float *x, int64_t xs, const void *a, int64_t as, int kind_a,
                        const float *w_post, const float *w_next, float eps, void *out, int64_t os, int kind_out) {
    PICK(pf_residual, rows, cols, x, xs, a, as, kind_a, w_post, w_next, eps, out, os, kind_out)
}

/* out (f32) = rope([rms_norm(a head) * w_norm]) * scale, per row and head; cos/sin rows cs apart */
void cellar_pf_rope(int64_t rows, int heads, int head_dim, int n_rot, int neox, const void *a, int64_t as,
                    int kind_a, const float *w_norm, float eps, float scale, const float *cos, const float *sin,
                    int64_t cs, float *out, int64_t os) {
    PICK(pf_rope, rows, heads, head_dim, n_rot, neox, a, as, kind_a, w_norm, eps, scale, cos, sin, cs, out, os)
}

/* out = act(g) * u, act SiLU (op 0) or GELU(tanh) from ggml's f16 table (op 1) */
void cellar_pf_glu(int op, int64_t rows, int cols, const void *g, int64_t gs, int kind_g, const void *u, int64_t us,
                   int kind_u, void *out, int64_t os, int kind_out) {
    PICK(pf_glu, op, rows, cols, g, gs, kind_g, u, us, kind_u, out, os, kind_out)
}

/* attention scores s [n_rows, n] of cells cpos/cseq in place: s * scale + mask (0 or -inf); row j is query
 * row j % nq (softmax.c) */
void cellar_pf_mask(int64_t n_rows, int64_t nq, int64_t n, float *s, int64_t ss, float scale, const int64_t *qpos,
                    const int64_t *qbits, int64_t bits, const int64_t *cpos, const int64_t *cseq, int64_t window) {
    PICK(pf_mask, n_rows, nq, n, s, ss, scale, qpos, qbits, bits, cpos, cseq, window)
}

/* probabilities rounded in place to f16 (rnd 1) or bf16 (rnd 2) */
void cellar_pf_round(int64_t n_rows, int64_t n, float *s, int64_t ss, int rnd) {
    PICK(pf_round, n_rows, n, s, ss, rnd)
}

/* the cells [c0, c1) of n_cells that any of the nq query rows may see */
void cellar_pf_cell_range(int64_t nq, const int64_t *qpos, const int64_t *qbits, int64_t bits, int64_t n_cells,
                          const int64_t *cpos, const int64_t *cseq, int64_t window, int64_t *c0, int64_t *c1) {
    PICK(pf_cell_range, nq, qpos, qbits, bits, n_cells, cpos, cseq, window, c0, c1)
}

/* cosf and sinf of n f32 angles as the C library gives them (ggml's RoPE cache calls cosf and sinf):
 * engine/models/base.py's tables. Two loops, so the compiler does not fuse the pair into one sincosf. */
#include <math.h>
void cellar_trig_f32(int64_t n, const float *angles, float *cos_out, float *sin_out) {
    for (int64_t i = 0; i < n; i++) cos_out[i] = cosf(angles[i]);
    for (int64_t i = 0; i < n; i++) sin_out[i] = sinf(angles[i]);
}
