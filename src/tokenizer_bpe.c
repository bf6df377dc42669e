/* tokenizer_bpe.c - a byte-level BPE tokenizer (GPT-2, and Hugging Face tokenizer.json files of
 * the same kind: Qwen2, LLaMA-3), behind ccoe_tokenizer_ops.
 *
 * Reads a directory: tokenizer.json (model type BPE with a ByteLevel pre-tokenizer; its vocab,
 * merges, added tokens and the Split regex where given), else GPT-2's vocab.json + merges.txt.
 * Encoding: added/special tokens (<|endoftext|>, tokenizer.json's added_tokens) are cut out of
 * the text first and become their ids; each piece between them is pre-tokenized with the real
 * regex through PCRE2 (UTF + UCP, JIT where available; bytes that are not valid UTF-8 match no
 * pattern and each run of them is a pre-token of its own); each pre-token's bytes start as one
 * token per byte (GPT-2's bytes-to-unicode alphabet) and the pair of lowest merge rank is merged,
 * every occurrence left to right, until no pair has a rank (GPT-2's encoder.py). A cache maps
 * pre-tokens to their ids. Decoding concatenates each id's bytes (added tokens: their text).
 *
 * Not here: training a BPE (tokenizer_train.c, which shares the pre-tokenizer: ccoe_pretok_*),
 * normalizers other than NFC (taken as already applied: the input is
 * not normalized), add_prefix_space, SentencePiece-style (non byte-level) BPE. One instance is
 * not thread-safe: encode updates the cache and PCRE2's match data.
 */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <assert.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bytemap.h"
#include "fs.h"
#include "tokenizer.h"

#define GPT2_PATTERN                                                                           \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"

enum {
    MAX_IDS = 1 << 24,         /* largest accepted vocabulary */
    CACHE_MAX_WORD = 256,      /* longer pre-tokens are not cached */
    CACHE_MAX_ENTRIES = 1 << 20 /* the cache is emptied when it holds more */
};

/* ---- byte strings -> 64-bit values (bytemap.h): the vocabulary and the encode cache ---- */

typedef ccoe_bytemap strmap;

static uint64_t *strmap_find(const strmap *m, const char *k, size_t n)
{
    long e = ccoe_bytemap_find(m, k, n);
    return e < 0 ? NULL : &m->val[e];
}

/* Inserts k -> v. Returns 1, 2 if k was present (its value unchanged), 0 when out of memory. */
static int strmap_put(strmap *m, const char *k, size_t n, uint64_t v)
{
    if (ccoe_bytemap_find(m, k, n) >= 0)
        return 2;
    return ccoe_bytemap_add(m, k, n, v) < 0 ? 0 : 1;
}

/* ---- the merge table: (left id, right id) -> rank and merged id ---- */

typedef struct merge_entry {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    uint32_t rank;
    int32_t id;
} merge_entry;

typedef struct special {
    char *text;
    size_t len;
    int32_t id;
} special;

typedef struct bpe {
    int V;                 /* ids 0..V-1 */
    uint32_t *tok_off;     /* (V) offset of each id's bytes in tok_pool */
    uint32_t *tok_len;     /* (V) UINT32_MAX: no token has this id */
    char *tok_pool;
    size_t tok_pool_n;
    strmap vocab;          /* bytes of a model token -> id */
    merge_entry *merges;   /* (merge_cap) */
    size_t merge_cap, n_merges;
    int32_t byte_id[256];  /* the single-byte token of each byte */
    int cp_of[256];        /* GPT-2's code point standing for each byte */
    int byte_of[324];      /* the inverse (-1: no byte) */
    special *specials;     /* (n_specials) longest first */
    int n_specials;
    unsigned char first[256]; /* 1: some special starts with this byte */
    int ignore_merges;     /* tokenizer.json: a pre-token that is a token is not merged */
    int32_t eot;
    pcre2_code *re;
    pcre2_match_data *md;
    int jit;
    strmap cache;          /* pre-token bytes -> offset of (count, ids...) in cache_ids */
    int32_t *cache_ids;
    size_t cache_n, cache_cap;
    int32_t *word;         /* (word_cap) scratch of one pre-token */
    size_t word_cap;
    char path[512];        /* the file read, for messages */
} bpe;

/* ---- GPT-2's bytes-to-unicode alphabet ---- */

/* cp_of[b]: the code point standing for byte b; byte_of[cp] the inverse (-1: none). */
static void byte_alphabet(int cp_of[256], int byte_of[324])
{
    for (int i = 0; i < 324; i++)
        byte_of[i] = -1;
    int n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        cp_of[b] = printable ? b : 256 + n++;
        byte_of[cp_of[b]] = b;
    }
}

