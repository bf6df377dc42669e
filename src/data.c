/* data.c - domain-labelled data: manifest, tokenizing, train/validation split, packing, and the
 * shuffled training stream.
 *
 * This module turns text into packed token sequences that carry a domain id; it does not
 * generate text (the embedded default set is data_builtin.c's) and it does not evaluate tasks
 * (it only hands out the held-out exact-answer examples).
 *
 * Manifest format
 * ---------------
 * The manifest argument is either the word `builtin` (the embedded default data set, see
 * data_builtin.c) or the path of a manifest file: a small INI-style text file that lists the
 * domains. Domain ids are 0, 1, ... in the order of the sections. (It is parsed here rather than
 * with libinih, whose Debian build cannot report an empty section or the line of a key.)
 *
 *     ; comment lines start with ';' or '#'; a ';' after whitespace starts an inline comment
 *     [domain arith]
 *     text = arith.txt           ; plain text: documents separated by blank lines
 *     tasks = arith_tasks.jsonl  ; optional exact-answer examples
 *     answer_stop = newline      ; optional: newline (default) | space | tab | one character
 *
 *     [domain code]
 *     jsonl = code.jsonl         ; one JSON object per line, its string field "text" a document
 *
 *     [domain sql]
 *     text = sql.txt
 *     tasks = sql_tasks.jsonl    ; {"prompt": ..., "answer": GOLD_SQL, "match": "sql"}
 *     sqlite = shop.sqlite       ; the database SQL tasks run on (opened read-only), or
 *     ; sqlite_script = shop.sql ; SQL that builds it in memory (CREATE TABLE, INSERT, ...)
 *
 * - Sections are `[domain NAME]`; NAME is 1-63 characters of A-Z a-z 0-9 _ . - and unique;
 *   at most CCOE_MAX_DOMAINS (32) domains.
 * - Keys: `text` and `jsonl` (document sources; each may repeat, sources are read in the order
 *   listed), `tasks` (may repeat), `answer_stop`, and at most one of `sqlite` / `sqlite_script`
 *   (the domain's database, opened and checked at load). Any other key or section is an error.
 *   Every domain needs at least one text or jsonl source.
 * - Relative paths resolve against the manifest's directory.
 * - text file: a document is a maximal run of non-blank lines, kept with its line ends; a blank
 *   line (empty, or only spaces, tabs, '\r') only separates documents.
 * - jsonl file: one JSON object per non-blank line; its "text" field (a string) is one
 *   document; other fields are ignored; an empty "text" is skipped.
 * - Each document is tokenized as BOS <tokens> EOS and appended to the domain's token stream.
 *   Documents are numbered 0, 1, ... across the domain's sources, in order.
 * - tasks file: one JSON object per non-blank line, {"prompt": "...", "answer": "...",
 *   "doc": N}. prompt and answer are non-empty strings and the answer does not contain the
 *   answer_stop character; a model is given BOS + prompt and must produce the answer, ended
 *   by answer_stop. "doc" is optional: with it, the example is taken from document N of the
 *   domain and is used only if that document lies wholly inside the validation sequences (the
 *   builtin set marks its examples this way); without it the example is held out by
 *   construction and always used. At most max_tasks examples per domain are kept, in file
 *   order. Optional "kind": a label (1-23 characters of A-Z a-z 0-9 _ . -) under which
 *   evaluation reports accuracy separately ("word_small", "sql_count", ...). Optional
 *   "match": "exact" (default) or "sql": the answer is gold SQL and a decoded answer counts as
 *   right when it gives the same result on the domain's database (execution match, sqlexec.h);
 *   "sql" needs the domain's `sqlite`/`sqlite_script`, and the gold SQL must run on it.
 *   Other fields are ignored.
 *
 * Split and packing
 * -----------------
 * Per domain, the last floor(val_fraction * n) of its n tokens are validation, the rest train,
 * so the two never share text. Each part is packed into sequences of T+1 tokens that overlap by
 * one token (the llm.c way: sequence i is part[i*T .. i*T+T], inputs its first T tokens, targets
 * its last T), (len-1)/T sequences per part; the tail that does not fill a sequence is dropped.
 * Sequences never cross domains or the train/validation boundary. A domain must give at least
 * one train and one validation sequence.
 *
 * Training stream
 * ---------------
 * Epoch e visits every train sequence once in the order of a permutation that depends only on
 * (seed, e), so ccoe_data_seek(pos) reproduces exactly the stream of an uninterrupted run.
 */
#include "data.h"

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "data_builtin.h"
#include "fs.h"
#include "rng.h"
#include "safetensors.h"
#include "sqlexec.h"

#define STREAM_TAG 0x73747265616d0000ULL /* "stream": key of the per-epoch shuffle */

/* ---- files ---- */

/* Reads a whole user-named file (a regular file: ccoe_fs_open_input) into a NUL-terminated
 * malloc'd buffer; what names it in messages. */
static ccoe_status read_file(const char *path, const char *what, char **buf, size_t *len,
                             ccoe_error *err)
{
    *buf = NULL;
    *len = 0;
    FILE *f = ccoe_fs_fopen_input(path, what, err);
    if (!f)
        return err->status;
    int e = ccoe_fs_read_stream(f, SIZE_MAX / 4, buf, len);
    fclose(f);
    if (e)
        return ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO,
                              "cannot read %s '%s': %s", what, path, strerror(e));
    return CCOE_OK;
}

/* ---- one domain under construction ---- */

typedef struct dom_build {
    const ccoe_tokenizer *tok;
    int32_t *ids; /* (n) the domain's token stream */
    size_t n, cap;
    size_t *doc_start; /* (n_docs) first token (the BOS) of each document */
    size_t n_docs, docs_cap;
    size_t split;      /* first validation token */
    size_t val_end;    /* one past the last token inside a validation sequence */
} dom_build;

