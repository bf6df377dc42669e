/* checkpoint.c - saving and loading model + optimizer + training state.
 *
 * Everything read back is checked before it is used: the file's checksum covers the whole file
 * (safetensors.c); the stored config passes the whole validation (ccoe_session_validate); the
 * model it describes must fit in the file before anything of that size is allocated; every
 * stored number is a plain decimal in its range (a step, data position or optimizer step count
 * that is negative or inconsistent is an error, not a run with a negative learning rate or NaN
 * moments).
 */
#include "checkpoint.h"
#include "checkpoint_tokenizer.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "taskmap.h"
#include "session.h"

#define NAME_LEN (CCOE_PARAM_NAME + 16)

static void fill_tensor(ccoe_st_tensor *t, const char *name, const ccoe_param *p,
                        const float *data)
{
    t->name = name;
    t->ndim = p->ndim;
    for (int d = 0; d < CCOE_ST_MAX_DIMS; d++)
        t->shape[d] = d < p->ndim ? p->shape[d] : 0;
    t->data = data;
}

ccoe_status ccoe_checkpoint_save(const char *path, const ccoe_config *cfg, const ccoe_model *m,
                                 const ccoe_adamw *opt, const ccoe_train_state *st,
                                 ccoe_error *err)
{
    const int np = m->n_params;
    const int per = opt ? 3 : 1;
    ccoe_st_tensor *t = calloc((size_t)np * per, sizeof *t);
    char *names = calloc((size_t)np * per, NAME_LEN);
    char *ini = ccoe_config_to_ini(cfg);
    ccoe_tok_record tok = {0};
    ccoe_status s = CCOE_OK;
    if (!t || !names || !ini) {
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory writing checkpoint %s", path);
        goto done;
    }
    size_t n = 0;
    for (int i = 0; i < np; i++) {
        const ccoe_param *p = &m->params[i];
        char *nm = names + n * NAME_LEN;
        snprintf(nm, NAME_LEN, "%s", p->name);
        fill_tensor(&t[n++], nm, p, m->param_block + p->offset);
        if (opt) {
            nm = names + n * NAME_LEN;
            snprintf(nm, NAME_LEN, "optim.m.%s", p->name);
            fill_tensor(&t[n++], nm, p, opt->m + p->offset);
            nm = names + n * NAME_LEN;
            snprintf(nm, NAME_LEN, "optim.v.%s", p->name);
            fill_tensor(&t[n++], nm, p, opt->v + p->offset);
        }
    }
    char hash[32], step[32], pos[32], rng[80], ot[32];
    snprintf(hash, sizeof hash, "%016" PRIx64, ccoe_config_hash(cfg));
    snprintf(step, sizeof step, "%ld", st ? st->step : 0L);
    snprintf(pos, sizeof pos, "%" PRIu64, st ? st->data_pos : (uint64_t)0);
    if (st)
        snprintf(rng, sizeof rng, "%016" PRIx64 "%016" PRIx64 "%016" PRIx64 "%016" PRIx64,
                 st->rng.s[0], st->rng.s[1], st->rng.s[2], st->rng.s[3]);
    else
        snprintf(rng, sizeof rng, "0");
    snprintf(ot, sizeof ot, "%ld", opt ? opt->t : 0L);
    char domains[CCOE_MAX_DOMAINS * CCOE_NAME_LEN] = "";
    for (int d = 0, used = 0; d < m->taskmap.n_domains; d++)
        used += snprintf(domains + used, sizeof domains - (size_t)used, "%s%s", d ? " " : "",
                         m->taskmap.domains[d]);
    const char *meta[2 * (10 + 4 + CCOE_TOK_MAX_FILES)] = {
        "ccoe.format", "ccoe-checkpoint", "ccoe.version", CCOE_VERSION,
        "config",      ini,               "config_hash",  hash,
        "step",        step,              "data_pos",     pos,
        "rng",         rng,               "optim.t",      ot,
        "optim.state", opt ? "adamw" : "none", "ccoe.domains", domains};
    /* the tokenizer travels with the model (checkpoint_tokenizer.h) */
    if ((s = ccoe_tok_record_read(&tok, cfg->data.tokenizer, err)) != CCOE_OK) {
        ccoe_error_wrap(err, "writing checkpoint %s: data.tokenizer", path);
        goto done;
    }
    s = ccoe_st_write(path, t, n, meta, 10 + ccoe_tok_record_meta(&tok, meta + 20, 4 + CCOE_TOK_MAX_FILES), err);
done:
    ccoe_tok_record_free(&tok);
    free(t);
    free(names);
    free(ini);
    return s;
}

