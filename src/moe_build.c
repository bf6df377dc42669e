/* moe_build.c - sparse upcycling and the Branch-Train-MiX merge (moe_build.h;
 * papers/upcycle-merge.md).
 *
 * Both follow one pattern: open the input checkpoint and build its model; derive the output's
 * config (the input's with a new [moe] section, and for the merge no [ccoe] experts); build the
 * output model and initialise it as a fresh run would (so the routers get the MoE layer's own
 * initialisation); then walk the output's parameter list and fill each tensor from the input:
 *   - a tensor of an MoE layer's expert k (ccoe_moe_tensor.expert = k): the FFN tensor of the
 *     same role ("experts.k.fc.weight" -> "mlp.fc.weight") of the block the layer is in, taken
 *     from the dense block (upcycle) or from the path k would run there (merge);
 *   - any other tensor of an MoE layer (router.weight, router.noise_weight, and whatever a gate
 *     adds outside the experts): left at the fresh initialisation, or zeroed;
 *   - every other tensor: by name (upcycle), or the mean over the paths (merge).
 * The output is written only after every tensor has been filled and checked.
 */
#include "moe_build.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "config.h"
#include "form.h"
#include "gate.h"
#include "gemm.h"
#include "model.h"
#include "moe.h"
#include "session.h"
#include "taskmap.h"

/* A model read from (or built for) a checkpoint, without data. */
typedef struct built {
    ccoe_config cfg;
    ccoe_taskmap taskmap;
    ccoe_gemm gemm;
    ccoe_model model;
    char domains[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int n_domains;
    int have_model;
} built;

static ccoe_status build(built *x, ccoe_error *err)
{
    CCOE_TRY(ccoe_taskmap_build(&x->taskmap, &x->cfg, (const char(*)[CCOE_NAME_LEN])x->domains,
                                x->n_domains, err));
    CCOE_TRY(ccoe_gemm_init(&x->gemm, CCOE_GEMM_REF, 1, err));
    CCOE_TRY(ccoe_model_init_moe(&x->model, &x->cfg.model, &x->taskmap, &x->cfg.moe, 1, 1,
                                 &x->gemm, 1, err));
    x->have_model = 1;
    return CCOE_OK;
}

static void built_free(built *x)
{
    if (x->have_model)
        ccoe_model_free(&x->model);
    x->have_model = 0;
}

/* Opens in_path as a checkpoint and loads its parameters into x (memset first). */
static ccoe_status load(built *x, const char *path, ccoe_error *err)
{
    memset(x, 0, sizeof *x);
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_checkpoint_open(path, &x->cfg, &f, err));
    x->n_domains = ccoe_checkpoint_domains(f, &x->cfg, x->domains);
    ccoe_status s = build(x, err);
    if (s == CCOE_OK)
        s = ccoe_checkpoint_load(f, path, &x->model, NULL, NULL, err);
    ccoe_st_close(f);
    return s;
}

/* Applies "KEY=VALUE" to cfg (our own settings: a failure names the key). */
static ccoe_status set_str(ccoe_config *cfg, const char *key, const char *value, ccoe_error *err)
{
    char a[CCOE_STR + 64];
    snprintf(a, sizeof a, "%s=%s", key, value);
    return ccoe_config_set(cfg, a, err);
}

static ccoe_status set_int(ccoe_config *cfg, const char *key, int value, ccoe_error *err)
{
    char v[24];
    snprintf(v, sizeof v, "%d", value);
    return set_str(cfg, key, v, err);
}

/* The output's [moe]: gate, E, K, every from o (K and E checked against each other first, with
 * the command's option names), the balancing losses off for a gate without a router (they
 * would be refused), then o->sets (moe.* only: the model comes from the input). */
