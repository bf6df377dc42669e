/* test_data.c - the byte tokenizer, manifest loading and its errors, the builtin data set,
 * train/validation split and packing, the shuffled training stream with seek, validation
 * batches, the builtin task examples (exact answers, kinds, SQL tasks with their database) and
 * manifest databases (sqlite, sqlite_script).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sqlite3.h>

#include "testutil.h"

#include "data.h"
#include "sqlexec.h"
#include "tokenizer.h"

#define T_SEQ 64
#define VAL_FRAC 0.1
#define MAX_TASKS 200
#define SEED 1234

static const char *const builtin_names[] = {"arith", "strings", "code", "prose", "sql"};

/* ---- helpers ---- */

static ccoe_tokenizer byte_tok(void)
{
    ccoe_tokenizer tok;
    ccoe_error err;
    assert_int_equal(ccoe_tokenizer_init(&tok, "byte", &err), CCOE_OK);
    return tok;
}

static char *read_text(const char *dir, const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    buf[n] = '\0';
    *len = (size_t)n;
    return buf;
}

/* A text of about `bytes` bytes: numbered lines, a blank line every 5 lines. */
static char *filler_text(size_t bytes, const char *word)
{
    char *s = malloc(bytes + 256);
    assert_non_null(s);
    size_t n = 0;
    for (int i = 0; n < bytes; i++)
        n += (size_t)sprintf(s + n, "%s line %d\n%s", word, i, i % 5 == 4 ? "\n" : "");
    return s;
}

/* Decodes the contiguous token stream of sequences [start, start+count) (overlap-by-one
 * packing) into a malloc'd string without specials. */
static char *decode_stream(const ccoe_tokenizer *tok, const int32_t *seqs, size_t start,
                           size_t count, int T)
{
    size_t n = count * (size_t)T + 1;
    int32_t *ids = malloc(n * sizeof *ids);
    char *text = malloc(n + 1);
    assert_non_null(ids);
    assert_non_null(text);
    for (size_t i = 0; i < count; i++) {
        const int32_t *s = seqs + (start + i) * (size_t)(T + 1);
        if (i > 0)
            assert_int_equal(s[0], seqs[(start + i - 1) * (size_t)(T + 1) + (size_t)T]);
        memcpy(ids + i * (size_t)T, s, (size_t)(T + 1) * sizeof *ids);
    }
    tok->ops->decode(tok->self, ids, n, text, n + 1);
    free(ids);
    return text;
}