/* A lower bound on the parameters the stored config describes (the embedding and, per base
 * layer, the attention's query and output projections and the FFN's two matrices), against the
 * floats the file holds: a config that cannot be in the file is refused before the caller
 * allocates a model of its size. */
static ccoe_status check_model_fits(const ccoe_st_file *f, const ccoe_config *cfg,
                                    const char *path, ccoe_error *err)
{
    const ccoe_model_config *mc = &cfg->model;
    double C = mc->n_embd, per_layer = 2.0 * C * C + 2.0 * C * (double)mc->ffn_hidden;
    double need = (double)mc->vocab_size * C + (double)mc->n_layer * per_layer;
    double have = 0;
    for (size_t i = 0; i < ccoe_st_count(f); i++) {
        int nd = 0;
        int64_t sh[CCOE_ST_MAX_DIMS];
        ccoe_st_find(f, ccoe_st_name(f, i), &nd, sh);
        double numel = 1;
        for (int d = 0; d < nd; d++)
            numel *= (double)sh[d];
        have += numel;
    }
    if (need > have)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "checkpoint %s: its stored config describes a model of at least "
                              "%.0f parameters (n_layer %d, n_embd %d, vocab_size %d), but the "
                              "file holds only %.0f values: the config and the tensors do not "
                              "belong together; use another checkpoint",
                              path, need, mc->n_layer, mc->n_embd, mc->vocab_size, have);
    return CCOE_OK;
}

static ccoe_status open_flags(const char *path, unsigned flags, ccoe_config *cfg,
                              ccoe_st_file **out, ccoe_error *err)
{
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_st_open_flags(path, flags, &f, err));
    const char *fmt = ccoe_st_meta(f, "ccoe.format");
    const char *ini = ccoe_st_meta(f, "config");
    if (!fmt || strcmp(fmt, "ccoe-checkpoint") != 0 || !ini) {
        ccoe_st_close(f);
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s is a safetensors file but not a ccoe checkpoint (no "
                              "ccoe.format/config metadata): pass a file written by `ccoe train`",
                              path);
    }
    ccoe_config_defaults(cfg);
    ccoe_status s = ccoe_config_load_string(cfg, ini, path, err);
    if (s == CCOE_OK)
        s = ccoe_session_validate(cfg, err);
    if (s != CCOE_OK) {
        ccoe_st_close(f);
        return ccoe_error_wrap(err, "config stored in checkpoint %s", path);
    }
    s = check_model_fits(f, cfg, path, err);
    if (s != CCOE_OK) {
        ccoe_st_close(f);
        return s;
    }
    *out = f;
    return CCOE_OK;
}

ccoe_status ccoe_checkpoint_open(const char *path, ccoe_config *cfg, ccoe_st_file **out,
                                 ccoe_error *err)
{
    return ccoe_checkpoint_open_log(path, cfg, out, stderr, err);
}

ccoe_status ccoe_checkpoint_open_log(const char *path, ccoe_config *cfg, ccoe_st_file **out,
                                     FILE *log, ccoe_error *err)
{
    CCOE_TRY(open_flags(path, 0, cfg, out, err));
    ccoe_status s = ccoe_ckpt_tok_resolve(*out, path, cfg, log, err);
    if (s != CCOE_OK) {
        ccoe_st_close(*out);
        *out = NULL;
    }
    return s;
}

#define STORED_MAX ((uint64_t)1 << 53) /* above any step count or data position a run reaches */

