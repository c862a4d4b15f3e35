/* A tokenizer vocabulary's tables in C (vocab.c), built straight from the GGUF string arrays: the tokens
 * (and a BPE's merges) arrive as engine/gguf_strings.py's blobs, element i at blob[offs[i] + 1 .. offs[i + 1]).
 * Token text -> id by open addressing (FNV-1a, splitmix64); for BPE also (left id, right id) -> (rank,
 * merged id); for SentencePiece each token's score and each byte's fallback token. Read-only once built:
 * the encoders (bpe.c, spm.c) may run on several threads at once. */
#ifndef CELLAR_VOCAB_H
#define CELLAR_VOCAB_H
#include <stdint.h>

typedef struct {
    uint8_t *blob;           /* the tokens' bytes (a copy), element i at blob + offs[i] + 1 */
    int64_t *offs;
    int32_t n_tok;
    uint64_t tmask;          /* token table: slot -> id, -1 empty */
    int32_t *tslot;
    uint64_t pmask;          /* pair table (BPE merges) */
    uint64_t *pkey;          /* (left << 32 | right) + 1; 0 empty */
    int32_t *prank, *pnew;
    float *neg_score;        /* SentencePiece: -score per token (NULL until cellar_vocab_set_spm) */
    int32_t byte_tok[256];   /* SentencePiece: each byte's fallback token, -1 none */
} vocab_t;

/* id of the token whose text is a + c (c may be empty), or -1 */
int32_t vocab_lookup2(const vocab_t *v, const uint8_t *a, int64_t na, const uint8_t *c, int64_t nc);
/* the merge of tokens l and r: the merged id (its rank in *rank), or -1 */
int32_t vocab_pair(const vocab_t *v, int32_t l, int32_t r, int32_t *rank);

static inline int utf8_len(uint8_t c) {
    return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}
/* A binary min-heap of T under LESS(const T *, const T *): NAME_push(h, &n, item), NAME_pop(h, &n) (the
 * merge candidates of bpe.c and spm.c). */
#define DEFINE_HEAP(NAME, T, LESS)                                              \
    static void NAME##_push(T *h, int64_t *n, T c) {                            \
        int64_t i = (*n)++;                                                     \
        while (i > 0) {                                                         \
            int64_t p = (i - 1) / 2;                                            \
            if (!LESS(&c, &h[p])) break;                                        \
            h[i] = h[p];                                                        \
            i = p;                                                              \
        }                                                                       \
        h[i] = c;                                                               \
    }                                                                           \
    static T NAME##_pop(T *h, int64_t *n) {                                     \
        T top = h[0], last = h[--(*n)];                                         \
        int64_t i = 0;                                                          \
        for (;;) {                                                              \
            int64_t c = 2 * i + 1;                                              \
            if (c >= *n) break;                                                 \
            if (c + 1 < *n && LESS(&h[c + 1], &h[c])) c++;                      \
            if (!LESS(&h[c], &last)) break;                                     \
            h[i] = h[c];                                                        \
            i = c;                                                              \
        }                                                                       \
        h[i] = last;                                                            \
        return top;                                                             \
    }
#endif
