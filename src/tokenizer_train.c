/* tokenizer_train.c - byte-level BPE training (tokenizer_train.h).
 *
 * Counting: the text of each feed is cut at the special tokens, each piece is split by the
 * encoder's pre-tokenizer (ccoe_pretok_*), and each distinct pre-token ("word") is kept once
 * with its count. Merging works on the words, not the text: each word is a sequence of token
 * ids (its bytes at first), each adjacent pair of ids has a count (the sum over the words it
 * occurs in, times their counts) and a list of the words it occurs in, and the pairs sit in a
 * binary max-heap by (count, tie rule of tokenizer_train.h) that knows each pair's position.
 * A merge of (a, b) into z rewrites only the words on the list of (a, b), left to right as the
 * encoder applies merges, and changes the counts of the neighbouring pairs by what changed
 * (the delta scheme of Hugging Face's tokenizers: (x, a) and (b, y) lose, (x, z) and (z, y)
 * gain); each changed pair moves in the heap. A word is on a pair's list at least once while
 * it holds the pair (lists are not cleaned: a stale entry costs one scan of that word).
 * Pairs whose merged token would exceed CCOE_BPE_TRAIN_MAX_TOKEN bytes are never counted.
 */
#define _GNU_SOURCE /* memmem */
#include "tokenizer_train.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bytemap.h"
#include "fs.h"
#include "tokenizer.h"

/* ---- the trainer ---- */

typedef struct pair {
    int32_t a, b;
    int64_t count; /* sum over words holding (a, b) of occurrences times the word's count */
    uint32_t heap; /* position in the heap */
    uint32_t *occ; /* (n_occ) words that hold or held the pair */
    uint32_t n_occ, cap_occ;
} pair;

struct ccoe_bpe_trainer {
    ccoe_bpe_train_opts opts;
    char **specials;     /* (opts.n_specials) copies */
    ccoe_pretok *pre;
    ccoe_bytemap words;          /* pre-token bytes -> count */
    ccoe_bpe_train_stats stats;
    int trained;
    ccoe_status feed_status; /* out of memory inside a pre-tokenizer callback */
    /* tokens: id -> bytes (specials hold their text); tok_map: bytes -> id (not specials) */
    uint64_t *tok_off;   /* (tok_cap) */
    uint32_t *tok_len;   /* (tok_cap) */
    char *tok_pool;
    size_t tok_pool_n, tok_pool_cap;
    int n_tok, tok_cap;
    ccoe_bytemap tok_map;
    int32_t (*merges)[2]; /* (n_merges) left, right ids in learned order */
    int n_merges;
    /* words as id sequences */
    int32_t *sym;        /* (total word bytes) */
    uint64_t *w_off;     /* (n_words) */
    uint32_t *w_len;     /* (n_words) current number of ids */
    int64_t *w_count;    /* (n_words) */
    uint32_t *w_stamp;   /* (n_words) the merge that last rewrote the word */
    /* pairs */
    pair *pairs;
    size_t n_pairs, pairs_cap;
    uint64_t *pk;        /* (pk_cap) open addressing: pair key; UINT64_MAX = empty */
    uint32_t *pv;        /* (pk_cap) pair index */
    size_t pk_cap;
    uint32_t *heap;      /* (n_pairs) pair indices */
};

static ccoe_status nomem(ccoe_error *err)
{
    return ccoe_error_set(err, CCOE_ERR_NOMEM,
                          "out of memory training the BPE tokenizer: give less text or a "
                          "machine with more memory");
}

