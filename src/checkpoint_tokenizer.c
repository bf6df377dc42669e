/* checkpoint_tokenizer.c - recording, checking and unpacking the tokenizer of a checkpoint
 * (checkpoint_tokenizer.h). */
#include "checkpoint_tokenizer.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs.h"

#define KEY_KIND "ccoe.tokenizer.kind"
#define KEY_PATH "ccoe.tokenizer.path"
#define KEY_HASH "ccoe.tokenizer.hash"
#define KEY_FILES "ccoe.tokenizer.files"
#define KEY_FILE "ccoe.tokenizer.file."

/* The longest data.tokenizer the config takes (config.c's PATH_MAX_LEN). */
enum { TOKENIZER_PATH_MAX = 180, FILE_MAX = 256 << 20 };

static uint64_t fnv_add(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* The hash of files (names[i], text[i] of len[i] bytes) in the given (canonical) order. */
static uint64_t files_hash(int n, const char (*names)[32], char *const *text, const size_t *len)
{
    uint64_t h = 0xcbf29ce484222325ULL;
    for (int i = 0; i < n; i++) {
        h = fnv_add(h, names[i], strlen(names[i]) + 1);
        unsigned char l[8];
        for (int b = 0; b < 8; b++)
            l[b] = (unsigned char)((uint64_t)len[i] >> (8 * b));
        h = fnv_add(h, l, 8);
        h = fnv_add(h, text[i], len[i]);
    }
    return h;
}

/* Whether s[0..n) is UTF-8 without NUL bytes (a metadata string must be). */
static int utf8_text(const char *s, size_t n)
{
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        unsigned c = u[i];
        size_t k = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3
                                : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (!k || c == 0 || i + k > n || (k == 2 && c < 0xC2) || c > 0xF4)
            return 0;
        for (size_t j = 1; j < k; j++)
            if ((u[i + j] & 0xC0) != 0x80)
                return 0;
        i += k;
    }
    return 1;
}

void ccoe_tok_record_free(ccoe_tok_record *r)
{
    for (int i = 0; i < CCOE_TOK_MAX_FILES; i++) {
        free(r->text[i]);
        r->text[i] = NULL;
    }
    r->n_files = 0;
}

static void finish(ccoe_tok_record *r)
{
    r->files[0] = '\0';
    for (int i = 0; i < r->n_files; i++) {
        snprintf(r->files + strlen(r->files), sizeof r->files - strlen(r->files), "%s%s",
                 i ? " " : "", r->names[i]);
        snprintf(r->keys[i], sizeof r->keys[i], KEY_FILE "%s", r->names[i]);
    }
    if (strcmp(r->kind, "byte") == 0)
        snprintf(r->hash_hex, sizeof r->hash_hex, "-");
    else
        snprintf(r->hash_hex, sizeof r->hash_hex, "%016" PRIx64, r->hash);
}

ccoe_status ccoe_tok_record_read(ccoe_tok_record *r, const char *tokenizer, ccoe_error *err)
{
    memset(r, 0, sizeof *r);
    if (strlen(tokenizer) >= sizeof r->path)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "data.tokenizer '%.60s...' is too long",
                              tokenizer);
    snprintf(r->path, sizeof r->path, "%s", tokenizer);
    if (strcmp(tokenizer, "byte") == 0) {
        snprintf(r->kind, sizeof r->kind, "byte");
        finish(r);
        return CCOE_OK;
    }
    snprintf(r->kind, sizeof r->kind, "bpe");
    char p[CCOE_STR + 64];
    snprintf(p, sizeof p, "%s/tokenizer.json", tokenizer);
    static const char *const hf[] = {"tokenizer.json"}, *const gpt2[] = {"merges.txt",
                                                                         "vocab.json"};
    const char *const *set = access(p, F_OK) == 0 ? hf : gpt2;
    r->n_files = set == hf ? 1 : 2;
    for (int i = 0; i < r->n_files; i++) {
        snprintf(r->names[i], sizeof r->names[i], "%s", set[i]);
        snprintf(p, sizeof p, "%s/%s", tokenizer, set[i]);
        FILE *f = ccoe_fs_fopen_input(p, "tokenizer file", err);
        if (!f) {
            ccoe_tok_record_free(r);
            return err->status;
        }
        int e = ccoe_fs_read_stream(f, FILE_MAX, &r->text[i], &r->len[i]);
        fclose(f);
        if (e) {
            ccoe_tok_record_free(r);
            return ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO,
                                  "cannot read tokenizer file '%s': %s", p,
                                  e == EFBIG ? "larger than 256 MB" : strerror(e));
        }
        if (!utf8_text(r->text[i], r->len[i])) {
            ccoe_tok_record_free(r);
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "tokenizer file '%s' is not UTF-8 text (a NUL byte or invalid "
                                  "UTF-8): it cannot be stored in a checkpoint; fetch or train "
                                  "the tokenizer again",
                                  p);
        }
    }
    r->hash = files_hash(r->n_files, (const char(*)[32])r->names, r->text, r->len);
    finish(r);
    return CCOE_OK;
}