/* Decodes one UTF-8 character of s (n > 0 bytes): returns its length, 0 if invalid. */
static size_t utf8_next(const unsigned char *s, size_t n, int *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t k = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC0 ? 2 : 0;
    if (!k || k > n || s[0] > 0xF4)
        return 0;
    int c = s[0] & (0x7F >> k);
    for (size_t i = 1; i < k; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        c = c << 6 | (s[i] & 0x3F);
    }
    static const int min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (c < min_cp[k] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        return 0;
    *cp = c;
    return k;
}

/* Maps a token string of the byte-level alphabet back to its bytes (out: at least strlen(s)).
 * Returns the byte count, or -1 with *bad the offending code point (-2: not UTF-8). */
static long unmap_token(const char *s, const int *byte_of, char *out, int *bad)
{
    size_t n = strlen(s), w = 0;
    for (size_t i = 0; i < n;) {
        int cp;
        size_t k = utf8_next((const unsigned char *)s + i, n - i, &cp);
        if (!k) {
            *bad = -2;
            return -1;
        }
        if (cp >= 324 || byte_of[cp] < 0) {
            *bad = cp;
            return -1;
        }
        out[w++] = (char)byte_of[cp];
        i += k;
    }
    return (long)w;
}

/* ---- building ---- */

static ccoe_status nomem(ccoe_error *err, const bpe *t)
{
    return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory reading the tokenizer %s", t->path);
}

/* Gives id the bytes b[0..n); the id must be new. */
static ccoe_status set_token(bpe *t, int32_t id, const char *b, size_t n, const char *what,
                             ccoe_error *err)
{
    if (id < 0 || id >= MAX_IDS)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: %s has id %ld outside 0..%d: the file is corrupt; fetch it "
                              "again",
                              t->path, what, (long)id, MAX_IDS - 1);
    if (id >= t->V) {
        int nv = t->V ? t->V : 1024;
        while (nv <= id)
            nv = nv > MAX_IDS / 2 ? MAX_IDS : 2 * nv;
        uint32_t *o = realloc(t->tok_off, (size_t)nv * sizeof *o);
        if (o)
            t->tok_off = o;
        uint32_t *l = realloc(t->tok_len, (size_t)nv * sizeof *l);
        if (l)
            t->tok_len = l;
        if (!o || !l)
            return nomem(err, t);
        for (int i = t->V; i < nv; i++)
            t->tok_len[i] = UINT32_MAX;
        t->V = nv; /* trimmed to the largest id + 1 at the end */
    }
    if (t->tok_len[id] != UINT32_MAX)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: id %ld is given to two tokens (the second: %s): the file is "
                              "corrupt; fetch it again",
                              t->path, (long)id, what);
    if (t->tok_pool_n + n > UINT32_MAX)
        return nomem(err, t);
    char *p = realloc(t->tok_pool, t->tok_pool_n + n + 1);
    if (!p)
        return nomem(err, t);
    t->tok_pool = p;
    memcpy(p + t->tok_pool_n, b, n);
    t->tok_off[id] = (uint32_t)t->tok_pool_n;
    t->tok_len[id] = (uint32_t)n;
    t->tok_pool_n += n;
    return CCOE_OK;
}

/* Whether v is a whole number in 0..MAX_IDS-1 (range first: casting a huge double is undefined). */
static int json_id(const cJSON *v)
{
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < MAX_IDS &&
           v->valuedouble == (double)(int32_t)v->valuedouble;
}

/* Adds the model vocabulary (a JSON object token -> id); ids that are added tokens are skipped
 * (they hold their literal text). */
