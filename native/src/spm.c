/* SentencePiece encoding (GGUF tokenizer.ggml.model == "llama") on a vocabulary's tables (vocab.h), as
 * llama.cpp's llm_tokenizer_spm_session and engine/tokenizer/spm.py do it: symbols start as the UTF-8
 * characters of the text (spaces already escaped to U+2581), the adjacent pair whose join is the
 * highest-scoring token merges first (the leftmost on ties), and a symbol left outside the vocabulary is
 * spelled as its bytes' fallback tokens. Candidates are ordered as spm.py's heap orders its tuples:
 * (-score, left, right, size), so the two give the same ids (a score that is NaN is not taken here). */
#include <stdint.h>
#include <stdlib.h>
#include "vocab.h"

typedef struct { float neg; int32_t left, right, size; } spm_cand;   /* byte offsets: n < 2^29 */

static inline int spm_less(const spm_cand *a, const spm_cand *b) {
    if (a->neg != b->neg) return a->neg < b->neg;
    if (a->left != b->left) return a->left < b->left;
    if (a->right != b->right) return a->right < b->right;
    return a->size < b->size;
}

DEFINE_HEAP(spm, spm_cand, spm_less)

/* queue the join of the symbols at a (a_len bytes on) and b if it is a token */
static void spm_try(const vocab_t *v, const uint8_t *d, int32_t a, int32_t b, int32_t end, spm_cand *h, int64_t *nh) {
    int32_t t = vocab_lookup2(v, d + a, end - a, d, 0);
    if (t >= 0) spm_push(h, nh, (spm_cand){v->neg_score[t], a, b, end - a});
}

/* data[0..n) -> ids in out (room for n always suffices); how many, or -1 when out of memory, n is 2^29
 * or more (a fragment of 512 MiB), or the vocabulary has no scores set. Work memory: 60 bytes a byte. */
int64_t cellar_spm_encode(const void *hv, const uint8_t *d, int64_t n, int32_t *out) {
    const vocab_t *v = hv;
    if (!v->neg_score || n >= (1 << 29)) return -1;
    if (n <= 0) return 0;
    int32_t *len = calloc((size_t)n, sizeof(int32_t)), *prev = malloc(sizeof(int32_t) * (size_t)n);
    int32_t *next = malloc(sizeof(int32_t) * (size_t)n);
    spm_cand *heap = malloc(sizeof(spm_cand) * (size_t)(3 * n + 1));
    int64_t n_out = -1;
    if (!len || !prev || !next || !heap) goto done;
    int64_t nh = 0;
    int32_t last = -1;
    for (int32_t i = 0; i < n;) {                 /* symbols: one UTF-8 character each (lead bytes) */
        int32_t j = i + 1;
        while (j < n && (d[j] & 0xC0) == 0x80) j++;
        len[i] = j - i;
        prev[i] = last;
        next[i] = j < n ? j : -1;
        last = i;
        i = j;
    }
    for (int32_t i = 0; i >= 0 && next[i] >= 0; i = next[i]) {
        int32_t j = next[i];
        spm_try(v, d, i, j, j + len[j], heap, &nh);
    }
    while (nh > 0) {
        spm_cand c = spm_pop(heap, &nh);
        int32_t ln = len[c.left], rn = len[c.right];
        if (ln == 0 || rn == 0 || ln + rn != c.size) continue;   /* stale: one side changed */
        len[c.left] = c.size;
        len[c.right] = 0;
        int32_t after = next[c.right];
        next[c.left] = after;
        if (after >= 0) prev[after] = c.left;
        int32_t before = prev[c.left];
        if (before >= 0) spm_try(v, d, before, c.left, c.left + c.size, heap, &nh);
        if (after >= 0) spm_try(v, d, c.left, after, after + len[after], heap, &nh);
    }
    n_out = 0;
    for (int32_t i = 0; i >= 0; i = next[i]) {
        int32_t t = vocab_lookup2(v, d + i, len[i], d, 0);
        if (t >= 0) { out[n_out++] = t; continue; }
        for (int32_t k = i; k < i + len[i]; k++)   /* only single characters can miss: merges make tokens */
            if (v->byte_tok[d[k]] >= 0) out[n_out++] = v->byte_tok[d[k]];
    }
done:
    free(len); free(prev); free(next); free(heap);
    return n_out;
}