size_t ccoe_tok_record_meta(const ccoe_tok_record *r, const char **meta, size_t cap)
{
    size_t n = 0;
#define PUT(k, v)                                                                              \
    do {                                                                                       \
        if (n < cap) {                                                                         \
            meta[2 * n] = (k);                                                                 \
            meta[2 * n + 1] = (v);                                                             \
            n++;                                                                               \
        }                                                                                      \
    } while (0)
    PUT(KEY_KIND, r->kind);
    PUT(KEY_PATH, r->path);
    PUT(KEY_HASH, r->hash_hex);
    PUT(KEY_FILES, r->files);
    for (int i = 0; i < r->n_files; i++)
        PUT(r->keys[i], r->text[i]);
#undef PUT
    return n;
}

ccoe_status ccoe_cache_dir(char *out, size_t cap, ccoe_error *err)
{
    const char *c = getenv("CCOE_CACHE_DIR"), *x = getenv("XDG_CACHE_HOME"),
               *h = getenv("HOME");
    int n;
    if (c && *c)
        n = snprintf(out, cap, "%s", c);
    else if (x && *x)
        n = snprintf(out, cap, "%s/ccoe", x);
    else if (h && *h)
        n = snprintf(out, cap, "%s/.cache/ccoe", h);
    else
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "no cache directory: set CCOE_CACHE_DIR (or XDG_CACHE_HOME or "
                              "HOME) to a writable directory");
    if (n < 0 || (size_t)n >= cap)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the cache directory path is too long: set CCOE_CACHE_DIR to a "
                              "shorter one");
    return CCOE_OK;
}

/* The record stored in f, as a ccoe_tok_record whose texts point into f (not to be freed);
 * 0 if f has none, -1 (err set) if it is malformed. */
static int stored_record(const ccoe_st_file *f, const char *path, ccoe_tok_record *r,
                         ccoe_error *err)
{
    memset(r, 0, sizeof *r);
    const char *kind = ccoe_st_meta(f, KEY_KIND);
    if (!kind)
        return 0;
    const char *tp = ccoe_st_meta(f, KEY_PATH), *hash = ccoe_st_meta(f, KEY_HASH),
               *files = ccoe_st_meta(f, KEY_FILES);
    const int byte = strcmp(kind, "byte") == 0;
    if ((!byte && strcmp(kind, "bpe") != 0) || !tp || !hash || !files ||
        strlen(tp) >= sizeof r->path || strlen(files) >= sizeof r->files) {
        ccoe_error_set(err, CCOE_ERR_FORMAT,
                       "checkpoint %s: its tokenizer record (ccoe.tokenizer.*) is incomplete or "
                       "of an unknown kind '%.20s': the file is damaged; use an earlier "
                       "checkpoint",
                       path, kind);
        return -1;
    }
    snprintf(r->kind, sizeof r->kind, "%s", kind);
    snprintf(r->path, sizeof r->path, "%s", tp);
    if (byte) {
        finish(r);
        return 1;
    }
    char buf[sizeof r->files];
    snprintf(buf, sizeof buf, "%s", files);
    char *save = NULL;
    for (char *nm = strtok_r(buf, " ", &save); nm; nm = strtok_r(NULL, " ", &save)) {
        const int known = strcmp(nm, "tokenizer.json") == 0 || strcmp(nm, "vocab.json") == 0 ||
                          strcmp(nm, "merges.txt") == 0;
        char key[64];
        snprintf(key, sizeof key, KEY_FILE "%s", known ? nm : "");
        const char *text = known ? ccoe_st_meta(f, key) : NULL;
        if (!text || r->n_files == CCOE_TOK_MAX_FILES) {
            ccoe_error_set(err, CCOE_ERR_FORMAT,
                           "checkpoint %s: the tokenizer file '%.40s' it lists is %s: the file "
                           "is damaged; use an earlier checkpoint",
                           path, nm, known ? "not embedded" : "not a tokenizer file name");
            return -1;
        }
        snprintf(r->names[r->n_files], sizeof r->names[0], "%s", nm);
        r->text[r->n_files] = (char *)text;
        r->len[r->n_files] = strlen(text);
        r->n_files++;
    }
    r->hash = files_hash(r->n_files, (const char(*)[32])r->names, r->text, r->len);
    finish(r);
    if (strcmp(r->hash_hex, hash) != 0) {
        ccoe_error_set(err, CCOE_ERR_FORMAT,
                       "checkpoint %s: its embedded tokenizer files hash to %s, not the "
                       "recorded %.20s: the file is damaged; use an earlier checkpoint",
                       path, r->hash_hex, hash);
        return -1;
    }
    return 1;
}