static ccoe_status add_vocab(bpe *t, const cJSON *vocab, ccoe_error *err)
{
    const int *cp_of = t->cp_of, *byte_of = t->byte_of;
    if (!cJSON_IsObject(vocab))
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: the vocabulary is not a JSON object of token -> id: this is "
                              "not a GPT-2 style vocabulary",
                              t->path);
    char *buf = NULL;
    size_t buf_cap = 0;
    ccoe_status st = CCOE_OK;
    const cJSON *e;
    cJSON_ArrayForEach(e, vocab)
    {
        const char *s = e->string;
        if (!json_id(e)) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: vocabulary entry '%.40s' has no whole-number id in "
                                "0..%d: the file is corrupt; fetch it again",
                                t->path, s, MAX_IDS - 1);
            break;
        }
        int32_t id = (int32_t)e->valuedouble;
        int added = 0;
        for (int i = 0; id < t->V && t->tok_len[id] != UINT32_MAX && i < t->n_specials; i++)
            added |= t->specials[i].id == id;
        if (added)
            continue; /* an added token: it keeps its literal text */
        size_t n = strlen(s);
        if (n + 1 > buf_cap) {
            buf_cap = 2 * n + 64;
            char *p = realloc(buf, buf_cap);
            if (!p) {
                st = nomem(err, t);
                break;
            }
            buf = p;
        }
        int bad = 0;
        long k = unmap_token(s, byte_of, buf, &bad);
        if (k < 0) {
            char cp[32] = "invalid UTF-8";
            if (bad >= 0)
                snprintf(cp, sizeof cp, "U+%04X", (unsigned)bad);
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: vocabulary token %ld ('%.40s') has a character (%s) outside "
                                "GPT-2's byte-level alphabet: only byte-level BPE vocabularies "
                                "are supported",
                                t->path, (long)id, s, cp);
            break;
        }
        if ((st = set_token(t, id, buf, (size_t)k, s, err)) != CCOE_OK)
            break;
        int r = strmap_put(&t->vocab, buf, (size_t)k, (uint64_t)id);
        if (r == 0) {
            st = nomem(err, t);
            break;
        }
        if (r == 2) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: vocabulary token '%.40s' appears twice: the file is corrupt; "
                                "fetch it again",
                                t->path, s);
            break;
        }
    }
    free(buf);
    if (st != CCOE_OK)
        return st;
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        uint64_t *v = strmap_find(&t->vocab, &c, 1);
        if (!v)
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: the vocabulary has no token for byte 0x%02X (U+%04X): a "
                                  "byte-level BPE needs all 256; the file is incomplete",
                                  t->path, (unsigned)b, (unsigned)cp_of[b]);
        t->byte_id[b] = (int32_t)*v;
    }
    return CCOE_OK;
}

/* Looks a merge side (a token of the byte-level alphabet) up; -1 if no token has it. */
static int32_t lookup_mapped(const bpe *t, const char *s, size_t n, char *scratch)
{
    const int *byte_of = t->byte_of;
    char tmp[1024];
    if (n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    int bad;
    long k = unmap_token(tmp, byte_of, scratch, &bad);
    if (k < 0)
        return -1;
    uint64_t *v = strmap_find(&t->vocab, scratch, (size_t)k);
    return v ? (int32_t)*v : -1;
}

/* Adds merge rank (its two sides a, b of lengths na, nb); where names it in messages. */
static ccoe_status add_merge(bpe *t, const char *a, size_t na, const char *b, size_t nb,
                             const char *where, ccoe_error *err)
{
    char sa[1024], sb[1024], sm[2048];
    int32_t ia = lookup_mapped(t, a, na, sa), ib = lookup_mapped(t, b, nb, sb);
    if (ia < 0 || ib < 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: merge '%.*s %.*s' names the unknown token '%.*s': the merges "
                              "do not belong to this vocabulary (use the vocabulary and merges "
                              "of one tokenizer)",
                              where, (int)(na > 40 ? 40 : na), a, (int)(nb > 40 ? 40 : nb), b,
                              ia < 0 ? (int)(na > 40 ? 40 : na) : (int)(nb > 40 ? 40 : nb),
                              ia < 0 ? a : b);
    size_t la = t->tok_len[ia], lb = t->tok_len[ib];
    assert(la + lb <= sizeof sm);
    memcpy(sm, t->tok_pool + t->tok_off[ia], la);
    memcpy(sm + la, t->tok_pool + t->tok_off[ib], lb);
    uint64_t *m = strmap_find(&t->vocab, sm, la + lb);
    if (!m)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: merge '%.*s %.*s' makes a token the vocabulary does not have: "
                              "the merges do not belong to this vocabulary (use the vocabulary "
                              "and merges of one tokenizer)",
                              where, (int)(na > 40 ? 40 : na), a, (int)(nb > 40 ? 40 : nb), b);
    if (2 * (t->n_merges + 1) > t->merge_cap) {
        size_t cap = t->merge_cap ? 2 * t->merge_cap : 1 << 16;
        merge_entry *nm = malloc(cap * sizeof *nm);
        if (!nm)
            return nomem(err, t);
        for (size_t i = 0; i < cap; i++)
            nm[i].key = UINT64_MAX;
        for (size_t i = 0; i < t->merge_cap; i++) {
            if (t->merges[i].key == UINT64_MAX)
                continue;
            size_t j = ccoe_pair_slot(t->merges[i].key, cap);
            while (nm[j].key != UINT64_MAX)
                j = (j + 1) & (cap - 1);
            nm[j] = t->merges[i];
        }
        free(t->merges);
        t->merges = nm;
        t->merge_cap = cap;
    }
    uint64_t key = ccoe_pair_key(ia, ib);
    size_t j = ccoe_pair_slot(key, t->merge_cap);
    while (t->merges[j].key != UINT64_MAX && t->merges[j].key != key)
        j = (j + 1) & (t->merge_cap - 1);
    if (t->merges[j].key == key)
        return CCOE_OK; /* a repeated merge keeps its first (lower) rank, as in GPT-2 */
    t->merges[j] = (merge_entry){.key = key, .rank = (uint32_t)t->n_merges, .id = (int32_t)*m};
    t->n_merges++;
    return CCOE_OK;
}

