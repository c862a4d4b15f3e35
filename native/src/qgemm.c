/* Prefill GEMM in int8 for CPUs without a bf16 matmul unit that beats it (AMX machines keep the bf16
 * matmul): out[s, r] = x[s] . W[r] for a ubatch. Two kernels: AVX-512 VNNI (vpdpbusd: Zen 4, Ice Lake)
 * and AVX2 (vpmaddubsw: Zen 2/3, Haswell on; also the AVX-512 build without VNNI). They give the same
 * bits: the integer sums are exact and the float steps are the same, lane for lane.
 *
 * Weights: a panel of 32 weight rows is unpacked, by the thread that multiplies it, from the GGUF
 * blocks into bytes u (0..255) per 32-value block with one float scale and one float offset per row and
 * block, w = d * u + o exactly (Q4_1: o = m; Q4_K: d = d_sb * sc, o = -dmin * m; ...; where the offset
 * is a whole number c of d (Q4_0 8, Q5_0 16, Q8_0 128, Q6_K 32) it goes into the integer sums instead,
 * as -c x the sum of x's ints; Q6_K keeps a scale per 16-value half, in d and o). A block's bytes are
 * stored four values of one row in a dword, 32 rows side by side (pblk), so one vpdpbusd adds four
 * products into each of 16 rows' lanes.
 * Activations: each row of x quantized once per call in blocks of 32 as the GEMV's quant_q8 does
 * (int8, d = amax / 127 and s = d * sum, both rounded to f16: llama.cpp's q8_1).
 * out[s, r] = sum over blocks b of  xd[s,b] * d[r,b] * (int sum of u * xq)  +  xs[s,b] * o[r,b].
 * VNNI tile: QR activation rows x 32 weight rows, 2 QR int32 accumulators per block, converted and
 * folded into 2 QR float ones; AVX2 tile: 2 rows x 16 weight rows, a few quads' products summed in int16
 * first (u <= 15: 8 quads; <= 31: 4; <= 63: 2, under vpmaddubsw's 32767), Q8_0 left to dequantize +
 * matmul. A panel (K/32 blocks of 1280 bytes) stays in L1/L2 while every row of x streams past it.
 *
 * The scalar build leaves the table's entry NULL and the caller takes dequantize + matmul. */
#include <float.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include "common.h"
#include "pool.h"

#if CK_ISA >= ISA_AVX2
#include "simd.h"

#define QR 4          /* activation rows per tile */
#define PR 32         /* weight rows per panel */
#define QG_MAX 8      /* weights in one call */

typedef struct { uint32_t q[8][PR]; float d[PR]; float o[PR]; } pblk;   /* 1280 bytes */

/* one 32-value block of one row of x: quant_q8's d and s, and the int sums of each 16-value half (for
 * the offsets that are a whole number of d: Q4_0 Q5_0 Q8_0 Q6_K, added in the integer domain) */
typedef struct { float d, s; int32_t sum16[2]; int8_t qs[QK]; } qact;   /* 48 bytes */

/* ---- unpacking: one 32-value block of one weight row to bytes, scale and offset ---- */

/* block b of row j: its bytes into rm[b], in the row's own order (transpose8 turns 8 rows at a time into
 * the panel's), its scale and offset into the panel */
static inline void put(pblk *P, int b, int j, __m256i u, float d, float o, __m256i *rm) {
    _mm256_store_si256(rm + b, u);
    P[b].d[j] = d; P[b].o[j] = o;
}
#define PUT(b, u, d, o) put(p, (b), j, (u), (d), (o), rm)

/* 0x10 where bit i of the 32 bits is set (simd.h's bytes_from_bits gives 0xFF) */
static inline __m256i high_bits(const uint8_t *qh) {
    return _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
}

/* row `row` of the weight, all blocks: the bytes into rm (put), scales and offsets into column j of the
 * panel's blocks p[0..cols/32) */
