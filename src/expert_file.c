/* expert_file.c - pop and push of CCoE experts between checkpoint files and expert files. */
#include "expert_file.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "taskmap.h"
#include "model.h"
#include "safetensors.h"
#include "session.h"
#include "train.h"

/* A loaded model: config, task-expert matrix, parameters, training state. */
typedef struct loaded {
    ccoe_config cfg;
    ccoe_taskmap taskmap;
    ccoe_gemm gemm;
    ccoe_model model;
    ccoe_train_state st;
    char domains[CCOE_MAX_DOMAINS][CCOE_NAME_LEN]; /* the model's data domains */
    int n_domains;
    int have_model;
} loaded;

static ccoe_status build_model(loaded *x, const char (*names)[CCOE_NAME_LEN], int nd,
                               ccoe_error *err)
{
    CCOE_TRY(ccoe_taskmap_build(&x->taskmap, &x->cfg, names, nd, err));
    CCOE_TRY(ccoe_gemm_init(&x->gemm, CCOE_GEMM_REF, 1, err));
    CCOE_TRY(ccoe_model_init_moe(&x->model, &x->cfg.model, &x->taskmap, &x->cfg.moe, 1, 1, &x->gemm, 1,
                                 err));
    x->have_model = 1;
    return CCOE_OK;
}

static ccoe_status load_model(loaded *x, const char *path, ccoe_error *err)
{
    memset(x, 0, sizeof *x);
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_checkpoint_open(path, &x->cfg, &f, err));
    x->n_domains = ccoe_checkpoint_domains(f, &x->cfg, x->domains);
    ccoe_status s = build_model(x, (const char(*)[CCOE_NAME_LEN])x->domains, x->n_domains, err);
    if (s == CCOE_OK)
        s = ccoe_checkpoint_load(f, path, &x->model, NULL, &x->st, err);
    ccoe_st_close(f);
    return s;
}

static void loaded_free(loaded *x)
{
    if (x->have_model)
        ccoe_model_free(&x->model);
    x->have_model = 0;
}

/* The part of a parameter name after "experts.<name>." */
static const char *relative_name(const ccoe_param *p, const char *expert)
{
    return p->name + strlen("experts.") + strlen(expert) + 1;
}

/* The model keys an expert file records and a model must match. The last five came with the
 * RoPE/GQA blocks: a file without them was written for learned positions, Hkv = n_head, no
 * q/k/v-only bias and the default epsilon (shape_values of legacy_config). */
#define N_SHAPE_KEYS 14
static const char *const k_shape_keys[N_SHAPE_KEYS] = {
    "n_embd", "n_head", "ffn_hidden", "vocab_size", "seq_len",    "norm",    "ffn",
    "block",  "bias",   "pos",        "n_kv_head",  "qkv_bias",   "rope_theta", "norm_eps"};

static ccoe_model_config legacy_config(const ccoe_model_config *m)
{
    ccoe_model_config l = *m;
    l.pos = CCOE_POS_LEARNED;
    l.n_kv_head = 0;
    l.qkv_bias = 0;
    l.rope_theta = 10000.0;
    l.norm_eps = 1e-5;
    return l;
}

static void shape_values(const ccoe_model_config *m, char vals[N_SHAPE_KEYS][32])
{
    snprintf(vals[0], 32, "%d", m->n_embd);
    snprintf(vals[1], 32, "%d", m->n_head);
    snprintf(vals[2], 32, "%d", m->ffn_hidden);
    snprintf(vals[3], 32, "%d", m->vocab_size);
    snprintf(vals[4], 32, "%d", m->seq_len);
    snprintf(vals[5], 32, "%d", (int)m->norm);
    snprintf(vals[6], 32, "%d", (int)m->ffn);
    snprintf(vals[7], 32, "%d", (int)m->block);
    snprintf(vals[8], 32, "%d", m->bias);
    snprintf(vals[9], 32, "%d", (int)m->pos);
    snprintf(vals[10], 32, "%d", ccoe_model_kv_heads(m));
    snprintf(vals[11], 32, "%d", m->qkv_bias);
    snprintf(vals[12], 32, "%.17g", m->rope_theta);
    snprintf(vals[13], 32, "%.17g", m->norm_eps);
}

