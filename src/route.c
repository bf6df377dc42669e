/* route.c - routing without a domain label: the DEMix posterior over paths, the domain router
 * (a classifier on the base hidden state), routed evaluation and routed generation
 * (route.h; the maths in papers/routing.md). */
#include "route.h"

#include <assert.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "rng.h"

#define CCOE_LN2 0.693147180559945309417232121458176568

static const char *const k_mode_names[] = {"rule", "posterior", "classifier"};

int ccoe_routing_parse(const char *name, ccoe_routing_mode *mode)
{
    for (int i = 0; i < 3; i++)
        if (strcmp(name, k_mode_names[i]) == 0) {
            *mode = (ccoe_routing_mode)i;
            return 0;
        }
    return -1;
}

const char *ccoe_routing_name(ccoe_routing_mode mode)
{
    return (unsigned)mode < 3 ? k_mode_names[mode] : "?";
}

/* ---- the domain router ---- */

ccoe_status ccoe_router_init(ccoe_domain_router *r, int layer, int C, int H, int D, int Tn,
                             ccoe_error *err)
{
    memset(r, 0, sizeof *r);
    if (C < 1 || C > CCOE_ROUTER_MAX || H < 0 || H > CCOE_ROUTER_MAX || D < 1 ||
        D > CCOE_ROUTER_MAX_D || Tn < 1 || Tn > 1 << 20)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "domain router of width %d, %d hidden units and %d domains: the "
                              "width and hidden units must be 1..%d (hidden 0 = linear) and the "
                              "domains 1..%d",
                              C, H, D, CCOE_ROUTER_MAX, CCOE_ROUTER_MAX_D);
    const int K = H > 0 ? H : C;
    r->layer = layer;
    r->C = C;
    r->H = H;
    r->D = D;
    r->Tn = Tn;
    r->n = (size_t)H * C + (size_t)H + (size_t)D * K + (size_t)D;
    r->params = ccoe_aligned_calloc((r->n + 2 * (size_t)Tn * C) * sizeof(float));
    if (!r->params)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the domain router");
    r->w1 = r->params;
    r->b1 = r->w1 + (size_t)H * C;
    r->w2 = r->b1 + H;
    r->b2 = r->w2 + (size_t)D * K;
    r->mu = r->params + r->n;
    r->sigma = r->mu + (size_t)Tn * C;
    for (size_t i = 0; i < (size_t)Tn * C; i++)
        r->sigma[i] = 1.0f;
    return CCOE_OK;
}

void ccoe_router_free(ccoe_domain_router *r)
{
    free(r->params);
    memset(r, 0, sizeof *r);
}

void ccoe_router_init_weights(ccoe_domain_router *r, uint64_t seed)
{
    ccoe_rng g;
    ccoe_rng_seed(&g, seed);
    const int K = r->H > 0 ? r->H : r->C;
    for (size_t i = 0; i < (size_t)r->H * r->C; i++)
        r->w1[i] = (float)(ccoe_rng_normal(&g) / sqrt((double)r->C));
    for (size_t i = 0; i < (size_t)r->D * K; i++)
        r->w2[i] = (float)(ccoe_rng_normal(&g) / sqrt((double)K));
    memset(r->b1, 0, (size_t)r->H * sizeof(float));
    memset(r->b2, 0, (size_t)r->D * sizeof(float));
    for (size_t i = 0; i < (size_t)r->Tn * r->C; i++) {
        r->mu[i] = 0.0f;
        r->sigma[i] = 1.0f;
    }
}

/* One row at position t: u (C) standardised input, a (K) the last hidden (u itself when
 * linear), z (D). */
static void router_row(const ccoe_domain_router *r, const float *x, int t, double *u,
                       double *a, double *z)
{
    const int C = r->C, H = r->H, D = r->D, K = H > 0 ? H : C;
    const size_t at = (size_t)(t < r->Tn ? t : r->Tn - 1) * C;
    for (int c = 0; c < C; c++)
        u[c] = ((double)x[c] - r->mu[at + c]) / r->sigma[at + c];
    const double *in = u;
    if (H > 0) {
        for (int h = 0; h < H; h++) {
            double s = r->b1[h];
            const float *w = r->w1 + (size_t)h * C;
            for (int c = 0; c < C; c++)
                s += (double)w[c] * u[c];
            a[h] = tanh(s);
        }
        in = a;
    } else if (a != u) {
        memcpy(a, u, (size_t)C * sizeof *a);
    }
    for (int d = 0; d < D; d++) {
        double s = r->b2[d];
        const float *w = r->w2 + (size_t)d * K;
        for (int k = 0; k < K; k++)
            s += (double)w[k] * in[k];
        z[d] = s;
    }
}

