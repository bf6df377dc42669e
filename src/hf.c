/* hf.c - Hugging Face directories: config.json, the weight files, the tokenizer files, and the
 * import/export drivers; the per-architecture mapping is in hf_gpt2.c and
 * hf_llama.c. */
#include "hf.h"

#include <dirent.h>
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "checkpoint.h"
#include "data.h"
#include "fs.h"
#include "taskmap.h"
#include "hf_internal.h"
#include "tokenizer.h"

#define MAX_JSON ((size_t)64 << 20) /* config.json / index files larger than this are not ours */

/* The tokenizer files a directory may hold; vocab.json + merges.txt or tokenizer.json make a
 * tokenizer, the others travel along. */
static const char *const k_tok_files[] = {"vocab.json", "merges.txt", "tokenizer.json",
                                          "tokenizer_config.json", "special_tokens_map.json",
                                          "added_tokens.json"};
#define N_TOK_FILES (sizeof k_tok_files / sizeof k_tok_files[0])

/* ---- small file helpers ---- */

static int is_file(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* dst = dir/name; 0 (dst empty) if it does not fit. */
static int join(char *dst, size_t cap, const char *dir, const char *name)
{
    const size_t a = strlen(dir), b = strlen(name);
    if (a + 1 + b + 1 > cap) {
        dst[0] = '\0';
        return 0;
    }
    memmove(dst, dir, a);
    dst[a] = '/';
    memcpy(dst + a + 1, name, b + 1);
    return 1;
}

static ccoe_status read_text(const char *path, const char *what, char **text, size_t *len,
                             ccoe_error *err)
{
    FILE *f = ccoe_fs_fopen_input(path, what, err);
    if (!f)
        return CCOE_ERR_IO;
    int e = ccoe_fs_read_stream(f, MAX_JSON, text, len);
    fclose(f);
    if (e)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot read %s '%s': %s", what, path,
                              e == EFBIG ? "larger than 64 MB" : strerror(e));
    return CCOE_OK;
}

static ccoe_status read_json(const char *path, const char *what, cJSON **out, ccoe_error *err)
{
    char *text = NULL;
    size_t len = 0;
    CCOE_TRY(read_text(path, what, &text, &len, err));
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t at = end && end >= text ? (size_t)(end - text) : 0;
    free(text);
    if (!j || !cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s '%s' is not a JSON object (invalid near byte %zu): the file "
                              "is damaged or truncated; download it again",
                              what, path, at);
    }
    *out = j;
    return CCOE_OK;
}

/* ---- config.json members ---- */

ccoe_status hf_cfg_int(const cJSON *c, const char *path, const char *key, int required, long def,
                       long lo, long hi, long *out, ccoe_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s has no \"%s\": it is required; add it (the model's own "
                                  "config.json has it)",
                                  path, key);
        *out = def;
        return CCOE_OK;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < lo ||
        v->valuedouble > hi)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: \"%s\" must be an integer in [%ld, %ld] (ccoe's range): fix the "
                              "value",
                              path, key, lo, hi);
    *out = (long)v->valuedouble;
    return CCOE_OK;
}

ccoe_status hf_cfg_num(const cJSON *c, const char *path, const char *key, double def,
                       double *out, ccoe_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return CCOE_OK;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return ccoe_error_set(err, CCOE_ERR_FORMAT, "%s: \"%s\" is not a number: fix the value",
                              path, key);
    *out = v->valuedouble;
    return CCOE_OK;
}

ccoe_status hf_cfg_bool(const cJSON *c, const char *path, const char *key, int def, int *out,
                        ccoe_error *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    if (!v || cJSON_IsNull(v)) {
        *out = def;
        return CCOE_OK;
    }
    if (!cJSON_IsBool(v))
        return ccoe_error_set(err, CCOE_ERR_FORMAT, "%s: \"%s\" is not true or false: fix the value",
                              path, key);
    *out = cJSON_IsTrue(v);
    return CCOE_OK;
}

const char *hf_cfg_str(const cJSON *c, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* ---- weights ---- */

int hf_find(const hf_weights *w, const char *name, hf_tensor *t)
{
    for (int f = 0; f < w->n_files; f++) {
        const float *d = ccoe_st_find(w->files[f], name, &t->ndim, t->shape);
        if (d || ccoe_st_dtype(w->files[f], name)) {
            t->data = d;
            t->file = w->names[f];
            t->dtype = ccoe_st_dtype(w->files[f], name);
            return 1;
        }
    }
    return 0;
}

ccoe_status hf_get(const hf_weights *w, const char *name, int ndim, int64_t d0, int64_t d1,
                   hf_tensor *t, ccoe_error *err)
{
    char want[64];
    if (ndim == 1)
        snprintf(want, sizeof want, "[%lld]", (long long)d0);
    else
        snprintf(want, sizeof want, "[%lld, %lld]", (long long)d0, (long long)d1);
    if (!hf_find(w, name, t))
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: tensor '%s' (shape %s) is missing from %s: the weights are "
                              "incomplete or belong to another config; use the model's complete "
                              "weights",
                              w->dir, name, want, w->n_files == 1 ? w->names[0] : "every shard");
    if (!t->data)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: tensor '%s' has dtype %s; import reads F32, F16 and BF16 "
                              "weights: convert the model to one of them (transformers: "
                              "model.to(torch.float32).save_pretrained(dir))",
                              t->file, name, t->dtype);
    int same = t->ndim == ndim && t->shape[0] == d0 && (ndim == 1 || t->shape[1] == d1);
    if (!same) {
        char got[96] = "[";
        for (int d = 0; d < t->ndim; d++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%lld", d ? ", " : "",
                     (long long)t->shape[d]);
        strncat(got, "]", sizeof got - strlen(got) - 1);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: tensor '%s' has shape %s but config.json implies %s: the "
                              "config and the weights do not belong together; use the model's "
                              "own config.json",
                              t->file, name, got, want);
    }
    const size_t n = (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1);
    for (size_t i = 0; i < n; i++)
        if (!isfinite(t->data[i]))
            return ccoe_error_set(err, CCOE_ERR_NUMERIC,
                                  "%s: tensor '%s' holds %s at element %zu: the weights are "
                                  "damaged (or overflowed when converted); use an intact copy",
                                  t->file, name, isnan(t->data[i]) ? "NaN" : "Inf", i);
    return CCOE_OK;
}