static ccoe_status derive_moe(ccoe_config *cfg, const ccoe_build_opts *o, int E, int every,
                              const char *what, ccoe_error *err)
{
    const char *gname = o->gate ? o->gate : "topk";
    const ccoe_gate_ops *g = ccoe_gate_find(gname);
    if (!g)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--gate %s is not a gate of the registry: use one of `ccoe "
                              "help-config`'s moe.gate values other than none",
                              gname);
    if (E < 1 || E > CCOE_GATE_MAX_EXPERTS)
        return ccoe_error_set(err, CCOE_ERR_ARG, "%s: %d experts is out of range 1..%d", what, E,
                              CCOE_GATE_MAX_EXPERTS);
    int K = o->top_k;
    if (g->flags & CCOE_GATE_ALL_EXPERTS)
        K = K > 0 ? K : E;
    if (g->flags & CCOE_GATE_ONE_EXPERT)
        K = K > 0 ? K : 1;
    if (K <= 0)
        K = E < 2 ? E : 2;
    if (K > E)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "--top-k %d exceeds the %d experts (%s): each token picks at most "
                              "E experts; use --top-k <= %d",
                              K, E, what, E);
    CCOE_TRY(set_str(cfg, "moe.gate", gname, err));
    CCOE_TRY(set_int(cfg, "moe.n_experts", E, err));
    CCOE_TRY(set_int(cfg, "moe.top_k", K, err));
    CCOE_TRY(set_int(cfg, "moe.every", every, err));
    CCOE_TRY(set_int(cfg, "moe.expert_hidden", 0, err));
    if (!(g->flags & CCOE_GATE_ROUTER)) {
        CCOE_TRY(set_int(cfg, "moe.w_switch", 0, err));
        CCOE_TRY(set_int(cfg, "moe.w_z", 0, err));
        CCOE_TRY(set_int(cfg, "moe.w_importance", 0, err));
    }
    for (int i = 0; i < o->n_sets; i++) {
        if (strncmp(o->sets[i], "moe.", 4) != 0)
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "--set %s: only moe.* keys may be set here (the model, data "
                                  "and training keys come from the input checkpoint)",
                                  o->sets[i]);
        CCOE_TRY(ccoe_config_set(cfg, o->sets[i], err));
    }
    if (cfg->moe.expert_hidden != 0 && cfg->moe.expert_hidden != cfg->model.ffn_hidden)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "moe.expert_hidden = %d: an expert copied from an FFN has that "
                              "FFN's width (model.ffn_hidden = %d); leave moe.expert_hidden 0",
                              cfg->moe.expert_hidden, cfg->model.ffn_hidden);
    return ccoe_session_validate(cfg, err);
}

/* The report's sums_to_one and the --set line that describes the output's [moe]. */
static void describe(const ccoe_config *cfg, const ccoe_model *m, ccoe_build_report *rep)
{
    const ccoe_gate_ops *g = ccoe_gate_find(cfg->moe.gate);
    rep->n_experts = cfg->moe.n_experts;
    rep->top_k = cfg->moe.top_k;
    rep->n_moe_layers = m->n_moe;
    /* every gate but top-k with renormalize = false combines with weights summing to one */
    rep->sums_to_one = !(g && (g->flags & CCOE_GATE_RENORM_OPT) && !cfg->moe.renormalize);
    snprintf(rep->sets, sizeof rep->sets,
             "--set moe.gate=%s --set moe.n_experts=%d --set moe.top_k=%d --set moe.every=%d",
             cfg->moe.gate, cfg->moe.n_experts, cfg->moe.top_k, cfg->moe.every);
    ccoe_config def;
    ccoe_config_defaults(&def);
    if (cfg->moe.w_switch != def.moe.w_switch || cfg->moe.w_z != def.moe.w_z) {
        size_t n = strlen(rep->sets);
        snprintf(rep->sets + n, sizeof rep->sets - n, " --set moe.w_switch=%g --set moe.w_z=%g",
                 cfg->moe.w_switch, cfg->moe.w_z);
    }
}

/* For MoE layer tensor t of layer i: its model parameter, via the layer's own tensor list. */
static const ccoe_param *moe_param(const ccoe_model *m, int i, int t, ccoe_moe_tensor *mt)
{
    char name[CCOE_PARAM_NAME];
    ccoe_moe_tensor_at(&m->moe, t, mt);
    snprintf(name, sizeof name, "blocks.%d.moe.%s", m->moe_layer[i], mt->name);
    return ccoe_model_find_param(m, name);
}