static int argmax_d(const double *x, int n)
{
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

void ccoe_router_forward(const ccoe_domain_router *r, double *logits, const float *x, int N,
                         int T)
{
    double u[CCOE_ROUTER_MAX], a[CCOE_ROUTER_MAX];
    for (int i = 0; i < N; i++)
        router_row(r, x + (size_t)i * r->C, i % T, u, a, logits + (size_t)i * r->D);
}

void ccoe_router_logits_at(const ccoe_domain_router *r, double *z, const float *x, int t)
{
    double u[CCOE_ROUTER_MAX], a[CCOE_ROUTER_MAX];
    router_row(r, x, t, u, a, z);
}

double ccoe_router_loss(const ccoe_domain_router *r, const float *x, const int32_t *labels,
                        int N, int T, float *grads, long *correct)
{
    const int C = r->C, H = r->H, D = r->D, K = H > 0 ? H : C;
    double u[CCOE_ROUTER_MAX], a[CCOE_ROUTER_MAX], da[CCOE_ROUTER_MAX], z[CCOE_ROUTER_MAX_D];
    long n = 0, ok = 0;
    for (int i = 0; i < N; i++)
        n += labels[i] >= 0;
    double loss = 0.0;
    float *gw1 = grads, *gb1 = grads ? grads + (size_t)H * C : NULL;
    float *gw2 = grads ? gb1 + H : NULL, *gb2 = grads ? gw2 + (size_t)D * K : NULL;
    for (int i = 0; i < N; i++) {
        const int y = labels[i];
        if (y < 0)
            continue;
        assert(y < D);
        router_row(r, x + (size_t)i * C, i % T, u, a, z);
        ok += argmax_d(z, D) == y;
        const double mx = z[argmax_d(z, D)];
        double se = 0.0;
        for (int d = 0; d < D; d++)
            se += exp(z[d] - mx);
        const double lse = mx + log(se);
        loss += lse - z[y];
        if (!grads)
            continue;
        /* dz = (softmax(z) - onehot(y)) / n */
        memset(da, 0, (size_t)K * sizeof *da);
        for (int d = 0; d < D; d++) {
            const double dz = (exp(z[d] - lse) - (d == y)) / (double)n;
            float *gw = gw2 + (size_t)d * K;
            const float *w = r->w2 + (size_t)d * K;
            for (int k = 0; k < K; k++) {
                gw[k] += (float)(dz * a[k]);
                da[k] += dz * w[k];
            }
            gb2[d] += (float)dz;
        }
        for (int h = 0; h < H; h++) { /* through tanh: d(pre) = da (1 - a^2) */
            const double dp = da[h] * (1.0 - a[h] * a[h]);
            float *gw = gw1 + (size_t)h * C;
            for (int c = 0; c < C; c++)
                gw[c] += (float)(dp * u[c]);
            gb1[h] += (float)dp;
        }
    }
    if (correct)
        *correct = ok;
    return n > 0 ? loss / (double)n : 0.0;
}

int ccoe_route_feature_layer(const ccoe_model *m)
{
    int k = m->cfg.n_layer;
    for (int p = 1; p < m->n_paths; p++) {
        const ccoe_path *pa = &m->paths[p];
        const int at = pa->ffn_expert >= 0 ? pa->ffn_from : pa->n_base;
        if (at < k)
            k = at;
    }
    return k;
}

void ccoe_route_prefix_features(const ccoe_model *m, int layer, int b, int T, float *out)
{
    const int C = m->cfg.n_embd;
    double sum[CCOE_ROUTER_MAX];
    memset(sum, 0, (size_t)C * sizeof *sum);
    for (int t = 0; t < T; t++) {
        const float *h = ccoe_model_base_hidden(m, layer, b, t);
        float *o = out + (size_t)t * C;
        for (int c = 0; c < C; c++) {
            sum[c] += h[c];
            o[c] = (float)(sum[c] / (double)(t + 1));
        }
    }
}

ccoe_status ccoe_routing_check(const ccoe_model *m, const ccoe_routing *rt, ccoe_error *err)
{
    if (rt->mode == CCOE_ROUTING_RULE)
        return CCOE_OK;
    if (m->n_paths < 2)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "routing %s chooses among CCoE experts, and this model has none "
                              "(ccoe.experts is empty): use --routing rule",
                              ccoe_routing_name(rt->mode));
    if (m->n_moe > 0 && strcmp(m->moe.cfg.gate, "domain") == 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "routing %s: the model's MoE gate is 'domain', which itself needs "
                              "the domain label: use --routing rule",
                              ccoe_routing_name(rt->mode));
    if (ccoe_model_forward_collective(m))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "routing %s runs every path on a rank's own rows: not with a "
                              "forward that exchanges rows between ranks (expert-parallel MoE "
                              "or active CCoE placement); evaluate the gathered model",
                              ccoe_routing_name(rt->mode));
    if (m->cfg.n_embd > CCOE_ROUTER_MAX)
        return ccoe_error_set(err, CCOE_ERR_ARG, "routing %s: n_embd %d is above %d",
                              ccoe_routing_name(rt->mode), m->cfg.n_embd, CCOE_ROUTER_MAX);
    if (rt->mode == CCOE_ROUTING_CLASSIFIER && !rt->router)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "routing classifier needs a domain router in the checkpoint: "
                              "train one with `ccoe train-router CHECKPOINT -o OUT`");
    if (rt->mode == CCOE_ROUTING_CLASSIFIER &&
        (rt->router->C != m->cfg.n_embd || rt->router->D != m->taskmap.n_domains ||
         rt->router->layer != ccoe_route_feature_layer(m)))
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "the domain router (width %d, %d domains, layer %d) does not fit "
                              "this model (width %d, %d domains, layer %d): train it again with "
                              "`ccoe train-router`",
                              rt->router->C, rt->router->D, rt->router->layer, m->cfg.n_embd,
                              m->taskmap.n_domains, ccoe_route_feature_layer(m));
    return CCOE_OK;
}

/* ---- router training ---- */