void hf_transpose(float *dst, const float *src, int64_t K, int64_t R)
{
    enum { TB = 32 };
    for (int64_t k0 = 0; k0 < K; k0 += TB)
        for (int64_t r0 = 0; r0 < R; r0 += TB)
            for (int64_t k = k0; k < K && k < k0 + TB; k++)
                for (int64_t r = r0; r < R && r < r0 + TB; r++)
                    dst[r * K + k] = src[k * R + r];
}

ccoe_status hf_copy(const hf_weights *w, float *dst, int transpose, int ndim, int64_t d0,
                    int64_t d1, ccoe_error *err, const char *fmt, ...)
{
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    hf_tensor t;
    CCOE_TRY(hf_get(w, name, ndim, d0, d1, &t, err));
    if (transpose)
        hf_transpose(dst, t.data, d0, d1);
    else
        memcpy(dst, t.data, (size_t)d0 * (size_t)(ndim > 1 ? d1 : 1) * sizeof(float));
    return CCOE_OK;
}

const char *hf_name_prefix(const hf_weights *w, const char *prefix, const char *emb)
{
    char name[160];
    hf_tensor t;
    snprintf(name, sizeof name, "%s%s", prefix, emb);
    if (hf_find(w, name, &t))
        return prefix;
    if (hf_find(w, emb, &t))
        return "";
    return NULL;
}

int hf_in_list(const char *name, const char *const *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(name, list[i]) == 0)
            return 1;
    return 0;
}

int hf_block_rest(const char *name, const char *word, long L)
{
    const size_t wl = strlen(word);
    if (strncmp(name, word, wl) != 0 || name[wl] != '.')
        return 0;
    int l = -1, n = 0;
    if (sscanf(name + wl + 1, "%d.%n", &l, &n) != 1 || n == 0 || l < 0 || l >= L)
        return 0;
    char back[32];
    snprintf(back, sizeof back, "%d.", l);
    if (strncmp(name + wl + 1, back, strlen(back)) != 0) /* "h.01." is not block 1's */
        return 0;
    return (int)wl + 1 + n;
}

ccoe_status hf_check_names(const hf_weights *w, const char *prefix,
                           int (*known)(const char *name, long L, int flag), long L, int flag,
                           const char *arch, const char *layer_key, ccoe_error *err)
{
    const size_t plen = strlen(prefix);
    for (int f = 0; f < w->n_files; f++)
        for (size_t i = 0; i < ccoe_st_count(w->files[f]); i++) {
            const char *name = ccoe_st_name(w->files[f], i);
            if (strcmp(name, "lm_head.weight") == 0)
                continue;
            if (strncmp(name, prefix, plen) == 0 && known(name + plen, L, flag))
                continue;
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: tensor '%.100s' is not part of a %s with %s = %ld "
                                  "(tensor names %s%s%s): another architecture or a "
                                  "config.json that does not belong to these weights; use the "
                                  "model's own config.json",
                                  w->names[f], name, arch, layer_key, L,
                                  plen ? "start with \"" : "have no prefix", plen ? prefix : "",
                                  plen ? "\"" : "");
        }
    return CCOE_OK;
}

ccoe_status hf_out_init(hf_out_list *o, size_t cap, ccoe_error *err)
{
    memset(o, 0, sizeof *o);
    o->t = calloc(cap ? cap : 1, sizeof *o->t);
    o->cap = cap;
    if (!o->t)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "exporting: out of memory");
    return CCOE_OK;
}

void hf_put(hf_out_list *o, const float *data, int ndim, int64_t d0, int64_t d1,
            const char *fmt, ...)
{
    assert(o->n < o->cap && (data || o->zero));
    hf_out_tensor *t = &o->t[o->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(t->name, sizeof t->name, fmt, ap);
    va_end(ap);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->data = data ? data : o->zero;
}

void hf_path_block(const ccoe_model *m, const ccoe_path *pa, int l, const ccoe_block_view **b,
                   const ccoe_block_view **ffn)
{
    const int inst = l < pa->n_base ? l : pa->first_inst + (l - pa->n_base);
    *b = &m->w_blocks[inst];
    /* Eqs. 6-7: the expert's FFN replaces the base FFN in blocks ffn_from .. L-1 */
    *ffn = *b;
    if (pa->ffn_expert >= 0 && l >= pa->ffn_from)
        *ffn = &m->w_xffn[m->xffn_first[pa->ffn_expert] + l - pa->ffn_from];
}

cJSON *hf_json_begin(const char *arch, const char *model_type)
{
    cJSON *j = cJSON_CreateObject();
    cJSON *a = j ? cJSON_AddArrayToObject(j, "architectures") : NULL;
    if (!a || !cJSON_AddItemToArray(a, cJSON_CreateString(arch)) ||
        !cJSON_AddStringToObject(j, "model_type", model_type)) {
        cJSON_Delete(j);
        return NULL;
    }
    return j;
}

int hf_json_nums(cJSON *j, const hf_num *nums, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!cJSON_AddNumberToObject(j, nums[i].key, nums[i].v))
            return 0;
    return 1;
}

ccoe_status hf_json_end(cJSON *j, int ok, int tied, int32_t eos, int64_t V,
                        const char *torch_dtype, char **config, ccoe_error *err)
{
    ok = ok && j && cJSON_AddBoolToObject(j, "tie_word_embeddings", tied);
    ok = ok && cJSON_AddBoolToObject(j, "use_cache", 1);
    ok = ok && cJSON_AddStringToObject(j, "torch_dtype", torch_dtype);
    if (ok && eos >= 0 && eos < V) {
        ok = cJSON_AddNumberToObject(j, "bos_token_id", eos) != NULL;
        ok = ok && cJSON_AddNumberToObject(j, "eos_token_id", eos) != NULL;
    }
    char *text = ok ? cJSON_Print(j) : NULL;
    cJSON_Delete(j);
    if (!text)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "exporting: out of memory building config.json");
    *config = text;
    return CCOE_OK;
}