static void dom_build_free(dom_build *b)
{
    free(b->ids);
    free(b->doc_start);
    memset(b, 0, sizeof *b);
}

static int grow_ids(dom_build *b, size_t need)
{
    if (need <= b->cap)
        return 1;
    size_t cap = b->cap ? b->cap : 1 << 16;
    while (cap < need)
        cap *= 2;
    int32_t *p = realloc(b->ids, cap * sizeof *p);
    if (!p)
        return 0;
    b->ids = p;
    b->cap = cap;
    return 1;
}

/* Appends BOS <text> EOS as one document; empty texts are skipped. */
static ccoe_status append_doc(dom_build *b, const char *text, size_t len, ccoe_error *err)
{
    if (len == 0)
        return CCOE_OK;
    if (b->n_docs == b->docs_cap) {
        size_t cap = b->docs_cap ? 2 * b->docs_cap : 1024;
        size_t *p = realloc(b->doc_start, cap * sizeof *p);
        if (!p)
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory indexing documents");
        b->doc_start = p;
        b->docs_cap = cap;
    }
    const ccoe_tokenizer_ops *ops = b->tok->ops;
    size_t guess = b->n + len + 2;
    if (!grow_ids(b, guess))
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory tokenizing %zu bytes", len);
    size_t room = b->cap - b->n - 2;
    size_t k = ops->encode(b->tok->self, text, len, b->ids + b->n + 1, room);
    if (k > room) {
        if (!grow_ids(b, b->n + k + 2))
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory tokenizing %zu bytes", len);
        ops->encode(b->tok->self, text, len, b->ids + b->n + 1, k);
    }
    b->doc_start[b->n_docs++] = b->n;
    b->ids[b->n] = b->tok->bos;
    b->ids[b->n + 1 + k] = b->tok->eos;
    b->n += k + 2;
    return CCOE_OK;
}

static int is_blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* Text source: documents are maximal runs of non-blank lines, kept with their line ends. */
static ccoe_status add_text_docs(dom_build *b, const char *text, size_t len, ccoe_error *err)
{
    size_t i = 0, begin = 0, end = 0;
    int in_doc = 0;
    while (i < len) {
        const char *nl = memchr(text + i, '\n', len - i);
        size_t j = nl ? (size_t)(nl - text) : len;
        size_t next = nl ? j + 1 : len;
        if (is_blank(text + i, j - i)) {
            if (in_doc)
                CCOE_TRY(append_doc(b, text + begin, end - begin, err));
            in_doc = 0;
        } else {
            if (!in_doc)
                begin = i;
            in_doc = 1;
            end = next;
        }
        i = next;
    }
    if (in_doc)
        CCOE_TRY(append_doc(b, text + begin, end - begin, err));
    return CCOE_OK;
}

/* Iterates the lines of a JSONL buffer: returns the next non-blank line (not NUL-terminated)
 * and its 1-based number, or NULL at the end. */
static const char *next_jsonl_line(const char *buf, size_t len, size_t *pos, size_t *lineno,
                                   size_t *line_len)
{
    while (*pos < len) {
        const char *s = buf + *pos;
        const char *nl = memchr(s, '\n', len - *pos);
        size_t n = nl ? (size_t)(nl - s) : len - *pos;
        *pos += nl ? n + 1 : n;
        (*lineno)++;
        if (!is_blank(s, n)) {
            *line_len = n;
            return s;
        }
    }
    return NULL;
}

/* Parses one JSONL line into an object; the error names file and line. */
static ccoe_status parse_json_line(const char *path, size_t lineno, const char *line, size_t n,
                                   const char *expect, cJSON **out, ccoe_error *err)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(line, n, &end, 0);
    if (!j) {
        size_t col = end && end >= line ? (size_t)(end - line) + 1 : 1;
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s:%zu: not valid JSON (column %zu): each line must be one JSON "
                              "object like %s",
                              path, lineno, col, expect);
    }
    if (end && !is_blank(end, n - (size_t)(end - line))) {
        cJSON_Delete(j);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s:%zu: extra characters after the JSON value (column %zu): each "
                              "line must be exactly one JSON object like %s",
                              path, lineno, (size_t)(end - line) + 1, expect);
    }
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s:%zu: expected a JSON object like %s", path, lineno, expect);
    }
    *out = j;
    return CCOE_OK;
}

static ccoe_status add_jsonl_docs(dom_build *b, const char *path, const char *buf, size_t len,
                                  ccoe_error *err)
{
    static const char expect[] = "{\"text\": \"...\"}";
    size_t pos = 0, lineno = 0, n;
    const char *line;
    while ((line = next_jsonl_line(buf, len, &pos, &lineno, &n))) {
        cJSON *j = NULL;
        CCOE_TRY(parse_json_line(path, lineno, line, n, expect, &j, err));
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (!cJSON_IsString(t)) {
            cJSON_Delete(j);
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s:%zu: no string field \"text\": each line must be like %s",
                                  path, lineno, expect);
        }
        ccoe_status s = append_doc(b, t->valuestring, strlen(t->valuestring), err);
        cJSON_Delete(j);
        CCOE_TRY(s);
    }
    return CCOE_OK;
}

/* ---- split, pack, tasks ---- */

/* Sequences of T+1 tokens (overlapping by one) that fit in len tokens. */
static size_t seq_count(size_t len, int T)
{
    return len >= (size_t)T + 1 ? (len - 1) / (size_t)T : 0;
}