/* The role of an expert tensor inside the dense FFN: "experts.3.fc.weight" -> "mlp.fc.weight". */
static int ffn_role(const char *moe_name, char *out, size_t cap)
{
    const char *p = strncmp(moe_name, "experts.", 8) == 0 ? strchr(moe_name + 8, '.') : NULL;
    if (!p)
        return 0;
    return snprintf(out, cap, "mlp.%s", p + 1) < (int)cap;
}

static ccoe_status copy_into(ccoe_model *to, const ccoe_param *d, const ccoe_model *from,
                             const char *src, const char *in_path, ccoe_error *err);

/* An MoE expert tensor d from the FFN tensor src: of another size when the output's experts
 * are not the FFN's width (an expert size or split the [moe] section sets). */
static ccoe_status copy_ffn(ccoe_model *to, const ccoe_param *d, const ccoe_model *from,
                            const char *src, const char *in_path, ccoe_error *err)
{
    const ccoe_param *s = ccoe_model_find_param(from, src);
    if (s && s->numel != d->numel)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "%s: expert tensor %s holds %zu values but the FFN tensor %s it "
                              "is copied from holds %zu: experts built from an FFN must have "
                              "that FFN's width; leave moe.expert_hidden 0 and do not split "
                              "the experts",
                              in_path, d->name, d->numel, src, s->numel);
    return copy_into(to, d, from, src, in_path, err);
}

static ccoe_status copy_into(ccoe_model *to, const ccoe_param *d, const ccoe_model *from,
                             const char *src, const char *in_path, ccoe_error *err)
{
    const ccoe_param *s = ccoe_model_find_param(from, src);
    if (!s || s->numel != d->numel)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: tensor %s for %s is %s: the input's layout does not match "
                              "its config (check `ccoe info %s`)",
                              in_path, src, d->name, s ? "of another size" : "missing", in_path);
    memcpy(to->param_block + d->offset, from->param_block + s->offset, d->numel * sizeof(float));
    return CCOE_OK;
}

/* Marks the output's MoE tensors: is_moe[p] = 1 for every tensor of an MoE layer, and fills
 * those of experts from fill_expert, zeroes the rest when asked. */
typedef ccoe_status (*expert_filler)(void *ctx, const ccoe_param *d, int layer, int k,
                                     const char *role, ccoe_error *err);

static ccoe_status fill_moe(ccoe_model *out, const ccoe_build_opts *o, unsigned char *is_moe,
                            expert_filler fill, void *ctx, ccoe_build_report *rep,
                            ccoe_error *err)
{
    for (int i = 0; i < out->n_moe; i++)
        for (int t = 0; t < out->moe.n_tensors; t++) {
            ccoe_moe_tensor mt;
            const ccoe_param *d = moe_param(out, i, t, &mt);
            if (!d)
                return ccoe_error_set(err, CCOE_ERR_INTERNAL, "MoE tensor %s of layer %d not "
                                      "in the model", mt.name, out->moe_layer[i]);
            is_moe[d - out->params] = 1;
            char role[CCOE_PARAM_NAME];
            if (mt.expert >= 0 && ffn_role(mt.name, role, sizeof role)) {
                CCOE_TRY(fill(ctx, d, out->moe_layer[i], mt.expert, role, err));
                rep->copied++;
            } else {
                if (o->router == CCOE_ROUTER_ZERO)
                    memset(out->param_block + d->offset, 0, d->numel * sizeof(float));
                rep->fresh++;
            }
        }
    return CCOE_OK;
}

/* Builds the output model for cfg over the input's domains, initialised as a fresh run. */
static ccoe_status build_output(built *y, const built *x, const ccoe_config *cfg, uint64_t seed,
                                ccoe_error *err)
{
    memset(y, 0, sizeof *y);
    y->cfg = *cfg;
    memcpy(y->domains, x->domains, sizeof y->domains);
    y->n_domains = x->n_domains;
    CCOE_TRY(build(y, err));
    ccoe_model_init_weights(&y->model, seed ? seed : cfg->train.seed, CCOE_INIT_RANDOM);
    return CCOE_OK;
}