static void weights_close(hf_weights *w)
{
    for (int f = 0; f < w->n_files; f++)
        ccoe_st_close(w->files[f]);
    w->n_files = 0;
}

static ccoe_status open_file(hf_weights *w, const char *name, ccoe_error *err)
{
    if (w->n_files == HF_MAX_SHARDS)
        return ccoe_error_set(err, CCOE_ERR_FORMAT, "%s: more than %d weight shards", w->dir,
                              HF_MAX_SHARDS);
    char *path = w->names[w->n_files];
    if (!join(path, HF_PATH, w->dir, name))
        return ccoe_error_set(err, CCOE_ERR_ARG, "%s: path too long", w->dir);
    /* other dtypes are read for buffers that are not parameters (a BOOL causal mask); a
     * parameter of such a dtype is refused by hf_get */
    ccoe_status s = ccoe_st_open_flags(
        path, CCOE_ST_ALLOW_UNCHECKED | CCOE_ST_ALLOW_HALF | CCOE_ST_ALLOW_OTHER,
        &w->files[w->n_files], err);
    if (s != CCOE_OK)
        return s;
    w->n_files++;
    return CCOE_OK;
}

/* model.safetensors, else the shards model.safetensors.index.json lists (each tensor where the
 * index says, nothing in two shards, nothing unlisted). */
static ccoe_status weights_open(hf_weights *w, const char *dir, ccoe_error *err)
{
    memset(w, 0, sizeof *w);
    snprintf(w->dir, sizeof w->dir, "%s", dir);
    char path[HF_PATH];
    join(path, sizeof path, dir, "model.safetensors");
    if (is_file(path))
        return open_file(w, "model.safetensors", err);
    join(path, sizeof path, dir, "model.safetensors.index.json");
    if (!is_file(path)) {
        char bin[HF_PATH];
        join(bin, sizeof bin, dir, "pytorch_model.bin");
        return ccoe_error_set(err, CCOE_ERR_IO,
                              "%s has neither model.safetensors nor model.safetensors.index.json"
                              "%s: ccoe reads safetensors weights only; convert them (transformers: "
                              "model.save_pretrained(dir, safe_serialization=True))",
                              dir, is_file(bin) ? " (it has pytorch_model.bin, a pickle)" : "");
    }
    cJSON *idx = NULL;
    CCOE_TRY(read_json(path, "weight index", &idx, err));
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(idx, "weight_map");
    ccoe_status s = CCOE_OK;
    if (!cJSON_IsObject(map) || !cJSON_GetArraySize(map))
        s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                           "%s has no \"weight_map\" object naming each tensor's shard: the index "
                           "is damaged; download it again",
                           path);
    const cJSON *e;
    cJSON_ArrayForEach(e, map)
    {
        if (s != CCOE_OK)
            break;
        const char *shard = cJSON_IsString(e) ? e->valuestring : NULL;
        if (!shard || !*shard || strchr(shard, '/') || strcmp(shard, "..") == 0 ||
            strcmp(shard, ".") == 0) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s: weight_map entry '%.100s' does not name a file in the "
                               "directory: fix the index",
                               path, e->string);
            break;
        }
        int have = -1;
        for (int f = 0; f < w->n_files && have < 0; f++) {
            const char *base = strrchr(w->names[f], '/') + 1;
            if (strcmp(base, shard) == 0)
                have = f;
        }
        if (have < 0) {
            if ((s = open_file(w, shard, err)) != CCOE_OK)
                break;
            have = w->n_files - 1;
        }
        if (!ccoe_st_dtype(w->files[have], e->string))
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "%s: the index puts tensor '%.100s' in %s, which does not hold "
                               "it: the shards and the index do not belong together; download "
                               "them again",
                               path, e->string, w->names[have]);
    }
    /* every tensor in exactly one shard, and listed */
    for (int f = 0; s == CCOE_OK && f < w->n_files; f++)
        for (size_t i = 0; s == CCOE_OK && i < ccoe_st_count(w->files[f]); i++) {
            const char *name = ccoe_st_name(w->files[f], i);
            const cJSON *where = cJSON_GetObjectItemCaseSensitive(map, name);
            if (!cJSON_IsString(where) ||
                strcmp(where->valuestring, strrchr(w->names[f], '/') + 1) != 0)
                s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                   "%s holds tensor '%.100s', which the index %s: the shards and "
                                   "the index do not belong together; download them again",
                                   w->names[f], name,
                                   cJSON_IsString(where) ? "places in another shard"
                                                         : "does not list");
        }
    cJSON_Delete(idx);
    if (s != CCOE_OK)
        weights_close(w);
    return s;
}

/* ---- tokenizer files ---- */

/* 1 if dir holds a tokenizer (vocab.json + merges.txt, or tokenizer.json). */
static int has_tokenizer(const char *dir)
{
    char a[HF_PATH], b[HF_PATH];
    join(a, sizeof a, dir, "vocab.json");
    join(b, sizeof b, dir, "merges.txt");
    if (is_file(a) && is_file(b))
        return 1;
    join(a, sizeof a, dir, "tokenizer.json");
    return is_file(a);
}

static ccoe_status copy_file(const char *from, const char *to, ccoe_error *err)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = ccoe_fs_fopen_input(from, "tokenizer file", err);
    if (!f)
        return CCOE_ERR_IO;
    int e = ccoe_fs_read_stream(f, (size_t)1 << 30, &text, &len);
    fclose(f);
    if (e)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot read tokenizer file '%s': %s", from,
                              strerror(e));
    const void *parts[1] = {text};
    size_t sizes[1] = {len};
    ccoe_status s = ccoe_write_file_atomic(to, parts, sizes, 1, err);
    free(text);
    return s;
}

static int same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int ok = fa && fb && ccoe_fs_read_stream(fa, (size_t)1 << 30, &x, &nx) == 0 &&
             ccoe_fs_read_stream(fb, (size_t)1 << 30, &y, &ny) == 0 && nx == ny &&
             memcmp(x, y, nx) == 0;
    if (fa)
        fclose(fa);
    if (fb)
        fclose(fb);
    free(x);
    free(y);
    return ok;
}