ccoe_status ccoe_bpe_trainer_init(ccoe_bpe_trainer **out, const ccoe_bpe_train_opts *o,
                                  ccoe_error *err)
{
    *out = NULL;
    if (o->n_specials < 0 || (o->n_specials && !o->specials))
        return ccoe_error_set(err, CCOE_ERR_ARG, "bad special token list");
    const long need = 256L + o->n_specials;
    if (o->vocab_size < need)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "vocabulary size %d is below the %ld ids every byte-level BPE "
                              "holds (256 bytes + %d special token%s): give --vocab %ld or more",
                              o->vocab_size, need, o->n_specials, o->n_specials == 1 ? "" : "s",
                              need);
    if (o->vocab_size > (1 << 24))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "vocabulary size %d is above the largest the tokenizer reads "
                              "(%d): give a smaller --vocab",
                              o->vocab_size, 1 << 24);
    if (o->n_specials > 64)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "%d special tokens: at most 64 are supported", o->n_specials);
    if (o->min_frequency < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "minimum pair frequency 0: give --min-frequency 1 or more");
    for (int i = 0; i < o->n_specials; i++) {
        if (!o->specials[i] || !o->specials[i][0])
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "special token %d is empty: give special tokens with text "
                                  "(e.g. --special '<|endoftext|>')",
                                  i + 1);
        for (int j = 0; j < i; j++)
            if (strcmp(o->specials[i], o->specials[j]) == 0)
                return ccoe_error_set(err, CCOE_ERR_ARG,
                                      "special token '%s' is given twice: give each once",
                                      o->specials[i]);
    }
    ccoe_bpe_trainer *t = calloc(1, sizeof *t);
    if (!t)
        return nomem(err);
    t->opts = *o;
    t->specials = calloc((size_t)o->n_specials + 1, sizeof *t->specials);
    if (!t->specials) {
        free(t);
        return nomem(err);
    }
    for (int i = 0; i < o->n_specials; i++)
        if (!(t->specials[i] = strdup(o->specials[i]))) {
            ccoe_bpe_trainer_free(t);
            return nomem(err);
        }
    t->opts.specials = (const char *const *)t->specials;
    ccoe_status st = ccoe_pretok_init(&t->pre, NULL, err);
    if (st != CCOE_OK) {
        ccoe_bpe_trainer_free(t);
        return st;
    }
    *out = t;
    return CCOE_OK;
}

void ccoe_bpe_trainer_free(ccoe_bpe_trainer *t)
{
    if (!t)
        return;
    for (int i = 0; t->specials && i < t->opts.n_specials; i++)
        free(t->specials[i]);
    free(t->specials);
    ccoe_pretok_free(t->pre);
    ccoe_bytemap_free(&t->words);
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_pool);
    ccoe_bytemap_free(&t->tok_map);
    free(t->merges);
    free(t->sym);
    free(t->w_off);
    free(t->w_len);
    free(t->w_count);
    free(t->w_stamp);
    for (size_t i = 0; i < t->n_pairs; i++)
        free(t->pairs[i].occ);
    free(t->pairs);
    free(t->pk);
    free(t->pv);
    free(t->heap);
    free(t);
}

/* ---- counting ---- */

static void count_word(void *ctx, const char *w, size_t n)
{
    ccoe_bpe_trainer *t = ctx;
    if (t->feed_status != CCOE_OK)
        return;
    t->stats.pretokens++;
    long e = ccoe_bytemap_find(&t->words, w, n);
    if (e >= 0) {
        t->words.val[e]++;
        return;
    }
    if (n > UINT32_MAX || ccoe_bytemap_add(&t->words, w, n, 1) < 0)
        t->feed_status = CCOE_ERR_NOMEM;
}