static const merge_entry *find_merge(const bpe *t, int32_t a, int32_t b)
{
    if (t->merge_cap == 0) /* a vocabulary without merges (byte-level ids only) */
        return NULL;
    uint64_t key = ccoe_pair_key(a, b);
    for (size_t j = ccoe_pair_slot(key, t->merge_cap);; j = (j + 1) & (t->merge_cap - 1)) {
        if (t->merges[j].key == key)
            return &t->merges[j];
        if (t->merges[j].key == UINT64_MAX)
            return NULL;
    }
}

static ccoe_status add_special(bpe *t, const char *text, int32_t id, ccoe_error *err)
{
    size_t n = strlen(text);
    if (n == 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: added token %ld has empty content: the file is corrupt",
                              t->path, (long)id);
    special *s = realloc(t->specials, (size_t)(t->n_specials + 1) * sizeof *s);
    if (!s)
        return nomem(err, t);
    t->specials = s;
    char *c = strdup(text);
    if (!c)
        return nomem(err, t);
    s[t->n_specials++] = (special){.text = c, .len = n, .id = id};
    t->first[(unsigned char)text[0]] = 1;
    return CCOE_OK;
}

static int cmp_special(const void *a, const void *b)
{
    const special *x = a, *y = b;
    return x->len < y->len ? 1 : x->len > y->len ? -1 : (x->id > y->id) - (x->id < y->id);
}

static ccoe_status compile_pattern(bpe *t, const char *pattern, ccoe_error *err)
{
    int code;
    PCRE2_SIZE at;
    t->re = pcre2_compile((PCRE2_SPTR)pattern, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &code, &at, NULL);
    if (!t->re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: the pre-tokenizer pattern does not compile (PCRE2: %s at "
                              "offset %zu): %.80s",
                              t->path, (const char *)msg, (size_t)at, pattern);
    }
    t->jit = pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE) == 0;
    t->md = pcre2_match_data_create_from_pattern(t->re, NULL);
    if (!t->md)
        return nomem(err, t);
    return CCOE_OK;
}

/* Reads path whole; what names it in messages. */
static ccoe_status slurp(const char *path, char **buf, size_t *len, ccoe_error *err)
{
    FILE *f = ccoe_fs_fopen_input(path, "tokenizer file", err);
    if (!f)
        return CCOE_ERR_IO;
    int e = ccoe_fs_read_stream(f, (size_t)1 << 31, buf, len);
    fclose(f);
    if (e)
        return ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO,
                              "cannot read tokenizer file '%s': %s", path, strerror(e));
    return CCOE_OK;
}

static cJSON *parse_json(bpe *t, const char *buf, size_t len, ccoe_error *err)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
    if (!j) {
        const char *ep = cJSON_GetErrorPtr();
        size_t at = ep && ep >= buf && ep <= buf + len ? (size_t)(ep - buf) : 0;
        ccoe_error_set(err, CCOE_ERR_FORMAT,
                       "%s is not valid JSON (near byte %zu): the file is corrupt or "
                       "truncated; fetch it again (scripts/fetch_gpt2_tokenizer.sh for GPT-2)",
                       t->path, at);
    }
    return j;
}

