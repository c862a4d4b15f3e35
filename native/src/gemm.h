/* Prefill GEMM on GGUF blocks: the activation layout shared by the per-ISA tile kernels (gemm.c) and
 * the entry points that split the work (gemm_run.c).
 *
 * The activations of a ubatch are quantized once, by the same quant_q8 / quant_q8k as the GEMV, and
 * packed in groups of GR rows, block by block, so that a tile kernel finds the scales of GR rows in
 * one vector and the int8 values of each row's block next to each other. Rows past n in the last
 * group are zero. */
#ifndef CELLAR_GEMM_H
#define CELLAR_GEMM_H

#include "common.h"

#define GR 8   /* activation rows per group */

/* one 32-value block of GR rows (act_q8 fields, transposed) */
typedef struct { float d[GR]; float s[GR]; int8_t qs[GR][QK]; } pk_q8;

/* one 256-value super-block of GR rows (act_q8k fields, transposed, plus sums the tile kernels
 * use): bs2[k][s] = (bsums[2k], bsums[2k+1]) of row s; bp[k][s] = (bsums[4k] + bsums[4k+1],
 * bsums[4k+2] + bsums[4k+3]) of row s (pairs for _mm256_madd_epi16) */
typedef struct {
    float d[GR];
    int16_t bsums[GR][16];
    int16_t bs2[8][GR][2];
    int16_t bp[4][GR][2];
    int8_t qs[GR][QK_K];
} pk_q8k;

/* bytes of one packed group of cols columns for activation kind ACT_Q8 / ACT_Q8K */
static inline int64_t gemm_group_bytes(int kind, int64_t cols) {
    return kind == ACT_Q8 ? cols / QK * (int64_t)sizeof(pk_q8) : cols / QK_K * (int64_t)sizeof(pk_q8k);
}

#endif
