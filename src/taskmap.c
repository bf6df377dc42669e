/* taskmap.c - parsing, validation and printing of the task-expert matrix. */
#include "taskmap.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"

/* Splits "a:b c:d" into pairs; calls fn for each. Returns the first error. */
typedef ccoe_status (*pair_fn)(void *ctx, const char *left, const char *right, ccoe_error *err);

static ccoe_status for_each_pair(const char *text, const char *key, pair_fn fn, void *ctx,
                                 ccoe_error *err)
{
    char buf[CCOE_STR];
    snprintf(buf, sizeof buf, "%s", text);
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)) {
        char *colon = strchr(tok, ':');
        if (!colon || colon == tok || !colon[1] || strchr(colon + 1, ':'))
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.%s: '%s' is not of the form LEFT:RIGHT (e.g. %s)", key,
                                  tok, strcmp(key, "experts") == 0 ? "arith:2" : "arith:arith");
        *colon = '\0';
        if (strlen(tok) >= CCOE_NAME_LEN)
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "ccoe.%s: name '%s' is longer than %d "
                                  "characters", key, tok, CCOE_NAME_LEN - 1);
        CCOE_TRY(fn(ctx, tok, colon + 1, err));
    }
    return CCOE_OK;
}

ccoe_status ccoe_taskmap_check_name(const char *name, ccoe_error *err)
{
    /* names become tensor names (experts.NAME.*) and file names (NAME.expert, expert-NAME):
     * no '/', and not "." or ".." */
    int dots = 1;
    for (const char *p = name; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '_' && *p != '-' && *p != '.')
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.experts: expert name '%s' may only hold letters, digits "
                                  "and _ - .", name);
        dots = dots && *p == '.';
    }
    if (!*name || dots)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.experts: expert name '%s' needs a letter, digit, '_' or '-'",
                              name);
    if (strlen(name) > 32)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.experts: expert name '%s' is longer than 32 characters", name);
    return CCOE_OK;
}

static ccoe_status add_expert(void *ctx, const char *name, const char *layers, ccoe_error *err)
{
    ccoe_taskmap *g = ctx;
    if (g->n_experts >= CCOE_MAX_EXPERTS)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "ccoe.experts: more than %d experts",
                              CCOE_MAX_EXPERTS);
    CCOE_TRY(ccoe_taskmap_check_name(name, err));
    if (ccoe_taskmap_find_expert(g, name) >= 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.experts: expert '%s' is listed twice: expert names are unique",
                              name);
    char *end = NULL;
    long l = strtol(layers, &end, 10);
    if (*end || end == layers || l < 0 || l > 256)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.experts: '%s:%s': the layer count must be a whole number "
                              "0..256",
                              name, layers);
    ccoe_expert_spec *e = &g->experts[g->n_experts++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->layers = (int)l;
    return CCOE_OK;
}

static int find_domain(const ccoe_taskmap *g, const char *name)
{
    for (int d = 0; d < g->n_domains; d++)
        if (strcmp(g->domains[d], name) == 0)
            return d;
    return -1;
}

static ccoe_status add_route(void *ctx, const char *domain, const char *expert, ccoe_error *err)
{
    ccoe_taskmap *g = ctx;
    int d = find_domain(g, domain);
    if (d < 0) {
        char names[512] = "";
        size_t used = 0;
        for (int i = 0; i < g->n_domains && used < sizeof names; i++)
            used += (size_t)snprintf(names + used, sizeof names - used, "%s%s", i ? ", " : "",
                                     g->domains[i]);
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.routes: unknown domain '%s': the data has %s", domain, names);
    }
    if (g->route[d] != -1)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.routes: domain '%s' is routed twice: each domain maps to "
                              "exactly one path", domain);
    if (strcmp(expert, "base") == 0) {
        g->route[d] = -2; /* explicitly base; turned into -1 below */
        return CCOE_OK;
    }
    int e = ccoe_taskmap_find_expert(g, expert);
    if (e < 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.routes: domain '%s' routes to expert '%s', which ccoe.experts "
                              "does not list (or write 'base')", domain, expert);
    g->route[d] = e;
    return CCOE_OK;
}

int ccoe_taskmap_find_expert(const ccoe_taskmap *g, const char *name)
{
    for (int e = 0; e < g->n_experts; e++)
        if (strcmp(g->experts[e].name, name) == 0)
            return e;
    return -1;
}