ccoe_status ccoe_bpe_trainer_feed(ccoe_bpe_trainer *t, const char *text, size_t n,
                                  ccoe_error *err)
{
    if (t->trained)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL, "BPE trainer fed after training");
    t->stats.bytes += n;
    const int S = t->opts.n_specials;
    size_t next[64], lens[64]; /* each special's next occurrence at or after start (n: none) */
    size_t start = 0;
    for (int k = 0; k < S; k++) {
        lens[k] = strlen(t->specials[k]);
        next[k] = SIZE_MAX; /* not searched yet */
    }
    while (start < n) {
        /* the earliest special at or after start (the longest of those starting there) */
        size_t best = n, best_len = 0;
        for (int k = 0; k < S; k++) {
            if (next[k] == SIZE_MAX || (next[k] < n && next[k] < start)) {
                const char *p = memmem(text + start, n - start, t->specials[k], lens[k]);
                next[k] = p ? (size_t)(p - text) : n;
            }
            if (next[k] < best || (next[k] == best && best < n && lens[k] > best_len)) {
                best = next[k];
                best_len = lens[k];
            }
        }
        ccoe_pretok_split(t->pre, text + start, best - start, count_word, t);
        if (best == n)
            break;
        t->stats.specials_cut++;
        start = best + best_len;
    }
    if (t->feed_status != CCOE_OK)
        return nomem(err);
    return CCOE_OK;
}

ccoe_status ccoe_bpe_trainer_feed_file(ccoe_bpe_trainer *t, const char *path, ccoe_error *err)
{
    FILE *f = ccoe_fs_fopen_input(path, "training text", err);
    if (!f)
        return err->status;
    char *buf = NULL;
    size_t len = 0;
    int e = ccoe_fs_read_stream(f, (size_t)1 << 40, &buf, &len);
    fclose(f);
    if (e) {
        free(buf);
        return ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO,
                              "cannot read training text '%s': %s", path, strerror(e));
    }
    ccoe_status st = ccoe_bpe_trainer_feed(t, buf, len, err);
    free(buf);
    if (st != CCOE_OK)
        return ccoe_error_wrap(err, "reading '%s'", path);
    return CCOE_OK;
}

/* ---- tokens ---- */

static int32_t add_token(ccoe_bpe_trainer *t, const char *b, size_t n, int map)
{
    if (t->n_tok == t->tok_cap) {
        int c = t->tok_cap ? 2 * t->tok_cap : 1024;
        uint64_t *o = realloc(t->tok_off, (size_t)c * sizeof *o);
        if (o)
            t->tok_off = o;
        uint32_t *l = realloc(t->tok_len, (size_t)c * sizeof *l);
        if (l)
            t->tok_len = l;
        if (!o || !l)
            return -1;
        t->tok_cap = c;
    }
    if (t->tok_pool_n + n > t->tok_pool_cap) {
        size_t c = t->tok_pool_cap ? t->tok_pool_cap : 1 << 16;
        while (c < t->tok_pool_n + n)
            c *= 2;
        char *p = realloc(t->tok_pool, c);
        if (!p)
            return -1;
        t->tok_pool = p;
        t->tok_pool_cap = c;
    }
    int32_t id = t->n_tok;
    if (map && ccoe_bytemap_add(&t->tok_map, b, n, (uint64_t)id) < 0)
        return -1;
    memcpy(t->tok_pool + t->tok_pool_n, b, n);
    t->tok_off[id] = t->tok_pool_n;
    t->tok_len[id] = (uint32_t)n;
    t->tok_pool_n += n;
    t->n_tok++;
    return id;
}

static const unsigned char *tok_bytes(const ccoe_bpe_trainer *t, int32_t id)
{
    return (const unsigned char *)t->tok_pool + t->tok_off[id];
}

/* bytes order: memcmp, then the shorter first */
static int cmp_tok(const ccoe_bpe_trainer *t, int32_t x, int32_t y)
{
    if (x == y)
        return 0;
    size_t lx = t->tok_len[x], ly = t->tok_len[y];
    int c = memcmp(tok_bytes(t, x), tok_bytes(t, y), lx < ly ? lx : ly);
    if (c)
        return c;
    return lx < ly ? -1 : lx > ly;
}

/* ---- the pair heap ---- */

/* Whether pair i goes before pair j: the higher count, then the tie rule. */
static int before(const ccoe_bpe_trainer *t, uint32_t i, uint32_t j)
{
    const pair *p = &t->pairs[i], *q = &t->pairs[j];
    if (p->count != q->count)
        return p->count > q->count;
    int c = cmp_tok(t, p->a, q->a);
    if (c)
        return c < 0;
    return cmp_tok(t, p->b, q->b) < 0;
}