/* Computes the split of the finished stream; error if a part gives no sequence. */
static ccoe_status dom_split(dom_build *b, const char *name, const char *origin, int T,
                             double val_fraction, ccoe_error *err)
{
    if (b->n_docs == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "domain '%s' (%s) has no documents: its files are empty; add text "
                              "or remove the domain",
                              name, origin);
    size_t n_val = (size_t)(val_fraction * (double)b->n);
    b->split = b->n - n_val;
    size_t tr = seq_count(b->split, T), va = seq_count(n_val, T);
    if (tr == 0 || va == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "domain '%s' (%s) is too small: %zu tokens give %zu train and %zu "
                              "validation sequences of T+1 = %d tokens (val_fraction %g), need "
                              "at least one of each: add text to the domain, lower seq_len or "
                              "change val_fraction",
                              name, origin, b->n, tr, va, T + 1, val_fraction);
    b->val_end = b->split + va * (size_t)T + 1;
    return CCOE_OK;
}

static int append_seqs(int32_t **seq, int32_t **dom, size_t *count, const int32_t *ids,
                       size_t len, int T, int d)
{
    size_t k = seq_count(len, T), row = (size_t)T + 1;
    int32_t *s = realloc(*seq, (*count + k) * row * sizeof *s);
    if (!s)
        return 0;
    *seq = s;
    int32_t *dd = realloc(*dom, (*count + k) * sizeof *dd);
    if (!dd)
        return 0;
    *dom = dd;
    for (size_t i = 0; i < k; i++) {
        memcpy(s + (*count + i) * row, ids + i * (size_t)T, row * sizeof *s);
        dd[*count + i] = d;
    }
    *count += k;
    return 1;
}

static ccoe_status dom_pack(ccoe_dataset *ds, int d, const dom_build *b, ccoe_error *err)
{
    ccoe_domain *dom = &ds->domains[d];
    dom->train_start = ds->n_train;
    dom->val_start = ds->n_val;
    if (!append_seqs(&ds->train_seq, &ds->train_domain, &ds->n_train, b->ids, b->split, ds->T,
                     d) ||
        !append_seqs(&ds->val_seq, &ds->val_domain, &ds->n_val, b->ids + b->split,
                     b->n - b->split, ds->T, d))
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory packing domain '%s'",
                              dom->name);
    dom->n_train = ds->n_train - dom->train_start;
    dom->n_val = ds->n_val - dom->val_start;
    ds->train_tokens += b->split;
    return CCOE_OK;
}

/* 1 if document doc lies wholly inside the validation sequences. */
static int doc_held_out(const dom_build *b, size_t doc)
{
    size_t start = b->doc_start[doc];
    size_t end = doc + 1 < b->n_docs ? b->doc_start[doc + 1] : b->n;
    return start >= b->split && end <= b->val_end;
}

/* Appends a copy of one task example; the array doubles when n_tasks reaches a power of two
 * (>= 16), so no capacity field is needed. */
static ccoe_status add_task(ccoe_domain *dom, const char *prompt, size_t plen, const char *answer,
                            size_t alen, const char *kind, int match, ccoe_error *err)
{
    size_t n = dom->n_tasks;
    if (n == 0 || (n >= 16 && (n & (n - 1)) == 0)) {
        ccoe_task_example *p = realloc(dom->tasks, (n ? 2 * n : 16) * sizeof *p);
        if (!p)
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for task examples");
        dom->tasks = p;
    }
    ccoe_task_example *t = &dom->tasks[dom->n_tasks];
    t->prompt = strndup(prompt, plen);
    t->answer = strndup(answer, alen);
    if (!t->prompt || !t->answer) {
        free(t->prompt);
        free(t->answer);
        t->prompt = t->answer = NULL;
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for task examples");
    }
    snprintf(t->kind, sizeof t->kind, "%s", kind ? kind : "");
    t->match = match;
    dom->n_tasks++;
    return CCOE_OK;
}

/* 1 if a task's "doc" field is an integer in [0, n_docs). */
static int doc_index_ok(const cJSON *doc, size_t n_docs)
{
    if (!cJSON_IsNumber(doc) || !(doc->valuedouble >= 0.0 && doc->valuedouble < (double)n_docs))
        return 0;
    return doc->valuedouble == (double)(size_t)doc->valuedouble;
}

/* 1 if s is a valid task kind label: 1-23 characters of A-Z a-z 0-9 _ . - */
static int kind_ok(const char *s)
{
    size_t n = strlen(s);
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '_' || s[i] == '.' || s[i] == '-'))
            return 0;
    return n > 0 && n < CCOE_KIND_LEN;
}

/* Opens the domain's SQL database (checks that it exists and is usable); NULL-safe no-op when
 * the domain has none. */
static ccoe_status open_domain_db(const ccoe_domain *dom, ccoe_sqldb *db, int *open,
                                  ccoe_error *err)
{
    *open = 0;
    if (!dom->sql_db && !dom->sql_script)
        return CCOE_OK;
    ccoe_status s = ccoe_sqldb_open(db, dom->sql_db, dom->sql_script, err);
    if (s != CCOE_OK) {
        ccoe_sqldb_close(db);
        return ccoe_error_wrap(err, "domain '%s'", dom->name);
    }
    *open = 1;
    return CCOE_OK;
}

/* Checks a SQL task's gold query on the domain's database: it must run. */
static ccoe_status check_gold_sql(ccoe_sqldb *db, const char *where, const char *gold,
                                  ccoe_error *err)
{
    char *res = NULL;
    ccoe_status s = ccoe_sqldb_query(db, gold, 0, &res, err);
    free(res);
    if (s == CCOE_OK)
        return CCOE_OK;
    ccoe_error_wrap(err, "%s: the gold SQL '%s' does not run on the domain's database: fix the "
                         "task file or the database",
                    where, gold);
    /* the sandbox calls a bad query a bad argument; here it is bad data, not a usage error */
    s = s == CCOE_ERR_NOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_FORMAT;
    if (err)
        err->status = s;
    return s;
}