/* Removes dir and what it holds (files, and directories of files: what import and export
 * build; symbolic links are unlinked, never followed). */
static void remove_tree_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *de;
    char p[HF_PATH];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            !join(p, sizeof p, dir, de->d_name))
            continue;
        struct stat sb;
        if (lstat(p, &sb) == 0 && S_ISDIR(sb.st_mode))
            remove_tree_files(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(dir);
}

/* A fresh sibling directory name for building dst: DST.tmp.PID.N */
static ccoe_status make_temp_dir(const char *dst, char *tmp, size_t cap, ccoe_error *err)
{
    for (int i = 0; i < 1000; i++) {
        if (snprintf(tmp, cap, "%s%s%ld.%d", dst, CCOE_TMP_INFIX, (long)getpid(), i) >= (int)cap)
            return ccoe_error_set(err, CCOE_ERR_ARG, "path '%s' is too long", dst);
        if (mkdir(tmp, 0777) == 0)
            return CCOE_OK;
        if (errno != EEXIST)
            return ccoe_error_set(err, CCOE_ERR_IO, "cannot create directory '%s': %s", tmp,
                                  strerror(errno));
    }
    return ccoe_error_set(err, CCOE_ERR_IO, "cannot create a temporary directory next to '%s'", dst);
}

/* 1 if path is missing or an empty directory (removed then), 0 if it holds something. */
static int dir_free(const char *path)
{
    struct stat sb;
    if (lstat(path, &sb) != 0)
        return errno == ENOENT;
    if (!S_ISDIR(sb.st_mode))
        return 0;
    return rmdir(path) == 0;
}

/* Copies the tokenizer files of src into a new directory tmp (built by the caller). */
static ccoe_status copy_tokenizer(const char *src, const char *tmp, ccoe_error *err)
{
    for (size_t i = 0; i < N_TOK_FILES; i++) {
        char from[HF_PATH], to[HF_PATH];
        join(from, sizeof from, src, k_tok_files[i]);
        if (!is_file(from))
            continue;
        join(to, sizeof to, tmp, k_tok_files[i]);
        CCOE_TRY(copy_file(from, to, err));
    }
    return CCOE_OK;
}

/* Writes the files of GPT-2's byte-level BPE that equal ccoe's byte tokenizer: vocab.json maps
 * GPT-2's printable stand-in of byte b (bytes_to_unicode) to id b and the specials to
 * 256..259, merges.txt has no merges, so GPT2Tokenizer encodes every byte to its own id. */
static ccoe_status write_byte_tokenizer(const char *dir, ccoe_error *err)
{
    int cp[256], n = 0;
    for (int b = 0; b < 256; b++)
        cp[b] = -1;
    for (int b = '!'; b <= '~'; b++)
        cp[b] = b;
    for (int b = 0xA1; b <= 0xAC; b++)
        cp[b] = b;
    for (int b = 0xAE; b <= 0xFF; b++)
        cp[b] = b;
    for (int b = 0; b < 256; b++)
        if (cp[b] < 0)
            cp[b] = 256 + n++;
    cJSON *v = cJSON_CreateObject();
    int ok = v != NULL;
    for (int b = 0; b < 256 && ok; b++) {
        char u[4] = {0};
        if (cp[b] < 0x80) {
            u[0] = (char)cp[b];
        } else { /* all stand-ins are below U+0800: two UTF-8 bytes */
            u[0] = (char)(0xC0 | (cp[b] >> 6));
            u[1] = (char)(0x80 | (cp[b] & 0x3F));
        }
        ok = cJSON_AddNumberToObject(v, u, b) != NULL;
    }
    static const char *const specials[] = {"<|bos|>", "<|endoftext|>", "<|pad|>", "<|sep|>"};
    for (int i = 0; i < 4 && ok; i++)
        ok = cJSON_AddNumberToObject(v, specials[i], 256 + i) != NULL;
    char *text = ok ? cJSON_PrintUnformatted(v) : NULL;
    cJSON_Delete(v);
    if (!text)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory writing vocab.json");
    char p[HF_PATH];
    join(p, sizeof p, dir, "vocab.json");
    const void *parts[1] = {text};
    size_t sizes[1] = {strlen(text)};
    ccoe_status s = ccoe_write_file_atomic(p, parts, sizes, 1, err);
    free(text);
    if (s == CCOE_OK) {
        static const char merges[] = "#version: 0.2\n";
        const void *mp[1] = {merges};
        size_t ms[1] = {sizeof merges - 1};
        join(p, sizeof p, dir, "merges.txt");
        s = ccoe_write_file_atomic(p, mp, ms, 1, err);
    }
    return s;
}

/* ---- import ---- */

/* OUT without ".safetensors", plus ".tokenizer". */
static void tokenizer_dir_of(const char *out, char *dst, size_t cap)
{
    size_t n = strlen(out);
    const char *ext = ".safetensors";
    if (n > strlen(ext) && strcmp(out + n - strlen(ext), ext) == 0)
        n -= strlen(ext);
    snprintf(dst, cap, "%.*s.tokenizer", (int)n, out);
}

/* Prints the [model] and [data] sections of the config. */
static void print_config(const ccoe_config *cfg, FILE *log)
{
    char *ini = ccoe_config_to_ini(cfg);
    if (!ini)
        return;
    int show = 0;
    for (char *line = strtok(ini, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '[')
            show = strcmp(line, "[model]") == 0 || strcmp(line, "[data]") == 0;
        if (show)
            fprintf(log, "  %s\n", line);
    }
    free(ini);
}

/* The domain names of the manifest, which the checkpoint records (ccoe.domains) so that
 * experts can be routed and pushed without the data, as for a trained base. Read with the
 * byte tokenizer: the names do not depend on it and this skips encoding the text. */