ccoe_status ccoe_expert_pop(const char *model_path, const char *name, const char *out_path,
                            ccoe_error *err)
{
    loaded x;
    ccoe_status s = load_model(&x, model_path, err);
    if (s != CCOE_OK) {
        loaded_free(&x);
        return s;
    }
    int e = ccoe_taskmap_find_expert(&x.taskmap, name);
    if (e < 0) {
        loaded_free(&x);
        return ccoe_error_set(err, CCOE_ERR_ARG, "%s has no expert '%s' (its experts: '%s')",
                              model_path, name, x.cfg.ccoe.experts);
    }
    ccoe_st_tensor *t = calloc((size_t)x.model.n_params, sizeof *t);
    if (!t) {
        loaded_free(&x);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory popping expert '%s'", name);
    }
    size_t n = 0;
    for (int i = 0; i < x.model.n_params; i++) {
        const ccoe_param *p = &x.model.params[i];
        if (p->expert != e)
            continue;
        t[n].name = relative_name(p, name);
        t[n].ndim = p->ndim;
        memset(t[n].shape, 0, sizeof t[n].shape);
        for (int d = 0; d < p->ndim; d++)
            t[n].shape[d] = p->shape[d];
        t[n].data = x.model.param_block + p->offset;
        n++;
    }
    char layers[16], own[8], domains[CCOE_STR] = "";
    snprintf(layers, sizeof layers, "%d", x.taskmap.experts[e].layers);
    snprintf(own, sizeof own, "%d", x.taskmap.own_head);
    for (int d = 0; d < x.taskmap.n_domains; d++)
        if (x.taskmap.route[d] == e) {
            size_t len = strlen(domains);
            snprintf(domains + len, sizeof domains - len, "%s%s", len ? " " : "",
                     x.taskmap.domains[d]);
        }
    char vals[N_SHAPE_KEYS][32];
    shape_values(&x.cfg.model, vals);
    const char *meta[2 * (6 + N_SHAPE_KEYS)];
    size_t k = 0;
    meta[k++] = "ccoe.format";
    meta[k++] = "ccoe-expert";
    meta[k++] = "expert.name";
    meta[k++] = name;
    meta[k++] = "expert.layers";
    meta[k++] = layers;
    meta[k++] = "expert.own_head";
    meta[k++] = own;
    meta[k++] = "expert.domains";
    meta[k++] = domains;
    meta[k++] = "expert.form";
    meta[k++] = x.taskmap.ops ? x.taskmap.ops->file_kind : "blocks";
    char keys[N_SHAPE_KEYS][40];
    for (int i = 0; i < N_SHAPE_KEYS; i++) {
        snprintf(keys[i], sizeof keys[i], "model.%s", k_shape_keys[i]);
        meta[k++] = keys[i];
        meta[k++] = vals[i];
    }
    s = ccoe_st_write(out_path, t, n, meta, k / 2, err);
    free(t);
    loaded_free(&x);
    return s;
}

/* Copies every tensor of `from` into the same-named tensor of `to` (absent ones are skipped). */
static void copy_by_name(ccoe_model *to, const ccoe_model *from)
{
    for (int i = 0; i < to->n_params; i++) {
        const ccoe_param *p = &to->params[i];
        const ccoe_param *q = ccoe_model_find_param(from, p->name);
        if (q && q->numel == p->numel)
            memcpy(to->param_block + p->offset, from->param_block + q->offset,
                   p->numel * sizeof(float));
    }
}

/* Builds the model described by cfg, fills it from `old` by name (and `fill` if given), and
 * writes it to out_path. */