static ccoe_status add_task_file(ccoe_domain *dom, const dom_build *b, ccoe_sqldb *db,
                                 const char *path, const char *buf, size_t len, int max_tasks,
                                 ccoe_error *err)
{
    static const char expect[] = "{\"prompt\": \"...\", \"answer\": \"...\"}";
    size_t pos = 0, lineno = 0, n;
    const char *line;
    while ((line = next_jsonl_line(buf, len, &pos, &lineno, &n))) {
        cJSON *j = NULL;
        CCOE_TRY(parse_json_line(path, lineno, line, n, expect, &j, err));
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(j, "answer");
        const cJSON *doc = cJSON_GetObjectItemCaseSensitive(j, "doc");
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(j, "kind");
        const cJSON *match = cJSON_GetObjectItemCaseSensitive(j, "match");
        int how = match && cJSON_IsString(match) && strcmp(match->valuestring, "sql") == 0
                      ? CCOE_MATCH_SQL
                      : CCOE_MATCH_EXACT;
        ccoe_status s = CCOE_OK;
        if (!cJSON_IsString(p) || !cJSON_IsString(a) || !p->valuestring[0] ||
            !a->valuestring[0]) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s:%zu: \"prompt\" and \"answer\" must be non-empty strings, "
                               "like %s",
                               path, lineno, expect);
        } else if (strchr(a->valuestring, dom->answer_stop)) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s:%zu: the answer contains the domain's answer_stop character "
                               "(code %d), so it could never be produced: remove it or set "
                               "another answer_stop for domain '%s'",
                               path, lineno, (int)(unsigned char)dom->answer_stop, dom->name);
        } else if (kind && !(cJSON_IsString(kind) && kind_ok(kind->valuestring))) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s:%zu: \"kind\" must be a label of 1-%d characters of A-Z a-z "
                               "0-9 _ . -",
                               path, lineno, CCOE_KIND_LEN - 1);
        } else if (match && !(cJSON_IsString(match) && (strcmp(match->valuestring, "exact") == 0 ||
                                                         how == CCOE_MATCH_SQL))) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s:%zu: \"match\" must be \"exact\" (default) or \"sql\"", path,
                               lineno);
        } else if (how == CCOE_MATCH_SQL && !db) {
            s = ccoe_error_set(err, CCOE_ERR_CONFIG,
                               "%s:%zu: a \"match\": \"sql\" task needs a database: add "
                               "'sqlite = FILE' or 'sqlite_script = FILE' to [domain %s]",
                               path, lineno, dom->name);
        } else if (doc && !doc_index_ok(doc, b->n_docs)) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s:%zu: \"doc\" must be a document index 0..%zu of domain '%s'",
                               path, lineno, b->n_docs ? b->n_docs - 1 : 0, dom->name);
        } else if (dom->n_tasks < (size_t)max_tasks &&
                   (!doc || doc_held_out(b, (size_t)doc->valuedouble))) {
            char where[64 + PATH_MAX];
            snprintf(where, sizeof where, "%s:%zu", path, lineno);
            if (how == CCOE_MATCH_SQL)
                s = check_gold_sql(db, where, a->valuestring, err);
            if (s == CCOE_OK)
                s = add_task(dom, p->valuestring, strlen(p->valuestring), a->valuestring,
                             strlen(a->valuestring), kind ? kind->valuestring : NULL, how, err);
        }
        cJSON_Delete(j);
        CCOE_TRY(s);
    }
    return CCOE_OK;
}

/* ---- manifest ---- */

enum { SRC_TEXT, SRC_JSONL, SRC_TASKS, SRC_SQLITE, SRC_SQLITE_SCRIPT, SRC_KINDS };
static const char *const src_kind_name[] = {"text", "jsonl", "tasks", "sqlite", "sqlite_script"};

typedef struct src_spec {
    int dom;
    int kind;
    int line;
    char *path; /* resolved against the manifest's directory */
} src_spec;

typedef struct manifest {
    const char *path;
    int n_domains;
    char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int lines[CCOE_MAX_DOMAINS];
    char answer_stop[CCOE_MAX_DOMAINS];
    src_spec *srcs;
    int n_srcs, srcs_cap;
} manifest;

static void manifest_free(manifest *m)
{
    for (int i = 0; i < m->n_srcs; i++)
        free(m->srcs[i].path);
    free(m->srcs);
    m->srcs = NULL;
    m->n_srcs = m->srcs_cap = 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r'))
        s[--n] = '\0';
    return s;
}

static ccoe_status manifest_add_src(manifest *m, int kind, int line, const char *value,
                                    ccoe_error *err)
{
    if (!value[0])
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "%s:%d: '%s' needs a file path", m->path,
                              line, src_kind_name[kind]);
    if (m->n_srcs == m->srcs_cap) {
        int cap = m->srcs_cap ? 2 * m->srcs_cap : 16;
        src_spec *p = realloc(m->srcs, (size_t)cap * sizeof *p);
        if (!p)
            return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory reading %s", m->path);
        m->srcs = p;
        m->srcs_cap = cap;
    }
    const char *slash = strrchr(m->path, '/');
    int dir_len = value[0] == '/' || !slash ? 0 : (int)(slash - m->path) + 1;
    size_t n = (size_t)dir_len + strlen(value) + 1;
    char *path = malloc(n);
    if (!path)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory reading %s", m->path);
    snprintf(path, n, "%.*s%s", dir_len, m->path, value);
    m->srcs[m->n_srcs++] = (src_spec){.dom = m->n_domains - 1, .kind = kind, .line = line,
                                      .path = path};
    return CCOE_OK;
}

