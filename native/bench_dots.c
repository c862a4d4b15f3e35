/* One quantized dot kernel, one thread, over a model's own matrices: min-of-N ns per row.
 * Built and run by native/bench_dots.py (which compiles q32.c / qk.c for one ISA, as native/build.py
 * does, and lists the tensors). argv: GGUF LIST TYPE MODE REPS [OUT]
 *   LIST: lines "type rows cols offset nbytes name"; MODE: hot (the first matrix of the type, again
 *   and again: in L2), sweep (every layer matrix of the type in file order, as decode reads them),
 *   head (the matrices over 100000 rows: the output head); OUT: the outputs as raw f32, to compare. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include "common.h"

#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
void CAT(register_q32, SFX)(kernel_table *);
void CAT(register_qk, SFX)(kernel_table *);
float cellar_f16_table[65536];

static float half_to_float(uint16_t h) {
    const uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    uint32_t u;
    if (e == 0) {
        if (m == 0) u = s;
        else { int k = -1; uint32_t mm = m; do { k++; mm <<= 1; } while (!(mm & 0x400));
               u = s | ((uint32_t)(127 - 15 - k) << 23) | ((mm & 0x3ff) << 13); }
    } else if (e == 31) u = s | 0x7f800000 | (m << 13);
    else u = s | ((e + 112) << 23) | (m << 13);
    float f; memcpy(&f, &u, 4); return f;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

typedef struct { int type; long rows, cols, off, nbytes; } tensor;

int main(int argc, char **argv) {
    if (argc < 6) { fprintf(stderr, "usage: GGUF LIST TYPE hot|sweep|head REPS [OUT]\n"); return 2; }
    for (int i = 0; i < 65536; i++) cellar_f16_table[i] = half_to_float((uint16_t)i);
    kernel_table K; memset(&K, 0, sizeof K);
    CAT(register_q32, SFX)(&K); CAT(register_qk, SFX)(&K);
    const int fd = open(argv[1], O_RDONLY); struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) { perror(argv[1]); return 1; }
    const uint8_t *base = mmap(0, st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
    FILE *f = fopen(argv[2], "r");
    if (!f || base == MAP_FAILED) { perror(argv[2]); return 1; }
    const int want = atoi(argv[3]), reps = atoi(argv[5]); const char *mode = argv[4];
    static tensor ts[4096]; int nt = 0; char name[256];
    while (nt < 4096 && fscanf(f, "%d %ld %ld %ld %ld %255s", &ts[nt].type, &ts[nt].rows, &ts[nt].cols,
                               &ts[nt].off, &ts[nt].nbytes, name) == 6) {
        if (ts[nt].type != want) continue;
        const int big = ts[nt].rows > 100000;
        if (!strcmp(mode, "head") ? big : !big) nt++;
        if (!strcmp(mode, "hot") && nt == 1) break;
    }
    if (!nt) { printf("none\n"); return 0; }
    long cols = 0, rows = 0, bytes = 0;
    for (int i = 0; i < nt; i++) { cols = ts[i].cols > cols ? ts[i].cols : cols; rows += ts[i].rows; bytes += ts[i].nbytes; }
    float *x = malloc(cols * 4), *out = malloc(rows * 4);
    uint8_t *act = aligned_alloc(64, (cols * 2 + 4095) / 4096 * 4096);
    srand(1);
    for (long i = 0; i < cols; i++) x[i] = (rand() / (float)RAND_MAX - 0.5f) * (i % 7 ? 1.f : 11.f);
    const int k256 = want >= T_Q2_K && want <= T_Q6_K;
    const dot_fn dot = K.dot[want];
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        const double t0 = now(); long o = 0;
        for (int i = 0; i < nt; i++) {
            (k256 ? K.quant_q8k : K.quant_q8)((int)ts[i].cols, x, act);
            const uint8_t *w = base + ts[i].off; const long rb = ts[i].nbytes / ts[i].rows;
            for (long k = 0; k < ts[i].rows; k++) out[o++] = dot((int)ts[i].cols, w + k * rb, act);
        }
        const double dt = now() - t0; if (dt < best) best = dt;
    }
    printf("type %2d %-5s %3d matrices %7ld rows: %7.2f ns/row %6.2f GB/s\n", want, mode, nt, rows,
           best * 1e9 / rows, bytes / best / 1e9);
    if (argc > 6) { FILE *g = fopen(argv[6], "wb"); fwrite(out, 4, rows, g); fclose(g); }
    return 0;
}