/* A stored count: decimal digits only (no sign, blanks or exponent), at most max. */
static ccoe_status parse_count(const char *s, uint64_t max, uint64_t *v, const char *key,
                               const char *path, ccoe_error *err)
{
    if (!s || !*s)
        return ccoe_error_set(err, CCOE_ERR_FORMAT, "checkpoint %s lacks metadata '%s'", path,
                              key);
    uint64_t x = 0;
    int too_big = 0;
    for (const char *p = s; *p; p++) {
        if (*p < '0' || *p > '9')
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "checkpoint %s: metadata %s = '%.40s' is not a non-negative "
                                  "integer: the file is damaged; use an earlier checkpoint",
                                  path, key, s);
        if (x <= max) /* max < 2^60: no overflow below */
            x = x * 10 + (uint64_t)(*p - '0');
        too_big = too_big || x > max;
    }
    if (too_big)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "checkpoint %s: metadata %s = %.40s is out of range (at most %" PRIu64
                              "): the file is damaged; use an earlier checkpoint",
                              path, key, s, max);
    *v = x;
    return CCOE_OK;
}

int ccoe_checkpoint_domains(const ccoe_st_file *f, const ccoe_config *cfg,
                            char (*names)[CCOE_NAME_LEN])
{
    const char *stored = ccoe_st_meta(f, "ccoe.domains");
    if (!stored || !*stored)
        return ccoe_taskmap_route_domains(cfg, names);
    char buf[CCOE_MAX_DOMAINS * CCOE_NAME_LEN];
    snprintf(buf, sizeof buf, "%s", stored);
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " ", &save); tok && n < CCOE_MAX_DOMAINS;
         tok = strtok_r(NULL, " ", &save))
        snprintf(names[n++], CCOE_NAME_LEN, "%s", tok);
    return n;
}

/* A stored parameter that is NaN/Inf would only surface later as a NaN loss: refuse it here. */
static ccoe_status check_finite(const ccoe_param *p, const float *x, const char *path,
                                ccoe_error *err)
{
    for (size_t j = 0; j < p->numel; j++)
        if (!isfinite(x[j]))
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: tensor %s holds a non-finite value (%g at index %zu): the "
                                  "run that wrote it diverged or the file is damaged; use an "
                                  "earlier checkpoint",
                                  path, p->name, (double)x[j], j);
    return CCOE_OK;
}

ccoe_status ccoe_checkpoint_load_init(const ccoe_st_file *f, const char *path, ccoe_model *m,
                                      int *missing, ccoe_error *err)
{
    int found[CCOE_MAX_EXPERTS] = {0}, total[CCOE_MAX_EXPERTS] = {0};
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        int present = ccoe_st_find(f, p->name, NULL, NULL) != NULL;
        if (p->expert >= 0) {
            total[p->expert]++;
            found[p->expert] += present;
            if (!present)
                continue;
        } else if (!present) {
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s lacks base tensor %s: the model it holds does not match "
                                  "this config (compare `ccoe info %s` with the [model] section)",
                                  path, p->name, path);
        }
        CCOE_TRY(ccoe_st_read_into(f, p->name, m->param_block + p->offset, p->ndim, p->shape,
                                   err));
        CCOE_TRY(check_finite(p, m->param_block + p->offset, path, err));
    }
    for (int e = 0; e < m->taskmap.n_experts; e++) {
        if (found[e] != 0 && found[e] != total[e])
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s holds only %d of the %d tensors of expert '%s': its shape "
                                  "differs from ccoe.experts (layers or own_head)",
                                  path, found[e], total[e], m->taskmap.experts[e].name);
        missing[e] = found[e] == 0;
    }
    return CCOE_OK;
}