static ccoe_status manifest_line(manifest *m, int line, char *s, ccoe_error *err)
{
    s = trim(s);
    if (!s[0] || s[0] == ';' || s[0] == '#')
        return CCOE_OK;
    if (s[0] == '[') {
        char *close = strchr(s, ']');
        if (!close || trim(close + 1)[0])
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s:%d: malformed section header '%s': write [domain NAME]",
                                  m->path, line, s);
        *close = '\0';
        char *inner = trim(s + 1);
        if (strncmp(inner, "domain", 6) != 0 || (inner[6] != ' ' && inner[6] != '\t'))
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s:%d: unknown section [%s]: sections are [domain NAME]",
                                  m->path, line, inner);
        char *name = trim(inner + 6);
        size_t n = strlen(name);
        int ok = n > 0 && n < CCOE_NAME_LEN;
        for (size_t i = 0; ok && i < n; i++) {
            char c = name[i];
            ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '_' || c == '.' || c == '-';
        }
        if (!ok)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s:%d: bad domain name '%s': use 1-%d characters of A-Z a-z "
                                  "0-9 _ . -",
                                  m->path, line, name, CCOE_NAME_LEN - 1);
        for (int d = 0; d < m->n_domains; d++)
            if (strcmp(m->names[d], name) == 0)
                return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                      "%s:%d: domain '%s' is defined twice (first at line %d): "
                                      "rename one or list both files in one section",
                                      m->path, line, name, m->lines[d]);
        if (m->n_domains == CCOE_MAX_DOMAINS)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s:%d: too many domains at '%s': at most %d are supported; "
                                  "merge domains",
                                  m->path, line, name, CCOE_MAX_DOMAINS);
        snprintf(m->names[m->n_domains], CCOE_NAME_LEN, "%s", name);
        m->lines[m->n_domains] = line;
        m->answer_stop[m->n_domains] = '\n';
        m->n_domains++;
        return CCOE_OK;
    }
    char *eq = strchr(s, '=');
    if (!eq)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "%s:%d: expected '[domain NAME]' or 'key = value', got '%s'",
                              m->path, line, s);
    *eq = '\0';
    char *key = trim(s), *value = eq + 1;
    for (char *c = value; *c; c++) { /* inline comment: ';' after whitespace */
        if (*c == ';' && c > value && (c[-1] == ' ' || c[-1] == '\t')) {
            *c = '\0';
            break;
        }
    }
    value = trim(value);
    if (m->n_domains == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "%s:%d: key '%s' before any [domain NAME] section", m->path, line,
                              key);
    const char *dname = m->names[m->n_domains - 1];
    for (int k = SRC_TEXT; k < SRC_KINDS; k++) {
        if (strcmp(key, src_kind_name[k]) != 0)
            continue;
        for (int i = 0; k >= SRC_SQLITE && i < m->n_srcs; i++)
            if (m->srcs[i].dom == m->n_domains - 1 && m->srcs[i].kind >= SRC_SQLITE)
                return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                      "%s:%d: [domain %s] already has a database (line %d): give "
                                      "one 'sqlite' or 'sqlite_script' per domain",
                                      m->path, line, dname, m->srcs[i].line);
        return manifest_add_src(m, k, line, value, err);
    }
    if (strcmp(key, "answer_stop") == 0) {
        char c;
        if (strcmp(value, "newline") == 0)
            c = '\n';
        else if (strcmp(value, "space") == 0)
            c = ' ';
        else if (strcmp(value, "tab") == 0)
            c = '\t';
        else if (strlen(value) == 1)
            c = value[0];
        else
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s:%d: bad answer_stop '%s' in [domain %s]: allowed values "
                                  "are newline, space, tab or one character",
                                  m->path, line, value, dname);
        m->answer_stop[m->n_domains - 1] = c;
        return CCOE_OK;
    }
    return ccoe_error_set(err, CCOE_ERR_CONFIG,
                          "%s:%d: unknown key '%s' in [domain %s]: allowed keys are text, jsonl, "
                          "tasks, sqlite, sqlite_script, answer_stop",
                          m->path, line, key, dname);
}

static ccoe_status manifest_parse(manifest *m, const char *path, ccoe_error *err)
{
    memset(m, 0, sizeof *m);
    m->path = path;
    char *buf;
    size_t len;
    if (read_file(path, "manifest", &buf, &len, err) != CCOE_OK)
        return ccoe_error_wrap(err, "data.manifest (the path of a manifest file or 'builtin')");
    ccoe_status s = CCOE_OK;
    char *p = buf;
    for (int line = 1; s == CCOE_OK && p < buf + len; line++) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        if (nl)
            *nl = '\0';
        if (strlen(p) != (size_t)((nl ? nl : buf + len) - p))
            s = ccoe_error_set(err, CCOE_ERR_CONFIG, "%s:%d: NUL byte in the manifest", path,
                               line);
        else
            s = manifest_line(m, line, p, err);
        p = nl ? nl + 1 : buf + len;
    }
    free(buf);
    CCOE_TRY(s);
    if (m->n_domains == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "manifest '%s' defines no domain: add a [domain NAME] section with "
                              "'text = FILE' or 'jsonl = FILE'",
                              path);
    for (int d = 0; d < m->n_domains; d++) {
        int has = 0;
        for (int i = 0; i < m->n_srcs; i++)
            has |= m->srcs[i].dom == d && (m->srcs[i].kind == SRC_TEXT ||
                                           m->srcs[i].kind == SRC_JSONL);
        if (!has)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "%s:%d: domain '%s' has no text: add 'text = FILE' or "
                                  "'jsonl = FILE' to it",
                                  path, m->lines[d], m->names[d]);
    }
    return CCOE_OK;
}

/* ---- loading ---- */