static uint64_t hash_ids(const int32_t *x, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (uint32_t)x[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void assert_same_dataset(const ccoe_dataset *a, const ccoe_dataset *b)
{
    assert_int_equal(a->T, b->T);
    assert_int_equal(a->n_domains, b->n_domains);
    assert_int_equal(a->n_train, b->n_train);
    assert_int_equal(a->n_val, b->n_val);
    assert_int_equal(a->train_tokens, b->train_tokens);
    size_t row = (size_t)a->T + 1;
    assert_memory_equal(a->train_seq, b->train_seq, a->n_train * row * sizeof(int32_t));
    assert_memory_equal(a->val_seq, b->val_seq, a->n_val * row * sizeof(int32_t));
    assert_memory_equal(a->train_domain, b->train_domain, a->n_train * sizeof(int32_t));
    assert_memory_equal(a->val_domain, b->val_domain, a->n_val * sizeof(int32_t));
    for (int d = 0; d < a->n_domains; d++) {
        const ccoe_domain *x = &a->domains[d], *y = &b->domains[d];
        assert_string_equal(x->name, y->name);
        assert_int_equal(x->n_train, y->n_train);
        assert_int_equal(x->n_val, y->n_val);
        assert_int_equal(x->train_start, y->train_start);
        assert_int_equal(x->val_start, y->val_start);
        assert_int_equal(x->answer_stop, y->answer_stop);
        assert_int_equal(x->n_tasks, y->n_tasks);
        for (size_t i = 0; i < x->n_tasks; i++) {
            assert_string_equal(x->tasks[i].prompt, y->tasks[i].prompt);
            assert_string_equal(x->tasks[i].answer, y->tasks[i].answer);
            assert_string_equal(x->tasks[i].kind, y->tasks[i].kind);
            assert_int_equal(x->tasks[i].match, y->tasks[i].match);
        }
        assert_true(!x->sql_script == !y->sql_script);
        if (x->sql_script)
            assert_string_equal(x->sql_script, y->sql_script);
    }
}

/* Loads a manifest expected to fail; checks the status and that the message names `what`
 * (and `what2` if given); checks the dataset is left empty. */
static void expect_load_error(const char *manifest, ccoe_status want, const char *what,
                              const char *what2)
{
    ccoe_tokenizer tok = byte_tok();
    ccoe_dataset ds;
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status s = ccoe_data_load(&ds, manifest, &tok, 16, 0.2, 10, SEED, &err);
    if (s != want || !strstr(err.msg, what) || (what2 && !strstr(err.msg, what2)))
        fprintf(stderr, "status %d (want %d), message: %s\n", s, want, err.msg);
    assert_int_equal(s, want);
    assert_int_equal(err.status, want);
    assert_non_null(strstr(err.msg, what));
    if (what2)
        assert_non_null(strstr(err.msg, what2));
    assert_int_equal(ds.n_domains, 0);
    assert_null(ds.train_seq);
    assert_null(ds.perm);
    ccoe_data_free(&ds);
}

static void check_builtin_tasks(const ccoe_dataset *ds, size_t want_tasks);

/* ---- the shared builtin data set ---- */

static ccoe_dataset g_ds;

static int setup_builtin(void **state)
{
    (void)state;
    ccoe_tokenizer tok = byte_tok();
    ccoe_error err;
    ccoe_status s = ccoe_data_load(&g_ds, "builtin", &tok, T_SEQ, VAL_FRAC, MAX_TASKS, SEED,
                                   &err);
    if (s != CCOE_OK)
        fprintf(stderr, "builtin load failed: %s\n", err.msg);
    return s == CCOE_OK ? 0 : -1;
}

static int teardown_builtin(void **state)
{
    (void)state;
    ccoe_data_free(&g_ds);
    return 0;
}

/* ---- tokenizer ---- */

static void test_byte_tokenizer_roundtrip(void **state)
{
    (void)state;
    ccoe_tokenizer tok = byte_tok();
    assert_string_equal(tok.ops->name, "byte");
    assert_int_equal(tok.ops->vocab_size(tok.self), CCOE_BYTE_VOCAB);

    char text[256];
    for (int i = 0; i < 256; i++)
        text[i] = (char)(255 - i); /* every byte, NUL last */
    int32_t ids[300];
    assert_int_equal(tok.ops->encode(tok.self, text, 256, ids, 300), 256);
    for (int i = 0; i < 256; i++)
        assert_int_equal(ids[i], 255 - i);

    /* specials are dropped by decode; everything else comes back byte for byte */
    int32_t with[262];
    with[0] = CCOE_TOK_BOS;
    memcpy(with + 1, ids, 100 * sizeof *ids);
    with[101] = CCOE_TOK_SEP;
    with[102] = CCOE_TOK_PAD;
    memcpy(with + 103, ids + 100, 155 * sizeof *ids); /* up to, not including, the NUL */
    with[258] = CCOE_TOK_EOS;
    char out[300];
    assert_int_equal(tok.ops->decode(tok.self, with, 259, out, sizeof out), 255);
    assert_memory_equal(out, text, 255);
    assert_int_equal(out[255], '\0');

    /* a short cap: encode reports the full length, decode truncates and terminates */
    assert_int_equal(tok.ops->encode(tok.self, "hello", 5, ids, 2), 5);
    assert_int_equal(ids[0], 'h');
    assert_int_equal(ids[1], 'e');
    int32_t hello[] = {CCOE_TOK_BOS, 'h', 'e', 'l', 'l', 'o', CCOE_TOK_EOS};
    assert_int_equal(tok.ops->decode(tok.self, hello, 7, out, 4), 3);
    assert_string_equal(out, "hel");
    ccoe_tokenizer_free(&tok);
    assert_null(tok.ops);
}

static void test_tokenizer_unknown_name(void **state)
{
    (void)state;
    ccoe_tokenizer tok;
    ccoe_error err;
    assert_int_equal(ccoe_tokenizer_init(&tok, "bpe", &err), CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "'bpe'"));
    assert_non_null(strstr(err.msg, "byte"));
}

/* ---- builtin: domains, packing, split ---- */

static void test_builtin_domains(void **state)
{
    (void)state;
    const ccoe_dataset *ds = &g_ds;
    assert_int_equal(ds->T, T_SEQ);
    assert_int_equal(ds->n_domains, 5);
    size_t tr = 0, va = 0;
    for (int d = 0; d < 5; d++) {
        const ccoe_domain *dom = &ds->domains[d];
        assert_string_equal(dom->name, builtin_names[d]);
        assert_int_equal(ccoe_data_domain_index(ds, builtin_names[d]), d);
        /* grouped by domain, in order */
        assert_int_equal(dom->train_start, tr);
        assert_int_equal(dom->val_start, va);
        assert_true(dom->n_train >= 1 && dom->n_val >= 1);
        /* about 10% validation */
        double frac = (double)dom->n_val / (double)(dom->n_train + dom->n_val);
        assert_true(frac > 0.08 && frac < 0.12);
        for (size_t i = 0; i < dom->n_train; i++)
            assert_int_equal(ds->train_domain[dom->train_start + i], d);
        for (size_t i = 0; i < dom->n_val; i++)
            assert_int_equal(ds->val_domain[dom->val_start + i], d);
        tr += dom->n_train;
        va += dom->n_val;
        assert_int_equal(dom->answer_stop, '\n');
    }
    assert_int_equal(ds->n_train, tr);
    assert_int_equal(ds->n_val, va);
    assert_int_equal(ccoe_data_domain_index(ds, "nope"), -1);
    /* ~150-300 KB of text per domain */
    assert_true(ds->train_tokens > 5 * 130000 && ds->train_tokens < 5 * 300000);
    size_t row = (size_t)T_SEQ + 1;
    for (size_t i = 0; i < ds->n_train * row; i++)
        assert_true(ds->train_seq[i] >= 0 && ds->train_seq[i] < CCOE_TOK_PAD);
    for (size_t i = 0; i < ds->n_val * row; i++)
        assert_true(ds->val_seq[i] >= 0 && ds->val_seq[i] < CCOE_TOK_PAD);
    assert_true(ds->domains[0].n_tasks == MAX_TASKS && ds->domains[1].n_tasks == MAX_TASKS);
    assert_true(ds->domains[4].n_tasks >= 80); /* sql: fewer questions fit in its 10% */
    for (int d = 2; d < 4; d++) {
        assert_int_equal(ds->domains[d].n_tasks, 0);
        assert_null(ds->domains[d].sql_script);
    }
    assert_non_null(ds->domains[4].sql_script);
    assert_null(ds->domains[4].sql_db);
}

/* Every domain's train sequences decode to the start of its own text file and its validation
 * sequences to a later part: checks domain ids against content, that sequences never cross
 * domains, the overlap-by-one packing, and that validation comes after train. */
static void test_builtin_sequences_match_text(void **state)
{
    (void)state;
    const ccoe_dataset *ds = &g_ds;
    ccoe_tokenizer tok = byte_tok();
    char *dir = tu_mkdtemp("data");
    ccoe_error err;
    assert_int_equal(ccoe_data_write_builtin(dir, &err), CCOE_OK);
    for (int d = 0; d < ds->n_domains; d++) {
        const ccoe_domain *dom = &ds->domains[d];
        char name[128];
        size_t len;
        snprintf(name, sizeof name, "%s.txt", dom->name);
        char *text = read_text(dir, name, &len);
        /* documents are separated by one blank line and end in '\n': drop the separators */
        size_t w = 0, docs = 1;
        for (size_t i = 0; i < len; i++) {
            if (!(text[i] == '\n' && i > 0 && text[i - 1] == '\n'))
                text[w++] = text[i];
            else
                docs++;
        }
        text[w] = '\0';
        /* the documented split: the last floor(val_fraction * n) tokens are validation, each
         * part gives (len - 1) / T sequences; a document is BOS <bytes> EOS */
        size_t n_tok = w + 2 * docs, n_val = (size_t)(VAL_FRAC * (double)n_tok);
        assert_int_equal(dom->n_train, (n_tok - n_val - 1) / (size_t)ds->T);
        assert_int_equal(dom->n_val, (n_val - 1) / (size_t)ds->T);
        char *train = decode_stream(&tok, ds->train_seq, dom->train_start, dom->n_train, ds->T);
        char *val = decode_stream(&tok, ds->val_seq, dom->val_start, dom->n_val, ds->T);
        size_t tl = strlen(train);
        assert_true(tl > 1000);
        assert_memory_equal(text, train, tl);
        char *at = strstr(text + tl, val);
        assert_non_null(at);
        /* the split is at the end: validation ends within T tokens of the text's end */
        assert_true((size_t)(at - text) + strlen(val) + (size_t)ds->T + 2 >= w);
        free(train);
        free(val);
        free(text);
    }
    tu_rm_tree(dir);
    free(dir);
}

/* Train and validation come from disjoint parts of each domain's text (checked by position in
 * test_builtin_sequences_match_text); here by content: no validation sequence of the domains
 * whose lines are unique by construction (arith, strings) equals a train sequence, and in the
 * template domains identical sequences stay rare (they repeat fixed phrases such as
 * "JOIN orders o ON o.customer_id = c.id"). */
static void test_builtin_no_train_val_overlap(void **state)
{
    (void)state;
    const ccoe_dataset *ds = &g_ds;
    size_t row = (size_t)ds->T + 1;
    uint64_t *h = malloc(ds->n_train * sizeof *h);
    assert_non_null(h);
    for (size_t i = 0; i < ds->n_train; i++)
        h[i] = hash_ids(ds->train_seq + i * row, row);
    qsort(h, ds->n_train, sizeof *h, cmp_u64);
    for (int d = 0; d < ds->n_domains; d++) {
        const ccoe_domain *dom = &ds->domains[d];
        size_t dup = 0;
        for (size_t i = dom->val_start; i < dom->val_start + dom->n_val; i++) {
            uint64_t v = hash_ids(ds->val_seq + i * row, row);
            dup += bsearch(&v, h, ds->n_train, sizeof *h, cmp_u64) != NULL;
        }
        if (d < 2)
            assert_int_equal(dup, 0);
        else
            assert_true(dup * 10 < dom->n_val);
    }
    free(h);
}

static void test_builtin_deterministic(void **state)
{
    (void)state;
    ccoe_tokenizer tok = byte_tok();
    ccoe_dataset b;
    ccoe_error err;
    /* the text does not depend on the run's seed */
    assert_int_equal(ccoe_data_load(&b, "builtin", &tok, T_SEQ, VAL_FRAC, MAX_TASKS, SEED + 99,
                                    &err),
                     CCOE_OK);
    assert_same_dataset(&g_ds, &b);
    ccoe_data_free(&b);
    assert_null(b.train_seq);
}

static void test_write_builtin_roundtrip(void **state)
{
    (void)state;
    ccoe_tokenizer tok = byte_tok();
    char *dir = tu_mkdtemp("data");
    char manifest[512];
    snprintf(manifest, sizeof manifest, "%s/manifest.ini", dir);
    ccoe_error err;
    assert_int_equal(ccoe_data_write_builtin(dir, &err), CCOE_OK);
    ccoe_dataset b;
    assert_int_equal(ccoe_data_load(&b, manifest, &tok, T_SEQ, VAL_FRAC, MAX_TASKS, SEED, &err),
                     CCOE_OK);
    assert_same_dataset(&g_ds, &b);
    ccoe_data_free(&b);
    /* other shapes agree too, tasks included (they are selected by document) */
    ccoe_dataset x, y;
    assert_int_equal(ccoe_data_load(&x, "builtin", &tok, 31, 0.3, 5000, SEED, &err), CCOE_OK);
    assert_int_equal(ccoe_data_load(&y, manifest, &tok, 31, 0.3, 5000, SEED, &err), CCOE_OK);
    assert_same_dataset(&x, &y);
    assert_true(x.domains[0].n_tasks > MAX_TASKS);
    check_builtin_tasks(&x, 0); /* every held-out task, not only the first 200 */
    ccoe_data_free(&x);
    ccoe_data_free(&y);
    tu_rm_tree(dir);
    free(dir);
}

/* ---- the training stream ---- */

/* Reads `count` sequences from the current position with batch size B; returns their hashes
 * (tokens and domain) and checks targets are the shifted tokens. */
static uint64_t *read_stream(ccoe_dataset *ds, size_t count, int B)
{
    size_t T = (size_t)ds->T;
    int32_t *tok = malloc((size_t)B * T * sizeof *tok);
    int32_t *tgt = malloc((size_t)B * T * sizeof *tgt);
    int32_t *dom = malloc((size_t)B * sizeof *dom);
    uint64_t *h = malloc((count + (size_t)B) * sizeof *h);
    assert_true(tok && tgt && dom && h);
    for (size_t got = 0; got < count; got += (size_t)B) {
        uint64_t pos = ds->pos;
        ccoe_data_next_batch(ds, tok, tgt, dom, B);
        assert_int_equal(ds->pos, pos + (uint64_t)B);
        for (int b = 0; b < B; b++) {
            const int32_t *x = tok + (size_t)b * T, *y = tgt + (size_t)b * T;
            for (size_t t = 0; t + 1 < T; t++)
                assert_int_equal(y[t], x[t + 1]);
            assert_true(dom[b] >= 0 && dom[b] < ds->n_domains);
            h[got + (size_t)b] = hash_ids(x, T) ^ hash_ids(y + T - 1, 1) * 31 ^ (uint64_t)dom[b];
        }
    }
    free(tok);
    free(tgt);
    free(dom);
    return h;
}

static void test_stream_epoch_is_permutation(void **state)
{
    (void)state;
    ccoe_dataset *ds = &g_ds;
    size_t n = ds->n_train, T = (size_t)ds->T;
    ccoe_data_seek(ds, 0);
    uint64_t *got = read_stream(ds, n, 1);
    uint64_t *want = malloc(n * sizeof *want);
    assert_non_null(want);
    for (size_t i = 0; i < n; i++) {
        const int32_t *s = ds->train_seq + i * (T + 1);
        want[i] = hash_ids(s, T) ^ hash_ids(s + T, 1) * 31 ^ (uint64_t)ds->train_domain[i];
    }
    /* mixed domains from the start */
    int seen[CCOE_MAX_DOMAINS] = {0}, distinct = 0;
    for (size_t i = 0; i < 32; i++)
        for (size_t j = 0; j < n; j++)
            if (want[j] == got[i]) {
                distinct += !seen[ds->train_domain[j]];
                seen[ds->train_domain[j]] = 1;
                break;
            }
    assert_true(distinct >= 3);
    /* not the identity order */
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += got[i] == want[i];
    assert_true(same < n / 10);
    qsort(got, n, sizeof *got, cmp_u64);
    qsort(want, n, sizeof *want, cmp_u64);
    assert_memory_equal(got, want, n * sizeof *got);
    free(got);
    free(want);
}

static void test_stream_seek_resume(void **state)
{
    (void)state;
    ccoe_dataset *ds = &g_ds;
    size_t n = ds->n_train;
    const int B = 7;
    size_t total = n + 200; /* crosses the epoch boundary */
    ccoe_data_seek(ds, 0);
    uint64_t *ref = read_stream(ds, total, B);

    /* a second, independent load with the same seed sees the same stream */
    ccoe_tokenizer tok = byte_tok();
    ccoe_dataset b;
    ccoe_error err;
    assert_int_equal(ccoe_data_load(&b, "builtin", &tok, T_SEQ, VAL_FRAC, MAX_TASKS, SEED, &err),
                     CCOE_OK);
    uint64_t *again = read_stream(&b, 2 * (size_t)B, B);
    assert_memory_equal(again, ref, 2 * (size_t)B * sizeof *ref);
    free(again);

    /* resuming anywhere (forward, backward, just before/at/after the epoch end) */
    const size_t starts[] = {n - 10, 3, n, n + 1, 0, n - 1, 70};
    for (size_t k = 0; k < sizeof starts / sizeof starts[0]; k++) {
        ccoe_data_seek(&b, starts[k]);
        assert_int_equal(b.pos, starts[k]);
        uint64_t *h = read_stream(&b, 24, 8);
        assert_memory_equal(h, ref + starts[k], 24 * sizeof *h);
        free(h);
    }
    /* epoch 1 is shuffled differently from epoch 0 */
    size_t same = 0;
    for (size_t i = 0; i < 100; i++)
        same += ref[i] == ref[n + i];
    assert_true(same < 10);
    ccoe_data_free(&b);

    /* another seed gives another order */
    assert_int_equal(ccoe_data_load(&b, "builtin", &tok, T_SEQ, VAL_FRAC, MAX_TASKS, SEED + 1,
                                    &err),
                     CCOE_OK);
    uint64_t *other = read_stream(&b, 100, 10);
    same = 0;
    for (size_t i = 0; i < 100; i++)
        same += other[i] == ref[i];
    assert_true(same < 10);
    free(other);
    ccoe_data_free(&b);
    free(ref);
}

static void test_val_batch_padding(void **state)
{
    (void)state;
    const ccoe_dataset *ds = &g_ds;
    const int B = 8, d = 3;
    size_t T = (size_t)ds->T;
    const ccoe_domain *dom = &ds->domains[d];
    int32_t tok[8 * T_SEQ], tgt[8 * T_SEQ], dm[8];
    size_t first = dom->n_val - 3;
    assert_int_equal(ccoe_data_val_batch(ds, d, first, tok, tgt, dm, B), 3);
    for (int b = 0; b < B; b++) {
        assert_int_equal(dm[b], d);
        if (b < 3) {
            const int32_t *s = ds->val_seq + (dom->val_start + first + (size_t)b) * (T + 1);
            assert_memory_equal(tok + (size_t)b * T, s, T * sizeof *tok);
            assert_memory_equal(tgt + (size_t)b * T, s + 1, T * sizeof *tgt);
        } else {
            for (size_t t = 0; t < T; t++) {
                assert_int_equal(tgt[(size_t)b * T + t], -1);
                assert_int_equal(tok[(size_t)b * T + t], CCOE_TOK_PAD);
            }
        }
    }
    assert_int_equal(ccoe_data_val_batch(ds, d, 0, tok, tgt, dm, B), B);
    assert_int_equal(ccoe_data_val_batch(ds, d, dom->n_val, tok, tgt, dm, B), 0);
    for (size_t i = 0; i < (size_t)B * T; i++)
        assert_int_equal(tgt[i], -1);
}

/* ---- builtin tasks ---- */

static long eval_arith(const char *prompt)
{
    long a, b;
    char op;
    int used = -1;
    if (sscanf(prompt, "%ld%c%ld=%n", &a, &op, &b, &used) == 3 && used == (int)strlen(prompt)) {
        assert_true(op == '+' || op == '-' || op == '*');
        return op == '+' ? a + b : op == '-' ? a - b : a * b;
    }
    /* word problem: the first two numbers and the verb decide */
    const char *p = prompt;
    long v[2];
    for (int i = 0; i < 2; i++) {
        while (*p && (*p < '0' || *p > '9'))
            p++;
        assert_true(*p != '\0');
        v[i] = strtol(p, (char **)&p, 10);
    }
    assert_null(strpbrk(p, "0123456789"));
    assert_int_equal(prompt[strlen(prompt) - 1], ' ');
    if (strstr(prompt, " more") || strstr(prompt, " found "))
        return v[0] + v[1];
    if (strstr(prompt, " gives away ") || strstr(prompt, " took ") || strstr(prompt, " loses "))
        return v[0] - v[1];
    assert_true(strstr(prompt, " bags ") || strstr(prompt, " rows of "));
    return v[0] * v[1];
}

static void eval_strings(const char *prompt, char *out)
{
    char op[16], word[32];
    int used = -1;
    assert_int_equal(sscanf(prompt, "%15[a-z]: %31[a-z] -> %n", op, word, &used), 2);
    assert_int_equal(used, (int)strlen(prompt));
    size_t n = strlen(word);
    for (size_t i = 0; i < n; i++)
        out[i] = word[i];
    out[n] = '\0';
    if (strcmp(op, "reverse") == 0) {
        for (size_t i = 0; i < n; i++)
            out[i] = word[n - 1 - i];
    } else if (strcmp(op, "upper") == 0) {
        for (size_t i = 0; i < n; i++)
            out[i] = (char)(word[i] - 'a' + 'A');
    } else {
        assert_string_equal(op, "sort");
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0 && out[j - 1] > out[j]; j--) {
                char t = out[j];
                out[j] = out[j - 1];
                out[j - 1] = t;
            }
    }
}