/* GPT-2: vocab.json + merges.txt ("#version" line, then one "left right" merge a line). */
static ccoe_status open_gpt2(bpe *t, const char *dir, ccoe_error *err)
{
    char *buf = NULL;
    size_t len;
    snprintf(t->path, sizeof t->path, "%s/vocab.json", dir);
    CCOE_TRY(slurp(t->path, &buf, &len, err));
    cJSON *j = parse_json(t, buf, len, err);
    free(buf);
    if (!j)
        return err->status;
    ccoe_status st = add_vocab(t, j, err);
    cJSON_Delete(j);
    CCOE_TRY(st);
    snprintf(t->path, sizeof t->path, "%s/merges.txt", dir);
    CCOE_TRY(slurp(t->path, &buf, &len, err));
    size_t line = 0;
    for (char *p = buf, *e; p < buf + len; p = e + 1) {
        e = memchr(p, '\n', (size_t)(buf + len - p));
        if (!e)
            e = buf + len;
        line++;
        size_t n = (size_t)(e - p);
        if (n && p[n - 1] == '\r')
            n--;
        if (n == 0 || (line == 1 && n >= 8 && memcmp(p, "#version", 8) == 0))
            continue;
        char *sp = memchr(p, ' ', n);
        char where[600];
        snprintf(where, sizeof where, "%s line %zu", t->path, line);
        if (!sp || sp == p || sp == p + n - 1 || memchr(sp + 1, ' ', (size_t)(p + n - sp - 1))) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: '%.*s' is not a merge (two tokens separated by one space): "
                                "the file is corrupt; fetch it again",
                                where, (int)(n > 60 ? 60 : n), p);
            break;
        }
        if ((st = add_merge(t, p, (size_t)(sp - p), sp + 1, (size_t)(p + n - sp - 1), where,
                            err)) != CCOE_OK)
            break;
    }
    free(buf);
    CCOE_TRY(st);
    uint64_t *eot = strmap_find(&t->vocab, "<|endoftext|>", 13);
    if (eot)
        CCOE_TRY(add_special(t, "<|endoftext|>", (int32_t)*eot, err));
    return compile_pattern(t, GPT2_PATTERN, err);
}

static const char *json_str(const cJSON *o, const char *k)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* Finds the ByteLevel and Split pre-tokenizers of tokenizer.json's pre_tokenizer. */
static ccoe_status read_pretokenizer(bpe *t, const cJSON *pre, const char **pattern,
                                     ccoe_error *err)
{
    const cJSON *list[16];
    int n = 0;
    const char *type = json_str(pre, "type");
    if (type && strcmp(type, "Sequence") == 0) {
        const cJSON *e;
        cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers"))
        {
            if (n < 16)
                list[n++] = e;
        }
    } else if (type) {
        list[n++] = pre;
    }
    int byte_level = 0, byte_regex = 0;
    *pattern = NULL;
    for (int i = 0; i < n; i++) {
        const char *ty = json_str(list[i], "type");
        if (ty && strcmp(ty, "ByteLevel") == 0) {
            byte_level = 1;
            if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(list[i], "add_prefix_space")))
                return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                      "%s: the ByteLevel pre-tokenizer has add_prefix_space = "
                                      "true, which ccoe does not support: use a tokenizer "
                                      "without it (GPT-2, Qwen2, LLaMA-3)",
                                      t->path);
            const cJSON *ur = cJSON_GetObjectItemCaseSensitive(list[i], "use_regex");
            byte_regex = !cJSON_IsFalse(ur); /* the default is true */
        } else if (ty && strcmp(ty, "Split") == 0) {
            const cJSON *pat = cJSON_GetObjectItemCaseSensitive(list[i], "pattern");
            const char *rx = json_str(pat, "Regex");
            const char *beh = json_str(list[i], "behavior");
            if (!rx || *pattern || (beh && strcmp(beh, "Isolated") != 0) ||
                cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(list[i], "invert")))
                return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                      "%s: unsupported Split pre-tokenizer (ccoe reads one Split "
                                      "with a Regex pattern, behavior Isolated, invert false)",
                                      t->path);
            *pattern = rx;
        } else {
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: unsupported pre-tokenizer '%s' (ccoe reads ByteLevel and "
                                  "Split): only byte-level BPE tokenizers are supported",
                                  t->path, ty ? ty : "(no type)");
        }
    }
    if (!byte_level)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: no ByteLevel pre-tokenizer: only byte-level BPE tokenizers "
                              "(GPT-2, Qwen2, LLaMA-3 style) are supported",
                              t->path);
    if (*pattern && byte_regex)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: both a Split pattern and ByteLevel use_regex = true: "
                              "unsupported (ccoe applies one pattern)",
                              t->path);
    if (!*pattern)
        *pattern = GPT2_PATTERN;
    return CCOE_OK;
}