/* ---- upcycle ---- */

typedef struct up_ctx {
    const built *x;
    ccoe_model *out;
    const char *in_path;
} up_ctx;

static ccoe_status up_fill(void *vctx, const ccoe_param *d, int layer, int k, const char *role,
                           ccoe_error *err)
{
    (void)k;
    up_ctx *c = vctx;
    char src[CCOE_PARAM_NAME + 64];
    snprintf(src, sizeof src, "blocks.%d.%s", layer, role);
    return copy_ffn(c->out, d, &c->x->model, src, c->in_path, err);
}

ccoe_status ccoe_moe_upcycle(const char *in_path, const char *out_path, const ccoe_build_opts *o,
                             ccoe_build_report *rep, ccoe_error *err)
{
    memset(rep, 0, sizeof *rep);
    built x, y;
    memset(&y, 0, sizeof y);
    unsigned char *is_moe = NULL;
    ccoe_status s = load(&x, in_path, err);
    if (s != CCOE_OK)
        goto done;
    if (!ccoe_gate_is_none(x.cfg.moe.gate)) {
        s = ccoe_error_set(err, CCOE_ERR_ARG,
                           "%s already has MoE layers (moe.gate = %s, %d experts): upcycling "
                           "starts from a dense model (moe.gate = none); train this one with "
                           "--init-from instead",
                           in_path, x.cfg.moe.gate, x.cfg.moe.n_experts);
        goto done;
    }
    ccoe_config cfg = x.cfg;
    char what[32];
    snprintf(what, sizeof what, "--experts %d", o->n_experts);
    if ((s = derive_moe(&cfg, o, o->n_experts, o->every > 0 ? o->every : 1, what, err)) !=
        CCOE_OK) {
        ccoe_error_wrap(err, "upcycling %s", in_path);
        goto done;
    }
    if ((s = build_output(&y, &x, &cfg, o->seed, err)) != CCOE_OK)
        goto done;
    is_moe = calloc((size_t)y.model.n_params, 1);
    if (!is_moe) {
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory upcycling %s", in_path);
        goto done;
    }
    up_ctx c = {.x = &x, .out = &y.model, .in_path = in_path};
    if ((s = fill_moe(&y.model, o, is_moe, up_fill, &c, rep, err)) != CCOE_OK)
        goto done;
    for (int i = 0; i < y.model.n_params && s == CCOE_OK; i++) {
        if (is_moe[i])
            continue;
        s = copy_into(&y.model, &y.model.params[i], &x.model, y.model.params[i].name, in_path,
                      err);
        rep->copied++;
    }
    if (s != CCOE_OK)
        goto done;
    describe(&cfg, &y.model, rep);
    s = ccoe_checkpoint_save(out_path, &y.cfg, &y.model, NULL, NULL, err);
done:
    free(is_moe);
    built_free(&y);
    built_free(&x);
    return s;
}

/* ---- merge ---- */

/* The tensor that plays the role of the output's base tensor `name` on path p of the CCoE
 * model (p < n_experts: that expert's path; p = n_experts: the base path), into src. */
static void path_source(const ccoe_taskmap *g, int p, const char *name, char *src, size_t cap)
{
    snprintf(src, cap, "%s", name);
    if (p >= g->n_experts)
        return;
    const ccoe_expert_spec *x = &g->experts[p];
    int l, n = 0;
    if (sscanf(name, "blocks.%d.%n", &l, &n) == 1 && n > 0) {
        const char *rest = name + n;
        const int ffn_only = ccoe_form_expert_ffn(g->ops);
        if (l >= x->branch && l < x->branch + x->layers &&
            (!ffn_only || strncmp(rest, "mlp.", 4) == 0))
            snprintf(src, cap, "experts.%s.blocks.%d.%s", x->name, l - x->branch, rest);
        return;
    }
    if (g->own_head && (strncmp(name, "lnf.", 4) == 0 || strcmp(name, "lm_head.weight") == 0))
        snprintf(src, cap, "experts.%s.%s", x->name, name);
}