ccoe_status ccoe_router_train(ccoe_model *m, ccoe_dataset *ds, ccoe_batch *b,
                              const ccoe_router_train_opts *o, ccoe_domain_router *r,
                              double *val_acc, ccoe_error *err)
{
    const int B = b->maxB, T = ds->T, C = m->cfg.n_embd, N = B * T;
    const int layer = ccoe_route_feature_layer(m);
    if (m->n_paths < 2)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "train-router: the model has no CCoE experts to route to "
                              "(ccoe.experts is empty)");
    if (ds->n_domains < 2)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "train-router: the data has %d domain; a router needs at least 2",
                              ds->n_domains);
    CCOE_TRY(ccoe_router_init(r, layer, C, o->hidden, ds->n_domains, T, err));
    ccoe_router_init_weights(r, o->seed);
    float *feat = malloc((size_t)N * C * sizeof *feat);
    int32_t *lab = malloc((size_t)N * sizeof *lab);
    float *g = calloc(3 * r->n, sizeof *g); /* gradient, Adam's m and v */
    double *s1 = calloc(2 * (size_t)T * C, sizeof *s1);
    if (!feat || !lab || !g || !s1) {
        free(feat);
        free(lab);
        free(g);
        free(s1);
        ccoe_router_free(r);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory training the domain router");
    }
    float *am = g + r->n, *av = am + r->n;
    const int was_train = m->train, was_rbp = m->route_by_path;
    m->train = 0;
    m->route_by_path = 0;
    ccoe_data_seek(ds, 0);
    /* the standardisation: per position and channel, mean and deviation over the first
     * batches (the position embedding's share of a prefix mean is the same in every domain:
     * removing it per position leaves what tells the domains apart) */
    enum { STAT_BATCHES = 16 };
    for (int k = 0; k < STAT_BATCHES; k++) {
        ccoe_data_next_batch(ds, b->tokens, b->targets, b->domains, B);
        ccoe_model_forward(m, b->tokens, NULL, NULL, B, T, NULL);
        for (int i = 0; i < B; i++) {
            ccoe_route_prefix_features(m, layer, i, T, feat + (size_t)i * T * C);
        }
        for (size_t i = 0; i < (size_t)N; i++)
            for (int c = 0; c < C; c++) {
                const double v = feat[i * C + c];
                const size_t at = (i % (size_t)T) * C + c;
                s1[at] += v;
                s1[(size_t)T * C + at] += v * v;
            }
    }
    const double cnt = (double)STAT_BATCHES * B;
    for (size_t i = 0; i < (size_t)T * C; i++) {
        const double mean = s1[i] / cnt, var = s1[(size_t)T * C + i] / cnt - mean * mean;
        r->mu[i] = (float)mean;
        r->sigma[i] = (float)sqrt(var > 1e-12 ? var : 1e-12) + 1e-6f;
    }
    ccoe_data_seek(ds, 0);
    const double b1 = 0.9, b2 = 0.999, eps = 1e-8;
    for (int step = 1; step <= o->steps; step++) {
        /* CCOE_ROUTER_ACCUM batches per step: a batch holds a few sequences, so a few
         * domains, and one batch's gradient is mostly noise */
        memset(g, 0, r->n * sizeof *g);
        long ok = 0;
        double loss = 0.0;
        for (int k = 0; k < CCOE_ROUTER_ACCUM; k++) {
            ccoe_data_next_batch(ds, b->tokens, b->targets, b->domains, B);
            ccoe_model_forward(m, b->tokens, NULL, NULL, B, T, NULL);
            for (int i = 0; i < B; i++) {
                ccoe_route_prefix_features(m, layer, i, T, feat + (size_t)i * T * C);
                for (int t = 0; t < T; t++)
                    lab[(size_t)i * T + t] = b->domains[i];
            }
            long okk = 0;
            loss += ccoe_router_loss(r, feat, lab, N, T, g, &okk) / CCOE_ROUTER_ACCUM;
            ok += okk;
        }
        for (size_t j = 0; j < r->n; j++)
            g[j] /= (float)CCOE_ROUTER_ACCUM;
        const double c1 = 1.0 - pow(b1, step), c2 = 1.0 - pow(b2, step);
        for (size_t j = 0; j < r->n; j++) {
            am[j] = (float)(b1 * am[j] + (1.0 - b1) * g[j]);
            av[j] = (float)(b2 * av[j] + (1.0 - b2) * (double)g[j] * g[j]);
            r->params[j] -= (float)(o->lr * (am[j] / c1) / (sqrt(av[j] / c2) + eps));
        }
        if (o->log && (step == 1 || step % 50 == 0 || step == o->steps))
            fprintf(o->log, "router step %5d  loss %.4f  train_acc %.4f\n", step, loss,
                    (double)ok / (double)N / CCOE_ROUTER_ACCUM);
    }
    /* domain accuracy on validation batches */
    long ok_all = 0, n_all = 0;
    for (int d = 0; d < ds->n_domains; d++)
        for (size_t k = 0; k < 8; k++) {
            const int got = ccoe_data_val_batch(ds, d, k * (size_t)B, b->tokens, b->targets,
                                                b->domains, B);
            if (got == 0)
                break;
            ccoe_model_forward(m, b->tokens, NULL, NULL, got, T, NULL);
            for (int i = 0; i < got; i++) {
                ccoe_route_prefix_features(m, layer, i, T, feat + (size_t)i * T * C);
                for (int t = 0; t < T; t++)
                    lab[(size_t)i * T + t] = b->targets[(size_t)i * T + t] >= 0 ? d : -1;
            }
            long ok = 0;
            for (int i = 0; i < got * T; i++)
                n_all += lab[i] >= 0;
            ccoe_router_loss(r, feat, lab, got * T, T, NULL, &ok);
            ok_all += ok;
        }
    m->train = was_train;
    m->route_by_path = was_rbp;
    if (val_acc)
        *val_acc = n_all > 0 ? (double)ok_all / (double)n_all : NAN;
    free(feat);
    free(lab);
    free(g);
    free(s1);
    return CCOE_OK;
}

/* ---- router in checkpoints ---- */

static const char *const k_router_tensors[] = {"router.domain.w1", "router.domain.b1",
                                               "router.domain.w2", "router.domain.b2",
                                               "router.domain.mu", "router.domain.sigma"};