static void rm_tmp_dir(const char *dir, const ccoe_tok_record *r)
{
    char p[CCOE_STR + 128];
    for (int i = 0; i < r->n_files; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, r->names[i]);
        unlink(p);
    }
    rmdir(dir);
}

/* Unpacks the stored record r into CACHE/tokenizers/HASH (kept if already there and whole);
 * out receives that directory. */
static ccoe_status unpack(const ccoe_tok_record *r, char *out, size_t cap, ccoe_error *err)
{
    char cache[CCOE_STR];
    CCOE_TRY(ccoe_cache_dir(cache, sizeof cache, err));
    char dir[CCOE_STR + 64];
    snprintf(dir, sizeof dir, "%s/tokenizers/%s", cache, r->hash_hex);
    if (strlen(dir) >= cap || strlen(dir) >= TOKENIZER_PATH_MAX)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "the tokenizer cache path %s is too long for data.tokenizer (at "
                              "most %d characters): set CCOE_CACHE_DIR to a shorter directory",
                              dir, TOKENIZER_PATH_MAX - 1);
    for (int attempt = 0; attempt < 2; attempt++) {
        struct stat sb;
        if (stat(dir, &sb) == 0) {
            ccoe_tok_record have;
            ccoe_error e2 = {0};
            int same = ccoe_tok_record_read(&have, dir, &e2) == CCOE_OK && have.hash == r->hash;
            ccoe_tok_record_free(&have);
            if (!same)
                return ccoe_error_set(err, CCOE_ERR_IO,
                                      "the cached tokenizer %s does not hold the files the "
                                      "checkpoint carries (hash %s): remove it (rm -r %s) and "
                                      "run again",
                                      dir, r->hash_hex, dir);
            snprintf(out, cap, "%s", dir);
            return CCOE_OK;
        }
        if (attempt)
            break;
        char parent[CCOE_STR + 32];
        snprintf(parent, sizeof parent, "%s/tokenizers", cache);
        CCOE_TRY(ccoe_fs_mkdirs(parent, err));
        char tmp[CCOE_STR + 96];
        snprintf(tmp, sizeof tmp, "%s/.%s.tmp.%ld", parent, r->hash_hex, (long)getpid());
        if (mkdir(tmp, 0777) != 0 && errno != EEXIST)
            return ccoe_error_set(err, CCOE_ERR_IO,
                                  "cannot create %s for the checkpoint's tokenizer: %s: set "
                                  "CCOE_CACHE_DIR to a writable directory",
                                  tmp, strerror(errno));
        for (int i = 0; i < r->n_files; i++) {
            char p[CCOE_STR + 160];
            snprintf(p, sizeof p, "%s/%s", tmp, r->names[i]);
            const void *parts[] = {r->text[i]};
            const size_t sizes[] = {r->len[i]};
            ccoe_status s = ccoe_write_file_atomic(p, parts, sizes, 1, err);
            if (s != CCOE_OK) {
                rm_tmp_dir(tmp, r);
                return s;
            }
        }
        if (rename(tmp, dir) != 0) {
            const int e = errno;
            rm_tmp_dir(tmp, r);
            if (e != EEXIST && e != ENOTEMPTY) /* else another process was first: check it */
                return ccoe_error_set(err, CCOE_ERR_IO, "cannot rename %s to %s: %s", tmp, dir,
                                      strerror(e));
        }
    }
    snprintf(out, cap, "%s", dir);
    return CCOE_OK;
}

static int is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

void ccoe_tok_locate(const char *tokenizer, const char *ckpt_path, char *out, size_t cap)
{
    snprintf(out, cap, "%s", tokenizer);
    if (strcmp(tokenizer, "byte") == 0 || tokenizer[0] == '/' || is_dir(tokenizer))
        return;
    const char *slash = strrchr(ckpt_path, '/');
    if (!slash)
        return; /* the checkpoint is in the working directory: the same place */
    char p[4096];
    const int n = snprintf(p, sizeof p, "%.*s/%s", (int)(slash - ckpt_path), ckpt_path, tokenizer);
    if (n > 0 && (size_t)n < sizeof p && (size_t)n < cap && is_dir(p))
        snprintf(out, cap, "%s", p);
}