ccoe_status ccoe_checkpoint_load(const ccoe_st_file *f, const char *path, ccoe_model *m,
                                 ccoe_adamw *opt, ccoe_train_state *st, ccoe_error *err)
{
    char nm[NAME_LEN];
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        CCOE_TRY(ccoe_st_read_into(f, p->name, m->param_block + p->offset, p->ndim, p->shape,
                                   err));
        CCOE_TRY(check_finite(p, m->param_block + p->offset, path, err));
        if (opt) {
            snprintf(nm, sizeof nm, "optim.m.%s", p->name);
            if (!ccoe_st_find(f, nm, NULL, NULL))
                return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                      "checkpoint %s holds no optimizer state (tensor %s): "
                                      "resume needs a checkpoint written during training",
                                      path, nm);
            CCOE_TRY(ccoe_st_read_into(f, nm, opt->m + p->offset, p->ndim, p->shape, err));
            snprintf(nm, sizeof nm, "optim.v.%s", p->name);
            CCOE_TRY(ccoe_st_read_into(f, nm, opt->v + p->offset, p->ndim, p->shape, err));
        }
    }
    uint64_t step = 0;
    if (opt || st)
        CCOE_TRY(parse_count(ccoe_st_meta(f, "step"), STORED_MAX, &step, "step", path, err));
    if (opt) {
        /* AdamW's step count: at most the run's steps; 0 only while the moments are zero (its
         * bias correction divides by 1 - beta^t) */
        uint64_t t = 0;
        CCOE_TRY(parse_count(ccoe_st_meta(f, "optim.t"), step, &t, "optim.t", path, err));
        if (t == 0)
            for (size_t j = 0; j < m->num_params; j++)
                if (opt->m[j] != 0.0f || opt->v[j] != 0.0f)
                    return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                          "checkpoint %s: optim.t = 0 but the optimizer moments "
                                          "are not zero: the file is damaged; use an earlier "
                                          "checkpoint",
                                          path);
        opt->t = (long)t;
    }
    if (st) {
        st->step = (long)step;
        CCOE_TRY(parse_count(ccoe_st_meta(f, "data_pos"), STORED_MAX, &st->data_pos, "data_pos",
                             path, err));
        const char *r = ccoe_st_meta(f, "rng");
        if (!r || strlen(r) != 64)
            return ccoe_error_set(err, CCOE_ERR_FORMAT, "checkpoint %s: bad rng metadata", path);
        for (int k = 0; k < 4; k++) {
            char word[17];
            memcpy(word, r + 16 * k, 16);
            word[16] = '\0';
            char *end = NULL;
            st->rng.s[k] = strtoull(word, &end, 16);
            if (*end)
                return ccoe_error_set(err, CCOE_ERR_FORMAT, "checkpoint %s: bad rng metadata",
                                      path);
        }
    }
    return CCOE_OK;
}

/* ---- compare and reseal ---- */

static size_t numel_of(int ndim, const int64_t *shape)
{
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= (size_t)shape[d];
    return n;
}

static int skipped_by(int mode, const char *name)
{
    if ((mode & CCOE_CMP_PARAMS) && strncmp(name, "optim.", 6) == 0)
        return 1;
    return mode == CCOE_CMP_BASE && strncmp(name, "experts.", 8) == 0;
}