/* The router's tensors: name, data and shape (w1 and b1 only when H > 0). */
static int router_tensors(const ccoe_domain_router *r, ccoe_st_tensor *t)
{
    const int K = r->H > 0 ? r->H : r->C;
    int n = 0;
    if (r->H > 0) {
        t[n++] = (ccoe_st_tensor){k_router_tensors[0], 2, {r->H, r->C}, r->w1};
        t[n++] = (ccoe_st_tensor){k_router_tensors[1], 1, {r->H}, r->b1};
    }
    t[n++] = (ccoe_st_tensor){k_router_tensors[2], 2, {r->D, K}, r->w2};
    t[n++] = (ccoe_st_tensor){k_router_tensors[3], 1, {r->D}, r->b2};
    t[n++] = (ccoe_st_tensor){k_router_tensors[4], 2, {r->Tn, r->C}, r->mu};
    t[n++] = (ccoe_st_tensor){k_router_tensors[5], 2, {r->Tn, r->C}, r->sigma};
    return n;
}

static void domain_list(const ccoe_model *m, char *buf, size_t cap)
{
    buf[0] = '\0';
    for (int d = 0, used = 0; d < m->taskmap.n_domains && (size_t)used < cap; d++)
        used += snprintf(buf + used, cap - (size_t)used, "%s%s", d ? " " : "",
                         m->taskmap.domains[d]);
}

ccoe_status ccoe_router_save(const char *in_path, const char *out_path,
                             const ccoe_domain_router *r, const ccoe_model *m, ccoe_error *err)
{
    ccoe_st_file *f = NULL;
    CCOE_TRY(ccoe_st_open(in_path, &f, err));
    const size_t nt = ccoe_st_count(f), nm = ccoe_st_meta_count(f);
    ccoe_st_tensor *t = calloc(nt + 6, sizeof *t);
    const char **meta = calloc(2 * (nm + 3), sizeof *meta);
    ccoe_status st = CCOE_OK;
    if (!t || !meta) {
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory writing %s", out_path);
        goto done;
    }
    size_t n = 0, k = 0;
    for (size_t i = 0; i < nt; i++) {
        const char *name = ccoe_st_name(f, i);
        if (strncmp(name, "router.domain.", 14) == 0)
            continue; /* an earlier router is replaced */
        const char *dt = ccoe_st_dtype(f, name);
        if (!dt || strcmp(dt, "F32") != 0) {
            st = ccoe_error_set(err, CCOE_ERR_FORMAT,
                                "%s: tensor %s is %s, not F32: not a ccoe checkpoint", in_path,
                                name, dt ? dt : "?");
            goto done;
        }
        t[n].name = name;
        t[n].data = ccoe_st_find(f, name, &t[n].ndim, t[n].shape);
        n++;
    }
    n += (size_t)router_tensors(r, t + n);
    for (size_t i = 0; i < nm; i++) {
        const char *key = ccoe_st_meta_key(f, i);
        if (ccoe_st_is_checksum_key(key) || strncmp(key, "ccoe.router.", 12) == 0)
            continue;
        meta[2 * k] = key;
        meta[2 * k + 1] = ccoe_st_meta(f, key);
        k++;
    }
    char layer[16], hidden[16], domains[CCOE_MAX_DOMAINS * (CCOE_NAME_LEN + 1)];
    snprintf(layer, sizeof layer, "%d", r->layer);
    snprintf(hidden, sizeof hidden, "%d", r->H);
    domain_list(m, domains, sizeof domains);
    const char *extra[6] = {"ccoe.router.layer", layer, "ccoe.router.hidden", hidden,
                            "ccoe.router.domains", domains};
    memcpy(meta + 2 * k, extra, sizeof extra);
    k += 3;
    st = ccoe_st_write(out_path, t, n, meta, k, err);
done:
    free(t);
    free(meta);
    ccoe_st_close(f);
    return st;
}

ccoe_status ccoe_router_load(const ccoe_st_file *f, const char *path, const ccoe_model *m,
                             ccoe_domain_router *r, int *found, ccoe_error *err)
{
    *found = 0;
    memset(r, 0, sizeof *r);
    int ndim = 0;
    int64_t shape[CCOE_ST_MAX_DIMS];
    if (!ccoe_st_find(f, "router.domain.w2", &ndim, shape))
        return CCOE_OK;
    const char *ls = ccoe_st_meta(f, "ccoe.router.layer"),
               *hs = ccoe_st_meta(f, "ccoe.router.hidden"),
               *ds = ccoe_st_meta(f, "ccoe.router.domains");
    char want[CCOE_MAX_DOMAINS * (CCOE_NAME_LEN + 1)];
    domain_list(m, want, sizeof want);
    if (!ls || !hs || !ds || ndim != 2)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: the domain router's metadata (ccoe.router.*) is missing or "
                              "damaged: train it again with `ccoe train-router`",
                              path);
    if (strcmp(ds, want) != 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: the domain router was trained on the domains '%s', the model "
                              "has '%s': train it again with `ccoe train-router`",
                              path, ds, want);
    const int layer = atoi(ls), H = atoi(hs), D = (int)shape[0];
    int mdim = 0;
    int64_t mshape[CCOE_ST_MAX_DIMS];
    if (!ccoe_st_find(f, "router.domain.mu", &mdim, mshape) || mdim != 2)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "%s: the domain router has no router.domain.mu (positions, "
                              "width): train it again with `ccoe train-router`",
                              path);
    CCOE_TRY(ccoe_router_init(r, layer, m->cfg.n_embd, H, D, (int)mshape[0], err));
    ccoe_st_tensor t[6];
    const int n = router_tensors(r, t);
    for (int i = 0; i < n; i++) {
        ccoe_status st = ccoe_st_read_into(f, t[i].name, (float *)t[i].data, t[i].ndim,
                                           t[i].shape, err);
        if (st != CCOE_OK) {
            ccoe_router_free(r);
            return ccoe_error_wrap(err, "%s: the domain router", path);
        }
    }
    *found = 1;
    return CCOE_OK;
}