static void unpack_row(int type, int cols, const uint8_t *row, pblk *p, int j, __m256i *rm) {
    const int nb = cols / QK;
    switch (type) {
    case T_Q4_0: { const blk_q4_0 *x = (const void *)row;
        for (int b = 0; b < nb; b++) { const float d = f16s(x[b].d); PUT(b, bytes_from_nibbles(x[b].qs), d, 0.f); }
        break; }
    case T_Q4_1: { const blk_q4_1 *x = (const void *)row;
        for (int b = 0; b < nb; b++) PUT(b, bytes_from_nibbles(x[b].qs), f16s(x[b].d), f16s(x[b].m));
        break; }
    case T_Q5_0: { const blk_q5_0 *x = (const void *)row;
        for (int b = 0; b < nb; b++) {
            const float d = f16s(x[b].d);
            PUT(b, _mm256_or_si256(bytes_from_nibbles(x[b].qs), high_bits(x[b].qh)), d, 0.f);
        }
        break; }
    case T_Q5_1: { const blk_q5_1 *x = (const void *)row;
        for (int b = 0; b < nb; b++)
            PUT(b, _mm256_or_si256(bytes_from_nibbles(x[b].qs), high_bits(x[b].qh)), f16s(x[b].d), f16s(x[b].m));
        break; }
    case T_Q8_0: { const blk_q8_0 *x = (const void *)row;
        for (int b = 0; b < nb; b++) {
            const float d = f16s(x[b].d);
            PUT(b, _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x[b].qs), _mm256_set1_epi8((char)0x80)),
                d, 0.f);
        }
        break; }
    case T_Q6_K: {   /* u = q (0..63); two 16-value halves per block, scales d * sc in d[] and o[] */
        const blk_q6_k *x = (const void *)row;
        const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
        for (int sb = 0; sb < cols / QK_K; sb++) {
            const float d = f16s(x[sb].d);
            for (int c = 0; c < 2; c++) {
                const uint8_t *ql = x[sb].ql + 64 * c, *qh = x[sb].qh + 32 * c;
                const int8_t *sc = x[sb].scales + 8 * c;
                const __m256i L0 = _mm256_loadu_si256((const __m256i *)ql), L1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
                const __m256i H = _mm256_loadu_si256((const __m256i *)qh);
                const __m256i g[4] = {
                    _mm256_or_si256(_mm256_and_si256(L0, m4), _mm256_and_si256(_mm256_slli_epi16(H, 4), m30)),
                    _mm256_or_si256(_mm256_and_si256(L1, m4), _mm256_and_si256(_mm256_slli_epi16(H, 2), m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L0, 4), m4), _mm256_and_si256(H, m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(L1, 4), m4), _mm256_and_si256(_mm256_srli_epi16(H, 2), m30)),
                };
                for (int k = 0; k < 4; k++)
                    PUT(8 * sb + 4 * c + k, g[k], d * (float)sc[2 * k], d * (float)sc[2 * k + 1]);
            }
        }
        break; }
    case T_Q4_K: case T_Q5_K: {
        const int five = type == T_Q5_K;
        const __m256i m4 = _mm256_set1_epi8(0x0F), m16 = _mm256_set1_epi8(0x10);
        for (int s = 0; s < cols / QK_K; s++) {
            const uint8_t *scales, *qs, *qh = NULL; float d, dmin;
            if (five) { const blk_q5_k *x = (const void *)row; x += s;
                        scales = x->scales; qs = x->qs; qh = x->qh; d = f16s(x->d); dmin = f16s(x->dmin); }
            else { const blk_q4_k *x = (const void *)row; x += s;
                   scales = x->scales; qs = x->qs; d = f16s(x->d); dmin = f16s(x->dmin); }
            const __m256i H = five ? _mm256_loadu_si256((const __m256i *)qh) : _mm256_setzero_si256();
            for (int c = 0; c < 4; c++) {
                const __m256i Q = _mm256_loadu_si256((const __m256i *)(qs + 32 * c));
                __m256i lo = _mm256_and_si256(Q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(Q, 4), m4);
                if (five) {
                    const __m256i b1 = _mm256_set1_epi8((char)(1 << (2 * c))), b2 = _mm256_set1_epi8((char)(2 << (2 * c)));
                    lo = _mm256_or_si256(lo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(H, b1), b1), m16));
                    hi = _mm256_or_si256(hi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(H, b2), b2), m16));
                }
                int sc, mn;
                scale_min_k4(2 * c, scales, &sc, &mn);
                PUT(8 * s + 2 * c, lo, d * (float)sc, -dmin * (float)mn);
                scale_min_k4(2 * c + 1, scales, &sc, &mn);
                PUT(8 * s + 2 * c + 1, hi, d * (float)sc, -dmin * (float)mn);
            }
        }
        break; }
    }
}