int ccoe_checkpoint_compare(const ccoe_st_file *a, const ccoe_st_file *b, int mode, FILE *out,
                            ccoe_compare_result *res)
{
    ccoe_compare_result r = {0};
    for (size_t i = 0; i < ccoe_st_count(a); i++) {
        const char *name = ccoe_st_name(a, i);
        if (skipped_by(mode, name)) {
            r.skipped++;
            continue;
        }
        int na = 0, nb = 0;
        int64_t sa[CCOE_ST_MAX_DIMS] = {0}, sb[CCOE_ST_MAX_DIMS] = {0};
        const float *da = ccoe_st_find(a, name, &na, sa);
        const float *db = ccoe_st_find(b, name, &nb, sb);
        if (!db) {
            fprintf(out, "only in A: %s\n", name);
            r.only_a++;
            continue;
        }
        size_t n = numel_of(na, sa);
        if (na != nb || memcmp(sa, sb, sizeof sa) != 0) {
            fprintf(out, "differs: %s (shape", name);
            for (int d = 0; d < na; d++)
                fprintf(out, "%s%lld", d ? " x " : " ", (long long)sa[d]);
            fprintf(out, " vs");
            for (int d = 0; d < nb; d++)
                fprintf(out, "%s%lld", d ? " x " : " ", (long long)sb[d]);
            fprintf(out, ")\n");
            r.differ++;
        } else if (n && memcmp(da, db, n * sizeof(float)) != 0) {
            double worst = 0;
            size_t at = 0;
            for (size_t j = 0; j < n; j++) {
                double d = fabs((double)da[j] - (double)db[j]);
                if (d > worst || (d != d && worst == worst)) {
                    worst = d;
                    at = j;
                }
            }
            fprintf(out, "differs: %s (max |a-b| %g at index %zu)\n", name, worst, at);
            r.differ++;
        } else {
            r.same++;
        }
    }
    for (size_t i = 0; i < ccoe_st_count(b); i++) {
        const char *name = ccoe_st_name(b, i);
        if (skipped_by(mode, name))
            r.skipped++;
        else if (!ccoe_st_find(a, name, NULL, NULL)) {
            fprintf(out, "only in B: %s\n", name);
            r.only_b++;
        }
    }
    if (!(mode & CCOE_CMP_PARAMS)) {
        for (size_t i = 0; i < ccoe_st_meta_count(a); i++) {
            const char *k = ccoe_st_meta_key(a, i);
            if (ccoe_st_is_checksum_key(k))
                continue;
            const char *vb = ccoe_st_meta(b, k);
            if (!vb)
                fprintf(out, "metadata only in A: %s\n", k);
            else if (strcmp(ccoe_st_meta(a, k), vb) != 0)
                fprintf(out, "metadata differs: %s\n", k);
            else {
                r.meta_same++;
                continue;
            }
            r.meta_differ++;
        }
        for (size_t i = 0; i < ccoe_st_meta_count(b); i++) {
            const char *k = ccoe_st_meta_key(b, i);
            if (!ccoe_st_is_checksum_key(k) && !ccoe_st_meta(a, k)) {
                fprintf(out, "metadata only in B: %s\n", k);
                r.meta_differ++;
            }
        }
    }
    fprintf(out, "%zu tensors identical, %zu differ, %zu only in A, %zu only in B", r.same,
            r.differ, r.only_a, r.only_b);
    if (mode & CCOE_CMP_PARAMS)
        fprintf(out, "; not compared: %zu tensors of optimizer state%s, the tensors only in one "
                     "file, the metadata\n",
                r.skipped, mode == CCOE_CMP_BASE ? " and experts" : "");
    else
        fprintf(out, "; metadata: %zu keys identical, %zu differ (checksums not compared)\n",
                r.meta_same, r.meta_differ);
    if (res)
        *res = r;
    int identical = r.differ == 0 && r.same > 0;
    if (!(mode & CCOE_CMP_PARAMS))
        identical = identical && r.only_a == 0 && r.only_b == 0 && r.meta_differ == 0;
    return identical;
}

ccoe_status ccoe_checkpoint_reseal(const char *in, const char *out, char *note, size_t note_cap,
                                   ccoe_error *err)
{
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    CCOE_TRY(open_flags(in, CCOE_ST_ALLOW_UNCHECKED, &cfg, &f, err));
    const int checked = ccoe_st_checked(f);
    const size_t n = ccoe_st_count(f), nm = ccoe_st_meta_count(f);
    ccoe_st_tensor *t = calloc(n ? n : 1, sizeof *t);
    const char **meta = calloc(2 * nm + 1, sizeof *meta);
    ccoe_status s = CCOE_OK;
    if (!t || !meta)
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory resealing %s", in);
    for (size_t i = 0; i < n && s == CCOE_OK; i++) {
        t[i].name = ccoe_st_name(f, i);
        t[i].data = ccoe_st_find(f, t[i].name, &t[i].ndim, t[i].shape);
        size_t cnt = numel_of(t[i].ndim, t[i].shape);
        for (size_t j = 0; j < cnt && s == CCOE_OK; j++)
            if (!isfinite(t[i].data[j]))
                s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                   "%s: tensor %s holds a non-finite value at index %zu: not "
                                   "resealed",
                                   in, t[i].name, j);
    }
    size_t k = 0;
    for (size_t i = 0; i < nm && s == CCOE_OK; i++) {
        const char *key = ccoe_st_meta_key(f, i);
        if (ccoe_st_is_checksum_key(key))
            continue;
        meta[2 * k] = key;
        meta[2 * k + 1] = ccoe_st_meta(f, key);
        k++;
    }
    if (s == CCOE_OK)
        s = ccoe_st_write(out, t, n, meta, k, err);
    if (s == CCOE_OK && note)
        snprintf(note, note_cap, "%s",
                 checked == CCOE_ST_CHECK_FILE   ? "it already had a whole-file checksum"
                 : checked == CCOE_ST_CHECK_DATA ? "its data checksum matched; its header could "
                                                   "not be verified beyond the config and "
                                                   "layout checks"
                                                 : "it had no checksum: only the layout, config "
                                                   "and values could be checked");
    free(t);
    free(meta);
    ccoe_st_close(f);
    return s;
}