/* Hugging Face tokenizer.json with a BPE model. */
static ccoe_status open_hf(bpe *t, const char *dir, ccoe_error *err)
{
    char *buf = NULL;
    size_t len;
    snprintf(t->path, sizeof t->path, "%s/tokenizer.json", dir);
    CCOE_TRY(slurp(t->path, &buf, &len, err));
    cJSON *j = parse_json(t, buf, len, err);
    free(buf);
    if (!j)
        return err->status;
    ccoe_status st = CCOE_OK;
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    const char *type = json_str(model, "type");
    const char *sub = json_str(model, "continuing_subword_prefix");
    const char *suf = json_str(model, "end_of_word_suffix");
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(j, "normalizer");
    const char *norm_type = json_str(norm, "type");
    const char *pattern = NULL;
    if (!cJSON_IsObject(model) || (type && strcmp(type, "BPE") != 0)) {
        st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                            "%s: model type is '%s', not BPE: only byte-level BPE tokenizers "
                            "are supported",
                            t->path, type ? type : "(none)");
        goto done;
    }
    if ((sub && sub[0]) || (suf && suf[0])) {
        st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                            "%s: the BPE model has a continuing_subword_prefix or "
                            "end_of_word_suffix, which ccoe does not support",
                            t->path);
        goto done;
    }
    if (norm && !cJSON_IsNull(norm) && !(norm_type && strcmp(norm_type, "NFC") == 0)) {
        st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                            "%s: unsupported normalizer '%s' (ccoe takes none, or NFC as "
                            "already applied to the input)",
                            t->path, norm_type ? norm_type : "?");
        goto done;
    }
    if ((st = read_pretokenizer(t, cJSON_GetObjectItemCaseSensitive(j, "pre_tokenizer"), &pattern,
                                err)) != CCOE_OK)
        goto done;
    t->ignore_merges = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "ignore_merges"));
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(j, "added_tokens"))
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *content = json_str(e, "content");
        if (!content || !json_id(id)) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: an added token lacks a content string or a whole-number "
                                "id: the file is corrupt; fetch it again",
                                t->path);
            goto done;
        }
        if ((st = set_token(t, (int32_t)id->valuedouble, content, strlen(content), content,
                            err)) != CCOE_OK ||
            (st = add_special(t, content, (int32_t)id->valuedouble, err)) != CCOE_OK)
            goto done;
    }
    if ((st = add_vocab(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), err)) != CCOE_OK)
        goto done;
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) {
        st = ccoe_error_set(err, CCOE_ERR_FORMAT, "%s: model.merges is not an array", t->path);
        goto done;
    }
    size_t k = 0;
    cJSON_ArrayForEach(e, merges)
    {
        char where[600];
        snprintf(where, sizeof where, "%s merge %zu", t->path, k++);
        const char *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        if (cJSON_IsString(e)) { /* "left right" */
            const char *s = e->valuestring, *sp = strchr(s, ' ');
            if (sp && sp != s && sp[1] && !strchr(sp + 1, ' ')) {
                a = s;
                na = (size_t)(sp - s);
                b = sp + 1;
                nb = strlen(b);
            }
        } else if (cJSON_GetArraySize(e) == 2 && cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) { /* ["left", "right"] */
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            na = strlen(a);
            nb = strlen(b);
        }
        if (!a || !na || !nb) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: not a merge (\"left right\" or [\"left\", \"right\"]): the "
                                "file is corrupt; fetch it again",
                                where);
            goto done;
        }
        if ((st = add_merge(t, a, na, b, nb, where, err)) != CCOE_OK)
            goto done;
    }
    st = compile_pattern(t, pattern, err);
done:
    cJSON_Delete(j);
    return st;
}

static void bpe_destroy(void *self)
{
    bpe *t = self;
    if (!t)
        return;
    free(t->tok_off);
    free(t->tok_len);
    free(t->tok_pool);
    ccoe_bytemap_free(&t->vocab);
    free(t->merges);
    for (int i = 0; i < t->n_specials; i++)
        free(t->specials[i].text);
    free(t->specials);
    pcre2_match_data_free(t->md);
    pcre2_code_free(t->re);
    ccoe_bytemap_free(&t->cache);
    free(t->cache_ids);
    free(t->word);
    free(t);
}

ccoe_status ccoe_bpe_open(void **self, const char *dir, ccoe_error *err)
{
    *self = NULL;
    bpe *t = calloc(1, sizeof *t);
    if (!t)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory opening tokenizer %s", dir);
    byte_alphabet(t->cp_of, t->byte_of);
    char p[600];
    snprintf(p, sizeof p, "%s/tokenizer.json", dir);
    FILE *f = fopen(p, "rb");
    ccoe_status st;
    if (f) {
        fclose(f);
        st = open_hf(t, dir, err);
    } else {
        snprintf(p, sizeof p, "%s/vocab.json", dir);
        f = fopen(p, "rb");
        if (f)
            fclose(f);
        if (!f)
            st = ccoe_error_set(err, CCOE_ERR_IO,
                                "tokenizer directory '%s' has neither tokenizer.json nor "
                                "vocab.json + merges.txt: put a tokenizer there (GPT-2's: "
                                "scripts/fetch_gpt2_tokenizer.sh) or set data.tokenizer = byte",
                                dir);
        else
            st = open_gpt2(t, dir, err);
    }
    if (st != CCOE_OK) {
        bpe_destroy(t);
        return st;
    }
    int V = 0;
    for (int i = 0; i < t->V; i++)
        if (t->tok_len[i] != UINT32_MAX)
            V = i + 1;
    t->V = V;
    if (t->n_specials > 1)
        qsort(t->specials, (size_t)t->n_specials, sizeof *t->specials, cmp_special);
    t->eot = -1;
    static const char *const eot_names[] = {"<|endoftext|>", "<|end_of_text|>", "</s>"};
    for (int k = 0; k < 3 && t->eot < 0; k++)
        for (int i = 0; i < t->n_specials; i++)
            if (strcmp(t->specials[i].text, eot_names[k]) == 0)
                t->eot = t->specials[i].id;
    *self = t;
    return CCOE_OK;
}