/* a panel's rows 8h..8h+7 from their row-order copies rm[r * nb + b] (r < 8, put's rm): each block's
 * 8 rows x 8 dwords transposed in registers. Storing each row's block straight into the panel's order
 * took 8 scattered dword stores, and unpacking cost more than the products at short prompts (Gemma-3
 * pp16: 28 % of the time in unpack_row); a 16-row 512-bit version measured no faster */
static void transpose8(int nb, const __m256i *rm, pblk *P, int h) {
    for (int b = 0; b < nb; b++) {
        __m256i r[8], t[8], u[8];
        for (int k = 0; k < 8; k++) r[k] = _mm256_load_si256(rm + (size_t)k * nb + b);
        for (int k = 0; k < 4; k++) {
            t[2 * k] = _mm256_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
            t[2 * k + 1] = _mm256_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
        }
        for (int k = 0; k < 2; k++) {    /* u[4k + q]: quads q and q + 4 of rows 4k..4k+3 */
            u[4 * k] = _mm256_unpacklo_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 1] = _mm256_unpackhi_epi64(t[4 * k], t[4 * k + 2]);
            u[4 * k + 2] = _mm256_unpacklo_epi64(t[4 * k + 1], t[4 * k + 3]);
            u[4 * k + 3] = _mm256_unpackhi_epi64(t[4 * k + 1], t[4 * k + 3]);
        }
        for (int q = 0; q < 4; q++) {
            _mm256_store_si256((__m256i *)(P[b].q[q] + 8 * h), _mm256_permute2x128_si256(u[q], u[4 + q], 0x20));
            _mm256_store_si256((__m256i *)(P[b].q[q + 4] + 8 * h), _mm256_permute2x128_si256(u[q], u[4 + q], 0x31));
        }
    }
}

static int qgemm_type(int type) {
    switch (type) {
    case T_Q4_0: case T_Q4_1: case T_Q5_0: case T_Q5_1: case T_Q4_K: case T_Q5_K: case T_Q6_K: return 1;
#if CK_ISA == ISA_AVX512_VNNI
    case T_Q8_0: return 1;   /* u = q + 128: a pair's products would saturate vpmaddubsw's int16 */
#endif
    default: return 0;
    }
}

/* w = d * (u - c) with c a whole number: -c x the sum of x's ints starts the integer sums (exact, as the
 * GEMV's own arithmetic is); 0: a float offset o per row and block, times s */
static int int_offset(int type) {
    switch (type) {
    case T_Q4_0: return 8;
    case T_Q5_0: return 16;
    case T_Q8_0: return 128;
    case T_Q6_K: return 32;
    default: return 0;
    }
}

/* a block of x with a NaN or an infinity: its products are NaN (d and s NaN, the ints 0), the same bits on
 * every build; quantized, a NaN lane became INT_MIN, which the builds narrow differently and whose sums
 * overflow */
static inline void nonfinite(qact *y) {
    memset(y->qs, 0, sizeof y->qs);
    y->sum16[0] = y->sum16[1] = 0;
    y->d = y->s = NAN;
}

#if CK_ISA == ISA_AVX512_VNNI
/* ---- activations: quant_q8's numbers (q32.c), 32 values at a time ---- */
static inline __m512 load16(const void *x, int bf16, int64_t i) {   /* 16 values of an f32 or bf16 row */
    if (!bf16) return _mm512_loadu_ps((const float *)x + i);
    const __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)x + i));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static void quant_rows(int cols, const void *x, int bf16, int64_t x_stride, int s0, int s1, qact *out) {
    const int nb = cols / QK;
    for (int s = s0; s < s1; s++) {
        const void *xr = (const uint8_t *)x + (int64_t)s * x_stride * (bf16 ? 2 : 4);
        qact *y = out + (int64_t)s * nb;
        for (int b = 0; b < nb; b++) {
            const __m512 v0 = load16(xr, bf16, 32 * b), v1 = load16(xr, bf16, 32 * b + 16);
            const __m512 big = _mm512_set1_ps(FLT_MAX);
            if ((_mm512_cmp_ps_mask(_mm512_abs_ps(v0), big, _CMP_LE_OQ) & _mm512_cmp_ps_mask(_mm512_abs_ps(v1), big, _CMP_LE_OQ)) != 0xFFFF) {
                nonfinite(y + b);
                continue;
            }
            const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
            const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
            /* lrintf: round to nearest even, as cvtps2dq in the default rounding mode */
            const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, _mm512_set1_ps(id)));
            const __m512i q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, _mm512_set1_ps(id)));
            _mm_storeu_si128((__m128i *)y[b].qs, _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128((__m128i *)(y[b].qs + 16), _mm512_cvtepi32_epi8(q1));
            const int s0 = _mm512_reduce_add_epi32(q0), s1 = _mm512_reduce_add_epi32(q1), sum = s0 + s1;
            y[b].sum16[0] = s0; y[b].sum16[1] = s1;
            y[b].d = _cvtsh_ss(_cvtss_sh(d, 0));
            y[b].s = _cvtsh_ss(_cvtss_sh(d * (float)sum, 0));
        }
    }
}