ccoe_status ccoe_taskmap_build(ccoe_taskmap *g, const ccoe_config *cfg,
                              const char (*domain_names)[CCOE_NAME_LEN], int n_domains,
                              ccoe_error *err)
{
    memset(g, 0, sizeof *g);
    const ccoe_ccoe_config *c = &cfg->ccoe;
    const int L = cfg->model.n_layer;
    g->form = c->form;
    g->n_layer = L;
    g->own_head = c->own_head;
    if (n_domains > CCOE_MAX_DOMAINS)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "more than %d domains", CCOE_MAX_DOMAINS);
    g->n_domains = n_domains;
    for (int d = 0; d < n_domains; d++) {
        snprintf(g->domains[d], CCOE_NAME_LEN, "%s", domain_names[d]);
        g->route[d] = -1;
    }
    g->ops = ccoe_form_of(cfg);
    const ccoe_form_ops *f = g->ops;
    if (!f) {
        if (c->experts[0] || c->routes[0] || c->train_expert[0]) {
            char forms[256] = "";
            for (int i = 0; i < ccoe_form_count(); i++) {
                const size_t n = strlen(forms);
                snprintf(forms + n, sizeof forms - n, "%s%s", i ? ", " : "",
                         ccoe_form_at(i)->title);
            }
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.experts/routes/train_expert are set but ccoe.form = none: "
                                  "set ccoe.form to one of %s",
                                  forms);
        }
        return CCOE_OK;
    }
    if (f->validate)
        CCOE_TRY(f->validate(cfg, err));
    CCOE_TRY(for_each_pair(c->experts, "experts", add_expert, g, err));
    const int cap = c->max_expert_layers > 0 ? c->max_expert_layers : f->default_cap(L);
    const int limit = f->layer_limit ? f->layer_limit(L) : -1;
    for (int e = 0; e < g->n_experts; e++) {
        ccoe_expert_spec *x = &g->experts[e];
        if (limit >= 0 && x->layers > limit)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.experts: expert '%s' has %d layers but the base has only "
                                  "%d (n_layer): an Eq. 4 expert replaces at most all of them",
                                  x->name, x->layers, limit);
        if (x->layers > cap)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "ccoe.experts: expert '%s' has %d layers, above the cap %d "
                                  "(ccoe.max_expert_layers; default floor(n_layer/2), n_layer for ffn): lower it "
                                  "or raise ccoe.max_expert_layers",
                                  x->name, x->layers, cap);
        x->branch = f->branch(c, L, x->layers);
        x->pos = 0;
        for (int k = 0; k < e; k++)
            if (g->experts[k].branch == x->branch)
                x->pos++;
    }
    CCOE_TRY(for_each_pair(c->routes, "routes", add_route, g, err));
    for (int d = 0; d < n_domains; d++)
        if (g->route[d] == -2)
            g->route[d] = -1;
    if (c->train_expert[0] && ccoe_taskmap_find_expert(g, c->train_expert) < 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.train_expert = '%s' is not an expert of ccoe.experts",
                              c->train_expert);
    return CCOE_OK;
}

void ccoe_taskmap_print(FILE *f, const ccoe_taskmap *g)
{
    fprintf(f, "task-expert matrix: form %s, %d domains x %d experts (entries: l_j,pos_j)\n",
            g->ops ? g->ops->title : "none", g->n_domains, g->n_experts);
    fprintf(f, "%-12s", "");
    for (int e = 0; e < g->n_experts; e++)
        fprintf(f, " %10.10s", g->experts[e].name);
    fprintf(f, "   path\n");
    for (int d = 0; d < g->n_domains; d++) {
        fprintf(f, "%-12.12s", g->domains[d]);
        for (int e = 0; e < g->n_experts; e++) {
            if (g->route[d] == e) {
                char cell[24];
                snprintf(cell, sizeof cell, "%d,%d", g->experts[e].layers, g->experts[e].pos);
                fprintf(f, " %10s", cell);
            } else {
                fprintf(f, " %10s", ".");
            }
        }
        char path[96];
        ccoe_taskmap_path_name(g, d, path, sizeof path);
        fprintf(f, "   %s\n", path);
    }
}

void ccoe_taskmap_path_name(const ccoe_taskmap *g, int d, char *buf, size_t cap)
{
    int e = g->route[d];
    if (e < 0 || !g->ops)
        snprintf(buf, cap, "base[0:%d]", g->n_layer);
    else
        g->ops->path_name(buf, cap, g->experts[e].name, g->experts[e].branch,
                          g->experts[e].layers, g->n_layer);
}

