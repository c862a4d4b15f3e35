/* Byte-level BPE encoding (GGUF tokenizer.ggml.model == "gpt2") on a vocabulary's tables (vocab.h).
 *
 * Encoding takes pre-tokenized pieces (already mapped to GPT-2's printable characters), separated by 0 bytes
 * (no mapped character is U+0000), and merges each as llama.cpp's llm_tokenizer_bpe_session and HF's
 * Word::merge_all do: the adjacent pair of lowest rank first, the leftmost on ties. A character that is no
 * token stays in place, merging with nothing, and is dropped from the output, as llama.cpp does (HF drops
 * it first, so its neighbours may merge); with ignore_merges a piece that is a token is taken whole
 * (llama-3's pre-tokenizers).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "vocab.h"

typedef struct { int32_t id, prev, next, alive; } sym_t;
typedef struct { int32_t rank, pos, id; } cand_t;

static inline int cand_less(const cand_t *a, const cand_t *c) {
    return a->rank < c->rank || (a->rank == c->rank && a->pos < c->pos);
}
DEFINE_HEAP(heap, cand_t, cand_less)

static void try_pair(const vocab_t *b, const sym_t *sy, int32_t pos, cand_t *heap, int64_t *nh) {
    int32_t nx = sy[pos].next, rank;
    if (nx < 0) return;
    int32_t m = vocab_pair(b, sy[pos].id, sy[nx].id, &rank);
    if (m >= 0) heap_push(heap, nh, (cand_t){rank, pos, m});
}

/* The pieces in buf[0..n) (0-separated) -> ids in out (room for n ids always suffices); returns how many,
 * or -1 when out of memory (or a piece is over 512 MiB). */
int64_t cellar_bpe_encode(const void *h, const uint8_t *buf, int64_t n, int ignore_merges, int32_t *out) {
    const vocab_t *b = h;
    int64_t n_out = 0;
    int64_t longest = 0;
    for (int64_t i = 0, s = 0; i <= n; i++)
        if (i == n || buf[i] == 0) { if (i - s > longest) longest = i - s; s = i + 1; }
    if (longest > INT32_MAX / 4) return -1;                 /* symbol indices are int32 */
    sym_t *sy = malloc(sizeof(sym_t) * (size_t)(longest + 1));
    cand_t *heap = malloc(sizeof(cand_t) * (size_t)(3 * longest + 1));   /* n - 1 pairs, 2 more a merge */
    if (!sy || !heap) { free(sy); free(heap); return -1; }
    for (int64_t s = 0; s < n;) {
        int64_t e = s;
        while (e < n && buf[e] != 0) e++;
        const uint8_t *p = buf + s;
        int64_t len = e - s;
        int32_t whole;
        if (len > 0 && ignore_merges && (whole = vocab_lookup2(b, p, len, p, 0)) >= 0) {
            out[n_out++] = whole;
        } else if (len > 0) {
            int32_t ns = 0;
            for (int64_t i = 0; i < len;) {
                int64_t cl = utf8_len(p[i]);
                if (cl > len - i) cl = len - i;
                int32_t id = vocab_lookup2(b, p + i, cl, p, 0);     /* -1: no such token, in no pair */
                i += cl;
                sy[ns] = (sym_t){id, ns - 1, -1, 1};
                if (ns > 0) sy[ns - 1].next = ns;
                ns++;
            }
            int64_t nh = 0;
            for (int32_t i = 0; i + 1 < ns; i++) try_pair(b, sy, i, heap, &nh);
            while (nh > 0) {
                cand_t c = heap_pop(heap, &nh);
                sym_t *l = &sy[c.pos];
                if (!l->alive || l->next < 0) continue;
                int32_t rank, m = vocab_pair(b, l->id, sy[l->next].id, &rank);
                if (m != c.id || rank != c.rank) continue;     /* this pair changed since it was queued */
                sym_t *r = &sy[l->next];
                l->id = m;
                r->alive = 0;
                l->next = r->next;
                if (r->next >= 0) sy[r->next].prev = c.pos;
                if (l->prev >= 0) try_pair(b, sy, l->prev, heap, &nh);
                try_pair(b, sy, c.pos, heap, &nh);
            }
            for (int32_t i = 0; i >= 0 && ns > 0; i = sy[i].next)
                if (sy[i].id >= 0) out[n_out++] = sy[i].id;
        }
        s = e + 1;
    }
    free(sy);
    free(heap);
    return n_out;
}