/* ---- the tile: rows [0, mr) of X (nb blocks a row) against one panel P ---- */
/* 16 floats to bf16, rounded to nearest even (the f32 -> bf16 of common.h, NaN aside: products are finite) */
static inline __m256i to_bf16(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff), _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    return _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16));
}

static inline void store32(void *out, int bf16, int64_t i, __m512 a, __m512 b) {
    if (bf16) {
        uint16_t *o = (uint16_t *)out + i;
        _mm256_storeu_si256((__m256i *)o, to_bf16(a));
        _mm256_storeu_si256((__m256i *)(o + 16), to_bf16(b));
    } else {
        _mm512_storeu_ps((float *)out + i, a);
        _mm512_storeu_ps((float *)out + i + 16, b);
    }
}

/* halves = 0: one scale d per block; 1 (Q6_K): scale d for values 0..15, o for 16..31. ioff: the integer
 * offset c of int_offset (the accumulators start at -c x the sum of x's ints over the block or half), or
 * 0: the float offset o times s */
static inline __attribute__((always_inline)) void tile(int mr, int halves, int ioff, int nb, const pblk *P,
                                                        const qact *X, void *out, int bf16, int64_t ost) {
    __m512 f0[QR], f1[QR];
    for (int r = 0; r < mr; r++) { f0[r] = _mm512_setzero_ps(); f1[r] = _mm512_setzero_ps(); }
    for (int b = 0; b < nb; b++) {
        const pblk *p = P + b;
        __m512i a0[QR], a1[QR];
        for (int h = 0; h < (halves ? 2 : 1); h++) {
            for (int r = 0; r < mr; r++) {
                const int32_t *sm = X[(int64_t)r * nb + b].sum16;
                a0[r] = halves ? _mm512_set1_epi32(-ioff * sm[h])
                               : ioff ? _mm512_set1_epi32(-ioff * (sm[0] + sm[1])) : _mm512_setzero_si512();
                a1[r] = a0[r];
            }
            for (int q = (halves ? 4 * h : 0); q < (halves ? 4 * h + 4 : 8); q++) {
                const __m512i w0 = _mm512_load_si512(p->q[q]), w1 = _mm512_load_si512(p->q[q] + 16);
                for (int r = 0; r < mr; r++) {
                    int32_t v; memcpy(&v, X[(int64_t)r * nb + b].qs + 4 * q, 4);
                    const __m512i xb = _mm512_set1_epi32(v);
                    a0[r] = _mm512_dpbusd_epi32(a0[r], w0, xb);
                    a1[r] = _mm512_dpbusd_epi32(a1[r], w1, xb);
                }
            }
            const float *ds = halves && h ? p->o : p->d;
            const __m512 d0 = _mm512_load_ps(ds), d1 = _mm512_load_ps(ds + 16);
            for (int r = 0; r < mr; r++) {
                const __m512 xd = _mm512_set1_ps(X[(int64_t)r * nb + b].d);
                f0[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0[r]), _mm512_mul_ps(d0, xd), f0[r]);
                f1[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1[r]), _mm512_mul_ps(d1, xd), f1[r]);
            }
        }
        if (!halves && !ioff) {
            const __m512 o0 = _mm512_load_ps(p->o), o1 = _mm512_load_ps(p->o + 16);
            for (int r = 0; r < mr; r++) {
                const __m512 xs = _mm512_set1_ps(X[(int64_t)r * nb + b].s);
                f0[r] = _mm512_fmadd_ps(o0, xs, f0[r]);
                f1[r] = _mm512_fmadd_ps(o1, xs, f1[r]);
            }
        }
    }
    for (int r = 0; r < mr; r++) store32(out, bf16, r * ost, f0[r], f1[r]);
}