static ccoe_status write_rebuilt(const loaded *old, const ccoe_config *cfg, const char *out_path,
                                 const ccoe_st_file *expert_file, const char *expert_name,
                                 const char *expert_path, ccoe_error *err)
{
    loaded y;
    memset(&y, 0, sizeof y);
    y.cfg = *cfg;
    memcpy(y.domains, old->domains, sizeof y.domains);
    y.n_domains = old->n_domains;
    ccoe_status s =
        build_model(&y, (const char(*)[CCOE_NAME_LEN])y.domains, y.n_domains, err);
    if (s == CCOE_OK) {
        copy_by_name(&y.model, &old->model);
        if (expert_file) {
            int e = ccoe_taskmap_find_expert(&y.taskmap, expert_name);
            for (int i = 0; i < y.model.n_params && s == CCOE_OK; i++) {
                const ccoe_param *p = &y.model.params[i];
                if (p->expert != e)
                    continue;
                s = ccoe_st_read_into(expert_file, relative_name(p, expert_name),
                                      y.model.param_block + p->offset, p->ndim, p->shape, err);
                if (s != CCOE_OK)
                    ccoe_error_wrap(err, "expert file %s does not fit the model", expert_path);
            }
        }
    }
    if (s == CCOE_OK)
        s = ccoe_checkpoint_save(out_path, &y.cfg, &y.model, NULL, &old->st, err);
    loaded_free(&y);
    return s;
}

ccoe_status ccoe_expert_remove(const char *model_path, const char *name, const char *out_path,
                               ccoe_error *err)
{
    loaded x;
    ccoe_status s = load_model(&x, model_path, err);
    ccoe_config cfg = x.cfg;
    if (s == CCOE_OK)
        s = ccoe_taskmap_config_remove(&cfg, name, err);
    if (s == CCOE_OK)
        s = write_rebuilt(&x, &cfg, out_path, NULL, NULL, NULL, err);
    loaded_free(&x);
    return s;
}

ccoe_status ccoe_expert_push(const char *model_path, const char *expert_path,
                             const char *const *domains, int n, const char *out_path,
                             ccoe_error *err)
{
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_st_open(expert_path, &f, err));
    loaded x;
    memset(&x, 0, sizeof x);
    ccoe_status s = CCOE_OK;
    const char *fmt = ccoe_st_meta(f, "ccoe.format");
    const char *name = ccoe_st_meta(f, "expert.name");
    const char *layers_s = ccoe_st_meta(f, "expert.layers");
    const char *own_s = ccoe_st_meta(f, "expert.own_head");
    const char *doms = ccoe_st_meta(f, "expert.domains");
    if (!fmt || strcmp(fmt, "ccoe-expert") != 0 || !name || !layers_s || !own_s || !doms) {
        s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                           "%s is not a ccoe expert file (written by `ccoe pop`): its metadata "
                           "lacks ccoe.format/expert.*",
                           expert_path);
        goto done;
    }
    if ((s = load_model(&x, model_path, err)) != CCOE_OK)
        goto done;
    char vals[N_SHAPE_KEYS][32];
    shape_values(&x.cfg.model, vals);
    const ccoe_model_config legacy = legacy_config(&x.cfg.model);
    char legacy_vals[N_SHAPE_KEYS][32];
    shape_values(&legacy, legacy_vals);
    for (int i = 0; i < N_SHAPE_KEYS; i++) {
        char key[40];
        snprintf(key, sizeof key, "model.%s", k_shape_keys[i]);
        const char *v = ccoe_st_meta(f, key);
        if (!v && i >= 9) /* an expert file from before the key */
            v = legacy_vals[i];
        if (!v || strcmp(v, vals[i]) != 0) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "expert %s does not fit model %s: model.%s is %s in the expert "
                               "file but %s in the model",
                               expert_path, model_path, k_shape_keys[i], v ? v : "(missing)",
                               vals[i]);
            goto done;
        }
    }
    int layers = atoi(layers_s), own = atoi(own_s);
    /* an Eqs. 6-7 expert is FFNs only; Eq. 4/5 experts are whole blocks (older files: blocks) */
    const char *form_s = ccoe_st_meta(f, "expert.form");
    const char *file_kind = form_s && strcmp(form_s, "ffn") == 0 ? "ffn" : "blocks";
    const int file_ffn = strcmp(file_kind, "ffn") == 0;
    const ccoe_form_ops *model_form = ccoe_form_of(&x.cfg);
    if (model_form && strcmp(file_kind, model_form->file_kind) != 0) {
        s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                           "expert %s holds %s but model %s has ccoe.form = %s: push it into a "
                           "model of the same form",
                           expert_path, file_ffn ? "FFNs (ccoe.form = ffn)" : "whole blocks",
                           model_path, model_form->name);
        goto done;
    }
    ccoe_config cfg = x.cfg;
    int e = ccoe_taskmap_find_expert(&x.taskmap, name);
    if (e >= 0) {
        if (x.taskmap.experts[e].layers != layers || x.taskmap.own_head != own) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "expert '%s' in %s has %d layers (own head %d) but the file has "
                               "%d (own head %d): pop it with --remove first to push a "
                               "different shape",
                               name, model_path, x.taskmap.experts[e].layers, x.taskmap.own_head,
                               layers, own);
            goto done;
        }
        if (n > 0) {
            if ((s = ccoe_taskmap_config_remove(&cfg, name, err)) != CCOE_OK ||
                (s = ccoe_taskmap_config_add(&cfg, name, layers, domains, n, err)) != CCOE_OK)
                goto done;
            /* keep the expert's original push position: re-adding appended it; restore */
            snprintf(cfg.ccoe.experts, sizeof cfg.ccoe.experts, "%s", x.cfg.ccoe.experts);
        }
    } else {
        if (!model_form) {
            cfg.ccoe.form = ccoe_form_for_file_kind(file_kind)->id;
            cfg.ccoe.own_head = own;
        } else if (cfg.ccoe.own_head != own) {
            s = ccoe_error_set(err, CCOE_ERR_FORMAT,
                               "expert %s has own_head %d but the model's experts have %d",
                               expert_path, own, cfg.ccoe.own_head);
            goto done;
        }
        const char *list[CCOE_MAX_DOMAINS];
        char buf[CCOE_STR];
        int cnt = n;
        if (n > 0) {
            for (int i = 0; i < n && i < CCOE_MAX_DOMAINS; i++)
                list[i] = domains[i];
        } else {
            snprintf(buf, sizeof buf, "%s", doms);
            char *save = NULL;
            cnt = 0;
            for (char *tok = strtok_r(buf, " ", &save); tok && cnt < CCOE_MAX_DOMAINS;
                 tok = strtok_r(NULL, " ", &save))
                list[cnt++] = tok;
        }
        if ((s = ccoe_taskmap_config_add(&cfg, name, layers, list, cnt, err)) != CCOE_OK)
            goto done;
    }
    s = write_rebuilt(&x, &cfg, out_path, f, name, expert_path, err);