/* ---- routing a batch ---- */

ccoe_status ccoe_route_ws_init(ccoe_route_ws *w, const ccoe_model *m, int maxB, int maxT,
                               int D, ccoe_error *err)
{
    memset(w, 0, sizeof *w);
    w->maxB = maxB;
    w->maxT = maxT;
    w->P = m->n_paths;
    w->C = m->cfg.n_embd;
    w->D = D > 0 ? D : 1;
    const size_t N = (size_t)maxB * maxT;
    w->loglik = malloc((size_t)w->P * N * sizeof *w->loglik);
    w->feat = malloc(N * w->C * sizeof *w->feat);
    w->zlog = malloc(N * w->D * sizeof *w->zlog);
    w->post = malloc((size_t)maxT * w->P * sizeof *w->post);
    w->pred = malloc(N * sizeof *w->pred);
    w->dom = malloc((size_t)maxB * sizeof *w->dom);
    if (!w->loglik || !w->feat || !w->zlog || !w->post || !w->pred || !w->dom) {
        ccoe_route_ws_free(w);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for routing buffers");
    }
    return CCOE_OK;
}

void ccoe_route_ws_free(ccoe_route_ws *w)
{
    free(w->loglik);
    free(w->feat);
    free(w->zlog);
    free(w->post);
    free(w->pred);
    free(w->dom);
    memset(w, 0, sizeof *w);
}

void ccoe_route_posterior(const float *loglik, size_t stride, const int32_t *targets, int P,
                          int T, double *w)
{
    double a[CCOE_MAX_EXPERTS + 1];
    for (int p = 0; p < P; p++)
        a[p] = -log((double)P);
    for (int t = 0; t < T; t++) {
        double mx = a[0], s = 0.0;
        for (int p = 1; p < P; p++)
            mx = a[p] > mx ? a[p] : mx;
        for (int p = 0; p < P; p++)
            s += exp(a[p] - mx);
        for (int p = 0; p < P; p++)
            w[(size_t)t * P + p] = exp(a[p] - mx) / s;
        /* the likelihood of target t joins the posterior only after position t's weights */
        if (targets[t] >= 0)
            for (int p = 0; p < P; p++)
                a[p] += loglik[(size_t)p * stride + t];
    }
}

double ccoe_route_batch(ccoe_model *m, const ccoe_routing *rt, ccoe_route_ws *w,
                        const int32_t *tokens, const int32_t *targets, int B, int T,
                        float *loss, int32_t *path, double *weights, long *count)
{
    assert(rt->mode != CCOE_ROUTING_RULE && B <= w->maxB && T <= w->maxT);
    const int P = m->n_paths, C = m->cfg.n_embd;
    const size_t N = (size_t)B * T;
    const int was_rbp = m->route_by_path;
    m->route_by_path = 1;
    for (int p = 0; p < P; p++) {
        for (int b = 0; b < B; b++)
            w->dom[b] = p;
        long c = 0;
        ccoe_model_forward(m, tokens, targets, w->dom, B, T, &c);
        float *ll = w->loglik + (size_t)p * N;
        for (int b = 0; b < B; b++) {
            const float *ls = m->losses + (size_t)m->row_of[b] * T;
            for (int t = 0; t < T; t++)
                ll[(size_t)b * T + t] = targets[(size_t)b * T + t] >= 0 ? -ls[t] : 0.0f;
        }
        if (p == 0 && rt->mode == CCOE_ROUTING_CLASSIFIER) {
            /* the base path runs every base block: its hidden states are every path's */
            for (int b = 0; b < B; b++)
                ccoe_route_prefix_features(m, rt->router->layer, b, T,
                                           w->feat + (size_t)b * T * C);
            ccoe_router_forward(rt->router, w->zlog, w->feat, (int)N, T);
        }
    }
    m->route_by_path = was_rbp;
    double sum = 0.0;
    long n = 0;
    for (int b = 0; b < B; b++) {
        const int32_t *tg = targets + (size_t)b * T;
        if (rt->mode == CCOE_ROUTING_POSTERIOR)
            ccoe_route_posterior(w->loglik + (size_t)b * T, N, tg, P, T, w->post);
        for (int t = 0; t < T; t++) {
            const size_t i = (size_t)b * T + t;
            int q;
            double nats;
            if (rt->mode == CCOE_ROUTING_POSTERIOR) {
                const double *wt = w->post + (size_t)t * P;
                q = argmax_d(wt, P);
                if (rt->argmax) {
                    nats = -(double)w->loglik[(size_t)q * N + i];
                } else { /* -log sum_p w_p p_p(y) */
                    double mx = -INFINITY, s = 0.0;
                    for (int p = 0; p < P; p++) {
                        const double v = log(wt[p]) + w->loglik[(size_t)p * N + i];
                        mx = v > mx ? v : mx;
                    }
                    for (int p = 0; p < P; p++)
                        s += exp(log(wt[p]) + w->loglik[(size_t)p * N + i] - mx);
                    nats = -(mx + log(s));
                }
                if (weights)
                    memcpy(weights + i * P, wt, (size_t)P * sizeof *wt);
            } else {
                const int d = argmax_d(w->zlog + i * w->D, w->D);
                w->pred[i] = d;
                q = m->taskmap.route[d] + 1;
                nats = -(double)w->loglik[(size_t)q * N + i];
                if (weights)
                    for (int p = 0; p < P; p++)
                        weights[i * P + p] = p == q;
            }
            path[i] = q;
            if (tg[t] >= 0) {
                loss[i] = (float)nats;
                sum += nats;
                n++;
            } else {
                loss[i] = 0.0f;
            }
        }
    }
    if (count)
        *count = n;
    return sum;
}

/* ---- routed evaluation ---- */