static ccoe_status manifest_domains(const ccoe_config *cfg, char (*names)[CCOE_NAME_LEN],
                                    int *n, ccoe_error *err)
{
    ccoe_tokenizer byte;
    CCOE_TRY(ccoe_tokenizer_init(&byte, "byte", err));
    ccoe_dataset ds;
    /* the names do not depend on the context either: sequences of one token, so that a long
     * seq_len does not refuse a small corpus here (training says so when it needs more) */
    ccoe_status s = ccoe_data_load(&ds, cfg->data.manifest, &byte, 1, cfg->data.val_fraction,
                                   0, cfg->train.seed, err);
    if (s == CCOE_OK) {
        *n = ds.n_domains;
        for (int d = 0; d < ds.n_domains; d++)
            memcpy(names[d], ds.domains[d].name, CCOE_NAME_LEN);
        ccoe_data_free(&ds);
    } else {
        ccoe_error_wrap(err, "data.manifest %s", cfg->data.manifest);
    }
    ccoe_tokenizer_free(&byte);
    return s;
}

/* Bytes of activations one training sequence of T tokens takes: what src/model.c's
 * activation arena holds per row of the batch for a plain model (every block's saved
 * activations, the head's, the logits and the backward scratch; CCoE experts and MoE layers add
 * to it). The attention scratch, per thread and not per row, is left out. */
static double train_bytes_per_seq(const ccoe_model_config *mc, int T)
{
    const double C = mc->n_embd, F = mc->ffn_hidden, H = mc->n_head, V = mc->vocab_size;
    const double hd = C / H, W = (H + 2.0 * ccoe_model_kv_heads(mc)) * hd;
    const double F2 = mc->ffn == CCOE_FFN_SWIGLU ? 2 * F : F;
    const double block = 5 * C + W + F2 + F + 4 + H; /* ln1 .. res2, means, rstds, lse */
    const double rest = C + (C + 2) + V + 1 + 4 * C + W + F2 + F + 2; /* emb, lnf, logits,
                                                                    * losses, d-buffers, ids */
    return 4.0 * T * (mc->n_layer * block + rest);
}

/* bytes as "12.3 MiB" / "4.56 GiB" */
static const char *fmt_bytes(char *buf, size_t cap, double bytes)
{
    const double mib = 1024.0 * 1024.0;
    if (bytes < 1024.0 * mib)
        snprintf(buf, cap, "%.1f MiB", bytes / mib);
    else
        snprintf(buf, cap, "%.2f GiB", bytes / (1024.0 * mib));
    return buf;
}

/* Says which context import chose and what it costs per training sequence. */
static void report_context(const ccoe_model_config *mc, int want_T, FILE *log)
{
    char b1[32], b2[32];
    const int T = mc->seq_len, P = mc->max_positions;
    fprintf(log, "context: model.seq_len = %d (", T);
    if (mc->pos == CCOE_POS_LEARNED)
        fprintf(log, "n_positions: the learned position table keeps all its rows");
    else if (want_T > 0)
        fprintf(log, "--seq-len; max_position_embeddings = %d", P);
    else if (T < P)
        fprintf(log, "max_position_embeddings = %d capped at %d: RoPE has no position table, "
                     "--seq-len N chooses up to %d",
                P, HF_ROPE_SEQ_CAP, P);
    else
        fprintf(log, "max_position_embeddings");
    fprintf(log, "); training activations about %s per sequence of the batch",
            fmt_bytes(b1, sizeof b1, train_bytes_per_seq(mc, T)));
    if (P > T)
        fprintf(log, " (%s at %d)", fmt_bytes(b2, sizeof b2, train_bytes_per_seq(mc, P)), P);
    fprintf(log, "\n");
}

/* Which architecture config.json names: *kind = -1 for GPT-2, else hf_llama_kind's value;
 * refuses the ones ccoe does not map. */
static ccoe_status check_arch(const cJSON *c, const char *path, int *kind, ccoe_error *err)
{
    const char *type = hf_cfg_str(c, "model_type");
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(c, "architectures");
    const char *arch = cJSON_IsArray(archs) && cJSON_GetArraySize(archs) > 0 &&
                               cJSON_IsString(cJSON_GetArrayItem(archs, 0))
                           ? cJSON_GetArrayItem(archs, 0)->valuestring
                           : NULL;
    if (!type)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s has no \"model_type\": it is not a transformers config.json; "
                              "use the model's own config.json",
                              path);
    *kind = hf_llama_kind(type);
    if (*kind >= 0) {
        const char *want = hf_llama_arch(*kind);
        /* the bare *Model class has the same weights under the same names */
        char bare[64];
        snprintf(bare, sizeof bare, "%.*sModel", (int)(strlen(want) - strlen("ForCausalLM")),
                 want);
        if (arch && strcmp(arch, want) != 0 && strcmp(arch, bare) != 0)
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: architecture \"%.60s\" is not supported for model_type "
                                  "%s: import supports %s (and %s weights)",
                                  path, arch, type, want, bare);
        return CCOE_OK;
    }
    if (strcmp(type, "gpt2") != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: model_type \"%.40s\" is not supported: import supports "
                              "model_type gpt2 (GPT2LMHeadModel), llama (LlamaForCausalLM), "
                              "qwen2 (Qwen2ForCausalLM) and mistral (MistralForCausalLM)",
                              path, type);
    if (arch && strcmp(arch, "GPT2LMHeadModel") != 0 && strcmp(arch, "GPT2Model") != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: architecture \"%.60s\" is not supported: import supports "
                              "GPT2LMHeadModel (and GPT2Model weights with a tied head)",
                              path, arch);
    return CCOE_OK;
}