/* Operand limits of an arith task by kind: the easy tier has one-digit operands. */
static void check_arith_kind(const ccoe_task_example *t)
{
    long v[2] = {0, 0};
    const char *p = t->prompt;
    for (int i = 0; i < 2; i++) {
        while (*p && (*p < '0' || *p > '9'))
            p++;
        v[i] = strtol(p, (char **)&p, 10);
    }
    if (strcmp(t->kind, "word_small") == 0) {
        assert_true(v[0] >= 1 && v[0] <= 9 && v[1] >= 1 && v[1] <= 9);
        assert_null(strchr(t->prompt, '='));
    } else if (strcmp(t->kind, "equation") == 0) {
        assert_non_null(strchr(t->prompt, '='));
    } else {
        assert_string_equal(t->kind, "word");
        assert_null(strchr(t->prompt, '='));
    }
}

/* A SQL task: "-- Q: <question>?\n" and a gold query that runs on the domain's database and,
 * for list questions, returns at least one row. */
static void check_sql_task(ccoe_sqldb *db, const ccoe_task_example *t)
{
    assert_int_equal(t->match, CCOE_MATCH_SQL);
    assert_true(strncmp(t->prompt, "-- Q: ", 6) == 0);
    assert_int_equal(t->prompt[strlen(t->prompt) - 1], '\n');
    assert_int_equal(t->prompt[strlen(t->prompt) - 2], '?');
    assert_true(strncmp(t->answer, "SELECT ", 7) == 0);
    assert_true(strncmp(t->kind, "sql_", 4) == 0);
    char *res = NULL;
    ccoe_error err;
    ccoe_status s = ccoe_sqldb_query(db, t->answer, 0, &res, &err);
    if (s != CCOE_OK)
        fprintf(stderr, "%s: %s\n", t->answer, err.msg);
    assert_int_equal(s, CCOE_OK);
    if (strcmp(t->kind, "sql_list") == 0)
        assert_true(res[0] != '\0');
    assert_int_equal(ccoe_sqldb_match(db, t->answer, t->answer), CCOE_SQL_MATCH);
    free(res);
}