/* rows [0, n) of X against the panel, into out's columns [c0, c0 + 32) */
#define ROWS(H, C) do { \
    int s = 0; \
    for (; s + QR <= n; s += QR, o += step) tile(QR, H, C, nb, P, X + (int64_t)s * nb, o, bf16, ost); \
    switch (n - s) { \
    case 3: tile(3, H, C, nb, P, X + (int64_t)s * nb, o, bf16, ost); break; \
    case 2: tile(2, H, C, nb, P, X + (int64_t)s * nb, o, bf16, ost); break; \
    case 1: tile(1, H, C, nb, P, X + (int64_t)s * nb, o, bf16, ost); break; \
    } \
} while (0)

static void panel_rows(int type, int n, int nb, const pblk *P, const qact *X, void *out, int bf16, int64_t ost,
                       int64_t c0) {
    uint8_t *o = (uint8_t *)out + c0 * (bf16 ? 2 : 4);
    const int64_t step = QR * ost * (bf16 ? 2 : 4);
    switch (int_offset(type)) {
    case 32: ROWS(1, 32); break;      /* Q6_K */
    case 8: ROWS(0, 8); break;
    case 16: ROWS(0, 16); break;
    case 128: ROWS(0, 128); break;
    default: ROWS(0, 0); break;
    }
}

#else   /* AVX2 (and AVX-512 without VNNI): vpmaddubsw */

/* ---- activations: quant_q8's numbers (q32.c), 32 values at a time ---- */
static inline __m256 load8(const void *x, int bf16, int64_t i) {   /* 8 values of an f32 or bf16 row */
    if (!bf16) return _mm256_loadu_ps((const float *)x + i);
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline int hsum8(__m256i v) {
    __m128i t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0x4e));
    t = _mm_add_epi32(t, _mm_shuffle_epi32(t, 0xb1));
    return _mm_cvtsi128_si32(t);
}

/* the same numbers as the VNNI build's: the max and the integer sums are exact in any order */
static void quant_rows(int cols, const void *x, int bf16, int64_t x_stride, int s0, int s1, qact *out) {
    const int nb = cols / QK;
    const __m256 sign = _mm256_set1_ps(-0.f);
    for (int s = s0; s < s1; s++) {
        const void *xr = (const uint8_t *)x + (int64_t)s * x_stride * (bf16 ? 2 : 4);
        qact *y = out + (int64_t)s * nb;
        for (int b = 0; b < nb; b++) {
            __m256 v[4];
            for (int k = 0; k < 4; k++) v[k] = load8(xr, bf16, 32 * b + 8 * k);
            int fin = 0xFF;
            for (int k = 0; k < 4; k++)
                fin &= _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, v[k]), _mm256_set1_ps(FLT_MAX), _CMP_LE_OQ));
            if (fin != 0xFF) {
                nonfinite(y + b);
                continue;
            }
            __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
            __m128 t = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            t = _mm_max_ps(t, _mm_movehl_ps(t, t));
            t = _mm_max_ss(t, _mm_movehdup_ps(t));
            const float amax = _mm_cvtss_f32(t);
            const float d = amax / 127.f, id = amax != 0.f ? 127.f / amax : 0.f;
            __m256i q[4];
            for (int k = 0; k < 4; k++) q[k] = _mm256_cvtps_epi32(_mm256_mul_ps(v[k], _mm256_set1_ps(id)));
            const int sa = hsum8(_mm256_add_epi32(q[0], q[1])), sb = hsum8(_mm256_add_epi32(q[2], q[3]));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
            _mm256_storeu_si256((__m256i *)y[b].qs, p);
            y[b].sum16[0] = sa; y[b].sum16[1] = sb;
            y[b].d = _cvtsh_ss(_cvtss_sh(d, 0));
            y[b].s = _cvtsh_ss(_cvtss_sh(d * (float)(sa + sb), 0));
        }
    }
}