ccoe_status ccoe_hf_import(const ccoe_hf_import_opts *o, FILE *log, ccoe_error *err)
{
    char cpath[HF_PATH];
    if (!join(cpath, sizeof cpath, o->hf_dir, "config.json"))
        return ccoe_error_set(err, CCOE_ERR_ARG, "path '%s' is too long", o->hf_dir);
    if (!is_file(cpath))
        return ccoe_error_set(err, CCOE_ERR_IO,
                              "%s has no config.json: give a Hugging Face model directory "
                              "(config.json + model.safetensors)",
                              o->hf_dir);
    if (!o->force && access(o->out, F_OK) == 0)
        return ccoe_error_set(err, CCOE_ERR_IO,
                              "%s exists: choose another -o or pass --force to replace it", o->out);
    const clock_t t0 = clock();
    struct timespec w0, w1;
    clock_gettime(CLOCK_MONOTONIC, &w0);
    cJSON *c = NULL;
    CCOE_TRY(read_json(cpath, "config file", &c, err));
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    hf_weights *w = calloc(1, sizeof *w);
    ccoe_model *m = calloc(1, sizeof *m);
    ccoe_gemm gemm;
    int have_model = 0, have_w = 0, made_tok = 0;
    char tokdir[HF_PATH] = "", tmp[HF_PATH] = "";
    ccoe_status s = w && m ? CCOE_OK : ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory");
    int kind = -1;
    if (s == CCOE_OK)
        s = check_arch(c, cpath, &kind, err);
    if (s == CCOE_OK)
        s = kind < 0 ? hf_gpt2_config(c, cpath, o->seq_len, &cfg.model, err)
                     : hf_llama_config(c, cpath, kind, o->seq_len, &cfg.model, log, err);
    if (s == CCOE_OK && log)
        report_context(&cfg.model, o->seq_len, log);
    if (s == CCOE_OK && (s = weights_open(w, o->hf_dir, err)) == CCOE_OK)
        have_w = 1;
    int tied = 1;
    if (s == CCOE_OK)
        s = kind < 0 ? hf_gpt2_head(w, c, cpath, &tied, log, err)
                     : hf_llama_head(w, c, cpath, kind, &tied, log, err);
    cfg.model.tied_head = tied;
    /* the tokenizer: its files go along into OUT.tokenizer/ */
    const char *tsrc = o->tokenizer ? o->tokenizer : o->hf_dir;
    const int byte = o->tokenizer && strcmp(o->tokenizer, "byte") == 0;
    if (s == CCOE_OK && !byte && !has_tokenizer(tsrc))
        s = ccoe_error_set(err, CCOE_ERR_IO,
                           "%s has no tokenizer files (vocab.json + merges.txt, or "
                           "tokenizer.json)%s: copy the model's tokenizer files there, or pass "
                           "--tokenizer DIR (or --tokenizer byte)",
                           tsrc, o->tokenizer ? "" : " next to config.json");
    if (s == CCOE_OK) {
        ccoe_tokenizer tok;
        s = ccoe_tokenizer_init(&tok, byte ? "byte" : tsrc, err);
        if (s != CCOE_OK) {
            s = ccoe_error_wrap(err, "the tokenizer of %s", tsrc);
        } else {
            const int tv = tok.ops->vocab_size(tok.self);
            if (tv > cfg.model.vocab_size)
                s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                   "the tokenizer in %s has %d ids but %s says vocab_size = %d: "
                                   "they do not belong together; use the model's own tokenizer",
                                   tsrc, tv, cpath, cfg.model.vocab_size);
            else if (tv < cfg.model.vocab_size && log)
                fprintf(log, "note: the tokenizer has %d ids, the model's vocabulary %d rows "
                             "(the rest are padding)\n",
                        tv, cfg.model.vocab_size);
            ccoe_tokenizer_free(&tok);
        }
    }
    if (s == CCOE_OK && byte) {
        snprintf(cfg.data.tokenizer, sizeof cfg.data.tokenizer, "byte");
    } else if (s == CCOE_OK) {
        tokenizer_dir_of(o->out, tokdir, sizeof tokdir);
        s = make_temp_dir(tokdir, tmp, sizeof tmp, err);
        if (s == CCOE_OK)
            s = copy_tokenizer(tsrc, tmp, err);
        if (s == CCOE_OK && !dir_free(tokdir)) {
            /* an earlier import's copy: fine if identical, replaced with --force */
            int same = 1;
            for (size_t i = 0; i < N_TOK_FILES && same; i++) {
                char a[HF_PATH], b[HF_PATH];
                join(a, sizeof a, tmp, k_tok_files[i]);
                join(b, sizeof b, tokdir, k_tok_files[i]);
                same = is_file(a) == is_file(b) && (!is_file(a) || same_file(a, b));
            }
            if (!same && !o->force)
                s = ccoe_error_set(err, CCOE_ERR_IO,
                                   "%s exists and holds other tokenizer files: remove it, "
                                   "choose another -o, or pass --force",
                                   tokdir);
            else if (!same)
                remove_tree_files(tokdir);
            if (same) {
                remove_tree_files(tmp);
                tmp[0] = '\0';
            }
        }
        if (s == CCOE_OK && tmp[0]) {
            if (rename(tmp, tokdir) != 0)
                s = ccoe_error_set(err, CCOE_ERR_IO, "cannot rename %s to %s: %s", tmp, tokdir,
                                   strerror(errno));
            else
                made_tok = 1;
            tmp[0] = '\0';
        }
        char abs[PATH_MAX];
        if (s == CCOE_OK && !realpath(tokdir, abs))
            s = ccoe_error_set(err, CCOE_ERR_IO, "cannot resolve %s: %s", tokdir, strerror(errno));
        if (s == CCOE_OK && strlen(abs) >= 180)
            s = ccoe_error_set(err, CCOE_ERR_CONFIG,
                               "the tokenizer directory's path %s is longer than data.tokenizer "
                               "allows (179 characters): import to a shorter path",
                               abs);
        if (s == CCOE_OK)
            snprintf(cfg.data.tokenizer, sizeof cfg.data.tokenizer, "%s", abs);
    }
    if (s == CCOE_OK && o->manifest) {
        if (strlen(o->manifest) >= 180)
            s = ccoe_error_set(err, CCOE_ERR_ARG, "--data %s: path longer than 179 characters",
                               o->manifest);
        else
            snprintf(cfg.data.manifest, sizeof cfg.data.manifest, "%s", o->manifest);
    }
    if (s == CCOE_OK)
        s = ccoe_config_validate(&cfg, err);
    char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int nd = 0;
    if (s == CCOE_OK)
        s = manifest_domains(&cfg, names, &nd, err);
    ccoe_taskmap gating;
    if (s == CCOE_OK)
        s = ccoe_taskmap_build(&gating, &cfg, (const char(*)[CCOE_NAME_LEN])names, nd, err);
    if (s == CCOE_OK)
        s = ccoe_gemm_init(&gemm, CCOE_GEMM_REF, 1, err);
    /* weights only: import never trains, so no gradient block (one copy of the weights less) */
    if (s == CCOE_OK &&
        (s = ccoe_model_init_weights_only(m, &cfg.model, &gating, &cfg.moe, &gemm, err)) ==
            CCOE_OK)
        have_model = 1;
    if (s == CCOE_OK)
        s = kind < 0 ? hf_gpt2_fill(w, m, err) : hf_llama_fill(w, m, err);
    if (s == CCOE_OK) {
        ccoe_train_state st;
        memset(&st, 0, sizeof st);
        s = ccoe_checkpoint_save(o->out, &cfg, m, NULL, &st, err);
    }
    clock_gettime(CLOCK_MONOTONIC, &w1);
    if (s == CCOE_OK && log) {
        fprintf(log, "imported %s (%s, %zu parameters, %d file%s, head %s) -> %s "
                     "in %.2f s (%.2f s CPU)\nderived config:\n",
                o->hf_dir, kind < 0 ? "GPT2LMHeadModel" : hf_llama_arch(kind), m->num_params,
                w->n_files, w->n_files == 1 ? "" : "s",
                tied ? "tied to wte" : "untied", o->out,
                (double)(w1.tv_sec - w0.tv_sec) + 1e-9 * (double)(w1.tv_nsec - w0.tv_nsec),
                (double)(clock() - t0) / CLOCKS_PER_SEC);
        print_config(&cfg, log);
    }
    if (s != CCOE_OK && made_tok)
        remove_tree_files(tokdir);
    if (tmp[0])
        remove_tree_files(tmp);
    if (have_model)
        ccoe_model_free(m);
    if (have_w)
        weights_close(w);
    free(m);
    free(w);
    cJSON_Delete(c);
    return s;
}