ccoe_status ccoe_route_eval_domains(ccoe_model *m, const ccoe_dataset *ds,
                                    const ccoe_tokenizer *tok, ccoe_batch *b, int max_batches,
                                    const ccoe_routing *rt, ccoe_comm *comm,
                                    ccoe_route_eval *out, ccoe_error *err)
{
    CCOE_TRY(ccoe_routing_check(m, rt, err));
    const int B = b->maxB, T = ds->T, nd = ds->n_domains, V = m->cfg.vocab_size;
    const int P = comm ? comm->size : 1, r = comm ? comm->rank : 0;
    enum { PER = 5 }; /* nats, tokens, bytes, tokens on the domain's path, domain right */
    double sums[PER * CCOE_MAX_DOMAINS];
    memset(sums, 0, sizeof sums);
    ccoe_route_ws w;
    CCOE_TRY(ccoe_route_ws_init(&w, m, B, T, m->taskmap.n_domains, err));
    const size_t N = (size_t)B * T;
    float *loss = malloc(N * sizeof *loss);
    int32_t *path = malloc(N * sizeof *path);
    int32_t *tb = NULL;
    const int bpb = tok && tok->ops != &ccoe_byte_tokenizer_ops;
    if (bpb)
        tb = ccoe_eval_token_bytes(tok, V);
    if (!loss || !path || (bpb && !tb)) {
        free(loss);
        free(path);
        free(tb);
        ccoe_route_ws_free(&w);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for routed evaluation");
    }
    const int was_train = m->train;
    m->train = 0;
    for (int d = 0; d < nd; d++) {
        double *s = sums + (size_t)PER * d;
        const int want = m->taskmap.route[d] + 1;
        size_t nb = (ds->domains[d].n_val + (size_t)B - 1) / (size_t)B;
        if (max_batches > 0 && nb > (size_t)max_batches)
            nb = (size_t)max_batches;
        for (size_t k = (size_t)r; k < nb; k += (size_t)P) {
            const int got = ccoe_data_val_batch(ds, d, k * (size_t)B, b->tokens, b->targets,
                                                b->domains, B);
            if (got == 0)
                continue;
            long c = 0;
            if (rt->mode == CCOE_ROUTING_RULE) {
                s[0] += ccoe_model_forward(m, b->tokens, b->targets, b->domains, got, T, &c);
                s[3] += (double)c;
                s[4] += (double)c;
            } else {
                s[0] += ccoe_route_batch(m, rt, &w, b->tokens, b->targets, got, T, loss, path,
                                         NULL, &c);
                for (size_t i = 0; i < (size_t)got * T; i++)
                    if (b->targets[i] >= 0) {
                        s[3] += path[i] == want;
                        s[4] += rt->mode == CCOE_ROUTING_CLASSIFIER ? w.pred[i] == d
                                                                     : path[i] == want;
                    }
            }
            s[1] += (double)c;
            for (size_t i = 0; tb && i < (size_t)got * T; i++)
                if (b->targets[i] >= 0 && b->targets[i] < V)
                    s[2] += tb[b->targets[i]];
        }
    }
    m->train = was_train;
    free(loss);
    free(path);
    free(tb);
    ccoe_route_ws_free(&w);
    if (P > 1)
        CCOE_TRY(comm->ops->allreduce_f64(comm, sums, (size_t)nd * PER, err));
    for (int d = 0; d < nd; d++) {
        const double *s = sums + (size_t)PER * d;
        out[d].tokens = (long)s[1];
        out[d].loss = s[1] > 0 ? s[0] / s[1] : NAN;
        out[d].bytes = s[2];
        out[d].bpb = s[2] > 0 ? s[0] / CCOE_LN2 / s[2] : NAN;
        out[d].route_acc = s[1] > 0 ? s[3] / s[1] : NAN;
        out[d].domain_acc = s[1] > 0 ? s[4] / s[1] : NAN;
    }
    for (int d = 0; d < nd; d++)
        if (!isfinite(out[d].loss) && out[d].tokens > 0)
            return ccoe_error_set(err, CCOE_ERR_NUMERIC,
                                  "routed loss of domain %s is not finite: the model's weights "
                                  "are damaged",
                                  ds->domains[d].name);
    return CCOE_OK;
}

void ccoe_route_eval_print(FILE *f, const ccoe_dataset *ds, const ccoe_routing *rt,
                           const ccoe_route_eval *ev)
{
    const int bpb = ds->n_domains > 0 && ev[0].bytes > 0;
    fprintf(f, "\nrouting %s%s (%s):\n", ccoe_routing_name(rt->mode),
            rt->mode == CCOE_ROUTING_POSTERIOR ? (rt->argmax ? ", argmax path" : ", mixture")
                                               : "",
            rt->mode == CCOE_ROUTING_RULE ? "the domain label picks the path"
                                          : "no domain label");
    fprintf(f, "%-12s %10s %10s", "domain", "val_loss", "perplexity");
    if (bpb)
        fprintf(f, " %8s", "bpb");
    fprintf(f, " %9s %11s", "tokens", "routing_acc");
    if (rt->mode == CCOE_ROUTING_CLASSIFIER)
        fprintf(f, " %10s", "domain_acc");
    fputc('\n', f);
    double ws = 0.0, wb = 0.0, wr = 0.0, wd = 0.0;
    long wt = 0;
    for (int d = 0; d < ds->n_domains; d++) {
        const ccoe_route_eval *e = &ev[d];
        fprintf(f, "%-12s %10.4f %10.3f", ds->domains[d].name, e->loss, exp(e->loss));
        if (bpb)
            fprintf(f, " %8.4f", e->bpb);
        fprintf(f, " %9ld %11.4f", e->tokens, e->route_acc);
        if (rt->mode == CCOE_ROUTING_CLASSIFIER)
            fprintf(f, " %10.4f", e->domain_acc);
        fputc('\n', f);
        if (e->tokens > 0) {
            ws += e->loss * (double)e->tokens;
            wr += e->route_acc * (double)e->tokens;
            wd += e->domain_acc * (double)e->tokens;
        }
        wb += e->bytes;
        wt += e->tokens;
    }
    if (wt > 0) {
        fprintf(f, "%-12s %10.4f %10.3f", "all", ws / (double)wt, exp(ws / (double)wt));
        if (bpb)
            fprintf(f, " %8.4f", ws / CCOE_LN2 / wb);
        fprintf(f, " %9ld %11.4f", wt, wr / (double)wt);
        if (rt->mode == CCOE_ROUTING_CLASSIFIER)
            fprintf(f, " %10.4f", wd / (double)wt);
        fputc('\n', f);
    }
}