/* 16 floats (a: 8, b: the next 8) to bf16 as the VNNI build rounds them */
static inline __m256i to_bf16x16(__m256 a, __m256 b) {
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff);
    __m256i ua = _mm256_castps_si256(a), ub = _mm256_castps_si256(b);
    ua = _mm256_srli_epi32(_mm256_add_epi32(ua, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(ua, 16), one))), 16);
    ub = _mm256_srli_epi32(_mm256_add_epi32(ub, _mm256_add_epi32(half, _mm256_and_si256(_mm256_srli_epi32(ub, 16), one))), 16);
    return _mm256_permute4x64_epi64(_mm256_packus_epi32(ua, ub), 0xD8);
}

/* the tile: rows [0, mr) of X against weight rows [c, c + 16) of one panel; a group of g quads is summed
 * in int16 (vpmaddubsw: u <= 15 takes 8 quads, u <= 31 four, u <= 63 two without overflow) and then
 * widened; the float steps are the VNNI build's, lane for lane, so the outputs are the same bits */
#define QR2 2
static inline __attribute__((always_inline)) void tile(int mr, int halves, int ioff, int g, int nb, const pblk *P,
                                                        const qact *X, int c, void *out, int bf16, int64_t ost) {
    __m256 f0[QR2], f1[QR2];
    const __m256i ones = _mm256_set1_epi16(1);
    for (int r = 0; r < mr; r++) { f0[r] = _mm256_setzero_ps(); f1[r] = _mm256_setzero_ps(); }
    for (int b = 0; b < nb; b++) {
        const pblk *p = P + b;
        __m256i a0[QR2], a1[QR2];
        for (int h = 0; h < (halves ? 2 : 1); h++) {
            for (int r = 0; r < mr; r++) {
                const int32_t *sm = X[(int64_t)r * nb + b].sum16;
                a0[r] = halves ? _mm256_set1_epi32(-ioff * sm[h])
                               : ioff ? _mm256_set1_epi32(-ioff * (sm[0] + sm[1])) : _mm256_setzero_si256();
                a1[r] = a0[r];
            }
            const int q0 = halves ? 4 * h : 0, q1 = halves ? 4 * h + 4 : 8;
            for (int q = q0; q < q1; q += g) {
                __m256i s0[QR2], s1[QR2];
                for (int k = 0; k < g; k++) {
                    const __m256i w0 = _mm256_load_si256((const __m256i *)(p->q[q + k] + c));
                    const __m256i w1 = _mm256_load_si256((const __m256i *)(p->q[q + k] + c + 8));
                    for (int r = 0; r < mr; r++) {
                        int32_t v; memcpy(&v, X[(int64_t)r * nb + b].qs + 4 * (q + k), 4);
                        const __m256i xb = _mm256_set1_epi32(v);
                        const __m256i p0 = _mm256_maddubs_epi16(w0, xb), p1 = _mm256_maddubs_epi16(w1, xb);
                        s0[r] = k ? _mm256_add_epi16(s0[r], p0) : p0;
                        s1[r] = k ? _mm256_add_epi16(s1[r], p1) : p1;
                    }
                }
                for (int r = 0; r < mr; r++) {
                    a0[r] = _mm256_add_epi32(a0[r], _mm256_madd_epi16(s0[r], ones));
                    a1[r] = _mm256_add_epi32(a1[r], _mm256_madd_epi16(s1[r], ones));
                }
            }
            const float *ds = halves && h ? p->o : p->d;
            const __m256 d0 = _mm256_load_ps(ds + c), d1 = _mm256_load_ps(ds + c + 8);
            for (int r = 0; r < mr; r++) {
                const __m256 xd = _mm256_set1_ps(X[(int64_t)r * nb + b].d);
                f0[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a0[r]), _mm256_mul_ps(d0, xd), f0[r]);
                f1[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1[r]), _mm256_mul_ps(d1, xd), f1[r]);
            }
        }
        if (!halves && !ioff) {
            const __m256 o0 = _mm256_load_ps(p->o + c), o1 = _mm256_load_ps(p->o + c + 8);
            for (int r = 0; r < mr; r++) {
                const __m256 xs = _mm256_set1_ps(X[(int64_t)r * nb + b].s);
                f0[r] = _mm256_fmadd_ps(o0, xs, f0[r]);
                f1[r] = _mm256_fmadd_ps(o1, xs, f1[r]);
            }
        }
    }
    for (int r = 0; r < mr; r++) {
        if (bf16) {
            _mm256_storeu_si256((__m256i *)((uint16_t *)out + r * ost), to_bf16x16(f0[r], f1[r]));
        } else {
            _mm256_storeu_ps((float *)out + r * ost, f0[r]);
            _mm256_storeu_ps((float *)out + r * ost + 8, f1[r]);
        }
    }
}