/* ---- export ---- */

typedef struct loaded {
    const char *path;
    ccoe_config cfg;
    ccoe_taskmap taskmap;
    ccoe_gemm gemm;
    ccoe_model model;
    char domains[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int have_model;
} loaded;

static ccoe_status load_model(loaded *x, const char *path, ccoe_error *err)
{
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_checkpoint_open(path, &x->cfg, &f, err));
    int nd = ccoe_checkpoint_domains(f, &x->cfg, x->domains);
    ccoe_status s = ccoe_taskmap_build(&x->taskmap, &x->cfg, (const char(*)[CCOE_NAME_LEN])x->domains,
                                      nd, err);
    if (s == CCOE_OK)
        s = ccoe_gemm_init(&x->gemm, CCOE_GEMM_REF, 1, err);
    if (s == CCOE_OK && (s = ccoe_model_init_weights_only(&x->model, &x->cfg.model, &x->taskmap,
                                                          &x->cfg.moe, &x->gemm, err)) == CCOE_OK)
        x->have_model = 1;
    if (s == CCOE_OK)
        s = ccoe_checkpoint_load(f, path, &x->model, NULL, NULL, err);
    ccoe_st_close(f);
    return s;
}

/* The weights' dtypes export writes: the option's name, safetensors', transformers'. */
typedef struct export_dtype {
    const char *opt;
    ccoe_st_out_dtype st;
    const char *torch;
} export_dtype;
static const export_dtype k_export_dtypes[] = {
    {"f32", CCOE_ST_OUT_F32, "float32"},
    {"bf16", CCOE_ST_OUT_BF16, "bfloat16"},
    {"f16", CCOE_ST_OUT_F16, "float16"},
};

/* Writes path p of the model into a new directory dst. */
static ccoe_status export_path(const loaded *x, int p, const char *dst, const export_dtype *dt,
                               FILE *log, ccoe_error *err)
{
    if (!dir_free(dst))
        return ccoe_error_set(err, CCOE_ERR_IO,
                              "%s exists and is not empty: choose another -o or remove it", dst);
    const ccoe_model *m = &x->model;
    ccoe_tokenizer tok;
    int32_t eos = -1;
    const int byte = strcmp(x->cfg.data.tokenizer, "byte") == 0;
    if (!byte) {
        if (!has_tokenizer(x->cfg.data.tokenizer))
            return ccoe_error_set(err, CCOE_ERR_IO,
                                  "the model's tokenizer directory %s (data.tokenizer) holds no "
                                  "tokenizer files: restore it, then export again",
                                  x->cfg.data.tokenizer);
        CCOE_TRY(ccoe_tokenizer_init(&tok, x->cfg.data.tokenizer, err));
        eos = tok.eos;
        ccoe_tokenizer_free(&tok);
    } else {
        eos = CCOE_TOK_EOS;
    }
    hf_out_tensor *t = NULL;
    size_t n = 0;
    float *buf = NULL;
    char *config = NULL;
    /* RMSNorm + SwiGLU + RoPE models are LLaMA / Qwen2; everything else goes to GPT-2's
     * layout, which names what it cannot express */
    const int llama = m->cfg.norm == CCOE_NORM_RMSNORM && m->cfg.ffn == CCOE_FFN_SWIGLU &&
                      hf_llama_model_is_rope(&m->cfg);
    if (llama)
        CCOE_TRY(hf_llama_export(m, p, eos, dt->torch, &t, &n, &buf, &config, log, err));
    else
        CCOE_TRY(hf_gpt2_export(m, p, eos, dt->torch, &t, &n, &buf, &config, log, err));
    char tmp[HF_PATH], path[HF_PATH];
    ccoe_status s = make_temp_dir(dst, tmp, sizeof tmp, err);
    ccoe_st_tensor *st = calloc(n ? n : 1, sizeof *st);
    if (s == CCOE_OK && !st)
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "exporting: out of memory");
    for (size_t i = 0; s == CCOE_OK && i < n; i++) {
        st[i].name = t[i].name;
        st[i].ndim = t[i].ndim;
        st[i].shape[0] = t[i].shape[0];
        st[i].shape[1] = t[i].shape[1];
        st[i].data = t[i].data;
    }
    if (s == CCOE_OK) {
        static const char *const meta[] = {"format", "pt"};
        join(path, sizeof path, tmp, "model.safetensors");
        s = ccoe_st_write_plain_as(path, st, n, meta, 1, dt->st, err);
    }
    if (s == CCOE_OK) {
        join(path, sizeof path, tmp, "config.json");
        const void *parts[2] = {config, "\n"};
        size_t sizes[2] = {strlen(config), 1};
        s = ccoe_write_file_atomic(path, parts, sizes, 2, err);
    }
    if (s == CCOE_OK)
        s = byte ? write_byte_tokenizer(tmp, err) : copy_tokenizer(x->cfg.data.tokenizer, tmp, err);
    if (s == CCOE_OK && rename(tmp, dst) != 0)
        s = ccoe_error_set(err, CCOE_ERR_IO, "cannot rename %s to %s: %s", tmp, dst,
                           strerror(errno));
    if (s != CCOE_OK && tmp[0])
        remove_tree_files(tmp);
    if (s == CCOE_OK && log)
        fprintf(log, "exported %s path %s (%d blocks, head %s) -> %s (%s, %zu %s tensors)\n",
                x->path, p == 0 ? "base" : m->taskmap.experts[p - 1].name,
                m->paths[p].n_base + m->paths[p].n_own,
                m->w_heads[m->paths[p].head].lm_head == m->wte ? "tied" : "untied", dst,
                !llama ? "GPT2LMHeadModel"
                : m->w_blocks[0].qkv_b ? "Qwen2ForCausalLM" : "LlamaForCausalLM",
                n, dt->opt);
    free(st);
    free(t);
    free(buf);
    free(config);
    return s;
}