/* ---- routed generation ---- */

/* log-softmax of logits (V) into out (double). */
static void log_softmax(const float *logits, int V, double *out)
{
    double mx = logits[0], s = 0.0;
    for (int v = 1; v < V; v++)
        mx = logits[v] > mx ? logits[v] : mx;
    for (int v = 0; v < V; v++)
        s += exp((double)logits[v] - mx);
    const double lse = mx + log(s);
    for (int v = 0; v < V; v++)
        out[v] = (double)logits[v] - lse;
}

ccoe_status ccoe_generate_routed(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                 const char *const *prompts, int n, const ccoe_routing *rt,
                                 const ccoe_gen_opts *o, char **outs, size_t out_cap,
                                 int *paths_out, ccoe_error *err)
{
    CCOE_TRY(ccoe_routing_check(m, rt, err));
    assert(rt->mode != CCOE_ROUTING_RULE);
    const int P = m->n_paths, T = b->maxT, V = m->cfg.vocab_size, C = m->cfg.n_embd;
    const int Vt = tok->ops->vocab_size(tok->self) < V ? tok->ops->vocab_size(tok->self) : V;
    const int cap = b->maxB < CCOE_GEN_MAX ? b->maxB : CCOE_GEN_MAX;
    if (n == 0)
        return CCOE_OK;
    if (n * P > cap)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "routed generation runs each prompt down all %d paths: %d prompts "
                              "need %d rows, the batch holds %d (raise train.batch_size)",
                              P, n, n * P, cap);
    const int layer = rt->router ? rt->router->layer : 0;
    double *lsm = malloc((size_t)P * V * sizeof *lsm);
    float *mix = malloc((size_t)V * sizeof *mix);
    ccoe_token_prob *scratch = malloc((size_t)V * sizeof *scratch);
    double *a = malloc((size_t)n * P * sizeof *a);       /* log posterior, unnormalised */
    double *hsum = calloc((size_t)n * C, sizeof *hsum); /* classifier: sum of hidden states */
    float *fx = malloc((size_t)C * sizeof *fx);
    if (!lsm || !mix || !scratch || !a || !hsum || !fx) {
        free(lsm), free(mix), free(scratch), free(a), free(hsum), free(fx);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for routed generation");
    }
    int len[CCOE_GEN_MAX], done[CCOE_GEN_MAX], act[CCOE_GEN_MAX], hcnt[CCOE_GEN_MAX];
    int seq[CCOE_GEN_MAX], pos[CCOE_GEN_MAX];
    int32_t next_tok[CCOE_GEN_MAX];
    size_t olen[CCOE_GEN_MAX];
    int Tc = 1;
    for (int i = 0; i < n; i++) {
        int32_t *row = b->tokens + (size_t)i * T;
        row[0] = tok->bos;
        size_t need = tok->ops->encode(tok->self, prompts[i], strlen(prompts[i]), row + 1,
                                       (size_t)T - 1);
        len[i] = 1 + (int)(need < (size_t)T - 1 ? need : (size_t)T - 1);
        done[i] = len[i] >= T;
        olen[i] = 0;
        outs[i][0] = '\0';
        Tc = len[i] > Tc ? len[i] : Tc;
    }
    /* row i * P + p: prompt i down path p */
    for (int i = 0; i < n; i++)
        for (int p = 0; p < P; p++) {
            int32_t *dst = b->targets + (size_t)(i * P + p) * Tc;
            for (int t = 0; t < Tc; t++)
                dst[t] = t < len[i] ? b->tokens[(size_t)i * T + t] : tok->pad;
            b->domains[i * P + p] = p;
        }
    const int was_rbp = m->route_by_path, was_train = m->train;
    m->route_by_path = 1;
    m->train = 0;
    ccoe_status st = ccoe_model_decode_prefill(m, b->targets, b->domains, n * P, Tc, err);
    if (st != CCOE_OK)
        goto out;
    /* the prompt's own likelihood under each path (posterior) and its hidden states
     * (classifier), positions 0 .. len - 1 */
    for (int i = 0; i < n; i++) {
        for (int p = 0; p < P; p++) {
            a[(size_t)i * P + p] = -log((double)P);
            for (int t = 0; t + 1 < len[i]; t++) {
                log_softmax(ccoe_model_logits(m, i * P + p, t), V, lsm);
                a[(size_t)i * P + p] += lsm[b->tokens[(size_t)i * T + t + 1]];
            }
        }
        hcnt[i] = len[i];
        for (int t = 0; rt->mode == CCOE_ROUTING_CLASSIFIER && t < len[i]; t++) {
            const float *h = ccoe_model_base_hidden(m, layer, i * P, t);
            for (int c = 0; c < C; c++)
                hsum[(size_t)i * C + c] += h[c];
        }
    }
    int na = 0;
    for (int i = 0; i < n; i++)
        if (!done[i])
            act[na++] = i;
    for (int step = 0; step < o->max_new && na > 0; step++) {
        if (step > 0) {
            ccoe_model_decode_step(m, next_tok, seq, pos, na * P);
            for (int ji = 0; rt->mode == CCOE_ROUTING_CLASSIFIER && ji < na; ji++) {
                const int i = act[ji];
                const float *h = ccoe_model_base_hidden(m, layer, ji * P, 0);
                for (int c = 0; c < C; c++)
                    hsum[(size_t)i * C + c] += h[c];
                hcnt[i]++;
            }
        }
        int nn = 0;
        for (int ji = 0; ji < na; ji++) {
            const int i = act[ji];
            for (int p = 0; p < P; p++)
                log_softmax(step > 0 ? ccoe_model_logits(m, ji * P + p, 0)
                                     : ccoe_model_logits(m, i * P + p, len[i] - 1),
                            V, lsm + (size_t)p * V);
            double *ai = a + (size_t)i * P;
            int q = argmax_d(ai, P);
            if (rt->mode == CCOE_ROUTING_CLASSIFIER) {
                double z[CCOE_ROUTER_MAX_D];
                for (int c = 0; c < C; c++)
                    fx[c] = (float)(hsum[(size_t)i * C + c] / hcnt[i]);
                ccoe_router_logits_at(rt->router, z, fx, hcnt[i] - 1);
                q = m->taskmap.route[argmax_d(z, rt->router->D)] + 1;
            }
            if (rt->mode == CCOE_ROUTING_POSTERIOR && !rt->argmax) {
                /* log sum_p w_p p_p(v), w = softmax(a) */
                double mx = ai[0], s = 0.0, lw[CCOE_MAX_EXPERTS + 1];
                for (int p = 1; p < P; p++)
                    mx = ai[p] > mx ? ai[p] : mx;
                for (int p = 0; p < P; p++)
                    s += exp(ai[p] - mx);
                for (int p = 0; p < P; p++)
                    lw[p] = ai[p] - mx - log(s);
                for (int v = 0; v < Vt; v++) {
                    double vm = -INFINITY, vs = 0.0;
                    for (int p = 0; p < P; p++) {
                        const double x = lw[p] + lsm[(size_t)p * V + v];
                        vm = x > vm ? x : vm;
                    }
                    for (int p = 0; p < P; p++)
                        vs += exp(lw[p] + lsm[(size_t)p * V + v] - vm);
                    mix[v] = (float)(vm + log(vs));
                }
            } else {
                for (int v = 0; v < Vt; v++)
                    mix[v] = (float)lsm[(size_t)q * V + v];
            }
            if (step == 0 && paths_out)
                paths_out[i] = q;
            const double u = (double)(ccoe_hash4(o->sample.seed, o->first_id + (uint64_t)i,
                                                 (uint64_t)len[i], 0x5a) >> 11) * 0x1p-53;
            const int next = ccoe_sample_token(mix, Vt, &o->sample, u, scratch);
            for (int p = 0; p < P; p++)
                ai[p] += lsm[(size_t)p * V + next];
            char piece[1024];
            size_t k = tok->ops->decode(tok->self, &next, 1, piece, sizeof piece);
            const char *at = o->stop ? memchr(piece, o->stop, k) : NULL;
            if (at)
                k = (size_t)(at - piece);
            if (next != tok->eos && olen[i] + k + 1 < out_cap) {
                memcpy(outs[i] + olen[i], piece, k);
                olen[i] += k;
                outs[i][olen[i]] = '\0';
            }
            if (next == tok->eos || at)
                continue;
            b->tokens[(size_t)i * T + len[i]] = next;
            len[i]++;
            if (len[i] >= T)
                continue;
            for (int p = 0; p < P; p++) {
                seq[nn * P + p] = i * P + p;
                pos[nn * P + p] = len[i] - 1;
                next_tok[nn * P + p] = next;
            }
            act[nn++] = i;
        }
        na = nn;
    }