static ccoe_status append(char *dst, size_t cap, const char *piece, const char *key,
                          ccoe_error *err)
{
    size_t n = strlen(dst);
    int w = snprintf(dst + n, cap - n, "%s%s", n ? " " : "", piece);
    /* 180 characters is what a config line can hold (see config.c) */
    if (w < 0 || n + (size_t)w >= cap || n + (size_t)w > 180) {
        dst[n] = '\0';
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.%s would exceed 180 characters: use shorter expert or domain "
                              "names", key);
    }
    return CCOE_OK;
}

/* Rebuilds routes without entries whose domain is in `drop` (or whose expert is drop_expert). */
static ccoe_status filter_routes(ccoe_config *cfg, const char *const *drop, int n,
                                 const char *drop_expert, ccoe_error *err)
{
    char in[CCOE_STR], out[CCOE_STR] = "";
    snprintf(in, sizeof in, "%s", cfg->ccoe.routes);
    char *save = NULL;
    for (char *tok = strtok_r(in, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)) {
        char *colon = strchr(tok, ':');
        int keep = 1;
        if (colon) {
            size_t dl = (size_t)(colon - tok);
            for (int i = 0; i < n; i++)
                if (strlen(drop[i]) == dl && strncmp(tok, drop[i], dl) == 0)
                    keep = 0;
            if (drop_expert && strcmp(colon + 1, drop_expert) == 0)
                keep = 0;
        }
        if (keep)
            CCOE_TRY(append(out, sizeof out, tok, "routes", err));
    }
    memcpy(cfg->ccoe.routes, out, sizeof out);
    return CCOE_OK;
}

ccoe_status ccoe_taskmap_config_add(ccoe_config *cfg, const char *name, int layers,
                                   const char *const *domains, int n, ccoe_error *err)
{
    ccoe_config c = *cfg;
    char piece[CCOE_NAME_LEN + 16];
    snprintf(piece, sizeof piece, "%s:%d", name, layers);
    CCOE_TRY(append(c.ccoe.experts, sizeof c.ccoe.experts, piece, "experts", err));
    CCOE_TRY(filter_routes(&c, domains, n, NULL, err));
    for (int i = 0; i < n; i++) {
        char r[2 * CCOE_NAME_LEN + 2];
        snprintf(r, sizeof r, "%s:%s", domains[i], name);
        CCOE_TRY(append(c.ccoe.routes, sizeof c.ccoe.routes, r, "routes", err));
    }
    *cfg = c;
    return CCOE_OK;
}

ccoe_status ccoe_taskmap_config_remove(ccoe_config *cfg, const char *name, ccoe_error *err)
{
    ccoe_config c = *cfg;
    char in[CCOE_STR], out[CCOE_STR] = "";
    snprintf(in, sizeof in, "%s", c.ccoe.experts);
    char *save = NULL;
    int found = 0;
    for (char *tok = strtok_r(in, " \t,", &save); tok; tok = strtok_r(NULL, " \t,", &save)) {
        char *colon = strchr(tok, ':');
        if (colon && (size_t)(colon - tok) == strlen(name) && strncmp(tok, name, strlen(name)) == 0) {
            found = 1;
            continue;
        }
        CCOE_TRY(append(out, sizeof out, tok, "experts", err));
    }
    if (!found)
        return ccoe_error_set(err, CCOE_ERR_ARG, "the model has no expert '%s'", name);
    memcpy(c.ccoe.experts, out, sizeof out);
    CCOE_TRY(filter_routes(&c, NULL, 0, name, err));
    if (strcmp(c.ccoe.train_expert, name) == 0)
        c.ccoe.train_expert[0] = '\0';
    *cfg = c;
    return CCOE_OK;
}

int ccoe_taskmap_route_domains(const ccoe_config *cfg, char (*names)[CCOE_NAME_LEN])
{
    char buf[CCOE_STR];
    snprintf(buf, sizeof buf, "%s", cfg->ccoe.routes);
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, " \t,", &save); tok && n < CCOE_MAX_DOMAINS;
         tok = strtok_r(NULL, " \t,", &save)) {
        char *colon = strchr(tok, ':');
        if (colon)
            *colon = '\0';
        int dup = 0;
        for (int i = 0; i < n; i++)
            dup |= strcmp(names[i], tok) == 0;
        if (!dup)
            snprintf(names[n++], CCOE_NAME_LEN, "%s", tok);
    }
    return n;
}


ccoe_status ccoe_taskmap_config_check(const ccoe_config *cfg, ccoe_error *err)
{
    char names[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    int nd = ccoe_taskmap_route_domains(cfg, names);
    ccoe_taskmap g;
    return ccoe_taskmap_build(&g, cfg, (const char(*)[CCOE_NAME_LEN])names, nd, err);
}
