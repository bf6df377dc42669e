/* checkpoint.c - saving and loading model + optimizer + training state. */
#include "checkpoint.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    for (int d = 0, used = 0; d < m->gating.n_domains; d++)
        used += snprintf(domains + used, sizeof domains - (size_t)used, "%s%s", d ? " " : "",
                         m->gating.domains[d]);
    const char *meta[] = {"ccoe.format", "ccoe-checkpoint", "ccoe.version", CCOE_VERSION,
                          "config",      ini,               "config_hash",  hash,
                          "step",        step,              "data_pos",     pos,
                          "rng",         rng,               "optim.t",      ot,
                          "optim.state", opt ? "adamw" : "none", "ccoe.domains", domains};
    s = ccoe_st_write(path, t, n, meta, sizeof meta / sizeof meta[0] / 2, err);
done:
    free(t);
    free(names);
    free(ini);
    return s;
}

ccoe_status ccoe_checkpoint_open(const char *path, ccoe_config *cfg, ccoe_st_file **out,
                                 ccoe_error *err)
{
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_st_open(path, &f, err));
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
        s = ccoe_config_validate(cfg, err);
    if (s != CCOE_OK) {
        ccoe_st_close(f);
        return ccoe_error_wrap(err, "config stored in checkpoint %s", path);
    }
    *out = f;
    return CCOE_OK;
}

static ccoe_status parse_u64(const char *s, uint64_t *v, const char *key, const char *path,
                             ccoe_error *err)
{
    char *end = NULL;
    if (!s || !*s)
        return ccoe_error_set(err, CCOE_ERR_FORMAT, "checkpoint %s lacks metadata '%s'", path,
                              key);
    *v = strtoull(s, &end, 10);
    if (*end)
        return ccoe_error_set(err, CCOE_ERR_FORMAT, "checkpoint %s: metadata %s='%s' is not a "
                              "number", path, key, s);
    return CCOE_OK;
}

int ccoe_checkpoint_domains(const ccoe_st_file *f, const ccoe_config *cfg,
                            char (*names)[CCOE_NAME_LEN])
{
    const char *stored = ccoe_st_meta(f, "ccoe.domains");
    if (!stored || !*stored)
        return ccoe_gating_route_domains(cfg, names);
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
    for (int e = 0; e < m->gating.n_experts; e++) {
        if (found[e] != 0 && found[e] != total[e])
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s holds only %d of the %d tensors of expert '%s': its shape "
                                  "differs from ccoe.experts (layers or own_head)",
                                  path, found[e], total[e], m->gating.experts[e].name);
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
    if (opt) {
        uint64_t t = 0;
        CCOE_TRY(parse_u64(ccoe_st_meta(f, "optim.t"), &t, "optim.t", path, err));
        opt->t = (long)t;
    }
    if (st) {
        uint64_t v = 0;
        CCOE_TRY(parse_u64(ccoe_st_meta(f, "step"), &v, "step", path, err));
        st->step = (long)v;
        CCOE_TRY(parse_u64(ccoe_st_meta(f, "data_pos"), &st->data_pos, "data_pos", path, err));
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