done:
    loaded_free(&x);
    ccoe_st_close(f);
    return s;
}

/* The training config of ccoe_expert_train: MODEL's config with the expert added (or its
 * routes replaced) and ccoe.train_expert set. */
static ccoe_status expert_train_config(const ccoe_expert_train_opts *o, ccoe_config *out,
                                       ccoe_error *err)
{
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    /* the name becomes a folder (runs/expert-NAME) and a file (NAME.expert): check it before
     * anything is created */
    CCOE_TRY(ccoe_taskmap_check_name(o->name, err));
    FILE *note = !o->comm || o->comm->rank == 0 ? stderr : NULL; /* printed once */
    CCOE_TRY(ccoe_checkpoint_open_log(o->model, &cfg, &f, note, err));
    char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int nd = ccoe_checkpoint_domains(f, &cfg, names);
    ccoe_st_close(f);
    ccoe_taskmap g;
    CCOE_TRY(ccoe_taskmap_build(&g, &cfg, (const char(*)[CCOE_NAME_LEN])names, nd, err));
    const int e = ccoe_taskmap_find_expert(&g, o->name);
    if (e < 0) {
        if (o->n_domains == 0)
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "%s has no expert '%s': a new expert needs --domain D (the "
                                  "domains it serves)",
                                  o->model, o->name);
        if (g.n_experts == 0) {
            char set[64];
            snprintf(set, sizeof set, "ccoe.form=%s", o->form ? o->form : "tail");
            CCOE_TRY(ccoe_config_set(&cfg, set, err));
            if (!ccoe_form_of(&cfg)) {
                char forms[128];
                ccoe_form_list_names(forms, sizeof forms);
                return ccoe_error_set(err, CCOE_ERR_ARG,
                                      "--form none cannot hold an expert: use one of %s", forms);
            }
        } else if (o->form) {
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "--form only applies to a model without experts; %s already "
                                  "has experts of its form",
                                  o->model);
        }
        CCOE_TRY(ccoe_taskmap_config_add(&cfg, o->name, o->layers > 0 ? o->layers : 1,
                                        o->domains, o->n_domains, err));
    } else {
        if (o->layers > 0 && o->layers != g.experts[e].layers)
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "expert '%s' of %s has %d layers, not %d: remove it first "
                                  "(ccoe pop --remove) to train a different size",
                                  o->name, o->model, g.experts[e].layers, o->layers);
        if (o->n_domains > 0) {
            char experts[CCOE_STR];
            snprintf(experts, sizeof experts, "%s", cfg.ccoe.experts);
            CCOE_TRY(ccoe_taskmap_config_remove(&cfg, o->name, err));
            CCOE_TRY(ccoe_taskmap_config_add(&cfg, o->name, g.experts[e].layers, o->domains,
                                            o->n_domains, err));
            memcpy(cfg.ccoe.experts, experts, sizeof experts); /* keep its push position */
        }
    }
    if (strlen(o->name) >= sizeof cfg.ccoe.train_expert)
        return ccoe_error_set(err, CCOE_ERR_ARG, "expert name '%s' is too long", o->name);
    snprintf(cfg.ccoe.train_expert, sizeof cfg.ccoe.train_expert, "%s", o->name);
    if (o->out_dir) {
        if (strlen(o->out_dir) >= sizeof cfg.train.out_dir)
            return ccoe_error_set(err, CCOE_ERR_ARG, "-o %s: path too long", o->out_dir);
        snprintf(cfg.train.out_dir, sizeof cfg.train.out_dir, "%s", o->out_dir);
    } else {
        snprintf(cfg.train.out_dir, sizeof cfg.train.out_dir, "runs/expert-%.40s", o->name);
    }
    for (int i = 0; i < o->n_sets; i++)
        CCOE_TRY(ccoe_config_set(&cfg, o->sets[i], err));
    CCOE_TRY(ccoe_session_validate(&cfg, err));
    *out = cfg;
    return CCOE_OK;
}

