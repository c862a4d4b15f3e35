/* Byte-level BPE merges (GGUF tokenizer.ggml.model == "gpt2"), built straight from the GGUF string arrays.
 *
 * The tokens and merges arrive as engine/gguf_strings.py's blobs: element i is blob[offs[i] + 1 .. offs[i + 1]).
 * Two open-addressing tables: token text -> id, and (left id, right id) -> (rank, merged id) for every merge
 * "a b" (split at the first space after the first character) whose a, b and a + b are tokens; a pair listed
 * twice keeps its first rank, as llama.cpp's bpe_ranks does (HF tokenizers' BPE alone keeps the last). Building them is a few ms where HF tokenizers'
 * BPE took ~30 ms from Python objects.
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

typedef struct {
    uint8_t *blob;           /* the tokens' bytes (a copy), element i at blob + offs[i] + 1 */
    int64_t *offs;
    int32_t n_tok;
    uint64_t tmask;          /* token table: slot -> id, -1 empty */
    int32_t *tslot;
    uint64_t pmask;          /* pair table */
    uint64_t *pkey;          /* (left << 32 | right) + 1; 0 empty */
    int32_t *prank, *pnew;
} bpe_t;

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

static inline const uint8_t *tok_s(const bpe_t *b, int32_t id) { return b->blob + b->offs[id] + 1; }
static inline int64_t tok_n(const bpe_t *b, int32_t id) { return b->offs[id + 1] - b->offs[id] - 1; }

/* id of the token a + b (b may be empty), or -1 */
static int32_t lookup2(const bpe_t *b, const uint8_t *a, int64_t na, const uint8_t *c, int64_t nc) {
    uint64_t h = fnv(fnv(FNV0, a, na), c, nc);
    for (uint64_t i = mix(h) & b->tmask;; i = (i + 1) & b->tmask) {
        int32_t id = b->tslot[i];
        if (id < 0) return -1;
        if (tok_n(b, id) == na + nc && !memcmp(tok_s(b, id), a, na) && !memcmp(tok_s(b, id) + na, c, nc))
            return id;
    }
}

static int32_t pair_find(const bpe_t *b, int32_t l, int32_t r, int32_t *rank) {
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

static int utf8_len(uint8_t c) {
    return c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
}

void cellar_bpe_free(void *h) {
    bpe_t *b = h;
    if (!b) return;
    free(b->blob); free(b->offs); free(b->tslot); free(b->pkey); free(b->prank); free(b->pnew);
    free(b);
}

/* NULL on failure: *err = 1 + the index of the first token that repeats an earlier one, or -1 when out of
 * memory. Empty tokens are not entered (no text maps to them). */
void *cellar_bpe_new(const uint8_t *tblob, const int64_t *toffs, int64_t n_tok,
                     const uint8_t *mblob, const int64_t *moffs, int64_t n_merge, int64_t *err) {
    *err = -1;
    if (n_tok <= 0 || n_tok > INT32_MAX - 1 || n_merge < 0) return NULL;
    bpe_t *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    int64_t nbytes = toffs[n_tok] - toffs[0];
    uint64_t ts = table_size(n_tok), ps = table_size(n_merge);
    b->blob = malloc((size_t)nbytes + 1);
    b->offs = malloc(sizeof(int64_t) * (size_t)(n_tok + 1));
    b->tslot = malloc(sizeof(int32_t) * ts);
    b->pkey = calloc(ps, sizeof(uint64_t));
    b->prank = malloc(sizeof(int32_t) * ps);
    b->pnew = malloc(sizeof(int32_t) * ps);
    if (!b->blob || !b->offs || !b->tslot || !b->pkey || !b->prank || !b->pnew) { cellar_bpe_free(b); return NULL; }
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
            if (tok_n(b, o) == n && !memcmp(tok_s(b, o), s, n)) { *err = 1 + id; cellar_bpe_free(b); return NULL; }
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
        int32_t l = lookup2(b, s, sp, s, 0), rr = lookup2(b, s + sp + 1, n - sp - 1, s, 0);
        if (l < 0 || rr < 0) continue;
        int32_t m = lookup2(b, s, sp, s + sp + 1, n - sp - 1);
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

int32_t cellar_bpe_token_id(const void *h, const uint8_t *s, int64_t n) {
    const bpe_t *b = h;
    return n > 0 ? lookup2(b, s, n, s, 0) : -1;
}

typedef struct { int32_t id, prev, next, alive; } sym_t;
typedef struct { int32_t rank, pos, id; } cand_t;

static inline int cand_less(cand_t a, cand_t c) { return a.rank < c.rank || (a.rank == c.rank && a.pos < c.pos); }

static void heap_push(cand_t *h, int64_t *n, cand_t c) {
    int64_t i = (*n)++;
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!cand_less(c, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static cand_t heap_pop(cand_t *h, int64_t *n) {
    cand_t top = h[0], last = h[--(*n)];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_less(h[c + 1], h[c])) c++;
        if (!cand_less(h[c], last)) break;
        h[i] = h[c];
        i = c;
    }
    h[i] = last;
    return top;
}

static void try_pair(const bpe_t *b, const sym_t *sy, int32_t pos, cand_t *heap, int64_t *nh) {
    int32_t nx = sy[pos].next, rank;
    if (nx < 0) return;
    int32_t m = pair_find(b, sy[pos].id, sy[nx].id, &rank);
    if (m >= 0) heap_push(heap, nh, (cand_t){rank, pos, m});
}

/* The pieces in buf[0..n) (0-separated) -> ids in out (room for n ids always suffices); returns how many,
 * or -1 when out of memory (or a piece is over 512 MiB). */
int64_t cellar_bpe_encode(const void *h, const uint8_t *buf, int64_t n, int ignore_merges, int32_t *out) {
    const bpe_t *b = h;
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
        if (len > 0 && ignore_merges && (whole = lookup2(b, p, len, p, 0)) >= 0) {
            out[n_out++] = whole;
        } else if (len > 0) {
            int32_t ns = 0;
            for (int64_t i = 0; i < len;) {
                int64_t cl = utf8_len(p[i]);
                if (cl > len - i) cl = len - i;
                int32_t id = lookup2(b, p + i, cl, p, 0);     /* -1: no such token, in no pair */
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
                int32_t rank, m = pair_find(b, l->id, sy[l->next].id, &rank);
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