typedef struct merge_ctx {
    const built *x;
    ccoe_model *out;
    const char *in_path;
    int n_paths; /* the paths averaged: every expert's, and the base's with with_base */
} merge_ctx;

static ccoe_status merge_fill(void *vctx, const ccoe_param *d, int layer, int k,
                              const char *role, ccoe_error *err)
{
    merge_ctx *c = vctx;
    char name[CCOE_PARAM_NAME + 32], src[CCOE_PARAM_NAME + 96];
    snprintf(name, sizeof name, "blocks.%d.%s", layer, role);
    path_source(&c->x->taskmap, k, name, src, sizeof src);
    return copy_ffn(c->out, d, &c->x->model, src, c->in_path, err);
}

/* d = the mean over the paths of their tensor for d's name; exactly the common value when the
 * paths agree (shared tensors, and the non-FFN tensors of form ffn). *averaged = 1 if not. */
static ccoe_status merge_mean(merge_ctx *c, const ccoe_param *d, int *averaged, ccoe_error *err)
{
    const ccoe_model *in = &c->x->model;
    const float *srcs[CCOE_MAX_EXPERTS + 1];
    for (int p = 0; p < c->n_paths; p++) {
        char src[CCOE_PARAM_NAME + 64];
        path_source(&c->x->taskmap, p, d->name, src, sizeof src);
        const ccoe_param *s = ccoe_model_find_param(in, src);
        if (!s && strcmp(src, "lm_head.weight") == 0 && in->cfg.tied_head)
            s = ccoe_model_find_param(in, "wte");
        if (!s || s->numel != d->numel)
            return ccoe_error_set(err, CCOE_ERR_FORMAT,
                                  "%s: tensor %s for %s is %s: the input's layout does not "
                                  "match its config (check `ccoe info %s`)",
                                  c->in_path, src, d->name, s ? "of another size" : "missing",
                                  c->in_path);
        srcs[p] = in->param_block + s->offset;
    }
    float *dst = c->out->param_block + d->offset;
    *averaged = 0;
    for (int p = 1; p < c->n_paths && !*averaged; p++)
        *averaged = memcmp(srcs[p], srcs[0], d->numel * sizeof(float)) != 0;
    if (!*averaged) {
        memcpy(dst, srcs[0], d->numel * sizeof(float));
        return CCOE_OK;
    }
    for (size_t j = 0; j < d->numel; j++) {
        double sum = 0.0;
        for (int p = 0; p < c->n_paths; p++)
            sum += (double)srcs[p][j];
        dst[j] = (float)(sum / (double)c->n_paths);
    }
    return CCOE_OK;
}

/* The domain gate sends domain d to expert d: a note when the CCoE routes say otherwise (the
 * merged model then does not run each domain's CCoE path). */
static void domain_gate_note(const ccoe_taskmap *g, const ccoe_config *cfg, int with_base,
                             ccoe_build_report *rep)
{
    const ccoe_gate_ops *gate = ccoe_gate_find(cfg->moe.gate);
    if (!gate || !(gate->flags & CCOE_GATE_DOMAIN))
        return;
    for (int d = 0; d < g->n_domains; d++) {
        const int want = g->route[d] >= 0 ? g->route[d] : with_base ? g->n_experts : -1;
        if (want == d)
            continue;
        snprintf(rep->note, sizeof rep->note,
                 "gate domain sends domain %d (%s) to expert %d, but its CCoE route is %s: the "
                 "merged model runs the CCoE paths only when ccoe.routes sends domain d to "
                 "expert d (the base: index %d with --with-base)",
                 d, g->domains[d], d, g->route[d] >= 0 ? g->experts[g->route[d]].name : "the base",
                 g->n_experts);
        return;
    }
}

