/* The CPU's ceilings that bound Cellar's kernels, one core at a time (tools/cpu_peaks.py builds and runs
 * this): vpdpbusd and FMA throughput, the int8 GEMM's mix of both, and read bandwidth from memory. */
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static const long N = 50000000;

#ifdef __AVX512VNNI__
/* 12 independent accumulators: throughput, not latency */
#define DP(a) "vpdpbusd %%zmm1,%%zmm0," a "\n"
static double dpbusd_rate(void) {
    double t = now();
    __asm__ volatile("vpxord %%zmm0,%%zmm0,%%zmm0\n vmovdqa64 %%zmm0,%%zmm1\n mov %0,%%rcx\n 1:\n"
                     DP("%%zmm2") DP("%%zmm3") DP("%%zmm4") DP("%%zmm5") DP("%%zmm6") DP("%%zmm7")
                     DP("%%zmm8") DP("%%zmm9") DP("%%zmm10") DP("%%zmm11") DP("%%zmm12") DP("%%zmm13")
                     "dec %%rcx\n jnz 1b\n" :: "r"(N) : "rcx", "memory");
    return N * 12 / (now() - t);
}
/* the int8 GEMM's inner mix: 8 vpdpbusd with 2 FMAs, a convert and a multiply beside them */
static double mixed_rate(void) {
    double t = now();
    __asm__ volatile("mov %0,%%rcx\n 1:\n"
                     DP("%%zmm2") DP("%%zmm3") DP("%%zmm4") DP("%%zmm5") DP("%%zmm6") DP("%%zmm7")
                     DP("%%zmm8") DP("%%zmm9")
                     "vfmadd231ps %%zmm1,%%zmm0,%%zmm10\n vfmadd231ps %%zmm1,%%zmm0,%%zmm11\n"
                     "vcvtdq2ps %%zmm2,%%zmm12\n vmulps %%zmm1,%%zmm0,%%zmm13\n"
                     "dec %%rcx\n jnz 1b\n" :: "r"(N) : "rcx", "memory");
    return N * 8 / (now() - t);
}
#endif

#ifdef __AVX512F__
#define VR "zmm"
#define FMA_LANES 16
#else
#define VR "ymm"
#define FMA_LANES 8
#endif
#define FM(a) "vfmadd231ps %%" VR "1,%%" VR "0,%%" VR a "\n"
static double fma_rate(void) {
    double t = now();
    __asm__ volatile("vxorps %%xmm0,%%xmm0,%%xmm0\n vmovaps %%" VR "0,%%" VR "1\n mov %0,%%rcx\n 1:\n"
                     FM("2") FM("3") FM("4") FM("5") FM("6") FM("7") FM("8") FM("9") FM("10") FM("11")
                     FM("12") FM("13")
                     "dec %%rcx\n jnz 1b\n" :: "r"(N) : "rcx", "memory");
    return N * 12 / (now() - t);
}

/* ---- read bandwidth: each thread sums its share of a buffer far larger than the caches ---- */
static size_t BYTES = (size_t)512 << 20;
static unsigned char *buf;
typedef struct { int i, n; long long s; } share;

static void *reader(void *p) {
    share *a = p;
    const size_t per = BYTES / a->n;
    const unsigned char *b = buf + a->i * per;
    __m256i acc = _mm256_setzero_si256();
    for (size_t o = 0; o < per; o += 128) {
        _mm_prefetch((const char *)b + o + 2048, _MM_HINT_T0);
        _mm_prefetch((const char *)b + o + 2048 + 64, _MM_HINT_T0);
        acc = _mm256_add_epi32(acc, _mm256_load_si256((const __m256i *)(b + o)));
        acc = _mm256_add_epi32(acc, _mm256_load_si256((const __m256i *)(b + o + 32)));
        acc = _mm256_add_epi32(acc, _mm256_load_si256((const __m256i *)(b + o + 64)));
        acc = _mm256_add_epi32(acc, _mm256_load_si256((const __m256i *)(b + o + 96)));
    }
    int t[8];
    _mm256_storeu_si256((__m256i *)t, acc);
    a->s = t[0];
    return NULL;
}

static double read_rate(int n) {
    pthread_t th[16];
    share a[16];
    const double t = now();
    for (int i = 0; i < n; i++) { a[i].i = i; a[i].n = n; pthread_create(&th[i], NULL, reader, &a[i]); }
    for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    return BYTES / (now() - t);
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2;
    double best;
#ifdef __AVX512VNNI__
    best = 0; for (int r = 0; r < 3; r++) { const double v = dpbusd_rate(); if (v > best) best = v; }
    printf("vpdpbusd (512-bit), one core: %.2f G/s = %.0f GMAC/s int8\n", best / 1e9, best * 64 / 1e9);
    best = 0; for (int r = 0; r < 3; r++) { const double v = mixed_rate(); if (v > best) best = v; }
    printf("  with 4 float steps per 8 of them: %.2f G/s = %.0f GMAC/s\n", best / 1e9, best * 64 / 1e9);
#endif
    best = 0; for (int r = 0; r < 3; r++) { const double v = fma_rate(); if (v > best) best = v; }
    printf("FMA (%d-bit f32), one core: %.2f G/s = %.0f GMAC/s f32\n", FMA_LANES * 32, best / 1e9, best * FMA_LANES / 1e9);
    buf = aligned_alloc(64, BYTES);
    if (!buf) { fprintf(stderr, "cpu_peaks: no memory for the %zu MiB read buffer\n", BYTES >> 20); return 1; }
    memset(buf, 1, BYTES);
    for (int n = 1; n <= threads && n <= 16; n++) {
        best = 0; for (int r = 0; r < 4; r++) { const double v = read_rate(n); if (v > best) best = v; }
        printf("read from memory, %d thread%s: %.1f GB/s\n", n, n > 1 ? "s" : "", best / 1e9);
    }
    free(buf);
    return 0;
}