/* Every task of arith, strings and sql: the answer is right, the line "<prompt><answer>\n" is in
 * the domain's validation text and nowhere in its train text, and prompts are unique. */
static void check_builtin_tasks(const ccoe_dataset *ds, size_t want_tasks)
{
    ccoe_tokenizer tok = byte_tok();
    static const int task_domains[] = {0, 1, 4};
    int kinds_seen[3] = {0, 0, 0}; /* arith: word_small, equation, word */
    for (int k = 0; k < 3; k++) {
        int d = task_domains[k];
        ccoe_sqldb db;
        ccoe_error err;
        if (d == 4)
            assert_int_equal(ccoe_sqldb_open(&db, NULL, ds->domains[d].sql_script, &err),
                             CCOE_OK);
        const ccoe_domain *dom = &ds->domains[d];
        if (want_tasks && d != 4)
            assert_int_equal(dom->n_tasks, want_tasks);
        assert_true(dom->n_tasks > 0 && (!want_tasks || dom->n_tasks <= want_tasks));
        char *train = decode_stream(&tok, ds->train_seq, dom->train_start, dom->n_train, ds->T);
        char *val = decode_stream(&tok, ds->val_seq, dom->val_start, dom->n_val, ds->T);
        /* search whole lines: "\n<prompt><answer>\n" in "\n<text>" */
        size_t tl = strlen(train), vl = strlen(val);
        char *train_nl = malloc(tl + 2), *val_nl = malloc(vl + 2);
        assert_true(train_nl && val_nl);
        train_nl[0] = val_nl[0] = '\n';
        memcpy(train_nl + 1, train, tl + 1);
        memcpy(val_nl + 1, val, vl + 1);
        for (size_t i = 0; i < dom->n_tasks; i++) {
            const ccoe_task_example *t = &dom->tasks[i];
            char want[32];
            if (d == 0) {
                snprintf(want, sizeof want, "%ld", eval_arith(t->prompt));
                assert_string_equal(t->answer, want);
                check_arith_kind(t);
                kinds_seen[0] |= strcmp(t->kind, "word_small") == 0;
                kinds_seen[1] |= strcmp(t->kind, "equation") == 0;
                kinds_seen[2] |= strcmp(t->kind, "word") == 0;
            } else if (d == 1) {
                eval_strings(t->prompt, want);
                assert_string_equal(t->answer, want);
                assert_true(strncmp(t->prompt, t->kind, strlen(t->kind)) == 0);
                assert_int_equal(t->match, CCOE_MATCH_EXACT);
            } else {
                check_sql_task(&db, t);
            }
            char line[512];
            snprintf(line, sizeof line, "\n%s%s%c", t->prompt, t->answer, dom->answer_stop);
            assert_non_null(strstr(val_nl, line)); /* drawn from the held-out text */
            assert_null(strstr(train_nl, line));   /* and never seen in training */
            for (size_t j = 0; j < i; j++)
                assert_string_not_equal(t->prompt, dom->tasks[j].prompt);
        }
        free(train_nl);
        free(val_nl);
        free(train);
        free(val);
        if (d == 4)
            ccoe_sqldb_close(&db);
    }
    assert_true(kinds_seen[0] && kinds_seen[1] && kinds_seen[2]);
}