/* Rank 0: pop the trained expert out of the run's checkpoint and push it into MODEL. */
static ccoe_status expert_push_trained(const ccoe_expert_train_opts *o, const ccoe_config *cfg,
                                       ccoe_error *err)
{
    char ckpt[CCOE_STR + 64], xfile[CCOE_STR + 64 + CCOE_NAME_LEN];
    snprintf(ckpt, sizeof ckpt, "%s/checkpoint.safetensors", cfg->train.out_dir);
    snprintf(xfile, sizeof xfile, "%s/%s.expert", cfg->train.out_dir, o->name);
    CCOE_TRY(ccoe_expert_pop(ckpt, o->name, xfile, err));
    ccoe_status s = ccoe_expert_push(o->model, xfile, o->domains, o->n_domains, o->push_to, err);
    if (s != CCOE_OK)
        return ccoe_error_wrap(err, "pushing the trained expert %s", xfile);
    if (!o->quiet)
        printf("expert file: %s\npushed into: %s\n", xfile, o->push_to);
    return CCOE_OK;
}

ccoe_status ccoe_expert_train(const ccoe_expert_train_opts *o, ccoe_error *err)
{
    ccoe_comm serial, *c = o->comm;
    if (!c) {
        ccoe_comm_serial(&serial);
        c = &serial;
    }
    ccoe_config cfg;
    /* every rank builds the config from the same files; one agreement, so a rank that failed
     * alone (a file its node cannot read) stops all of them */
    CCOE_TRY(ccoe_comm_agree(c, expert_train_config(o, &cfg, err), err));
    ccoe_train_opts to = {.init_from = o->model,
                          .force = o->force,
                          .progress = o->progress,
                          .quiet = o->quiet,
                          .comm = o->comm};
    CCOE_TRY(ccoe_train_run(&cfg, &to, err));
    if (!o->push_to)
        return CCOE_OK;
    return ccoe_comm_agree(c, c->rank == 0 ? expert_push_trained(o, &cfg, err) : CCOE_OK, err);
}