static void heap_set(ccoe_bpe_trainer *t, uint32_t pos, uint32_t i)
{
    t->heap[pos] = i;
    t->pairs[i].heap = pos;
}

static void sift_up(ccoe_bpe_trainer *t, uint32_t pos)
{
    uint32_t i = t->heap[pos];
    while (pos > 0) {
        uint32_t up = (pos - 1) / 2;
        if (!before(t, i, t->heap[up]))
            break;
        heap_set(t, pos, t->heap[up]);
        pos = up;
    }
    heap_set(t, pos, i);
}

static void sift_down(ccoe_bpe_trainer *t, uint32_t pos)
{
    const uint32_t n = (uint32_t)t->n_pairs;
    uint32_t i = t->heap[pos];
    for (;;) {
        uint32_t l = 2 * pos + 1, r = l + 1, c = l;
        if (l >= n)
            break;
        if (r < n && before(t, t->heap[r], t->heap[l]))
            c = r;
        if (!before(t, t->heap[c], i))
            break;
        heap_set(t, pos, t->heap[c]);
        pos = c;
    }
    heap_set(t, pos, i);
}

/* The index of pair (a, b), created with count 0 if new; -1 when out of memory. */
static long pair_get(ccoe_bpe_trainer *t, int32_t a, int32_t b)
{
    uint64_t k = ccoe_pair_key(a, b);
    if (t->pk_cap) {
        for (size_t i = ccoe_pair_slot(k, t->pk_cap);; i = (i + 1) & (t->pk_cap - 1)) {
            if (t->pk[i] == k)
                return t->pv[i];
            if (t->pk[i] == UINT64_MAX)
                break;
        }
    }
    if (2 * (t->n_pairs + 1) > t->pk_cap) {
        size_t cap = t->pk_cap ? 2 * t->pk_cap : 1 << 14;
        uint64_t *pk = malloc(cap * sizeof *pk);
        uint32_t *pv = malloc(cap * sizeof *pv);
        if (!pk || !pv) {
            free(pk);
            free(pv);
            return -1;
        }
        for (size_t i = 0; i < cap; i++)
            pk[i] = UINT64_MAX;
        for (size_t i = 0; i < t->pk_cap; i++) {
            if (t->pk[i] == UINT64_MAX)
                continue;
            size_t j = ccoe_pair_slot(t->pk[i], cap);
            while (pk[j] != UINT64_MAX)
                j = (j + 1) & (cap - 1);
            pk[j] = t->pk[i];
            pv[j] = t->pv[i];
        }
        free(t->pk);
        free(t->pv);
        t->pk = pk;
        t->pv = pv;
        t->pk_cap = cap;
    }
    if (t->n_pairs == t->pairs_cap) {
        size_t c = t->pairs_cap ? 2 * t->pairs_cap : 1 << 13;
        if (c > UINT32_MAX)
            return -1;
        pair *p = realloc(t->pairs, c * sizeof *p);
        if (p)
            t->pairs = p;
        uint32_t *h = realloc(t->heap, c * sizeof *h);
        if (h)
            t->heap = h;
        if (!p || !h)
            return -1;
        t->pairs_cap = c;
    }
    size_t i = ccoe_pair_slot(k, t->pk_cap);
    while (t->pk[i] != UINT64_MAX)
        i = (i + 1) & (t->pk_cap - 1);
    uint32_t idx = (uint32_t)t->n_pairs++;
    t->pk[i] = k;
    t->pv[i] = idx;
    t->pairs[idx] = (pair){.a = a, .b = b, .count = 0};
    heap_set(t, idx, idx); /* at the bottom: count 0 goes after every counted pair */
    sift_up(t, idx);
    return idx;
}

/* Adds d (times a word's count) to pair (a, b); word w holds it (d > 0). Pairs whose token
 * would be too long are not counted. Returns 0 when out of memory. */