static void reshuffle(ccoe_dataset *ds, uint64_t epoch)
{
    size_t n = 0;
    for (size_t i = 0; i < ds->n_train; i++)
        if (ds->stream_domains >> ds->train_domain[i] & 1u)
            ds->perm[n++] = (uint32_t)i;
    ds->n_stream = n;
    ccoe_rng r;
    ccoe_rng_seed(&r, ccoe_hash4(ds->seed, epoch, STREAM_TAG, 0));
    ccoe_rng_shuffle(&r, ds->perm, n);
    ds->epoch = epoch;
}

ccoe_status ccoe_data_restrict(ccoe_dataset *ds, uint32_t mask, ccoe_error *err)
{
    size_t n = 0;
    for (size_t i = 0; i < ds->n_train; i++)
        n += mask >> ds->train_domain[i] & 1u;
    if (n == 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the selected domains hold no training sequences");
    ds->stream_domains = mask;
    reshuffle(ds, 0);
    ds->pos = 0;
    return CCOE_OK;
}

static ccoe_status load_builtin(ccoe_dataset *ds, const ccoe_tokenizer *tok,
                                double val_fraction, int max_tasks, ccoe_error *err)
{
    ccoe_builtin_set set;
    ccoe_status s = ccoe_builtin_generate(&set, err);
    for (int d = 0; s == CCOE_OK && d < set.n_domains; d++) {
        const ccoe_builtin_domain *bd = &set.domains[d];
        ccoe_domain *dom = &ds->domains[d];
        snprintf(dom->name, sizeof dom->name, "%s", bd->name);
        dom->answer_stop = bd->answer_stop;
        ds->n_domains = d + 1;
        dom_build b = {.tok = tok};
        ccoe_sqldb db;
        int db_open = 0;
        if (bd->sql_script && !(dom->sql_script = strdup(bd->sql_script)))
            s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for builtin domain '%s'",
                               bd->name);
        if (s == CCOE_OK)
            s = open_domain_db(dom, &db, &db_open, err);
        if (s == CCOE_OK)
            s = add_text_docs(&b, bd->text, bd->len, err);
        if (s == CCOE_OK && b.n_docs != bd->n_docs)
            s = ccoe_error_set(err, CCOE_ERR_INTERNAL,
                               "builtin domain '%s': generated %zu documents, read back %zu",
                               bd->name, bd->n_docs, b.n_docs);
        if (s == CCOE_OK)
            s = dom_split(&b, dom->name, "builtin", ds->T, val_fraction, err);
        if (s == CCOE_OK)
            s = dom_pack(ds, d, &b, err);
        for (size_t i = 0; s == CCOE_OK && i < bd->n_tasks && dom->n_tasks < (size_t)max_tasks;
             i++) {
            const ccoe_builtin_task *t = &bd->tasks[i];
            if (!doc_held_out(&b, t->doc))
                continue;
            s = add_task(dom, bd->text + t->offset, t->prompt_len,
                         bd->text + t->offset + t->prompt_len, t->answer_len, t->kind, t->match,
                         err);
            if (s == CCOE_OK && t->match == CCOE_MATCH_SQL)
                s = db_open ? check_gold_sql(&db, bd->name, dom->tasks[dom->n_tasks - 1].answer,
                                             err)
                            : ccoe_error_set(err, CCOE_ERR_INTERNAL,
                                             "builtin domain '%s' has SQL tasks but no database",
                                             bd->name);
        }
        if (db_open)
            ccoe_sqldb_close(&db);
        dom_build_free(&b);
    }
    ccoe_builtin_free(&set);
    return s;
}

static ccoe_status load_domain_files(ccoe_dataset *ds, const manifest *m, int d,
                                     const ccoe_tokenizer *tok, double val_fraction,
                                     int max_tasks, ccoe_error *err)
{
    ccoe_domain *dom = &ds->domains[d];
    snprintf(dom->name, sizeof dom->name, "%s", m->names[d]);
    dom->answer_stop = m->answer_stop[d];
    ds->n_domains = d + 1;
    dom_build b = {.tok = tok};
    ccoe_status s = CCOE_OK;
    ccoe_sqldb db;
    int db_open = 0;
    for (int i = 0; i < m->n_srcs && s == CCOE_OK; i++) {
        const src_spec *src = &m->srcs[i];
        if (src->dom != d || src->kind < SRC_SQLITE)
            continue;
        char where[64 + PATH_MAX];
        snprintf(where, sizeof where, "%s:%d", m->path, src->line);
        if (src->kind == SRC_SQLITE) {
            if (!(dom->sql_db = strdup(src->path)))
                s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory reading %s", m->path);
        } else {
            size_t len;
            s = read_file(src->path, "sqlite_script file", &dom->sql_script, &len, err);
            if (s != CCOE_OK)
                ccoe_error_wrap(err, "%s: domain '%s'", where, dom->name);
        }
        if (s == CCOE_OK && (s = open_domain_db(dom, &db, &db_open, err)) != CCOE_OK)
            ccoe_error_wrap(err, "%s", where);
    }
    /* documents first (the split must be known before tasks are selected), then tasks */
    for (int pass = 0; pass < 2 && s == CCOE_OK; pass++) {
        if (pass == 1) {
            char origin[64 + PATH_MAX];
            snprintf(origin, sizeof origin, "%s:%d", m->path, m->lines[d]);
            s = dom_split(&b, dom->name, origin, ds->T, val_fraction, err);
            if (s == CCOE_OK)
                s = dom_pack(ds, d, &b, err);
        }
        for (int i = 0; i < m->n_srcs && s == CCOE_OK; i++) {
            const src_spec *src = &m->srcs[i];
            if (src->dom != d || src->kind >= SRC_SQLITE || (src->kind == SRC_TASKS) != (pass == 1))
                continue;
            char *buf;
            size_t len;
            char what[32];
            snprintf(what, sizeof what, "%s file", src_kind_name[src->kind]);
            s = read_file(src->path, what, &buf, &len, err);
            if (s != CCOE_OK) {
                ccoe_error_wrap(err, "%s:%d: domain '%s' (relative paths are resolved against "
                                "the manifest's directory)",
                                m->path, src->line, dom->name);
                break;
            }
            if (src->kind == SRC_TEXT)
                s = add_text_docs(&b, buf, len, err);
            else if (src->kind == SRC_JSONL)
                s = add_jsonl_docs(&b, src->path, buf, len, err);
            else
                s = add_task_file(dom, &b, db_open ? &db : NULL, src->path, buf, len, max_tasks,
                                  err);
            free(buf);
        }
    }
    if (db_open)
        ccoe_sqldb_close(&db);
    dom_build_free(&b);
    return s;
}