ccoe_status ccoe_moe_merge(const char *in_path, const char *out_path, const ccoe_build_opts *o,
                           ccoe_build_report *rep, ccoe_error *err)
{
    memset(rep, 0, sizeof *rep);
    built x, y;
    memset(&y, 0, sizeof y);
    unsigned char *is_moe = NULL;
    ccoe_status s = load(&x, in_path, err);
    if (s != CCOE_OK)
        goto done;
    const ccoe_taskmap *g = &x.taskmap;
    const int L = x.cfg.model.n_layer;
    if (!g->ops || g->n_experts == 0) {
        s = ccoe_error_set(err, CCOE_ERR_ARG,
                           "%s has no CCoE experts (ccoe.form = %s, ccoe.experts = '%s'): merge "
                           "turns a CCoE model's experts into an MoE; push or train experts "
                           "first (`ccoe push`, `ccoe train-expert`), or use `ccoe upcycle` for "
                           "a dense model",
                           in_path, g->ops ? g->ops->name : "none", x.cfg.ccoe.experts);
        goto done;
    }
    if (!ccoe_gate_is_none(x.cfg.moe.gate)) {
        s = ccoe_error_set(err, CCOE_ERR_ARG,
                           "%s already has MoE layers in its base (moe.gate = %s): merge needs "
                           "dense base blocks (moe.gate = none)",
                           in_path, x.cfg.moe.gate);
        goto done;
    }
    for (int e = 0; e < g->n_experts; e++)
        if (g->experts[e].branch + g->experts[e].layers > L) {
            s = ccoe_error_set(err, CCOE_ERR_ARG,
                               "%s: expert '%s' has %d layers after CoE layer %d, more than the "
                               "%d base blocks there: its extra blocks have no MoE layer to go "
                               "to; merge models whose experts fit the base depth",
                               in_path, g->experts[e].name, g->experts[e].layers,
                               g->experts[e].branch, L - g->experts[e].branch);
            goto done;
        }
    if (g->own_head && x.cfg.model.tied_head) {
        s = ccoe_error_set(err, CCOE_ERR_ARG,
                           "%s: its experts own LM heads but the base's head is tied to wte: "
                           "the merged model has one head and one embedding, and averaging "
                           "the experts' heads into wte would change the embedding; merge a "
                           "model with model.tied_head = false or ccoe.own_head = false",
                           in_path);
        goto done;
    }
    ccoe_config cfg = x.cfg;
    ccoe_config def;
    ccoe_config_defaults(&def);
    cfg.ccoe = def.ccoe; /* a plain MoE model: the experts are now the MoE layers' */
    const int E = g->n_experts + (o->with_base ? 1 : 0);
    char what[80];
    snprintf(what, sizeof what, "the model's %d CCoE experts%s", g->n_experts,
             o->with_base ? " and the base" : "");
    if ((s = derive_moe(&cfg, o, E, 1, what, err)) != CCOE_OK) {
        ccoe_error_wrap(err, "merging %s", in_path);
        goto done;
    }
    if ((s = build_output(&y, &x, &cfg, o->seed, err)) != CCOE_OK)
        goto done;
    is_moe = calloc((size_t)y.model.n_params, 1);
    if (!is_moe) {
        s = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory merging %s", in_path);
        goto done;
    }
    merge_ctx c = {.x = &x, .out = &y.model, .in_path = in_path, .n_paths = E};
    if ((s = fill_moe(&y.model, o, is_moe, merge_fill, &c, rep, err)) != CCOE_OK)
        goto done;
    for (int i = 0; i < y.model.n_params && s == CCOE_OK; i++) {
        if (is_moe[i])
            continue;
        int averaged = 0;
        s = merge_mean(&c, &y.model.params[i], &averaged, err);
        if (averaged)
            rep->averaged++;
        else
            rep->copied++;
    }
    if (s != CCOE_OK)
        goto done;
    describe(&cfg, &y.model, rep);
    domain_gate_note(&x.taskmap, &cfg, o->with_base, rep);
    s = ccoe_checkpoint_save(out_path, &y.cfg, &y.model, NULL, NULL, err);
done:
    free(is_moe);
    built_free(&y);
    built_free(&x);
    return s;
}