ccoe_status ccoe_ckpt_tok_resolve(const ccoe_st_file *f, const char *path, ccoe_config *cfg,
                                  FILE *log, ccoe_error *err)
{
    /* a tokenizer recorded relative to the checkpoint (import's BASE.tokenizer) is found from
     * any working directory; named by its absolute path from then on, so that checkpoints
     * written elsewhere by this run still find it */
    char at[4096];
    ccoe_tok_locate(cfg->data.tokenizer, path, at, sizeof at);
    if (strcmp(at, cfg->data.tokenizer) != 0) {
        char abs[4096];
        const char *use = realpath(at, abs) ? abs : at;
        if (strlen(use) < sizeof cfg->data.tokenizer && strlen(use) < 180)
            snprintf(cfg->data.tokenizer, sizeof cfg->data.tokenizer, "%s", use);
    }
    ccoe_tok_record r;
    int has = stored_record(f, path, &r, err);
    if (has < 0)
        return err->status;
    if (!has || strcmp(r.kind, "byte") == 0)
        return CCOE_OK;
    ccoe_tok_record cur;
    ccoe_error e2 = {0};
    const ccoe_status cs = ccoe_tok_record_read(&cur, cfg->data.tokenizer, &e2);
    const int same = cs == CCOE_OK && cur.hash == r.hash;
    ccoe_tok_record_free(&cur);
    if (same)
        return CCOE_OK;
    char dir[CCOE_STR];
    CCOE_TRY(unpack(&r, dir, sizeof dir, err));
    if (log)
        fprintf(log,
                "ccoe: note: checkpoint %s: its tokenizer %s is %s; using the copy the "
                "checkpoint carries (hash %s), unpacked to %s\n",
                path, cfg->data.tokenizer, cs == CCOE_OK ? "changed since" : "gone",
                r.hash_hex, dir);
    snprintf(cfg->data.tokenizer, sizeof cfg->data.tokenizer, "%s", dir);
    return CCOE_OK;
}

ccoe_status ccoe_ckpt_tok_check(const ccoe_st_file *f, const char *path, const char *tokenizer,
                                ccoe_error *err)
{
    ccoe_tok_record r;
    int has = stored_record(f, path, &r, err);
    if (has < 0)
        return err->status;
    if (!has)
        return CCOE_OK;
    ccoe_tok_record cur;
    ccoe_error e2 = {0};
    const ccoe_status cs = ccoe_tok_record_read(&cur, tokenizer, &e2);
    const int same = cs == CCOE_OK && strcmp(cur.kind, r.kind) == 0 && cur.hash == r.hash;
    char what[160];
    if (cs == CCOE_OK)
        snprintf(what, sizeof what, "%s%s%s%s", cur.kind, strcmp(cur.kind, "bpe") ? "" : " (",
                 strcmp(cur.kind, "bpe") ? "" : cur.files,
                 strcmp(cur.kind, "bpe") ? "" : ")");
    char cur_hash[40] = "";
    if (cs == CCOE_OK && strcmp(cur.kind, "bpe") == 0)
        snprintf(cur_hash, sizeof cur_hash, ", hash %s", cur.hash_hex);
    ccoe_tok_record_free(&cur);
    if (same)
        return CCOE_OK;
    /* the recorded directory itself, gone or changed: the checkpoint's copy is used */
    if (strcmp(r.kind, "bpe") == 0 && strcmp(tokenizer, r.path) == 0)
        return CCOE_OK;
    if (cs != CCOE_OK)
        snprintf(what, sizeof what, "unreadable (%.100s)", e2.msg);
    char rec[CCOE_STR + 40] = "";
    if (strcmp(r.kind, "bpe") == 0)
        snprintf(rec, sizeof rec, " %s (hash %s)", r.path, r.hash_hex);
    return ccoe_error_set(err, CCOE_ERR_CONFIG,
                          "checkpoint %s was trained with the %s tokenizer%s, but "
                          "data.tokenizer = %s is %s%s: the token ids of one do not mean "
                          "the same text in the other. Fix: use the checkpoint's tokenizer "
                          "(data.tokenizer = %s, or leave data.tokenizer alone: the checkpoint "
                          "carries it), or train a new model for %s (without --resume or "
                          "--init-from)",
                          path, r.kind, rec, tokenizer, what, cur_hash, r.path, tokenizer);
}

void ccoe_ckpt_tok_describe(const ccoe_st_file *f, char *buf, size_t cap)
{
    ccoe_tok_record r;
    ccoe_error err = {0};
    int has = stored_record(f, "", &r, &err);
    if (has < 0)
        snprintf(buf, cap, "damaged record: %s", err.msg);
    else if (!has)
        snprintf(buf, cap, "not recorded (an older ccoe): the config's data.tokenizer");
    else if (strcmp(r.kind, "byte") == 0)
        snprintf(buf, cap, "byte");
    else
        snprintf(buf, cap, "bpe %s, hash %s, files %s (embedded)", r.path, r.hash_hex, r.files);
}