ccoe_status ccoe_data_load(ccoe_dataset *ds, const char *manifest_path, const ccoe_tokenizer *tok,
                           int T, double val_fraction, int max_tasks, uint64_t seed,
                           ccoe_error *err)
{
    memset(ds, 0, sizeof *ds);
    if (!manifest_path || !manifest_path[0])
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "no data manifest given: use 'builtin' or a manifest file path");
    if (!tok || !tok->ops)
        return ccoe_error_set(err, CCOE_ERR_ARG, "no tokenizer given (ccoe_tokenizer_init first)");
    if (tok->bos < 0 || tok->eos < 0 || tok->pad < 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "the %s tokenizer has no end-of-text token (<|endoftext|>, "
                              "<|end_of_text|> or </s>) but the data module needs one between "
                              "documents: use a tokenizer that has one",
                              tok->ops->name);
    if (T < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG, "sequence length T = %d: must be >= 1", T);
    if (!(val_fraction > 0.0 && val_fraction < 1.0))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "val_fraction = %g: must be in (0, 1) so every domain has train "
                              "and validation text",
                              val_fraction);
    if (max_tasks < 0)
        return ccoe_error_set(err, CCOE_ERR_ARG, "task examples = %d: must be >= 0", max_tasks);
    ds->T = T;
    ds->seed = seed;
    ccoe_status s;
    if (strcmp(manifest_path, "builtin") == 0) {
        s = load_builtin(ds, tok, val_fraction, max_tasks, err);
    } else {
        manifest m;
        s = manifest_parse(&m, manifest_path, err);
        for (int d = 0; s == CCOE_OK && d < m.n_domains; d++)
            s = load_domain_files(ds, &m, d, tok, val_fraction, max_tasks, err);
        manifest_free(&m);
    }
    if (s == CCOE_OK && ds->n_train > UINT32_MAX)
        s = ccoe_error_set(err, CCOE_ERR_CONFIG,
                           "%zu train sequences: at most %u are supported; raise seq_len or use "
                           "less data",
                           ds->n_train, UINT32_MAX);
    if (s == CCOE_OK) {
        ds->perm = malloc(ds->n_train * sizeof *ds->perm);
        if (!ds->perm)
            s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the shuffle (%zu entries)",
                               ds->n_train);
    }
    if (s != CCOE_OK) {
        ccoe_data_free(ds);
        return s;
    }
    ds->stream_domains = UINT32_MAX;
    reshuffle(ds, 0);
    ds->pos = 0;
    return CCOE_OK;
}

void ccoe_data_free(ccoe_dataset *ds)
{
    if (!ds)
        return;
    for (int d = 0; d < CCOE_MAX_DOMAINS; d++) {
        ccoe_domain *dom = &ds->domains[d];
        for (size_t i = 0; i < dom->n_tasks; i++) {
            free(dom->tasks[i].prompt);
            free(dom->tasks[i].answer);
        }
        free(dom->tasks);
        free(dom->sql_db);
        free(dom->sql_script);
    }
    free(ds->train_seq);
    free(ds->train_domain);
    free(ds->val_seq);
    free(ds->val_domain);
    free(ds->perm);
    memset(ds, 0, sizeof *ds);
}

int ccoe_data_domain_index(const ccoe_dataset *ds, const char *name)
{
    for (int d = 0; d < ds->n_domains; d++)
        if (strcmp(ds->domains[d].name, name) == 0)
            return d;
    return -1;
}

/* ---- the training stream ---- */

void ccoe_data_seek(ccoe_dataset *ds, uint64_t pos)
{
    assert(ds->n_train > 0 && ds->perm); /* a loaded data set */
    uint64_t epoch = pos / ds->n_stream;
    if (epoch != ds->epoch)
        reshuffle(ds, epoch);
    ds->pos = pos;
}

void ccoe_data_next_batch(ccoe_dataset *ds, int32_t *tokens, int32_t *targets, int32_t *domains,
                          int B)
{
    assert(ds->n_train > 0 && ds->perm); /* a loaded data set */
    size_t T = (size_t)ds->T;
    for (int b = 0; b < B; b++) {
        uint64_t epoch = ds->pos / ds->n_stream;
        if (epoch != ds->epoch)
            reshuffle(ds, epoch);
        uint32_t i = ds->perm[ds->pos % ds->n_stream];
        const int32_t *seq = ds->train_seq + (size_t)i * (T + 1);
        memcpy(tokens + (size_t)b * T, seq, T * sizeof *tokens);
        memcpy(targets + (size_t)b * T, seq + 1, T * sizeof *targets);
        domains[b] = ds->train_domain[i];
        ds->pos++;
    }
}