ccoe_status ccoe_hf_export(const ccoe_hf_export_opts *o, FILE *log, ccoe_error *err)
{
    loaded *x = calloc(1, sizeof *x);
    if (!x)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory");
    x->path = o->model;
    const char *want_dt = o->dtype ? o->dtype : "f32";
    const export_dtype *dt = NULL;
    for (size_t i = 0; i < sizeof k_export_dtypes / sizeof k_export_dtypes[0]; i++)
        if (strcmp(want_dt, k_export_dtypes[i].opt) == 0)
            dt = &k_export_dtypes[i];
    if (!dt) {
        free(x);
        return ccoe_error_set(err, CCOE_ERR_ARG, "--dtype %s: export writes f32, bf16 or f16",
                              want_dt);
    }
    ccoe_status s = load_model(x, o->model, err);
    const char *want = o->path ? o->path : "base";
    const ccoe_model *m = &x->model;
    if (s == CCOE_OK && strcmp(want, "all") == 0) {
        /* every path into one temporary directory, renamed into place at the end */
        char tmp[HF_PATH] = "";
        if (!dir_free(o->out_dir))
            s = ccoe_error_set(err, CCOE_ERR_IO,
                               "%s exists and is not empty: choose another -o or remove it",
                               o->out_dir);
        else
            s = make_temp_dir(o->out_dir, tmp, sizeof tmp, err);
        for (int p = 0; s == CCOE_OK && p < m->n_paths; p++) {
            char dst[HF_PATH];
            if (!join(dst, sizeof dst, tmp, p == 0 ? "base" : m->taskmap.experts[p - 1].name))
                s = ccoe_error_set(err, CCOE_ERR_ARG, "-o %s: path too long", o->out_dir);
            else
                s = export_path(x, p, dst, dt, log, err);
        }
        if (s == CCOE_OK && rename(tmp, o->out_dir) != 0)
            s = ccoe_error_set(err, CCOE_ERR_IO, "cannot rename %s to %s: %s", tmp, o->out_dir,
                               strerror(errno));
        if (s != CCOE_OK && tmp[0])
            remove_tree_files(tmp);
    } else if (s == CCOE_OK) {
        int p = -1;
        if (strcmp(want, "base") == 0)
            p = 0;
        for (int e = 0; p < 0 && e < m->taskmap.n_experts; e++)
            if (strcmp(m->taskmap.experts[e].name, want) == 0)
                p = 1 + e;
        if (p < 0) {
            char names[512] = "";
            for (int e = 0; e < m->taskmap.n_experts; e++)
                snprintf(names + strlen(names), sizeof names - strlen(names), ", %s",
                         m->taskmap.experts[e].name);
            s = ccoe_error_set(err, CCOE_ERR_ARG,
                               "%s has no expert '%s': --path takes base, all%s", o->model, want,
                               names);
        } else {
            s = export_path(x, p, o->out_dir, dt, log, err);
        }
    }
    if (x->have_model)
        ccoe_model_free(&x->model);
    free(x);
    return s;
}

ccoe_status hf_tied_head(const hf_weights *w, const cJSON *c, const char *cfg_path,
                         const char *emb_name, int def_tie, int *tied, FILE *log,
                         ccoe_error *err)
{
    int tie = def_tie;
    CCOE_TRY(hf_cfg_bool(c, cfg_path, "tie_word_embeddings", def_tie, &tie, err));
    hf_tensor head, emb;
    const int has_head = hf_find(w, "lm_head.weight", &head);
    if (!tie && !has_head)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: tie_word_embeddings is false%s but the weights have no "
                              "'lm_head.weight': the untied head is missing; add it or set "
                              "\"tie_word_embeddings\": true",
                              w->dir, def_tie ? "" : " (the architecture's default)");
    if (tie && has_head && log && hf_find(w, emb_name, &emb)) {
        int same = head.ndim == emb.ndim && head.shape[0] == emb.shape[0] &&
                   head.shape[1] == emb.shape[1] &&
                   memcmp(head.data, emb.data,
                          (size_t)emb.shape[0] * (size_t)emb.shape[1] * sizeof(float)) == 0;
        if (!same)
            fprintf(log, "note: %s stores an lm_head.weight that differs from %s but "
                         "tie_word_embeddings is true: like transformers, the head is tied and "
                         "the stored lm_head.weight is ignored\n",
                    head.file, emb_name);
    }
    *tied = tie;
    return CCOE_OK;
}