static int change(ccoe_bpe_trainer *t, int32_t a, int32_t b, int64_t d, uint32_t w)
{
    if (t->tok_len[a] + t->tok_len[b] > CCOE_BPE_TRAIN_MAX_TOKEN)
        return 1;
    long i = pair_get(t, a, b);
    if (i < 0)
        return 0;
    pair *p = &t->pairs[i];
    p->count += d;
    assert(p->count >= 0);
    if (d > 0) {
        if (!p->n_occ || p->occ[p->n_occ - 1] != w) {
            if (p->n_occ == p->cap_occ) {
                uint32_t c = p->cap_occ ? 2 * p->cap_occ : 4;
                uint32_t *o = realloc(p->occ, (size_t)c * sizeof *o);
                if (!o)
                    return 0;
                p->occ = o;
                p->cap_occ = c;
            }
            p->occ[p->n_occ++] = w;
        }
        sift_up(t, p->heap);
    } else if (d < 0) {
        sift_down(t, p->heap);
    }
    return 1;
}

/* Rewrites word w with merge (a, b) -> z, changing the neighbouring pairs' counts; the pair
 * (a, b) itself is skipped (its count is zeroed by the caller). */
static int merge_word(ccoe_bpe_trainer *t, uint32_t w, int32_t a, int32_t b, int32_t z)
{
    int32_t *x = t->sym + t->w_off[w];
    const uint32_t m = t->w_len[w];
    const int64_t c = t->w_count[w];
    uint32_t i = 0, j = 0;
    int ok = 1;
#define CHANGE(l, r, d)                                                                        \
    do {                                                                                       \
        if (!((l) == a && (r) == b))                                                           \
            ok &= change(t, (l), (r), (d), w);                                                 \
    } while (0)
    while (i < m) {
        if (i + 1 < m && x[i] == a && x[i + 1] == b) {
            if (j > 0) {
                CHANGE(x[j - 1], a, -c);
                CHANGE(x[j - 1], z, c);
            }
            if (i + 2 < m) {
                CHANGE(b, x[i + 2], -c);
                CHANGE(z, x[i + 2], c);
            }
            x[j++] = z;
            i += 2;
        } else {
            x[j++] = x[i++];
        }
    }
#undef CHANGE
    t->w_len[w] = j;
    return ok;
}