static void test_builtin_tasks(void **state)
{
    (void)state;
    check_builtin_tasks(&g_ds, MAX_TASKS);
}

/* ---- manifest files ---- */

static void test_manifest_load(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp("data");
    char *a = filler_text(3000, "alpha");
    tu_write_text(dir, "a.txt", a);
    /* jsonl: documents with escapes, extra fields, a blank line and an empty text */
    char *jl = malloc(20000);
    assert_non_null(jl);
    size_t n = 0;
    for (int i = 0; i < 60; i++)
        n += (size_t)sprintf(jl + n, "{\"id\": %d, \"text\": \"beta \\\"%d\\\"\\nline two\"}\n%s",
                             i, i, i == 7 ? "\n{\"text\": \"\"}\n" : "");
    tu_write_text(dir, "b.jsonl", jl);
    tu_write_text(dir, "b_tasks.jsonl",
               "{\"prompt\": \"2+2=\", \"answer\": \"4\"}\n\n"
               "{\"prompt\": \"q\", \"answer\": \"a b\", \"extra\": 1}\n"
               "{\"prompt\": \"x\", \"answer\": \"y\"}\n");
    char man[256];
    snprintf(man, sizeof man, "%s/m.ini", dir);
    tu_write_text(dir, "m.ini",
               "# a comment\n"
               "; another\n"
               "[domain alpha]\n"
               "  text = a.txt   ; inline comment\n"
               "\n"
               "[ domain  b-2.x ]\n"
               "jsonl=b.jsonl\n"
               "tasks = b_tasks.jsonl\n"
               "answer_stop = |\n");
    ccoe_tokenizer tok = byte_tok();
    ccoe_dataset ds;
    ccoe_error err;
    ccoe_status s = ccoe_data_load(&ds, man, &tok, 16, 0.2, 2, SEED, &err);
    if (s)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(s, CCOE_OK);
    assert_int_equal(ds.n_domains, 2);
    assert_string_equal(ds.domains[0].name, "alpha");
    assert_string_equal(ds.domains[1].name, "b-2.x");
    assert_int_equal(ds.domains[0].n_tasks, 0);
    assert_int_equal(ds.domains[1].n_tasks, 2); /* max_tasks, in file order */
    assert_string_equal(ds.domains[1].tasks[0].prompt, "2+2=");
    assert_string_equal(ds.domains[1].tasks[1].answer, "a b");
    assert_int_equal(ds.domains[1].answer_stop, '|');
    /* alpha: 5-line documents, each BOS + its lines + EOS */
    size_t tokens = 0;
    for (const char *p = a; *p; p++) {
        if (*p == '\n' && p > a && p[-1] == '\n')
            continue; /* a separator line */
        tokens++;
        if (p == a || (p > a + 1 && p[-1] == '\n' && p[-2] == '\n'))
            tokens += 2; /* a document starts */
    }
    size_t val_tok = (size_t)(0.2 * (double)tokens);
    assert_int_equal(ds.domains[0].n_train, (tokens - val_tok - 1) / 16);
    assert_int_equal(ds.domains[0].n_val, (val_tok - 1) / 16);
    /* the first document of b decodes with its JSON escapes resolved */
    const int32_t *s0 = ds.train_seq + ds.domains[1].train_start * 17;
    char out[32];
    assert_int_equal(s0[0], CCOE_TOK_BOS);
    tok.ops->decode(tok.self, s0, 17, out, sizeof out);
    assert_memory_equal(out, "beta \"0\"\nline tw", 16);
    ccoe_data_free(&ds);
    /* absolute paths work too */
    char man2[600];
    snprintf(man2, sizeof man2, "[domain abs]\ntext = %s/a.txt\n", dir);
    tu_write_text(dir, "abs.ini", man2);
    snprintf(man2, sizeof man2, "%s/abs.ini", dir);
    assert_int_equal(ccoe_data_load(&ds, man2, &tok, 16, 0.2, 2, SEED, &err), CCOE_OK);
    ccoe_data_free(&ds);
    free(a);
    free(jl);
    tu_rm_tree(dir);
    free(dir);
}

