/* A tokenizer vocabulary's tables (vocab.h): built in a few ms from the GGUF string arrays, where HF
 * tokenizers' BPE model took ~30 ms from Python objects and the SentencePiece path's Python dict ~60 ms.
 * BPE merges: "a b" (split at the first space after the first character) whose a, b and a + b are tokens;
 * a pair listed twice keeps its first rank, as llama.cpp's bpe_ranks does (HF tokenizers' BPE alone keeps
 * the last). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "vocab.h"

static uint64_t fnv(uint64_t h, const uint8_t *s, int64_t n) {
    for (int64_t i = 0; i < n; i++) h = (h ^ s[i]) * 0x100000001b3ULL;
    return h;
}
#define FNV0 0xcbf29ce484222325ULL

static uint64_t mix(uint64_t x) {          /* splitmix64's finalizer */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static inline const uint8_t *tok_s(const vocab_t *b, int32_t id) { return b->blob + b->offs[id] + 1; }
static inline int64_t tok_n(const vocab_t *b, int32_t id) { return b->offs[id + 1] - b->offs[id] - 1; }

/* id of the token a + b (b may be empty), or -1 */
int32_t vocab_lookup2(const vocab_t *b, const uint8_t *a, int64_t na, const uint8_t *c, int64_t nc) {
    uint64_t h = fnv(fnv(FNV0, a, na), c, nc);
    for (uint64_t i = mix(h) & b->tmask;; i = (i + 1) & b->tmask) {
        int32_t id = b->tslot[i];
        if (id < 0) return -1;
        if (tok_n(b, id) == na + nc && !memcmp(tok_s(b, id), a, na) && !memcmp(tok_s(b, id) + na, c, nc))
            return id;
    }
}

int32_t vocab_pair(const vocab_t *b, int32_t l, int32_t r, int32_t *rank) {
    if (l < 0 || r < 0) return -1;
    uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)r) + 1;
    for (uint64_t i = mix(key) & b->pmask;; i = (i + 1) & b->pmask) {
        if (b->pkey[i] == 0) return -1;
        if (b->pkey[i] == key) { *rank = b->prank[i]; return b->pnew[i]; }
    }
}

static uint64_t table_size(int64_t n) {
    uint64_t s = 64;
    while (s < (uint64_t)n * 2) s <<= 1;
    return s;
}

void cellar_vocab_free(void *h) {
    vocab_t *b = h;
    if (!b) return;
    free(b->blob); free(b->offs); free(b->tslot); free(b->pkey); free(b->prank); free(b->pnew);
    free(b->neg_score);
    free(b);
}

/* NULL on failure: *err = 1 + the index of the first token that repeats an earlier one, or -1 when out of
 * memory. Empty tokens are not entered (no text maps to them). */
void *cellar_vocab_new(const uint8_t *tblob, const int64_t *toffs, int64_t n_tok,
                       const uint8_t *mblob, const int64_t *moffs, int64_t n_merge, int64_t *err) {
    *err = -1;
    if (n_tok <= 0 || n_tok > INT32_MAX - 1 || n_merge < 0) return NULL;
    vocab_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    int64_t nbytes = toffs[n_tok] - toffs[0];
    uint64_t ts = table_size(n_tok), ps = table_size(n_merge);
    b->blob = malloc((size_t)nbytes + 1);
    b->offs = malloc(sizeof(int64_t) * (size_t)(n_tok + 1));
    b->tslot = malloc(sizeof(int32_t) * ts);
    b->pkey = calloc(ps, sizeof(uint64_t));
    b->prank = malloc(sizeof(int32_t) * ps);
    b->pnew = malloc(sizeof(int32_t) * ps);
    if (!b->blob || !b->offs || !b->tslot || !b->pkey || !b->prank || !b->pnew) { cellar_vocab_free(b); return NULL; }
    memcpy(b->blob, tblob + toffs[0], (size_t)nbytes);
    for (int64_t i = 0; i <= n_tok; i++) b->offs[i] = toffs[i] - toffs[0];
    b->n_tok = (int32_t)n_tok;
    b->tmask = ts - 1;
    b->pmask = ps - 1;
    memset(b->tslot, 0xff, sizeof(int32_t) * ts);
    for (int32_t id = 0; id < b->n_tok; id++) {
        const uint8_t *s = tok_s(b, id);
        int64_t n = tok_n(b, id);
        if (n <= 0) continue;
        uint64_t i = mix(fnv(FNV0, s, n)) & b->tmask;
        for (;; i = (i + 1) & b->tmask) {
            int32_t o = b->tslot[i];
            if (o < 0) break;
            if (tok_n(b, o) == n && !memcmp(tok_s(b, o), s, n)) { *err = 1 + id; cellar_vocab_free(b); return NULL; }
        }
        b->tslot[i] = id;
    }
    for (int64_t r = 0; r < n_merge; r++) {
        const uint8_t *s = mblob + moffs[r] + 1;
        int64_t n = moffs[r + 1] - moffs[r] - 1;
        if (n < 3) continue;
        int64_t sp = utf8_len(s[0]);
        while (sp < n && s[sp] != ' ') sp++;
        if (sp >= n) continue;
        int32_t l = vocab_lookup2(b, s, sp, s, 0), rr = vocab_lookup2(b, s + sp + 1, n - sp - 1, s, 0);
        if (l < 0 || rr < 0) continue;
        int32_t m = vocab_lookup2(b, s, sp, s + sp + 1, n - sp - 1);
        if (m < 0) continue;
        uint64_t key = ((uint64_t)(uint32_t)l << 32 | (uint32_t)rr) + 1;
        uint64_t i = mix(key) & b->pmask;
        while (b->pkey[i] && b->pkey[i] != key) i = (i + 1) & b->pmask;
        if (b->pkey[i]) continue;                    /* listed before: the first rank stays */
        b->pkey[i] = key;
        b->prank[i] = (int32_t)r;
        b->pnew[i] = m;
    }
    *err = 0;
    return b;
}

int32_t cellar_vocab_token_id(const void *h, const uint8_t *s, int64_t n) {
    const vocab_t *b = h;
    return n > 0 ? vocab_lookup2(b, s, n, s, 0) : -1;
}


/* SentencePiece's merge order (spm.c): each token's negated score (exact: float32) and the token each byte
 * falls back to (<0xXX>, or for ASCII the byte itself; -1: none); 0, or -1 when out of memory */
int cellar_vocab_set_spm(void *h, const float *scores, const int32_t *byte_tokens) {
    vocab_t *b = h;
    float *neg = malloc(sizeof(float) * (size_t)b->n_tok);
    if (!neg) return -1;
    for (int32_t i = 0; i < b->n_tok; i++) neg[i] = -scores[i];
    free(b->neg_score);
    b->neg_score = neg;
    memcpy(b->byte_tok, byte_tokens, sizeof b->byte_tok);
    return 0;
}