int ccoe_data_val_batch(const ccoe_dataset *ds, int d, size_t first, int32_t *tokens,
                        int32_t *targets, int32_t *domains, int B)
{
    assert(d >= 0 && d < ds->n_domains);
    const ccoe_domain *dom = &ds->domains[d];
    size_t T = (size_t)ds->T;
    int filled = 0;
    for (int b = 0; b < B; b++) {
        int32_t *tk = tokens + (size_t)b * T, *tg = targets + (size_t)b * T;
        if (first + (size_t)b < dom->n_val) {
            const int32_t *seq = ds->val_seq + (dom->val_start + first + (size_t)b) * (T + 1);
            memcpy(tk, seq, T * sizeof *tk);
            memcpy(tg, seq + 1, T * sizeof *tg);
            filled++;
        } else {
            for (size_t t = 0; t < T; t++) {
                tk[t] = CCOE_TOK_PAD;
                tg[t] = -1;
            }
        }
        domains[b] = d;
    }
    return filled;
}

/* ---- writing the builtin set ---- */

static ccoe_status write_file(const char *dir, const char *name, const char *data, size_t len,
                              ccoe_error *err)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return ccoe_error_set(err, CCOE_ERR_IO, "path too long: '%s/%s'", dir, name);
    /* atomic: a symbolic link planted at path is replaced, never written through */
    const void *parts[1] = {data};
    const size_t sizes[1] = {len};
    return ccoe_write_file_atomic(path, parts, sizes, 1, err);
}

/* Appends s to a growing buffer; 0 on allocation failure. */
static int buf_add(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 4096;
        while (c < *len + n + 1)
            c *= 2;
        char *p = realloc(*buf, c);
        if (!p)
            return 0;
        *buf = p;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 1;
}

static ccoe_status write_tasks(const char *dir, const char *name, const ccoe_builtin_domain *bd,
                               ccoe_error *err)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int ok = 1;
    for (size_t i = 0; ok && i < bd->n_tasks; i++) {
        const ccoe_builtin_task *t = &bd->tasks[i];
        char *prompt = strndup(bd->text + t->offset, t->prompt_len);
        char *answer = strndup(bd->text + t->offset + t->prompt_len, t->answer_len);
        cJSON *j = cJSON_CreateObject();
        char *line = NULL;
        ok = prompt && answer && j && cJSON_AddStringToObject(j, "prompt", prompt) &&
             cJSON_AddStringToObject(j, "answer", answer) &&
             cJSON_AddNumberToObject(j, "doc", (double)t->doc) &&
             (!t->kind || cJSON_AddStringToObject(j, "kind", t->kind)) &&
             (t->match != CCOE_MATCH_SQL || cJSON_AddStringToObject(j, "match", "sql")) &&
             (line = cJSON_PrintUnformatted(j)) && buf_add(&buf, &len, &cap, line, strlen(line)) &&
             buf_add(&buf, &len, &cap, "\n", 1);
        free(prompt);
        free(answer);
        cJSON_free(line);
        cJSON_Delete(j);
    }
    ccoe_status s = ok ? write_file(dir, name, buf ? buf : "", len, err)
                       : ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory writing %s", name);
    free(buf);
    return s;
}

ccoe_status ccoe_data_write_builtin(const char *dir, ccoe_error *err)
{
    if (mkdir(dir, 0777) != 0 && errno != EEXIST)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot create directory '%s': %s", dir,
                              strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return ccoe_error_set(err, CCOE_ERR_IO, "'%s' is not a directory", dir);
    ccoe_builtin_set set;
    ccoe_status s = ccoe_builtin_generate(&set, err);
    char *man = NULL;
    size_t len = 0, cap = 0;
    static const char head[] =
        "; the ccoe builtin data set, written by ccoe_data_write_builtin\n"
        "; format: see the top of src/data.c (or the README)\n";
    int ok = buf_add(&man, &len, &cap, head, strlen(head));
    for (int d = 0; s == CCOE_OK && d < set.n_domains; d++) {
        const ccoe_builtin_domain *bd = &set.domains[d];
        char name[CCOE_NAME_LEN + 32], entry[4 * CCOE_NAME_LEN + 128];
        snprintf(name, sizeof name, "%s.txt", bd->name);
        s = write_file(dir, name, bd->text, bd->len, err);
        int n = snprintf(entry, sizeof entry, "\n[domain %s]\ntext = %s.txt\n", bd->name,
                         bd->name);
        ok &= buf_add(&man, &len, &cap, entry, (size_t)n);
        if (s == CCOE_OK && bd->n_tasks) {
            snprintf(name, sizeof name, "%s_tasks.jsonl", bd->name);
            s = write_tasks(dir, name, bd, err);
            n = snprintf(entry, sizeof entry, "tasks = %s_tasks.jsonl\n", bd->name);
            ok &= buf_add(&man, &len, &cap, entry, (size_t)n);
        }
        if (s == CCOE_OK && bd->sql_script) {
            snprintf(name, sizeof name, "%s_db.sql", bd->name);
            s = write_file(dir, name, bd->sql_script, strlen(bd->sql_script), err);
            n = snprintf(entry, sizeof entry, "sqlite_script = %s_db.sql\n", bd->name);
            ok &= buf_add(&man, &len, &cap, entry, (size_t)n);
        }
        if (bd->answer_stop != '\n') {
            char c = bd->answer_stop;
            const char *word = c == ' ' ? "space" : c == '\t' ? "tab" : NULL;
            n = word ? snprintf(entry, sizeof entry, "answer_stop = %s\n", word)
                     : snprintf(entry, sizeof entry, "answer_stop = %c\n", c);
            ok &= buf_add(&man, &len, &cap, entry, (size_t)n);
        }
    }
    if (s == CCOE_OK && !ok)
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory writing the manifest");
    if (s == CCOE_OK)
        s = write_file(dir, "manifest.ini", man, len, err);
    free(man);
    ccoe_builtin_free(&set);
    return s;
}