static void test_manifest_errors(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp("data");
    char *big = filler_text(4000, "text");
    tu_write_text(dir, "ok.txt", big);
    tu_write_text(dir, "tiny.txt", "tiny\n");
    tu_write_text(dir, "bad.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n{\"text\": \"thr\n");
    tu_write_text(dir, "notext.jsonl", "{\"text\": \"one\"}\n{\"body\": \"two\"}\n");
    tu_write_text(dir, "badtask.jsonl", "{\"prompt\": \"1+1=\", \"answer\": \"2\\n\"}\n");
    tu_write_text(dir, "baddoc.jsonl", "{\"prompt\": \"1+1=\", \"answer\": \"2\", \"doc\": 9999}\n");
    char path[512];
#define MANIFEST(text) \
    (tu_write_text(dir, "m.ini", (text)), snprintf(path, sizeof path, "%s/m.ini", dir), path)

    snprintf(path, sizeof path, "%s/missing.ini", dir);
    expect_load_error(path, CCOE_ERR_IO, "missing.ini", "builtin");
    expect_load_error(MANIFEST("[domain a]\ntext = nothere.txt\n"), CCOE_ERR_IO, "nothere.txt",
                      "m.ini:2");
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\ncolour = blue\n"), CCOE_ERR_CONFIG,
                      "'colour'", "m.ini:3");
    expect_load_error(MANIFEST("[domain a]\njsonl = bad.jsonl\n"), CCOE_ERR_FORMAT,
                      "bad.jsonl:3", "JSON");
    expect_load_error(MANIFEST("[domain a]\njsonl = notext.jsonl\n"), CCOE_ERR_FORMAT,
                      "notext.jsonl:2", "\"text\"");
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\n[domain b]\ntext = ok.txt\n"
                               "[domain a]\ntext = ok.txt\n"),
                      CCOE_ERR_CONFIG, "'a'", "twice");
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\n[domain empty]\n"), CCOE_ERR_CONFIG,
                      "'empty'", "m.ini:3");
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\n[domain small]\ntext = tiny.txt\n"),
                      CCOE_ERR_CONFIG, "'small'", "too small");
    expect_load_error(MANIFEST("[data]\ntext = ok.txt\n"), CCOE_ERR_CONFIG, "[data]", NULL);
    expect_load_error(MANIFEST("text = ok.txt\n"), CCOE_ERR_CONFIG, "'text'", "m.ini:1");
    expect_load_error(MANIFEST("[domain a]\nok.txt\n"), CCOE_ERR_CONFIG, "m.ini:2", NULL);
    expect_load_error(MANIFEST("[domain a b]\ntext = ok.txt\n"), CCOE_ERR_CONFIG, "'a b'", NULL);
    expect_load_error(MANIFEST("; nothing\n"), CCOE_ERR_CONFIG, "no domain", NULL);
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\ntasks = badtask.jsonl\n"),
                      CCOE_ERR_FORMAT, "badtask.jsonl:1", "answer_stop");
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\ntasks = baddoc.jsonl\n"),
                      CCOE_ERR_FORMAT, "baddoc.jsonl:1", "\"doc\"");
    expect_load_error(MANIFEST("[domain a]\ntext = ok.txt\nanswer_stop = two\n"),
                      CCOE_ERR_CONFIG, "'two'", "answer_stop");
    char many[4096];
    size_t n = 0;
    for (int i = 0; i <= CCOE_MAX_DOMAINS; i++)
        n += (size_t)sprintf(many + n, "[domain d%d]\ntext = ok.txt\n", i);
    expect_load_error(MANIFEST(many), CCOE_ERR_CONFIG, "too many domains", "'d32'");