out:
    m->route_by_path = was_rbp;
    m->train = was_train;
    free(lsm), free(mix), free(scratch), free(a), free(hsum), free(fx);
    return st;
}

ccoe_status ccoe_generate_routed_print(ccoe_model *m, const ccoe_tokenizer *tok, ccoe_batch *b,
                                       const char *const *prompts, int n,
                                       const ccoe_routing *rt, const ccoe_gen_opts *o,
                                       FILE *out, ccoe_error *err)
{
    enum { OUT_CAP = 4096 };
    const int cap = b->maxB < CCOE_GEN_MAX ? b->maxB : CCOE_GEN_MAX;
    const int chunk = cap / (m->n_paths > 0 ? m->n_paths : 1);
    if (chunk < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "routed generation runs each prompt down all %d paths and the "
                              "batch holds %d rows: raise train.batch_size to %d or more",
                              m->n_paths, cap, m->n_paths);
    char *buf = malloc((size_t)chunk * OUT_CAP);
    char *outs[CCOE_GEN_MAX];
    int paths[CCOE_GEN_MAX];
    if (!buf)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the generated text");
    ccoe_status st = CCOE_OK;
    for (int first = 0; st == CCOE_OK && first < n; first += chunk) {
        const int k = n - first < chunk ? n - first : chunk;
        for (int i = 0; i < k; i++)
            outs[i] = buf + (size_t)i * OUT_CAP;
        ccoe_gen_opts go = *o;
        go.first_id = o->first_id + (uint64_t)first;
        st = ccoe_generate_routed(m, tok, b, prompts + first, k, rt, &go, outs, OUT_CAP, paths,
                                  err);
        for (int i = 0; st == CCOE_OK && i < k; i++)
            fprintf(out, "%s%s\n", prompts[first + i], outs[i]);
    }
    free(buf);
    return st;
}