ccoe_status ccoe_checkpoint_print_info(FILE *out, const char *path, ccoe_error *err)
{
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_status st = ccoe_checkpoint_open(path, &cfg, &f, err);
    if (st != CCOE_OK)
        return st;
    const char *keys[] = {"ccoe.version", "config_hash", "step", "data_pos", "optim.state"};
    fprintf(out, "checkpoint %s\n", path);
    fprintf(out, "  %-13s whole file, CRC-32 %s, verified\n", "checksum",
            ccoe_st_meta(f, "ccoe.file_crc32"));
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        fprintf(out, "  %-13s %s\n", keys[i],
                ccoe_st_meta(f, keys[i]) ? ccoe_st_meta(f, keys[i]) : "-");
    char tok[CCOE_STR * 2];
    ccoe_ckpt_tok_describe(f, tok, sizeof tok);
    fprintf(out, "  %-13s %s\n", "tokenizer", tok);
    size_t total = 0;
    fprintf(out, "tensors:\n");
    for (size_t i = 0; i < ccoe_st_count(f); i++) {
        int ndim = 0;
        int64_t shape[CCOE_ST_MAX_DIMS] = {0};
        const char *name = ccoe_st_name(f, i);
        ccoe_st_find(f, name, &ndim, shape);
        size_t numel = 1;
        fprintf(out, "  %-40s [", name);
        for (int d = 0; d < ndim; d++) {
            fprintf(out, "%s%lld", d ? ", " : "", (long long)shape[d]);
            numel *= (size_t)shape[d];
        }
        fprintf(out, "]\n");
        if (strncmp(name, "optim.", 6) != 0)
            total += numel;
    }
    fprintf(out, "parameters: %zu\n", total);
    if (ccoe_form_of(&cfg)) {
        char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
        int nd = ccoe_checkpoint_domains(f, &cfg, names);
        ccoe_taskmap g;
        ccoe_error gerr = {0}; /* a matrix that cannot be built is shown, not a failure */
        if (ccoe_taskmap_build(&g, &cfg, (const char(*)[CCOE_NAME_LEN])names, nd, &gerr) ==
            CCOE_OK)
            ccoe_taskmap_print(out, &g);
        else
            fprintf(out, "task-expert matrix: %s\n", gerr.msg);
    }
    fprintf(out, "config:\n");
    char *ini = ccoe_config_to_ini(&cfg);
    fprintf(out, "%s", ini ? ini : "");
    free(ini);
    ccoe_st_close(f);
    return CCOE_OK;
}

ccoe_status ccoe_checkpoint_compare_files(const char *path_a, const char *path_b, int mode,
                                          FILE *out, int *same, ccoe_error *err)
{
    ccoe_st_file *a = NULL, *b = NULL;
    *same = 0;
    ccoe_status st = ccoe_st_open(path_a, &a, err);
    if (st != CCOE_OK)
        return st;
    if ((st = ccoe_st_open(path_b, &b, err)) != CCOE_OK) {
        ccoe_st_close(a);
        return st;
    }
    *same = ccoe_checkpoint_compare(a, b, mode, out, NULL);
    ccoe_st_close(a);
    ccoe_st_close(b);
    return CCOE_OK;
}