#undef MANIFEST
    /* bad arguments */
    ccoe_tokenizer tok = byte_tok();
    ccoe_dataset ds;
    ccoe_error err;
    assert_int_equal(ccoe_data_load(&ds, "builtin", &tok, 0, 0.1, 10, SEED, &err), CCOE_ERR_ARG);
    assert_int_equal(ccoe_data_load(&ds, "builtin", &tok, 64, 0.0, 10, SEED, &err),
                     CCOE_ERR_ARG);
    assert_non_null(strstr(err.msg, "val_fraction"));
    assert_int_equal(ccoe_data_load(&ds, "builtin", &tok, 64, 0.1, -1, SEED, &err),
                     CCOE_ERR_ARG);
    /* a builtin domain cannot fill a huge sequence */
    assert_int_equal(ccoe_data_load(&ds, "builtin", &tok, 1 << 20, 0.1, 10, SEED, &err),
                     CCOE_ERR_CONFIG);
    assert_non_null(strstr(err.msg, "'arith'"));
    ccoe_data_free(&ds);
    free(big);
    tu_rm_tree(dir);
    free(dir);
}

/* A domain with SQL tasks: the database from a script or a SQLite file, kinds and match read
 * from the tasks file; the errors name the file, line and fix. */
static void test_manifest_sql_tasks(void **state)
{
    (void)state;
    char *dir = tu_mkdtemp("data");
    char *big = filler_text(4000, "select");
    tu_write_text(dir, "q.txt", big);
    tu_write_text(dir, "db.sql", "CREATE TABLE t (id INTEGER, city TEXT);\n"
                              "INSERT INTO t VALUES (1, 'Oslo'), (2, 'Rome'), (3, 'Oslo');\n");
    tu_write_text(dir, "q_tasks.jsonl",
               "{\"prompt\": \"-- Q: How many rows are in Oslo?\\n\", \"answer\": \"SELECT "
               "COUNT(*) FROM t WHERE city = 'Oslo';\", \"kind\": \"sql_count\", \"match\": "
               "\"sql\"}\n"
               "{\"prompt\": \"1+1=\", \"answer\": \"2\", \"kind\": \"equation\"}\n"
               "{\"prompt\": \"2+2=\", \"answer\": \"4\", \"match\": \"exact\"}\n");
    /* a real SQLite file, built from the same script */
    char dbfile[600];
    snprintf(dbfile, sizeof dbfile, "%s/db.sqlite", dir);
    {
        sqlite3 *db = NULL; /* the fixture file is written with SQLite itself */
        assert_int_equal(sqlite3_open(dbfile, &db), SQLITE_OK);
        assert_int_equal(sqlite3_exec(db,
                                      "CREATE TABLE t (id INTEGER, city TEXT);"
                                      "INSERT INTO t VALUES (1, 'Oslo'), (2, 'Rome'), (3, 'Oslo');",
                                      NULL, NULL, NULL),
                         SQLITE_OK);
        assert_int_equal(sqlite3_close(db), SQLITE_OK);
    }
    ccoe_tokenizer tok = byte_tok();
    char man[600];
    static const char *const db_lines[] = {"sqlite_script = db.sql\n", "sqlite = db.sqlite\n"};
    for (int k = 0; k < 2; k++) {
        char text[256];
        snprintf(text, sizeof text, "[domain sql]\ntext = q.txt\ntasks = q_tasks.jsonl\n%s",
                 db_lines[k]);
        tu_write_text(dir, "m.ini", text);
        snprintf(man, sizeof man, "%s/m.ini", dir);
        ccoe_dataset ds;
        ccoe_error err;
        ccoe_status s = ccoe_data_load(&ds, man, &tok, 16, 0.2, 10, SEED, &err);
        if (s)
            fprintf(stderr, "%s\n", err.msg);
        assert_int_equal(s, CCOE_OK);
        const ccoe_domain *d = &ds.domains[0];
        assert_int_equal(d->n_tasks, 3);
        assert_string_equal(d->tasks[0].kind, "sql_count");
        assert_int_equal(d->tasks[0].match, CCOE_MATCH_SQL);
        assert_string_equal(d->tasks[1].kind, "equation");
        assert_int_equal(d->tasks[1].match, CCOE_MATCH_EXACT);
        assert_string_equal(d->tasks[2].kind, "");
        if (k == 0) {
            assert_non_null(d->sql_script);
            assert_null(d->sql_db);
        } else {
            assert_null(d->sql_script);
            assert_string_equal(d->sql_db, dbfile);
        }
        ccoe_sqldb db;
        assert_int_equal(ccoe_sqldb_open(&db, d->sql_db, d->sql_script, &err), CCOE_OK);
        assert_int_equal(ccoe_sqldb_match(&db, d->tasks[0].answer,
                                          "select count(id) from t where city='Oslo'"),
                         CCOE_SQL_MATCH);
        ccoe_sqldb_close(&db);
        ccoe_data_free(&ds);
    }
    tu_write_text(dir, "gold_bad.jsonl",
               "{\"prompt\": \"q\", \"answer\": \"SELECT nope FROM t;\", \"match\": \"sql\"}\n");
    tu_write_text(dir, "kind_bad.jsonl", "{\"prompt\": \"q\", \"answer\": \"a\", \"kind\": \"a b\"}\n");
    tu_write_text(dir, "match_bad.jsonl",
               "{\"prompt\": \"q\", \"answer\": \"a\", \"match\": \"fuzzy\"}\n");
    tu_write_text(dir, "notadb.sqlite", "this is text, not a database; long enough to be read...\n");
    char path[512];
#define MANIFEST(text) \
    (tu_write_text(dir, "m.ini", (text)), snprintf(path, sizeof path, "%s/m.ini", dir), path)
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\ntasks = q_tasks.jsonl\n"),
                      CCOE_ERR_CONFIG, "q_tasks.jsonl:1", "sqlite");
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\nsqlite_script = db.sql\n"
                               "tasks = gold_bad.jsonl\n"),
                      CCOE_ERR_FORMAT, "gold_bad.jsonl:1", "nope"); /* bad data: exit 1 */
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\ntasks = kind_bad.jsonl\n"),
                      CCOE_ERR_FORMAT, "kind_bad.jsonl:1", "\"kind\"");
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\ntasks = match_bad.jsonl\n"),
                      CCOE_ERR_FORMAT, "match_bad.jsonl:1", "\"match\"");
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\nsqlite = db.sqlite\n"
                               "sqlite_script = db.sql\n"),
                      CCOE_ERR_CONFIG, "m.ini:4", "one 'sqlite'");
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\nsqlite = notadb.sqlite\n"),
                      CCOE_ERR_FORMAT, "m.ini:3", "not a usable SQLite database");
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\nsqlite = missing.sqlite\n"),
                      CCOE_ERR_IO, "missing.sqlite", NULL);
    expect_load_error(MANIFEST("[domain a]\ntext = q.txt\nsqlite_script = missing.sql\n"),
                      CCOE_ERR_IO, "missing.sql", NULL);
    expect_load_error(MANIFEST("[domain a]\nsqlite_script = db.sql\n"), CCOE_ERR_CONFIG,
                      "has no text", NULL);
#undef MANIFEST
    free(big);
    tu_rm_tree(dir);
    free(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_byte_tokenizer_roundtrip),
        cmocka_unit_test(test_tokenizer_unknown_name),
        cmocka_unit_test(test_builtin_domains),
        cmocka_unit_test(test_builtin_sequences_match_text),
        cmocka_unit_test(test_builtin_no_train_val_overlap),
        cmocka_unit_test(test_builtin_deterministic),
        cmocka_unit_test(test_write_builtin_roundtrip),
        cmocka_unit_test(test_stream_epoch_is_permutation),
        cmocka_unit_test(test_stream_seek_resume),
        cmocka_unit_test(test_val_batch_padding),
        cmocka_unit_test(test_builtin_tasks),
        cmocka_unit_test(test_manifest_load),
        cmocka_unit_test(test_manifest_errors),
        cmocka_unit_test(test_manifest_sql_tasks),
    };
    return cmocka_run_group_tests(tests, setup_builtin, teardown_builtin);
}