ccoe_status ccoe_bpe_trainer_run(ccoe_bpe_trainer *t, ccoe_bpe_train_stats *stats,
                                 ccoe_error *err)
{
    if (t->trained)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL, "BPE trainer run twice");
    t->trained = 1;
    /* the ids: bytes, specials */
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if (add_token(t, &c, 1, 1) < 0)
            return nomem(err);
    }
    for (int k = 0; k < t->opts.n_specials; k++)
        if (add_token(t, t->specials[k], strlen(t->specials[k]), 0) < 0)
            return nomem(err);
    /* the words as id sequences, in the order first seen (deterministic) */
    const size_t W = t->words.n;
    t->stats.unique_words = W;
    t->sym = malloc((t->words.pool_n ? t->words.pool_n : 1) * sizeof *t->sym);
    t->w_off = malloc((W ? W : 1) * sizeof *t->w_off);
    t->w_len = malloc((W ? W : 1) * sizeof *t->w_len);
    t->w_count = malloc((W ? W : 1) * sizeof *t->w_count);
    t->w_stamp = calloc(W ? W : 1, sizeof *t->w_stamp);
    if (!t->sym || !t->w_off || !t->w_len || !t->w_count || !t->w_stamp || W > UINT32_MAX)
        return nomem(err);
    for (size_t w = 0; w < W; w++) {
        t->w_off[w] = t->words.off[w];
        t->w_len[w] = t->words.len[w];
        t->w_count[w] = (int64_t)t->words.val[w];
        const unsigned char *s = (const unsigned char *)t->words.pool + t->words.off[w];
        for (uint32_t i = 0; i < t->words.len[w]; i++)
            t->sym[t->w_off[w] + i] = s[i];
    }
    ccoe_bytemap_free(&t->words);
    for (size_t w = 0; w < W; w++) {
        const int32_t *x = t->sym + t->w_off[w];
        for (uint32_t i = 0; i + 1 < t->w_len[w]; i++)
            if (!change(t, x[i], x[i + 1], t->w_count[w], (uint32_t)w))
                return nomem(err);
    }
    const int target = t->opts.vocab_size;
    /* a merge whose token already exists adds no id: there may be more merges than new ids */
    int merges_cap = target - t->n_tok + 1;
    t->merges = malloc((size_t)merges_cap * sizeof *t->merges);
    if (!t->merges)
        return nomem(err);
    char buf[2 * CCOE_BPE_TRAIN_MAX_TOKEN];
    uint32_t stamp = 0;
    while (t->n_tok < target && t->n_pairs) {
        const uint32_t top = t->heap[0];
        if (t->pairs[top].count < (int64_t)t->opts.min_frequency || t->pairs[top].count == 0)
            break;
        const int32_t a = t->pairs[top].a, b = t->pairs[top].b;
        const size_t la = t->tok_len[a], lb = t->tok_len[b];
        memcpy(buf, tok_bytes(t, a), la);
        memcpy(buf + la, tok_bytes(t, b), lb);
        long e = ccoe_bytemap_find(&t->tok_map, buf, la + lb);
        int32_t z = e >= 0 ? (int32_t)t->tok_map.val[e] : add_token(t, buf, la + lb, 1);
        if (z < 0)
            return nomem(err);
        if (t->n_merges == merges_cap) {
            void *p = realloc(t->merges, 2 * (size_t)merges_cap * sizeof *t->merges);
            if (!p)
                return nomem(err);
            t->merges = p;
            merges_cap *= 2;
        }
        t->merges[t->n_merges][0] = a;
        t->merges[t->n_merges][1] = b;
        t->n_merges++;
        t->pairs[top].count = 0;
        sift_down(t, t->pairs[top].heap);
        uint32_t *occ = t->pairs[top].occ, n_occ = t->pairs[top].n_occ;
        t->pairs[top].occ = NULL;
        t->pairs[top].n_occ = t->pairs[top].cap_occ = 0;
        stamp++;
        int ok = 1;
        for (uint32_t k = 0; k < n_occ && ok; k++) {
            uint32_t w = occ[k];
            if (t->w_stamp[w] == stamp)
                continue;
            t->w_stamp[w] = stamp;
            ok = merge_word(t, w, a, b, z);
        }
        free(occ);
        if (!ok)
            return nomem(err);
    }
    t->stats.n_merges = t->n_merges;
    t->stats.vocab_size = t->n_tok;
    if (stats)
        *stats = t->stats;
    return CCOE_OK;
}

/* ---- writing ---- */

/* Writes the byte-level alphabet form of bytes s[0..n) as JSON string content (or raw text,
 * for merges.txt). */
static void put_mapped(FILE *f, const int *cp_of, const unsigned char *s, size_t n, int json)
{
    for (size_t i = 0; i < n; i++) {
        int cp = cp_of[s[i]];
        if (json && (cp == '"' || cp == '\\'))
            fputc('\\', f);
        if (cp < 0x80) {
            fputc(cp, f);
        } else {
            fputc(0xC0 | (cp >> 6), f);
            fputc(0x80 | (cp & 0x3F), f);
        }
    }
}