int32_t ccoe_bpe_eot(const void *self)
{
    return ((const bpe *)self)->eot;
}

/* ---- encoding ---- */

typedef struct sink {
    int32_t *out;
    size_t cap, n;
} sink;

static inline void emit(sink *s, int32_t id)
{
    if (s->n < s->cap)
        s->out[s->n] = id;
    s->n++;
}

/* BPE of one pre-token (its bytes w[0..n)). */
static void encode_word(bpe *t, const char *w, size_t n, sink *s)
{
    if (n == 1) {
        emit(s, t->byte_id[(unsigned char)w[0]]);
        return;
    }
    uint64_t *c = n <= CACHE_MAX_WORD ? strmap_find(&t->cache, w, n) : NULL;
    if (c) {
        const int32_t *ids = t->cache_ids + *c;
        for (int32_t i = 0; i < ids[0]; i++)
            emit(s, ids[1 + i]);
        return;
    }
    if (t->ignore_merges) {
        uint64_t *v = strmap_find(&t->vocab, w, n);
        if (v) {
            emit(s, (int32_t)*v);
            return;
        }
    }
    if (n > t->word_cap) {
        int32_t *p = realloc(t->word, n * sizeof *p);
        if (!p) { /* no error channel here: the bytes' own tokens, unmerged but decodable */
            for (size_t i = 0; i < n; i++)
                emit(s, t->byte_id[(unsigned char)w[i]]);
            return;
        }
        t->word = p;
        t->word_cap = n;
    }
    int32_t *x = t->word;
    size_t m = n;
    for (size_t i = 0; i < n; i++)
        x[i] = t->byte_id[(unsigned char)w[i]];
    while (m > 1) {
        uint32_t best = UINT32_MAX;
        int32_t a = -1, b = -1, id = -1;
        for (size_t i = 0; i + 1 < m; i++) {
            const merge_entry *e = find_merge(t, x[i], x[i + 1]);
            if (e && e->rank < best) {
                best = e->rank;
                a = x[i];
                b = x[i + 1];
                id = e->id;
            }
        }
        if (best == UINT32_MAX)
            break;
        size_t j = 0;
        for (size_t i = 0; i < m;) {
            if (i + 1 < m && x[i] == a && x[i + 1] == b) {
                x[j++] = id;
                i += 2;
            } else {
                x[j++] = x[i++];
            }
        }
        m = j;
    }
    for (size_t i = 0; i < m; i++)
        emit(s, x[i]);
    if (n > CACHE_MAX_WORD)
        return;
    if (t->cache.n >= CACHE_MAX_ENTRIES) {
        ccoe_bytemap_clear(&t->cache);
        t->cache_n = 0;
    }
    if (t->cache_n + m + 1 > t->cache_cap) {
        size_t cap = t->cache_cap ? 2 * t->cache_cap : 1 << 16;
        while (cap < t->cache_n + m + 1)
            cap *= 2;
        int32_t *p = realloc(t->cache_ids, cap * sizeof *p);
        if (!p)
            return; /* uncached: slower, not wrong */
        t->cache_ids = p;
        t->cache_cap = cap;
    }
    if (strmap_put(&t->cache, w, n, t->cache_n) == 1) {
        t->cache_ids[t->cache_n] = (int32_t)m;
        memcpy(t->cache_ids + t->cache_n + 1, x, m * sizeof *x);
        t->cache_n += m + 1;
    }
}

/* Splits text[0..n) (no special tokens inside) into pre-tokens with re and calls fn on each:
 * the regex's matches, and each run of bytes that are not UTF-8 (no pattern matches them) as a
 * pre-token of its own. Shared by the encoder and the trainer (ccoe_pretok_split). */