/* rows [0, n) of X against the panel, into out's columns [c0, c0 + 32), 16 at a time */
#define ROWS(H, C, G) do { \
    for (int c = 0; c < PR; c += 16) { \
        uint8_t *o = (uint8_t *)out + (c0 + c) * (bf16 ? 2 : 4); \
        int s = 0; \
        for (; s + QR2 <= n; s += QR2, o += step) tile(QR2, H, C, G, nb, P, X + (int64_t)s * nb, c, o, bf16, ost); \
        if (n - s == 1) tile(1, H, C, G, nb, P, X + (int64_t)s * nb, c, o, bf16, ost); \
    } \
} while (0)

static void panel_rows(int type, int n, int nb, const pblk *P, const qact *X, void *out, int bf16, int64_t ost,
                       int64_t c0) {
    const int64_t step = QR2 * ost * (bf16 ? 2 : 4);
    switch (type) {
    case T_Q6_K: ROWS(1, 32, 2); break;
    case T_Q4_0: ROWS(0, 8, 8); break;
    case T_Q5_0: ROWS(0, 16, 4); break;
    case T_Q4_1: case T_Q4_K: ROWS(0, 0, 8); break;
    default: ROWS(0, 0, 4); break;      /* Q5_1, Q5_K */
    }
}

#endif

/* ---- the job: quantize x on the pool, then panels of every weight handed out by an atomic counter ---- */
typedef struct {
    int n_w, cols, n, x_bf16, out_bf16;
    const void *x; int64_t x_stride;
    qact *act;
    int type[QG_MAX]; const uint8_t *w[QG_MAX]; int64_t row_bytes[QG_MAX];
    void *out[QG_MAX]; int64_t out_stride[QG_MAX];
    int64_t poff[QG_MAX + 1];   /* first panel of each weight */
    _Atomic int64_t next;
    _Atomic int failed;
} qg_job;

/* each thread's buffers (0: quantized x, the caller's; 1: a panel; 2: 8 unpacked rows in their own
 * order), freed when the thread ends: the pool
 * replaces its workers when the thread count changes (pool.c), and a _Thread_local pointer alone leaked
 * every old worker's panel */
typedef struct { void *p[3]; size_t n[3]; } tbufs;
static pthread_key_t tkey;
static pthread_once_t tonce = PTHREAD_ONCE_INIT;
static int tkey_ok;

static void tbufs_free(void *v) {
    tbufs *t = v;
    if (t) { free(t->p[0]); free(t->p[1]); free(t->p[2]); free(t); }
}

static void tkey_init(void) { tkey_ok = pthread_key_create(&tkey, tbufs_free) == 0; }

static tbufs *thread_bufs(int create) {
    pthread_once(&tonce, tkey_init);
    if (!tkey_ok) return NULL;
    tbufs *t = pthread_getspecific(tkey);
    if (!t && create) {
        t = calloc(1, sizeof *t);
        if (t && pthread_setspecific(tkey, t) != 0) { free(t); t = NULL; }
    }
    return t;
}

static void *thread_buffer(int which, size_t n) {
    tbufs *t = thread_bufs(1);
    if (!t) return NULL;
    if (n > t->n[which]) {
        free(t->p[which]);
        t->p[which] = aligned_alloc(64, (n + 63) / 64 * 64);
        t->n[which] = t->p[which] ? n : 0;
    }
    return t->p[which];
}

/* rows in chunks from the counter: the pool does not wait for workers that have not joined (pool.c) */
#define QUANT_ROWS 16
static void quant_task(void *arg, int ith, int nth) {
    qg_job *j = arg; (void)ith; (void)nth;
    for (;;) {
        const int s0 = (int)atomic_fetch_add(&j->next, QUANT_ROWS);
        if (s0 >= j->n) break;
        quant_rows(j->cols, j->x, j->x_bf16, j->x_stride, s0, s0 + QUANT_ROWS < j->n ? s0 + QUANT_ROWS : j->n, j->act);
    }
}