/* Writes text as a JSON string (specials: their text, escaped). */
static void put_json_text(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void put_vocab(const ccoe_bpe_trainer *t, FILE *f, const int *cp_of, const char *indent)
{
    const int S = t->opts.n_specials;
    fputc('{', f);
    for (int id = 0; id < t->n_tok; id++) {
        fprintf(f, "%s\n%s", id ? "," : "", indent);
        if (id >= 256 && id < 256 + S) {
            put_json_text(f, t->specials[id - 256]);
        } else {
            fputc('"', f);
            put_mapped(f, cp_of, tok_bytes(t, id), t->tok_len[id], 1);
            fputc('"', f);
        }
        fprintf(f, ": %d", id);
    }
    fprintf(f, "\n%.*s}", (int)(strlen(indent) >= 2 ? strlen(indent) - 2 : 0), indent);
}

static void put_merge(const ccoe_bpe_trainer *t, FILE *f, const int *cp_of, int k, int json)
{
    const int32_t a = t->merges[k][0], b = t->merges[k][1];
    put_mapped(f, cp_of, tok_bytes(t, a), t->tok_len[a], json);
    fputc(' ', f);
    put_mapped(f, cp_of, tok_bytes(t, b), t->tok_len[b], json);
}

enum { OUT_VOCAB, OUT_MERGES, OUT_HF };

static void write_body(const ccoe_bpe_trainer *t, FILE *f, int which, const int *cp_of)
{
    if (which == OUT_VOCAB) {
        put_vocab(t, f, cp_of, "  ");
        fputc('\n', f);
    } else if (which == OUT_MERGES) {
        fputs("#version: 0.2\n", f);
        for (int k = 0; k < t->n_merges; k++) {
            put_merge(t, f, cp_of, k, 0);
            fputc('\n', f);
        }
    } else {
        fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
              "  \"added_tokens\": [",
              f);
        for (int k = 0; k < t->opts.n_specials; k++) {
            fprintf(f, "%s\n    {\"id\": %d, \"content\": ", k ? "," : "", 256 + k);
            put_json_text(f, t->specials[k]);
            fputs(", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, "
                  "\"normalized\": false, \"special\": true}",
                  f);
        }
        fputs("\n  ],\n  \"normalizer\": null,\n"
              "  \"pre_tokenizer\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
              "\"trim_offsets\": true, \"use_regex\": true},\n"
              "  \"post_processor\": null,\n"
              "  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
              "\"trim_offsets\": true, \"use_regex\": true},\n"
              "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n"
              "    \"unk_token\": null,\n    \"continuing_subword_prefix\": \"\",\n"
              "    \"end_of_word_suffix\": \"\",\n    \"fuse_unk\": false,\n"
              "    \"byte_fallback\": false,\n    \"ignore_merges\": false,\n    \"vocab\": ",
              f);
        put_vocab(t, f, cp_of, "      ");
        fputs(",\n    \"merges\": [", f);
        for (int k = 0; k < t->n_merges; k++) {
            fprintf(f, "%s\n      \"", k ? "," : "");
            put_merge(t, f, cp_of, k, 1);
            fputc('"', f);
        }
        fputs("\n    ]\n  }\n}\n", f);
    }
}

static ccoe_status write_file(const ccoe_bpe_trainer *t, const char *dir, const char *name,
                              int which, ccoe_error *err)
{
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot write '%s': %s: give a writable -o DIR",
                              tmp, strerror(errno));
    int cp_of[256];
    ccoe_bpe_byte_alphabet(cp_of);
    write_body(t, f, which, cp_of);
    int bad = ferror(f);
    bad |= fflush(f) != 0;
    bad |= fsync(fileno(f)) != 0;
    const int e = errno;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0) {
        const int e2 = bad ? e : errno;
        remove(tmp);
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot write '%s': %s", path, strerror(e2));
    }
    return CCOE_OK;
}

ccoe_status ccoe_bpe_trainer_write(const ccoe_bpe_trainer *t, const char *dir, ccoe_error *err)
{
    if (!t->trained)
        return ccoe_error_set(err, CCOE_ERR_INTERNAL, "BPE trainer written before training");
    CCOE_TRY(ccoe_fs_mkdirs(dir, err));
    CCOE_TRY(write_file(t, dir, "vocab.json", OUT_VOCAB, err));
    CCOE_TRY(write_file(t, dir, "merges.txt", OUT_MERGES, err));
    return write_file(t, dir, "tokenizer.json", OUT_HF, err);
}