static void split_pretokens(const pcre2_code *re, pcre2_match_data *md, int jit, const char *text,
                            size_t n, void (*fn)(void *ctx, const char *w, size_t n), void *ctx)
{
    size_t off = 0;
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    while (off < n) {
        int rc = jit ? pcre2_jit_match(re, (PCRE2_SPTR)text, n, off, 0, md, NULL)
                     : pcre2_match(re, (PCRE2_SPTR)text, n, off, 0, md, NULL);
        if (rc < 0) { /* no match in the rest (bytes that are not UTF-8) */
            fn(ctx, text + off, n - off);
            return;
        }
        size_t b = ov[0], e = ov[1];
        if (b > off) /* skipped bytes: not UTF-8 */
            fn(ctx, text + off, b - off);
        if (e == b) { /* an empty match (not in the patterns we know): one character on */
            e = b + 1;
            while (e < n && ((unsigned char)text[e] & 0xC0) == 0x80)
                e++;
        }
        fn(ctx, text + b, e - b);
        off = e;
    }
}

typedef struct encode_ctx {
    bpe *t;
    sink *s;
} encode_ctx;

static void encode_piece(void *ctx, const char *w, size_t n)
{
    encode_ctx *c = ctx;
    encode_word(c->t, w, n, c->s);
}

/* Pre-tokenizes text[0..n) (no special tokens inside) and encodes each piece. */
static void encode_plain(bpe *t, const char *text, size_t n, sink *s)
{
    encode_ctx c = {.t = t, .s = s};
    split_pretokens(t->re, t->md, t->jit, text, n, encode_piece, &c);
}

static size_t bpe_encode(const void *self, const char *text, size_t len, int32_t *out,
                         size_t cap)
{
    bpe *t = (bpe *)self; /* the cache and match data change; the mapping does not */
    sink s = {.out = out, .cap = cap, .n = 0};
    size_t start = 0;
    for (size_t i = 0; i < len; i++) {
        if (!t->first[(unsigned char)text[i]])
            continue;
        for (int k = 0; k < t->n_specials; k++) {
            const special *sp = &t->specials[k];
            if (sp->len <= len - i && memcmp(text + i, sp->text, sp->len) == 0) {
                encode_plain(t, text + start, i - start, &s);
                emit(&s, sp->id);
                start = i + sp->len;
                i = start - 1;
                break;
            }
        }
    }
    encode_plain(t, text + start, len - start, &s);
    return s.n;
}

static size_t bpe_decode(const void *self, const int32_t *ids, size_t n, char *out, size_t cap)
{
    const bpe *t = self;
    if (cap == 0)
        return 0;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || ids[i] >= t->V || t->tok_len[ids[i]] == UINT32_MAX)
            continue; /* ccoe_tokenizer_decode reports these */
        size_t k = t->tok_len[ids[i]];
        if (w + k + 1 > cap)
            k = cap - 1 - w;
        memcpy(out + w, t->tok_pool + t->tok_off[ids[i]], k);
        w += k;
        if (w + 1 >= cap)
            break;
    }
    out[w] = '\0';
    return w;
}

static int bpe_vocab_size(const void *self)
{
    return ((const bpe *)self)->V;
}

static int bpe_id_known(const void *self, int32_t id)
{
    const bpe *t = self;
    return id >= 0 && id < t->V && t->tok_len[id] != UINT32_MAX;
}

const ccoe_tokenizer_ops ccoe_bpe_tokenizer_ops = {
    .name = "bpe",
    .vocab_size = bpe_vocab_size,
    .encode = bpe_encode,
    .decode = bpe_decode,
    .id_known = bpe_id_known,
    .destroy = bpe_destroy,
};

/* ---- the pre-tokenizer alone (for training) ---- */

struct ccoe_pretok {
    bpe t; /* only path, re, md and jit are used */
};

ccoe_status ccoe_pretok_init(ccoe_pretok **p, const char *pattern, ccoe_error *err)
{
    *p = calloc(1, sizeof **p);
    if (!*p)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory compiling the pre-tokenizer");
    snprintf((*p)->t.path, sizeof (*p)->t.path, "pre-tokenizer");
    ccoe_status st = compile_pattern(&(*p)->t, pattern ? pattern : GPT2_PATTERN, err);
    if (st != CCOE_OK) {
        ccoe_pretok_free(*p);
        *p = NULL;
    }
    return st;
}

void ccoe_pretok_split(ccoe_pretok *p, const char *text, size_t n,
                       void (*fn)(void *ctx, const char *w, size_t n), void *ctx)
{
    split_pretokens(p->t.re, p->t.md, p->t.jit, text, n, fn, ctx);
}

void ccoe_pretok_free(ccoe_pretok *p)
{
    if (p) {
        pcre2_match_data_free(p->t.md);
        pcre2_code_free(p->t.re);
        free(p);
    }
}

void ccoe_bpe_byte_alphabet(int cp_of[256])
{
    int byte_of[324];
    byte_alphabet(cp_of, byte_of);
}