static void panel_task(void *arg, int ith, int nth) {
    qg_job *j = arg; (void)ith; (void)nth;
    const int nb = j->cols / QK;
    pblk *P = thread_buffer(1, (size_t)nb * sizeof(pblk));
    __m256i *rm = thread_buffer(2, (size_t)8 * nb * sizeof(__m256i));
    if (!P || !rm) { atomic_store(&j->failed, 1); return; }
    int i = 0;
    for (;;) {
        const int64_t t = atomic_fetch_add(&j->next, 1);
        if (t >= j->poff[j->n_w]) break;
        while (t >= j->poff[i + 1]) i++;
        const int64_t r0 = (t - j->poff[i]) * PR;
        const uint8_t *w = j->w[i] + r0 * j->row_bytes[i];
        for (int h = 0; h < PR / 8; h++) {   /* 8 rows in their own order, then turned in registers */
            for (int r = 0; r < 8; r++)
                unpack_row(j->type[i], j->cols, w + (8 * h + r) * j->row_bytes[i], P, 8 * h + r,
                           rm + (size_t)r * nb);
            transpose8(nb, rm, P, h);
        }
        panel_rows(j->type[i], j->n, nb, P, j->act, j->out[i], j->out_bf16, j->out_stride[i], r0);
    }
}

/* x and every out in f32 (kind 0) or bf16 (kind 1), rows x_stride / out_strides[i] elements apart */
static int FN(qgemm)(int n_w, const int *types, const void *const *ws, const int64_t *row_bytes,
                     const int64_t *rows, int64_t cols, const void *x, int x_kind, int n, int64_t x_stride,
                     void *const *outs, const int64_t *out_strides, int out_kind) {
    if (n_w < 1 || n_w > QG_MAX || n < 0 || cols <= 0 || cols % QK || x_kind < 0 || x_kind > 1 || out_kind < 0 || out_kind > 1)
        return -1;
    qg_job j = {.n_w = n_w, .cols = (int)cols, .n = n, .x = x, .x_stride = x_stride, .x_bf16 = x_kind,
                .out_bf16 = out_kind};
    j.poff[0] = 0;
    for (int i = 0; i < n_w; i++) {
        if (!qgemm_type(types[i]) || rows[i] < 0 || rows[i] % PR) return -1;
        if ((types[i] == T_Q4_K || types[i] == T_Q5_K || types[i] == T_Q6_K) && cols % QK_K) return -1;
        j.type[i] = types[i]; j.w[i] = ws[i]; j.row_bytes[i] = row_bytes[i];
        j.out[i] = outs[i]; j.out_stride[i] = out_strides[i];
        j.poff[i + 1] = j.poff[i] + rows[i] / PR;
    }
    if (n == 0 || j.poff[n_w] == 0) return 0;
    j.act = thread_buffer(0, (size_t)n * (cols / QK) * sizeof(qact));
    if (!j.act) return -2;
    const int nth = pool_threads();
    atomic_store(&j.next, 0);
    pool_run(quant_task, &j, n > QUANT_ROWS ? nth : 1);
    atomic_store(&j.next, 0);
    atomic_store(&j.failed, 0);
    pool_run(panel_task, &j, j.poff[n_w] > 1 ? nth : 1);
    return atomic_load(&j.failed) ? -2 : 0;
}

static int FN(qgemm_supports)(int type, int64_t rows, int64_t cols) {
    if (!qgemm_type(type) || rows % PR || cols <= 0 || cols % QK) return 0;
    return !((type == T_Q4_K || type == T_Q5_K || type == T_Q6_K) && cols % QK_K);
}

/* bytes of the calling thread's buffers (quantized x, one panel, 8 unpacked rows) */
static int64_t FN(qgemm_buffer_bytes)(void) {
    const tbufs *t = thread_bufs(0);
    return t ? (int64_t)(t->n[0] + t->n[1] + t->n[2]) : 0;
}

void FN(register_qgemm)(kernel_table *t) {
    t->qgemm = FN(qgemm);
    t->qgemm_supports = FN(qgemm_supports);
    t->qgemm_buffer_bytes = FN(qgemm_buffer_bytes);
}

#else

void FN(register_qgemm)(kernel_table *t) { (void)t; }

#endif
