/* study.c - `ccoe study`: the same data and the same training budget for a set of variants,
 * one comparison table (Markdown + CSV) and the data behind the plots.
 *
 * Parsing reuses the config module: every override is a ccoe_config_set assignment, so a study
 * file accepts exactly the keys `ccoe train --set` accepts, with the same messages. What this
 * file adds is the study layer: [study] keys, [variant.NAME] sections, the budget -> steps
 * conversion, the sweep generator, reading results back and the tables. It does not train
 * anything itself (ccoe_train_run does) and does not draw (scripts/plot_study.sh does).
 */
#include "study.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "fs.h"
#include "iniread.h"
#include "moe.h"
#include "session.h"
#include "train.h"

#define STUDY_MAX_VARIANTS 48
#define STUDY_MAX_SETS 64
#define STUDY_NAME 48
#define STUDY_SET_LEN (2 * CCOE_STR + 96)

typedef enum { BUDGET_TOKENS = 0, BUDGET_FLOPS = 1 } budget_kind;

typedef struct study_set {
    char text[STUDY_SET_LEN]; /* "section.key=value" */
    int line;                 /* in the study file; 0 = command line */
} study_set;

/* A growable array of doubles (curves). */
typedef struct dvec {
    double *v;
    size_t n, cap;
} dvec;

static int dvec_push(dvec *d, double x)
{
    if (d->n == d->cap) {
        size_t cap = d->cap ? 2 * d->cap : 256;
        double *nv = realloc(d->v, cap * sizeof *nv);
        if (!nv)
            return 0;
        d->v = nv;
        d->cap = cap;
    }
    d->v[d->n++] = x;
    return 1;
}

typedef struct study_variant {
    char name[STUDY_NAME];
    char label[128];          /* label = ... or a description derived from the config */
    int declared;             /* has a [variant.NAME] section */
    int line;                 /* of its section */
    int optional;             /* a config the build rejects skips the variant instead of failing */
    int experts_per_domain;   /* > 0: one CCoE expert of this many layers per data domain */
    char init_from[STUDY_NAME]; /* start from the weights of this earlier variant ("" = init) */
    study_set sets[STUDY_MAX_SETS];
    int n_sets;

    /* results */
    int skipped;
    int reused;               /* a finished run of this exact config was found and kept */
    char note[400];
    ccoe_config cfg;          /* as trained (resolved) */
    long steps, tokens;
    double flops_per_token;   /* training FLOPs per token, mean over the data's domain mix */
    double train_flops;       /* steps * tokens/step * flops_per_token */
    size_t total_params;
    double active_params;     /* per token, mean over the domain mix */
    double tok_s, train_s, wall_s, comm_share;
    double loss[CCOE_MAX_DOMAINS], ppl[CCOE_MAX_DOMAINS], acc[CCOE_MAX_DOMAINS]; /* NAN = none */
    double mean_loss, mean_ppl;
    dvec c_step, c_loss;      /* training loss per step */
    dvec v_step, v_loss;      /* mean validation loss at each evaluation */
    /* MoE (n_moe > 0): load on the validation split, averaged over MoE layers */
    int n_moe, E, K;
    char gate[32];
    double *load;             /* (n_domains, E) share of each domain's expert slots, in [0,1] */
    double load_cv, max_share, drop_rate, mi_bits;
    double share[CCOE_MOE_MAX_EXPERTS]; /* (E) overall share of the slots */
    double gain;              /* sweep: -d(mean val loss) / |d(params)|, NAN = not computed */
    int sweep_layers;         /* sweep point l_i, 0 = not a sweep variant */
} study_variant;

typedef struct study {
    char path[CCOE_STR], dir[CCOE_STR];
    char name[64];
    char base[CCOE_STR];
    int base_line;
    char budget[128];
    int budget_line;
    budget_kind bkind;
    double bvalue;
    char out_dir[CCOE_STR];
    char variants[2048];
    int variants_line;
    int variants_cli;         /* study.variants came from --set: a subset may run */
    char sweep[STUDY_NAME];
    char sweep_layers[64];
    int sweep_line;
    char gain_ref[STUDY_NAME];
    char description[512];
    study_set base_sets[STUDY_MAX_SETS * 2];
    int n_base_sets;
    study_variant *decl;      /* (STUDY_MAX_VARIANTS) sections as declared */
    int n_decl;
    study_variant *run;       /* (STUDY_MAX_VARIANTS) variants in run order */
    int n_run;
    /* data */
    int n_domains;
    char domains[CCOE_MAX_DOMAINS][CCOE_NAME_LEN];
    double dom_share[CCOE_MAX_DOMAINS];  /* of the training sequences */
    int dom_task[CCOE_MAX_DOMAINS];      /* domain has an exact-answer task */
    /* parsing */
    int line;
    int failed;
    ccoe_error *err;
} study;

/* ---- small helpers ---- */

static int valid_name(const char *s)
{
    if (!*s || strlen(s) >= STUDY_NAME)
        return 0;
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '_' || *p == '-'))
            return 0;
    return 1;
}

static int is_config_section(const char *section)
{
    size_t n = 0;
    const ccoe_config_key *k = ccoe_config_keys(&n);
    for (size_t i = 0; i < n; i++)
        if (strcmp(k[i].section, section) == 0)
            return 1;
    return 0;
}

static void config_sections(char *buf, size_t cap)
{
    size_t n = 0, len = 0;
    const ccoe_config_key *k = ccoe_config_keys(&n);
    buf[0] = '\0';
    for (size_t i = 0; i < n; i++)
        if (i == 0 || strcmp(k[i].section, k[i - 1].section) != 0)
            len += (size_t)snprintf(buf + len, len < cap ? cap - len : 0, "%s[%s]",
                                    len ? ", " : "", k[i].section);
}

static study_variant *find_variant(study_variant *v, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return &v[i];
    return NULL;
}

/* "1.5M" style: 3 significant digits with k/M/G suffix. */
static void human(char *buf, size_t cap, double x)
{
    const char *suf[] = {"", "k", "M", "G", "T", "P", "E"};
    int i = 0;
    double a = fabs(x);
    while (a >= 1000.0 && i < 6) {
        a /= 1000.0;
        x /= 1000.0;
        i++;
    }
    snprintf(buf, cap, a >= 100 || i == 0 ? "%.0f%s" : a >= 10 ? "%.1f%s" : "%.2f%s", x, suf[i]);
}

/* ---- study file parsing ---- */

static int parse_fail(study *S, ccoe_status st, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The variant of section [variant.NAME], created on first sight; NULL (S->failed) if the name
 * is invalid or there are too many. */
static study_variant *declare_variant(study *S, const char *vname)
{
    if (!valid_name(vname)) {
        parse_fail(S, CCOE_ERR_CONFIG,
                   "[variant.%s]: a variant name is 1-%d letters, digits, '_' or '-'", vname,
                   STUDY_NAME - 1);
        return NULL;
    }
    study_variant *v = find_variant(S->decl, S->n_decl, vname);
    if (!v) {
        if (S->n_decl == STUDY_MAX_VARIANTS) {
            parse_fail(S, CCOE_ERR_CONFIG, "more than %d variants", STUDY_MAX_VARIANTS);
            return NULL;
        }
        v = &S->decl[S->n_decl++];
        snprintf(v->name, sizeof v->name, "%s", vname);
        v->declared = 1;
        v->line = S->line;
    }
    return v;
}

/* libinih reports no empty section: register [variant.NAME] headers here */
static ccoe_status on_study_section(void *user, const char *section, const char *where, int line,
                                    ccoe_error *err)
{
    (void)where;
    study *S = user;
    S->line = line;
    if (strncmp(section, "variant.", 8) == 0 && !declare_variant(S, section + 8))
        return err->status;
    return CCOE_OK;
}

static int parse_fail(study *S, ccoe_status st, const char *fmt, ...)
{
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ccoe_error_set(S->err, st, "study %s line %d: %s", S->path, S->line, msg);
    S->failed = 1;
    return 0;
}

static int add_set(study *S, study_set *sets, int *n, int cap, const char *section,
                   const char *key, const char *value)
{
    if (*n >= cap)
        return parse_fail(S, CCOE_ERR_CONFIG, "more than %d overrides in one section", cap);
    study_set *s = &sets[(*n)++];
    if (section)
        snprintf(s->text, sizeof s->text, "%s.%s=%s", section, key, value);
    else
        snprintf(s->text, sizeof s->text, "%s=%s", key, value);
    s->line = S->line;
    return 1;
}

static int copy_value(study *S, char *dst, size_t cap, const char *key, const char *value)
{
    if (strlen(value) >= cap)
        return parse_fail(S, CCOE_ERR_CONFIG, "study.%s: value is too long ('%.60s...')", key,
                          value);
    snprintf(dst, cap, "%s", value);
    return 1;
}

static int on_study_key(void *user, const char *section, const char *key, const char *value)
{
    study *S = user;
    if (S->failed)
        return 1;
    if (strcmp(section, "study") == 0) {
        if (strcmp(key, "name") == 0) {
            /* it names the default output folder runs/NAME: no '/', no '..' */
            if (strlen(value) >= sizeof S->name || !valid_name(value))
                return parse_fail(S, CCOE_ERR_CONFIG,
                                  "study.name = '%.80s': a study name is 1-%zu letters, digits, "
                                  "'_' or '-' (it names the folder runs/NAME; set study.out_dir "
                                  "for another place)",
                                  value, sizeof S->name - 1);
            return copy_value(S, S->name, sizeof S->name, key, value);
        }
        if (strcmp(key, "description") == 0)
            return copy_value(S, S->description, sizeof S->description, key, value);
        if (strcmp(key, "base") == 0) {
            S->base_line = S->line;
            return copy_value(S, S->base, sizeof S->base, key, value);
        }
        if (strcmp(key, "budget") == 0) {
            S->budget_line = S->line;
            return copy_value(S, S->budget, sizeof S->budget, key, value);
        }
        if (strcmp(key, "out_dir") == 0)
            return copy_value(S, S->out_dir, sizeof S->out_dir - 64, key, value);
        if (strcmp(key, "variants") == 0) {
            S->variants_line = S->line;
            return copy_value(S, S->variants, sizeof S->variants, key, value);
        }
        if (strcmp(key, "sweep") == 0) {
            S->sweep_line = S->line;
            return copy_value(S, S->sweep, sizeof S->sweep, key, value);
        }
        if (strcmp(key, "sweep_layers") == 0)
            return copy_value(S, S->sweep_layers, sizeof S->sweep_layers, key, value);
        if (strcmp(key, "gain_reference") == 0)
            return copy_value(S, S->gain_ref, sizeof S->gain_ref, key, value);
        return parse_fail(S, CCOE_ERR_CONFIG,
                          "unknown key study.%s: [study] takes name, description, base, budget, "
                          "out_dir, variants, sweep, sweep_layers, gain_reference",
                          key);
    }
    if (strncmp(section, "variant.", 8) == 0) {
        const char *vname = section + 8;
        study_variant *v = declare_variant(S, vname);
        if (!v)
            return 0;
        if (strcmp(key, "label") == 0)
            return copy_value(S, v->label, sizeof v->label, key, value);
        if (strcmp(key, "optional") == 0) {
            if (strcmp(value, "true") == 0 || strcmp(value, "1") == 0 || strcmp(value, "yes") == 0)
                v->optional = 1;
            else if (strcmp(value, "false") == 0 || strcmp(value, "0") == 0 ||
                     strcmp(value, "no") == 0)
                v->optional = 0;
            else
                return parse_fail(S, CCOE_ERR_CONFIG,
                                  "[variant.%s] optional = '%s': write true or false", vname,
                                  value);
            return 1;
        }
        if (strcmp(key, "experts_per_domain") == 0) {
            char *end = NULL;
            long l = strtol(value, &end, 10);
            if (!*value || *end || l < 1 || l > 256)
                return parse_fail(S, CCOE_ERR_CONFIG,
                                  "[variant.%s] experts_per_domain = '%s': the layers of each "
                                  "domain's expert, a whole number 1..256",
                                  vname, value);
            v->experts_per_domain = (int)l;
            return 1;
        }
        if (strcmp(key, "init_from") == 0) {
            if (!valid_name(value))
                return parse_fail(S, CCOE_ERR_CONFIG,
                                  "[variant.%s] init_from = '%s': name an earlier variant",
                                  vname, value);
            return copy_value(S, v->init_from, sizeof v->init_from, key, value);
        }
        if (strcmp(key, "train.steps") == 0 || strcmp(key, "train.out_dir") == 0)
            return parse_fail(S, CCOE_ERR_CONFIG,
                              "[variant.%s] sets %s, which the study decides (study.budget, "
                              "study.out_dir): remove it",
                              vname, key);
        if (!strchr(key, '.'))
            return parse_fail(S, CCOE_ERR_CONFIG,
                              "[variant.%s] key '%s': write section.key = value (e.g. moe.gate = "
                              "topk), or label / optional / experts_per_domain",
                              vname, key);
        return add_set(S, v->sets, &v->n_sets, STUDY_MAX_SETS, NULL, key, value);
    }
    if (is_config_section(section)) {
        if (strcmp(section, "train") == 0 && strcmp(key, "steps") == 0)
            return 1; /* the budget decides; a base config may carry it, so may inline keys */
        return add_set(S, S->base_sets, &S->n_base_sets,
                       (int)(sizeof S->base_sets / sizeof S->base_sets[0]), section, key, value);
    }
    char secs[300];
    config_sections(secs, sizeof secs);
    return parse_fail(S, CCOE_ERR_CONFIG,
                      "unknown section [%s]: a study file has [study], [variant.NAME] and the "
                      "config sections %s",
                      section, secs);
}

static ccoe_status on_study_ini_key(void *user, const char *section, const char *key,
                                    const char *value, const char *where, int line,
                                    ccoe_error *err)
{
    (void)where;
    study *S = user;
    S->line = line;
    return on_study_key(S, section, key, value) ? CCOE_OK : err->status;
}

static ccoe_status parse_budget(study *S, ccoe_error *err)
{
    const char *b = S->budget, *colon = strchr(b, ':');
    char *end = NULL;
    if (!*b)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "study %s: no study.budget: write budget = tokens:N (the same "
                              "tokens for every variant) or budget = flops:N (the same training "
                              "FLOPs)",
                              S->path);
    if (colon && (size_t)(colon - b) == 6 && strncmp(b, "tokens", 6) == 0)
        S->bkind = BUDGET_TOKENS;
    else if (colon && (size_t)(colon - b) == 5 && strncmp(b, "flops", 5) == 0)
        S->bkind = BUDGET_FLOPS;
    else
        goto bad;
    errno = 0;
    S->bvalue = strtod(colon + 1, &end);
    if (errno || end == colon + 1 || *end || !(S->bvalue >= 1) || !isfinite(S->bvalue))
        goto bad;
    return CCOE_OK;
bad:
    return ccoe_error_set(err, CCOE_ERR_CONFIG,
                          "study %s line %d: budget = '%s': write tokens:N or flops:N with a "
                          "number N >= 1 (e.g. tokens:300000, flops:2.5e12)",
                          S->path, S->budget_line, b);
}

/* Splits a blank-separated list into words; returns the count or -1 if there are too many. */
static int split_words(char *s, char **words, int cap)
{
    int n = 0;
    for (char *tok = strtok(s, " \t,"); tok; tok = strtok(NULL, " \t,")) {
        if (n == cap)
            return -1;
        words[n++] = tok;
    }
    return n;
}

static ccoe_status parse_file(study *S, const char *path, ccoe_error *err)
{
    FILE *f = ccoe_fs_fopen_input(path, "study file", err);
    if (!f)
        return err->status = CCOE_ERR_CONFIG;
    char *text = NULL;
    size_t len = 0;
    int e = ccoe_fs_read_stream(f, (size_t)4 << 20, &text, &len);
    fclose(f);
    if (e)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "study file '%s' is larger than 4 MB or "
                              "unreadable (%s)", path, strerror(e));
    S->line = 0;
    S->err = err;
    char origin[CCOE_STR + 16];
    snprintf(origin, sizeof origin, "study %s", path);
    ccoe_status st = strlen(text) != len
                         ? ccoe_error_set(err, CCOE_ERR_CONFIG,
                                          "study file '%s' contains a NUL byte: is it a text file?",
                                          path)
                         : ccoe_ini_parse(text, origin, on_study_ini_key, on_study_section, S, err);
    free(text);
    return st;
}

/* Builds the run list: the listed variants, then the sweep points. */
static ccoe_status build_run_list(study *S, int n_layer, ccoe_error *err)
{
    char list[sizeof S->variants];
    char *words[STUDY_MAX_VARIANTS + 1];
    snprintf(list, sizeof list, "%s", S->variants);
    int n = split_words(list, words, STUDY_MAX_VARIANTS);
    if (n < 0)
        return ccoe_error_set(err, CCOE_ERR_CONFIG, "study %s: more than %d variants", S->path,
                              STUDY_MAX_VARIANTS);
    if (n == 0 && !S->sweep[0])
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "study %s: no variants: list them in [study] variants = NAME ... "
                              "(each with a [variant.NAME] section) or set study.sweep",
                              S->path);
    for (int i = 0; i < n; i++) {
        study_variant *d = find_variant(S->decl, S->n_decl, words[i]);
        if (!d) {
            char have[600] = "";
            size_t len = 0;
            for (int j = 0; j < S->n_decl; j++)
                len += (size_t)snprintf(have + len, len < sizeof have ? sizeof have - len : 0,
                                        " %s", S->decl[j].name);
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s line %d: variant '%s' has no [variant.%s] section "
                                  "(declared:%s)",
                                  S->path, S->variants_line, words[i], words[i],
                                  S->n_decl ? have : " none");
        }
        if (find_variant(S->run, S->n_run, words[i]))
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s line %d: variant '%s' is listed twice", S->path,
                                  S->variants_line, words[i]);
        S->run[S->n_run++] = *d;
    }
    if (S->sweep[0]) {
        study_variant *t = find_variant(S->decl, S->n_decl, S->sweep);
        if (!t)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s line %d: sweep = %s, but there is no [variant.%s] "
                                  "section to sweep",
                                  S->path, S->sweep_line, S->sweep, S->sweep);
        int lo = 1, hi = n_layer / 2;
        if (S->sweep_layers[0] && strcmp(S->sweep_layers, "all") != 0) {
            char *end = NULL;
            long a = strtol(S->sweep_layers, &end, 10), b = a;
            if (end && strncmp(end, "..", 2) == 0)
                b = strtol(end + 2, &end, 10);
            if (!end || *end || a < 1 || b < a || b > 256)
                return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                      "study %s: sweep_layers = '%s': write all (1..floor(L/2)), "
                                      "N or A..B with 1 <= A <= B",
                                      S->path, S->sweep_layers);
            lo = (int)a;
            hi = (int)b;
        }
        if (hi < lo)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s: the sweep over l_i = 1..floor(L/2) is empty for "
                                  "model.n_layer = %d: use at least 2 layers",
                                  S->path, n_layer);
        for (int l = lo; l <= hi; l++) {
            if (S->n_run == STUDY_MAX_VARIANTS)
                return ccoe_error_set(err, CCOE_ERR_CONFIG, "study %s: more than %d variants",
                                      S->path, STUDY_MAX_VARIANTS);
            study_variant *v = &S->run[S->n_run++];
            *v = *t;
            snprintf(v->name, sizeof v->name, "%.36s_l%d", t->name, l % 1000);
            v->experts_per_domain = l;
            v->sweep_layers = l;
            if (t->label[0])
                snprintf(v->label, sizeof v->label, "%.100s, l_i=%d", t->label, l);
        }
    }
    for (int j = 0; j < S->n_decl && !S->variants_cli; j++)
        if (!find_variant(S->run, S->n_run, S->decl[j].name) &&
            strcmp(S->decl[j].name, S->sweep) != 0)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s line %d: [variant.%s] is not listed in "
                                  "study.variants: add it or remove the section",
                                  S->path, S->decl[j].line, S->decl[j].name);
    for (int i = 0; i < S->n_run; i++) {
        const char *from = S->run[i].init_from;
        if (!from[0])
            continue;
        int j = 0;
        while (j < i && strcmp(S->run[j].name, from) != 0)
            j++;
        if (j == i)
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s line %d: [variant.%s] init_from = %s, which is not "
                                  "a variant that runs before it: list %s earlier in "
                                  "study.variants",
                                  S->path, S->run[i].line, S->run[i].name, from, from);
    }
    if (S->gain_ref[0] && !find_variant(S->run, S->n_run, S->gain_ref))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "study %s: gain_reference = %s is not one of the variants",
                              S->path, S->gain_ref);
    return CCOE_OK;
}

/* ---- one variant ---- */

static ccoe_status apply_set(const study *S, const study_set *s, const char *where,
                             ccoe_config *cfg, ccoe_error *err)
{
    ccoe_status st = ccoe_config_set(cfg, s->text, err);
    if (st == CCOE_OK)
        return st;
    if (s->line > 0)
        return ccoe_error_wrap(err, "study %s line %d (%s)", S->path, s->line, where);
    return ccoe_error_wrap(err, "study --set (%s)", where);
}

static void describe(const study_variant *v, const ccoe_config *c, char *buf, size_t cap)
{
    if (v->label[0]) {
        snprintf(buf, cap, "%s", v->label);
        return;
    }
    size_t len = 0;
    len += (size_t)snprintf(buf, cap, "L%d C%d", c->model.n_layer, c->model.n_embd);
    if (!ccoe_gate_is_none(c->moe.gate) && len < cap)
        len += (size_t)snprintf(buf + len, cap - len, ", MoE %s E%d K%d", c->moe.gate,
                                c->moe.n_experts, c->moe.top_k);
    if (c->ccoe.form != CCOE_FORM_NONE && len < cap) {
        static const char *const forms[] = {"none", "tail (Eq. 4)", "prefix (Eq. 5)",
                                            "ffn (Eqs. 6-7)"};
        int f = (int)c->ccoe.form;
        len += (size_t)snprintf(buf + len, cap - len, ", CCoE %s",
                                f >= 0 && f < 4 ? forms[f] : "?");
        if (c->ccoe.form == CCOE_FORM_PREFIX && len < cap)
            len += (size_t)snprintf(buf + len, cap - len, " l_b=%d", c->ccoe.prefix_layers);
        if (v->experts_per_domain > 0 && len < cap)
            snprintf(buf + len, cap - len, " l_i=%d per domain", v->experts_per_domain);
    }
}

/* Parameters one token of `path` uses, counting k/E of each MoE expert matrix. */
static double active_params(const ccoe_model *m, int path)
{
    const ccoe_path *pa = &m->paths[path];
    double n = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        int used;
        if (p->block >= 0)
            used = p->block < pa->n_base ||
                   (p->block >= pa->first_inst && p->block < pa->first_inst + pa->n_own);
        else if (p->expert < 0)
            used = strncmp(p->name, "wte", 4) == 0 || strncmp(p->name, "wpe", 4) == 0 ||
                   pa->head == 0;
        else
            used = pa->head == 1 + p->expert;
        if (!used)
            continue;
        double k = (double)p->numel;
        if (m->n_moe > 0 && strstr(p->name, ".moe.experts."))
            k *= (double)m->moe.K / (double)m->moe.E;
        n += k;
    }
    return n;
}

/* The variant's config for one step: base + overrides + expert sugar (one expert per domain of
 * S->domains) + its output directory, validated. */
static ccoe_status variant_config(study *S, const study_variant *v, const ccoe_config *base,
                                  ccoe_config *cfg, ccoe_error *err)
{
    *cfg = *base;
    char where[80];
    snprintf(where, sizeof where, "[variant.%s]", v->name);
    ccoe_status st = CCOE_OK;
    for (int i = 0; i < v->n_sets && st == CCOE_OK; i++)
        st = apply_set(S, &v->sets[i], where, cfg, err);
    if (st == CCOE_OK && v->experts_per_domain > 0) {
        if (cfg->ccoe.form == CCOE_FORM_NONE)
            st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                                "study %s line %d: [variant.%s] has experts_per_domain but "
                                "ccoe.form = none: set ccoe.form = tail, prefix or ffn",
                                S->path, v->line, v->name);
        cfg->ccoe.experts[0] = cfg->ccoe.routes[0] = '\0';
        for (int d = 0; d < S->n_domains && st == CCOE_OK; d++) {
            const char *dn = S->domains[d];
            st = ccoe_gating_config_add(cfg, dn, v->experts_per_domain, &dn, 1, err);
        }
    }
    if (st == CCOE_OK) {
        char od[2 * CCOE_STR];
        snprintf(od, sizeof od, "train.out_dir=%s/%s", S->out_dir, v->name);
        st = ccoe_config_set(cfg, od, err);
    }
    cfg->train.steps = 1;
    if (st == CCOE_OK)
        st = ccoe_session_validate(cfg, err);
    return st;
}

/* Builds the variant's config (base + overrides + sweep/expert sugar + budget) and measures its
 * model (parameters, FLOPs per token). A config error of an optional variant marks it skipped. */
static ccoe_status prepare_variant(study *S, study_variant *v, const ccoe_config *base,
                                   ccoe_error *err)
{
    ccoe_config cfg;
    ccoe_status st = variant_config(S, v, base, &cfg, err);
    ccoe_session s;
    if (st == CCOE_OK)
        st = ccoe_session_open(&s, &cfg, 1, err);
    if (st != CCOE_OK) {
        if (v->optional && (st == CCOE_ERR_CONFIG || st == CCOE_ERR_ARG)) {
            v->skipped = 1;
            snprintf(v->note, sizeof v->note, "skipped (optional; this build rejects it: %.330s)",
                     err->msg);
            ccoe_error_clear(err);
            return CCOE_OK;
        }
        return ccoe_error_wrap(err, "variant %s", v->name);
    }
    const ccoe_model *m = &s.model;
    const int T = s.cfg.model.seq_len;
    double fwd = 0, act = 0;
    for (int d = 0; d < S->n_domains; d++) {
        int path = s.gating.n_domains > d ? s.gating.route[d] + 1 : 0;
        fwd += S->dom_share[d] * ccoe_model_path_forward_flops(m, path, T);
        act += S->dom_share[d] * active_params(m, path);
    }
    v->flops_per_token = 3.0 * fwd; /* forward + backward (2x forward) */
    v->active_params = act;
    v->total_params = m->num_params;
    v->n_moe = m->n_moe;
    if (m->n_moe > 0) {
        v->E = m->moe.E;
        v->K = m->moe.K;
    }
    snprintf(v->gate, sizeof v->gate, "%s", s.cfg.moe.gate);
    const double tps = (double)s.cfg.train.batch_size * T * s.cfg.train.grad_accum;
    cfg = s.cfg;
    ccoe_session_close(&s);
    double steps = S->bkind == BUDGET_TOKENS ? floor(S->bvalue / tps)
                                             : floor(S->bvalue / (tps * v->flops_per_token));
    if (steps < 1)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "study %s: budget %s is less than one step of variant %s (%.0f "
                              "tokens, %.3g FLOPs per step): raise study.budget",
                              S->path, S->budget, v->name, tps, tps * v->flops_per_token);
    if (steps > 1e9)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "study %s: budget %s means %.3g steps for variant %s (at most 1e9)",
                              S->path, S->budget, steps, v->name);
    cfg.train.steps = (long)steps;
    v->steps = cfg.train.steps;
    v->tokens = (long)(steps * tps);
    v->train_flops = steps * tps * v->flops_per_token;
    if ((st = ccoe_session_validate(&cfg, err)) != CCOE_OK)
        return ccoe_error_wrap(err, "variant %s with %ld steps", v->name, v->steps);
    v->cfg = cfg;
    char desc[sizeof v->label];
    describe(v, &cfg, desc, sizeof desc);
    snprintf(v->label, sizeof v->label, "%s", desc);
    return CCOE_OK;
}

static double jnum(const cJSON *o, const char *key)
{
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(x) ? x->valuedouble : NAN;
}

/* Reads OUT/metrics.jsonl: training curve, throughput, communication time, evaluations. */
static ccoe_status read_metrics(study *S, study_variant *v, ccoe_error *err)
{
    char path[CCOE_STR + 64];
    snprintf(path, sizeof path, "%s/metrics.jsonl", v->cfg.train.out_dir);
    FILE *f = ccoe_fs_fopen_input(path, "metrics file", err);
    if (!f)
        return ccoe_error_wrap(err, "variant %s", v->name);
    char *line = NULL;
    size_t cap = 0;
    double sum_ms = 0, sum_comm = 0;
    long n_steps = 0, final_step = -1;
    v->c_step.n = v->c_loss.n = v->v_step.n = v->v_loss.n = 0;
    for (int d = 0; d < CCOE_MAX_DOMAINS; d++)
        v->loss[d] = v->ppl[d] = v->acc[d] = NAN;
    int oom = 0;
    while (getline(&line, &cap, f) > 0) {
        cJSON *j = cJSON_Parse(line);
        if (!j)
            continue;
        double step = jnum(j, "step");
        const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "eval");
        if (cJSON_IsObject(ev)) {
            double sum = 0;
            int n = 0;
            for (int d = 0; d < S->n_domains; d++) {
                const cJSON *o = cJSON_GetObjectItemCaseSensitive(ev, S->domains[d]);
                double l = jnum(o, "loss");
                if (isfinite(l)) {
                    sum += l;
                    n++;
                }
            }
            if (n == S->n_domains) {
                oom |= !dvec_push(&v->v_step, step) || !dvec_push(&v->v_loss, sum / n);
            }
            if (step == (double)v->steps) {
                final_step = (long)step;
                for (int d = 0; d < S->n_domains; d++) {
                    const cJSON *o = cJSON_GetObjectItemCaseSensitive(ev, S->domains[d]);
                    v->loss[d] = jnum(o, "loss");
                    v->ppl[d] = jnum(o, "ppl");
                    v->acc[d] = jnum(o, "acc");
                }
            }
        } else if (cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "loss"))) {
            if (step <= (double)v->steps) {
                oom |= !dvec_push(&v->c_step, step) || !dvec_push(&v->c_loss, jnum(j, "loss"));
                double ms = jnum(j, "step_ms");
                if (isfinite(ms)) {
                    sum_ms += ms;
                    n_steps++;
                }
                /* communication time, whichever fields the (MPI) trainer writes */
                double c = jnum(j, "comm_ms");
                if (!isfinite(c)) {
                    c = 0;
                    const char *keys[] = {"allreduce_ms", "exchange_ms", "alltoall_ms"};
                    for (int k = 0; k < 3; k++) {
                        double x = jnum(j, keys[k]);
                        if (isfinite(x))
                            c += x;
                    }
                }
                sum_comm += c;
            }
        }
        cJSON_Delete(j);
    }
    free(line);
    fclose(f);
    if (oom)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory reading %s", path);
    if (final_step < 0)
        return ccoe_error_set(err, CCOE_ERR_FORMAT,
                              "variant %s: %s has no evaluation at the last step %ld: the run "
                              "did not finish; rerun the study with --force",
                              v->name, path, v->steps);
    v->train_s = sum_ms / 1e3;
    v->tok_s = sum_ms > 0 ? (double)n_steps * (double)v->tokens / (double)v->steps / (sum_ms / 1e3)
                          : NAN;
    v->comm_share = sum_ms > 0 ? sum_comm / sum_ms : 0;
    double sl = 0;
    for (int d = 0; d < S->n_domains; d++)
        sl += v->loss[d];
    v->mean_loss = sl / S->n_domains;
    v->mean_ppl = exp(v->mean_loss);
    return CCOE_OK;
}

/* Per-expert load of an MoE variant on the validation split: for each domain, the share of
 * its expert slots each expert receives (averaged over MoE layers), plus load CV, the largest
 * expert's share, the drop rate and the mutual information between domain and expert. */
static ccoe_status moe_load(study *S, study_variant *v, ccoe_error *err)
{
    ccoe_session s;
    CCOE_TRY(ccoe_session_open(&s, &v->cfg, 1, err));
    char path[CCOE_STR + 64];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", v->cfg.train.out_dir);
    ccoe_config stored;
    ccoe_st_file *f = NULL;
    ccoe_status st = ccoe_checkpoint_open(path, &stored, &f, err);
    if (st == CCOE_OK)
        st = ccoe_checkpoint_load(f, path, &s.model, NULL, NULL, err);
    ccoe_st_close(f);
    const int E = v->E, nl = s.model.n_moe, nd = S->n_domains;
    double *cnt = calloc((size_t)nd * nl * E, sizeof *cnt); /* (nd, nl, E) kept slots */
    v->load = calloc((size_t)nd * E, sizeof *v->load);
    if (st == CCOE_OK && (!cnt || !v->load))
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for expert statistics");
    double dropped = 0, slots = 0;
    ccoe_model *m = &s.model;
    const int B = s.batch.maxB, T = s.cfg.model.seq_len;
    for (int d = 0; d < nd && st == CCOE_OK; d++) {
        ccoe_model_moe_reset_totals(m);
        m->train = 0;
        size_t nval = s.data.domains[d].n_val;
        for (size_t first = 0, k = 0; first < nval; first += (size_t)B, k++) {
            if (s.cfg.train.eval_batches > 0 && k >= (size_t)s.cfg.train.eval_batches)
                break;
            int got = ccoe_data_val_batch(&s.data, d, first, s.batch.tokens, s.batch.targets,
                                          s.batch.domains, B);
            long c = 0;
            m->collect_moe = 1;
            ccoe_model_forward(m, s.batch.tokens, s.batch.targets, s.batch.domains, got, T, &c);
            m->collect_moe = 0;
        }
        for (int l = 0; l < nl; l++) {
            for (int e = 0; e < E; e++)
                cnt[((size_t)d * nl + l) * E + e] = (double)m->moe_tot_tokens[(size_t)l * E + e];
            dropped += (double)m->moe_tot_dropped[2 * l];
            slots += (double)m->moe_tot_rows[l] * v->K;
        }
    }
    ccoe_session_close(&s);
    if (st != CCOE_OK) {
        free(cnt);
        return ccoe_error_wrap(err, "expert statistics of variant %s", v->name);
    }
    /* per layer: CV and max share of the total load; MI(domain; expert) */
    double cv = 0, mx = 0, mi = 0;
    for (int e = 0; e < E; e++)
        v->share[e] = 0;
    for (int l = 0; l < nl; l++) {
        double tot[CCOE_MOE_MAX_EXPERTS] = {0}, all = 0;
        double dsum[CCOE_MAX_DOMAINS] = {0};
        for (int d = 0; d < nd; d++)
            for (int e = 0; e < E; e++) {
                double x = cnt[((size_t)d * nl + l) * E + e];
                tot[e] += x;
                dsum[d] += x;
                all += x;
            }
        if (all <= 0)
            continue;
        double mean = all / E, var = 0, lmx = 0;
        for (int e = 0; e < E; e++) {
            var += (tot[e] - mean) * (tot[e] - mean) / E;
            lmx = tot[e] / all > lmx ? tot[e] / all : lmx;
            v->share[e] += tot[e] / all / nl;
        }
        cv += sqrt(var) / mean / nl;
        mx += lmx / nl;
        for (int d = 0; d < nd; d++)
            for (int e = 0; e < E; e++) {
                double pde = cnt[((size_t)d * nl + l) * E + e] / all;
                if (pde > 0)
                    mi += pde * log2(pde / ((dsum[d] / all) * (tot[e] / all))) / nl;
                if (dsum[d] > 0)
                    v->load[(size_t)d * E + e] += cnt[((size_t)d * nl + l) * E + e] / dsum[d] / nl;
            }
    }
    free(cnt);
    v->load_cv = cv;
    v->max_share = mx;
    v->drop_rate = slots > 0 ? dropped / slots : 0;
    v->mi_bits = mi;
    return CCOE_OK;
}

/* 1 if OUT/checkpoint.safetensors holds a finished run of exactly v->cfg. */
static int finished_run(const study_variant *v, int *exists)
{
    char path[CCOE_STR + 64];
    snprintf(path, sizeof path, "%s/checkpoint.safetensors", v->cfg.train.out_dir);
    *exists = access(path, F_OK) == 0;
    if (!*exists)
        return 0;
    ccoe_config stored;
    ccoe_st_file *f = NULL;
    ccoe_error e = {0};
    if (ccoe_checkpoint_open(path, &stored, &f, &e) != CCOE_OK)
        return 0;
    const char *step = ccoe_st_meta(f, "step");
    stored.mpi.timeout = v->cfg.mpi.timeout; /* the watchdog belongs to the job, not the run */
    int same = ccoe_config_hash(&stored) == ccoe_config_hash(&v->cfg) && step &&
               atol(step) == v->steps;
    ccoe_st_close(f);
    return same;
}

/* The communicator of a study run by several ranks (mpirun -np P ccoe study), else NULL. */
static ccoe_comm *study_comm(const ccoe_study_opts *o)
{
    return o->comm && o->comm->size > 1 ? o->comm : NULL;
}

/* Trains variant v (or reuses its finished run) and reads its results. COLLECTIVE with a
 * study communicator: rank 0 decides whether to reuse and tells the others, every rank
 * trains (data parallel, or expert parallel for MoE variants), rank 0 alone prints and reads
 * the results, and the ranks agree on the outcome, so they return the same status. */
static ccoe_status run_variant(study *S, study_variant *v, int idx, const ccoe_study_opts *o,
                               ccoe_error *err)
{
    ccoe_comm *c = study_comm(o);
    const int rank0 = !c || c->rank == 0;
    const study_variant *src = v->init_from[0] ? find_variant(S->run, S->n_run, v->init_from)
                                               : NULL;
    int src_new = src && !src->reused; /* its start weights changed: retrain */
    int have[2] = {0, 0};             /* finished run of this config, directory holds a run */
    if (rank0)
        have[0] = finished_run(v, &have[1]);
    if (c)
        CCOE_TRY(c->ops->bcast(c, have, sizeof have, 0, err));
    if (have[0] && !o->force && !src_new) {
        v->reused = 1;
        if (rank0)
            fprintf(stderr, "[%d/%d] %-16s %ld steps: reusing the finished run in %s\n",
                    idx + 1, S->n_run, v->name, v->steps, v->cfg.train.out_dir);
    } else {
        if (have[1] && !o->force && !src_new) {
            ccoe_status bad = ccoe_error_set(err, CCOE_ERR_ARG,
                                             "%s already holds a different or unfinished run of "
                                             "variant %s: rerun with --force to retrain it, or "
                                             "set study.out_dir",
                                             v->cfg.train.out_dir, v->name);
            return c ? ccoe_comm_agree(c, bad, err) : bad; /* every rank fails alike */
        }
        char tk[32];
        human(tk, sizeof tk, (double)v->tokens);
        if (rank0) {
            fprintf(stderr, "[%d/%d] %-16s %ld steps, %s tokens, %.3g FLOPs: %s ...%s", idx + 1,
                    S->n_run, v->name, v->steps, tk, v->train_flops, v->label,
                    o->verbose ? "\n" : "");
            fflush(stderr);
        }
        ccoe_train_opts to = {.force = 1, .progress = o->verbose ? o->progress : 0,
                              .quiet = !o->verbose, .comm = c};
        char from[CCOE_STR + 96];
        if (v->init_from[0]) {
            if (src->skipped) {
                v->skipped = 1;
                snprintf(v->note, sizeof v->note, "skipped: it starts from %s, which was skipped",
                         src->name);
                if (rank0)
                    fputc('\n', stderr);
                return CCOE_OK;
            }
            snprintf(from, sizeof from, "%s/checkpoint.safetensors", src->cfg.train.out_dir);
            to.init_from = from;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ccoe_status st = ccoe_train_run(&v->cfg, &to, err);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        v->wall_s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        if (st != CCOE_OK) {
            if (!o->verbose && rank0)
                fputc('\n', stderr);
            /* a failure the ranks have not agreed on (c->failed_rank < 0) leaves ranks waiting:
             * returned as it is, main ends the job */
            if (v->optional && (!c || c->failed_rank >= 0) && st != CCOE_ERR_COMM) {
                v->skipped = 1;
                snprintf(v->note, sizeof v->note, "skipped (optional; training failed: %.330s)",
                         err->msg);
                ccoe_error_clear(err);
                return CCOE_OK;
            }
            return ccoe_error_wrap(err, "variant %s", v->name);
        }
    }
    ccoe_status st = CCOE_OK;
    if (rank0) {
        st = read_metrics(S, v, err);
        if (st == CCOE_OK && v->n_moe > 0)
            st = moe_load(S, v, err);
        if (st == CCOE_OK && !v->reused)
            fprintf(stderr, "%s %.1f s, mean val loss %.4f\n", o->verbose ? "  done:" : "",
                    v->wall_s, v->mean_loss);
    }
    return c ? ccoe_comm_agree(c, st, err) : st;
}

/* ---- output ---- */

/* "%.Nf" of x (with a sign if plus, times scale, then suffix), or "-" if x is not finite. */
static void fmt_or_dash(char *buf, size_t cap, int digits, int plus, const char *suffix, double x)
{
    if (isfinite(x))
        snprintf(buf, cap, plus ? "%+.*f%s" : "%.*f%s", digits, x, suffix);
    else
        snprintf(buf, cap, "-");
}

static void write_markdown(const study *S, FILE *f, const char *machine)
{
    char a[32], b[32], c[32], d[32];
    fprintf(f, "# Study %s\n\n", S->name);
    if (S->description[0])
        fprintf(f, "%s\n\n", S->description);
    human(a, sizeof a, S->bvalue);
    fprintf(f,
            "Budget: %s %s per variant (%s). Data: %s, %d domains. %s. Validation error = mean "
            "over the domains of the held-out next-token loss (nats) after the last step.\n\n",
            a, S->bkind == BUDGET_TOKENS ? "training tokens" : "training FLOPs",
            S->budget, S->run[0].cfg.data.manifest, S->n_domains, machine);
    fprintf(f, "| variant | what | total params | active params/token | train FLOPs | tokens | "
               "tok/s | comm | val loss | val ppl |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int i = 0; i < S->n_run; i++) {
        const study_variant *v = &S->run[i];
        if (v->skipped) {
            fprintf(f, "| %s | %s | - | - | - | - | - | - | - | - |\n", v->name,
                    v->label[0] ? v->label : "skipped");
            continue;
        }
        human(a, sizeof a, (double)v->total_params);
        human(b, sizeof b, v->active_params);
        char fl[32], tk[32], ts[32];
        snprintf(fl, sizeof fl, "%.3g", v->train_flops);
        human(tk, sizeof tk, (double)v->tokens);
        snprintf(ts, sizeof ts, "%.0f", v->tok_s);
        fprintf(f, "| %s | %s | %s | %s | %s | %s | %s | %.1f%% | %.4f | %.3f |\n", v->name,
                v->label, a, b, fl, tk, ts, 100.0 * v->comm_share, v->mean_loss, v->mean_ppl);
    }
    /* per domain */
    fprintf(f, "\nHeld-out loss per domain (perplexity)");
    int any_task = 0;
    for (int dd = 0; dd < S->n_domains; dd++)
        any_task |= S->dom_task[dd];
    fprintf(f, "%s:\n\n| variant |", any_task ? " and exact-match task accuracy" : "");
    for (int dd = 0; dd < S->n_domains; dd++)
        fprintf(f, " %s |", S->domains[dd]);
    for (int dd = 0; dd < S->n_domains; dd++)
        if (S->dom_task[dd])
            fprintf(f, " acc %s |", S->domains[dd]);
    fprintf(f, "\n|---|");
    for (int dd = 0; dd < S->n_domains; dd++)
        fputs("---:|", f);
    for (int dd = 0; dd < S->n_domains; dd++)
        if (S->dom_task[dd])
            fprintf(f, "---:|");
    fputc('\n', f);
    for (int i = 0; i < S->n_run; i++) {
        const study_variant *v = &S->run[i];
        if (v->skipped)
            continue;
        fprintf(f, "| %s |", v->name);
        for (int dd = 0; dd < S->n_domains; dd++)
            fprintf(f, " %.3f (%.2f) |", v->loss[dd], v->ppl[dd]);
        for (int dd = 0; dd < S->n_domains; dd++)
            if (S->dom_task[dd]) {
                fmt_or_dash(a, sizeof a, 1, 0, "%", 100.0 * v->acc[dd]);
                fprintf(f, " %s |", a);
            }
        fputc('\n', f);
    }
    /* expert load */
    int any_moe = 0;
    for (int i = 0; i < S->n_run; i++)
        any_moe |= !S->run[i].skipped && S->run[i].n_moe > 0;
    if (any_moe) {
        fprintf(f, "\nExpert load on the validation split (MoE layers, mean over layers; ideal "
                   "balance: CV 0, largest share 1/E; I(domain;expert) = how much the routing "
                   "depends on the domain, in bits):\n\n"
                   "| variant | gate | E | K | MoE layers | load CV | largest share | drop rate "
                   "| I(domain;expert) | share per expert |\n"
                   "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for (int i = 0; i < S->n_run; i++) {
            const study_variant *v = &S->run[i];
            if (v->skipped || v->n_moe == 0)
                continue;
            fprintf(f, "| %s | %s | %d | %d | %d | %.3f | %.1f%% | %.2f%% | %.3f bits | ",
                    v->name, v->gate, v->E, v->K, v->n_moe, v->load_cv, 100.0 * v->max_share,
                    100.0 * v->drop_rate, v->mi_bits);
            for (int e = 0; e < v->E && e < 16; e++)
                fprintf(f, "%s%.0f", e ? " " : "", 100.0 * v->share[e]);
            fprintf(f, "%s |\n", v->E > 16 ? " ..." : " (%)");
        }
    }
    /* sweep */
    int any_gain = 0;
    for (int i = 0; i < S->n_run; i++)
        any_gain |= isfinite(S->run[i].gain);
    if (any_gain) {
        fprintf(f, "\nExpert-size sweep: performance gain = -d(val loss) / |d(params)| against "
                   "the previous point (the first against %s), per million parameters:\n\n"
                   "| variant | l_i | total params | val loss | d(params) | d(val loss) | gain "
                   "per 1M params |\n|---|---:|---:|---:|---:|---:|---:|\n",
                S->gain_ref[0] ? S->gain_ref : "the first variant");
        const study_variant *prev = NULL;
        for (int i = 0; i < S->n_run; i++) {
            const study_variant *v = &S->run[i];
            if (v->skipped)
                continue;
            if (!v->sweep_layers) {
                if (S->gain_ref[0] ? strcmp(v->name, S->gain_ref) == 0 : !prev) {
                    prev = v;
                    human(a, sizeof a, (double)v->total_params);
                    fprintf(f, "| %s (reference) | 0 | %s | %.4f | - | - | - |\n", v->name, a,
                            v->mean_loss);
                }
                continue;
            }
            human(a, sizeof a, (double)v->total_params);
            human(b, sizeof b, prev ? (double)v->total_params - (double)prev->total_params : NAN);
            fmt_or_dash(c, sizeof c, 4, 1, "", prev ? v->mean_loss - prev->mean_loss : NAN);
            fmt_or_dash(d, sizeof d, 4, 0, "", v->gain * 1e6);
            fprintf(f, "| %s | %d | %s | %.4f | %s | %s | %s |\n", v->name, v->sweep_layers, a,
                    v->mean_loss, b, c, d);
            prev = v;
        }
    }
    int notes = 0;
    for (int i = 0; i < S->n_run; i++)
        if (S->run[i].skipped || S->run[i].reused || S->run[i].init_from[0])
            notes = 1;
    if (notes) {
        fputc('\n', f);
        for (int i = 0; i < S->n_run; i++) {
            const study_variant *v = &S->run[i];
            if (v->skipped)
                fprintf(f, "- %s: %s\n", v->name, v->note);
            if (!v->skipped && v->init_from[0])
                fprintf(f, "- %s: starts from the weights of %s (its budget comes on top of "
                           "%s's)\n",
                        v->name, v->init_from, v->init_from);
            if (!v->skipped && v->reused)
                fprintf(f, "- %s: reused the finished run in %s\n", v->name,
                        v->cfg.train.out_dir);
        }
    }
    fprintf(f,
            "\nColumns: params counted from the built model; active params/token and train "
            "FLOPs (6 N_active + 12 L C T per token, MoE experts at K/E) averaged over the "
            "domain mix of the training data; tok/s = tokens / summed step time (evaluation "
            "excluded); comm = share of step time spent communicating (0 in one process).\n");
}

static void write_csv(const study *S, FILE *f)
{
    fprintf(f, "variant,label,status,steps,tokens,train_flops,total_params,active_params,"
               "train_flops_per_token,tok_per_s,train_s,comm_share,mean_val_loss,mean_val_ppl");
    for (int d = 0; d < S->n_domains; d++)
        fprintf(f, ",loss_%s", S->domains[d]);
    for (int d = 0; d < S->n_domains; d++)
        fprintf(f, ",ppl_%s", S->domains[d]);
    for (int d = 0; d < S->n_domains; d++)
        if (S->dom_task[d])
            fprintf(f, ",acc_%s", S->domains[d]);
    fprintf(f, ",gate,n_experts,top_k,load_cv,max_load_share,drop_rate,domain_expert_mi_bits,"
               "sweep_layers,gain_per_param\n");
    for (int i = 0; i < S->n_run; i++) {
        const study_variant *v = &S->run[i];
        char label[sizeof v->label]; /* no commas or quotes: plain split-on-comma CSV */
        snprintf(label, sizeof label, "%s", v->label);
        for (char *p = label; *p; p++)
            if (*p == ',' || *p == '"')
                *p = ';';
        fprintf(f, "%s,%s,%s", v->name, label, v->skipped ? "skipped" : "ok");
        if (v->skipped) {
            int cols = 11 + 2 * S->n_domains + 8;
            for (int d = 0; d < S->n_domains; d++)
                cols += S->dom_task[d];
            for (int k = 0; k < cols; k++)
                fputc(',', f);
            fputc('\n', f);
            continue;
        }
        fprintf(f, ",%ld,%ld,%.6g,%zu,%.0f,%.6g,%.1f,%.3f,%.6f,%.6f,%.6f", v->steps, v->tokens,
                v->train_flops, v->total_params, v->active_params, v->flops_per_token, v->tok_s,
                v->train_s, v->comm_share, v->mean_loss, v->mean_ppl);
        for (int d = 0; d < S->n_domains; d++)
            fprintf(f, ",%.6f", v->loss[d]);
        for (int d = 0; d < S->n_domains; d++)
            fprintf(f, ",%.6f", v->ppl[d]);
        for (int d = 0; d < S->n_domains; d++)
            if (S->dom_task[d]) {
                if (isfinite(v->acc[d]))
                    fprintf(f, ",%.6f", v->acc[d]);
                else
                    fputc(',', f);
            }
        if (v->n_moe > 0)
            fprintf(f, ",%s,%d,%d,%.6f,%.6f,%.6f,%.6f", v->gate, v->E, v->K, v->load_cv,
                    v->max_share, v->drop_rate, v->mi_bits);
        else
            fprintf(f, ",%s,,,,,,", v->gate);
        if (v->sweep_layers)
            fprintf(f, ",%d", v->sweep_layers);
        else
            fputc(',', f);
        if (isfinite(v->gain))
            fprintf(f, ",%.6g\n", v->gain);
        else
            fprintf(f, ",\n");
    }
}

static ccoe_status open_out(const char *dir, const char *name, FILE **f, ccoe_error *err)
{
    char path[CCOE_STR + 128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *f = ccoe_fs_open_output(path, 0, "study output file", err); /* never through a symlink */
    return *f ? CCOE_OK : err->status;
}

/* The data behind scripts/plot_study.sh (gnuplot): OUT/plot/{meta.gp, curves.dat, val.dat,
 * domains.dat, acc.dat, load_<variant>.dat, sweep.dat}. */
static ccoe_status write_plot_data(const study *S, ccoe_error *err)
{
    char dir[CCOE_STR + 16];
    snprintf(dir, sizeof dir, "%s/plot", S->out_dir);
    CCOE_TRY(ccoe_fs_mkdirs(dir, err));
    FILE *f;
    int tokens_axis = S->bkind == BUDGET_TOKENS;
    CCOE_TRY(open_out(dir, "meta.gp", &f, err));
    fprintf(f, "# written by ccoe study: variables for scripts/study_*.gp\nstudy = \"%s\"\n",
            S->name);
    fprintf(f, "budget = \"%s\"\nnames = \"", S->budget);
    int nv = 0;
    for (int i = 0; i < S->n_run; i++)
        if (!S->run[i].skipped)
            fprintf(f, "%s%s", nv++ ? " " : "", S->run[i].name);
    fprintf(f, "\"\nnvar = %d\nxcol = %d\nxlabel = \"%s\"\ndomains = \"", nv,
            tokens_axis ? 2 : 3, tokens_axis ? "training tokens" : "training FLOPs");
    for (int d = 0; d < S->n_domains; d++)
        fprintf(f, "%s%s", d ? " " : "", S->domains[d]);
    fprintf(f, "\"\nndom = %d\nmoe = \"", S->n_domains);
    int nm = 0, ntask = 0, nsweep = 0;
    for (int i = 0; i < S->n_run; i++)
        if (!S->run[i].skipped && S->run[i].n_moe > 0)
            fprintf(f, "%s%s", nm++ ? " " : "", S->run[i].name);
    fprintf(f, "\"\nmoe_E = \"");
    for (int i = 0, k = 0; i < S->n_run; i++)
        if (!S->run[i].skipped && S->run[i].n_moe > 0)
            fprintf(f, "%s%d", k++ ? " " : "", S->run[i].E);
    fprintf(f, "\"\nnmoe = %d\n", nm);
    for (int d = 0; d < S->n_domains; d++)
        ntask += S->dom_task[d];
    for (int i = 0; i < S->n_run; i++)
        nsweep += !S->run[i].skipped && isfinite(S->run[i].gain);
    fprintf(f, "ntask = %d\nnsweep = %d\n", ntask, nsweep);
    fclose(f);

    /* training curves: EMA-smoothed loss (debiased, beta 0.95) */
    CCOE_TRY(open_out(dir, "curves.dat", &f, err));
    FILE *g;
    if (open_out(dir, "val.dat", &g, err) != CCOE_OK) {
        fclose(f);
        return err->status;
    }
    int first = 1;
    for (int i = 0; i < S->n_run; i++) {
        const study_variant *v = &S->run[i];
        if (v->skipped)
            continue;
        const double tps = (double)v->tokens / (double)v->steps;
        if (!first) {
            fputs("\n\n", f);
            fputs("\n\n", g);
        }
        first = 0;
        fprintf(f, "# %s: step tokens flops loss loss_ema\n", v->name);
        double ema = 0, w = 0;
        for (size_t k = 0; k < v->c_step.n; k++) {
            ema = 0.95 * ema + 0.05 * v->c_loss.v[k];
            w = 0.95 * w + 0.05;
            double st = v->c_step.v[k];
            fprintf(f, "%.0f %.0f %.6g %.5f %.5f\n", st, st * tps, st * tps * v->flops_per_token,
                    v->c_loss.v[k], ema / w);
        }
        fprintf(g, "# %s: step tokens flops mean_val_loss\n", v->name);
        for (size_t k = 0; k < v->v_step.n; k++) {
            double st = v->v_step.v[k];
            fprintf(g, "%.0f %.0f %.6g %.5f\n", st, st * tps, st * tps * v->flops_per_token,
                    v->v_loss.v[k]);
        }
    }
    fclose(f);
    fclose(g);

    /* per domain: rows = domains (+ mean), columns = variants */
    CCOE_TRY(open_out(dir, "domains.dat", &f, err));
    if (open_out(dir, "acc.dat", &g, err) != CCOE_OK) {
        fclose(f);
        return err->status;
    }
    fprintf(f, "# domain");
    fprintf(g, "# domain");
    for (int i = 0; i < S->n_run; i++)
        if (!S->run[i].skipped) {
            fprintf(f, " %s", S->run[i].name);
            fprintf(g, " %s", S->run[i].name);
        }
    fputc('\n', f);
    fputc('\n', g);
    for (int d = 0; d <= S->n_domains; d++) {
        fprintf(f, "%s", d < S->n_domains ? S->domains[d] : "mean");
        if (d < S->n_domains && S->dom_task[d])
            fprintf(g, "%s", S->domains[d]);
        for (int i = 0; i < S->n_run; i++) {
            const study_variant *v = &S->run[i];
            if (v->skipped)
                continue;
            fprintf(f, " %.5f", d < S->n_domains ? v->loss[d] : v->mean_loss);
            if (d < S->n_domains && S->dom_task[d])
                fprintf(g, " %.3f", isfinite(v->acc[d]) ? 100.0 * v->acc[d] : 0.0);
        }
        fputc('\n', f);
        if (d < S->n_domains && S->dom_task[d])
            fputc('\n', g);
    }
    fclose(f);
    fclose(g);

    /* expert load: rows = domains, columns = experts, % of the domain's slots */
    for (int i = 0; i < S->n_run; i++) {
        const study_variant *v = &S->run[i];
        if (v->skipped || v->n_moe == 0 || !v->load)
            continue;
        char name[STUDY_NAME + 16];
        snprintf(name, sizeof name, "load_%s.dat", v->name);
        CCOE_TRY(open_out(dir, name, &f, err));
        for (int d = 0; d < S->n_domains; d++) {
            for (int e = 0; e < v->E; e++)
                fprintf(f, "%s%.3f", e ? " " : "", 100.0 * v->load[(size_t)d * v->E + e]);
            fputc('\n', f);
        }
        fclose(f);
    }

    if (nsweep) {
        CCOE_TRY(open_out(dir, "sweep.dat", &f, err));
        fprintf(f, "# variant l_i total_params mean_val_loss gain_per_1M_params\n");
        for (int i = 0; i < S->n_run; i++) {
            const study_variant *v = &S->run[i];
            if (v->skipped)
                continue;
            if (v->sweep_layers || (S->gain_ref[0] && strcmp(v->name, S->gain_ref) == 0))
                fprintf(f, "%s %d %zu %.5f %.6g\n", v->name, v->sweep_layers, v->total_params,
                        v->mean_loss, isfinite(v->gain) ? v->gain * 1e6 : 0.0);
        }
        fclose(f);
    }
    return CCOE_OK;
}

static void compute_gains(study *S)
{
    const study_variant *prev = NULL;
    for (int i = 0; i < S->n_run; i++) {
        study_variant *v = &S->run[i];
        v->gain = NAN;
        if (v->skipped)
            continue;
        if (!v->sweep_layers) {
            if (S->gain_ref[0] ? strcmp(v->name, S->gain_ref) == 0 : !prev)
                prev = v;
            continue;
        }
        if (prev) {
            double dp = fabs((double)v->total_params - (double)prev->total_params);
            if (dp > 0)
                v->gain = -(v->mean_loss - prev->mean_loss) / dp;
        }
        prev = v;
    }
}

static void machine_line(char *buf, size_t cap, int threads, int ranks)
{
    char model[160] = "unknown CPU";
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (f) {
        char line[512];
        while (fgets(line, sizeof line, f))
            if (strncmp(line, "model name", 10) == 0) {
                char *c = strchr(line, ':');
                if (c) {
                    c++;
                    while (*c == ' ')
                        c++;
                    c[strcspn(c, "\n")] = '\0';
                    snprintf(model, sizeof model, "%s", c);
                }
                break;
            }
        fclose(f);
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (ranks > 1)
        snprintf(buf, cap, "Machine: %s, %ld CPUs online (rank 0's node), %d MPI ranks x %d "
                 "threads per run", model, ncpu, ranks, threads);
    else
        snprintf(buf, cap, "Machine: %s, %ld CPUs online, %d threads per run", model, ncpu,
                 threads);
}

/* A zeroed study with its variant arrays, or NULL when out of memory. */
static study *study_new(void)
{
    study *S = calloc(1, sizeof *S);
    study_variant *decl = calloc(STUDY_MAX_VARIANTS, sizeof *decl);
    study_variant *run = calloc(STUDY_MAX_VARIANTS, sizeof *run);
    if (!S || !decl || !run) {
        free(S);
        free(decl);
        free(run);
        return NULL;
    }
    S->decl = decl;
    S->run = run;
    return S;
}

static void study_free(study *S)
{
    if (!S)
        return;
    for (int i = 0; i < STUDY_MAX_VARIANTS; i++) {
        study_variant *v = &S->run[i];
        free(v->c_step.v);
        free(v->c_loss.v);
        free(v->v_step.v);
        free(v->v_loss.v);
        free(v->load);
    }
    free(S->decl);
    free(S->run);
    free(S);
}

/* Reads the study file, applies the command-line overrides and builds the base config (defaults,
 * base file relative to the study file, the base --set overrides). Touches no data. */
static ccoe_status study_setup(study *S, const char *path, const ccoe_study_opts *o,
                               ccoe_config *base, ccoe_error *err)
{
    ccoe_status st;
    snprintf(S->path, sizeof S->path, "%s", path);
    snprintf(S->dir, sizeof S->dir, "%s", path);
    char *slash = strrchr(S->dir, '/');
    if (slash)
        slash[1] = '\0';
    else
        S->dir[0] = '\0';
    if ((st = parse_file(S, path, err)) != CCOE_OK)
        return st;
    /* command-line overrides: study.* keys, otherwise config keys for every variant */
    for (int i = 0; i < o->n_sets; i++) {
        const char *a = o->sets[i];
        if (strncmp(a, "study.", 6) == 0) {
            const char *eq = strchr(a, '=');
            char key[64];
            if (!eq || (size_t)(eq - a - 6) >= sizeof key)
                return ccoe_error_set(err, CCOE_ERR_CONFIG, "--set '%s': write study.key=value",
                                      a);
            memcpy(key, a + 6, (size_t)(eq - a - 6));
            key[eq - a - 6] = '\0';
            S->err = err;
            S->line = 0;
            if (!on_study_key(S, "study", key, eq + 1))
                return err->status;
            if (strcmp(key, "variants") == 0)
                S->variants_cli = 1;
            continue;
        }
        if (S->n_base_sets == (int)(sizeof S->base_sets / sizeof S->base_sets[0]))
            return ccoe_error_set(err, CCOE_ERR_CONFIG, "too many --set overrides");
        study_set *s = &S->base_sets[S->n_base_sets++];
        snprintf(s->text, sizeof s->text, "%s", a);
        s->line = 0;
    }
    if (!S->name[0]) {
        const char *b = strrchr(path, '/');
        snprintf(S->name, sizeof S->name, "%s", b ? b + 1 : path);
        char *dot = strrchr(S->name, '.');
        if (dot && strcmp(dot, ".ini") == 0)
            *dot = '\0';
    }
    if (!S->out_dir[0])
        snprintf(S->out_dir, sizeof S->out_dir, "runs/%s", S->name);
    if ((st = parse_budget(S, err)) != CCOE_OK)
        return st;

    /* the base config: defaults, base file (relative to the study file), inline sections */
    ccoe_config_defaults(base);
    if (S->base[0]) {
        char bpath[2 * CCOE_STR];
        if (S->base[0] == '/')
            snprintf(bpath, sizeof bpath, "%s", S->base);
        else
            snprintf(bpath, sizeof bpath, "%s%s", S->dir, S->base);
        if ((st = ccoe_config_load_file(base, bpath, err)) != CCOE_OK) {
            st = ccoe_error_wrap(err, "study %s line %d (base = %s)", path, S->base_line,
                                 S->base);
            if (st == CCOE_ERR_IO)
                err->status = st = CCOE_ERR_CONFIG;
            return st;
        }
    }
    for (int i = 0; i < S->n_base_sets; i++)
        if ((st = apply_set(S, &S->base_sets[i], "base", base, err)) != CCOE_OK)
            return st;
    return CCOE_OK;
}

ccoe_status ccoe_study_check(const char *path, const ccoe_study_opts *o, ccoe_error *err)
{
    static const ccoe_study_opts none = {0};
    study *S = study_new();
    if (!S)
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the study");
    ccoe_config base, cfg;
    ccoe_status st = study_setup(S, path, o ? o : &none, &base, err);
    if (st == CCOE_OK)
        st = build_run_list(S, base.model.n_layer, err);
    for (int i = 0; i < S->n_run && st == CCOE_OK; i++) {
        study_variant *v = &S->run[i];
        st = variant_config(S, v, &base, &cfg, err);
        if (st != CCOE_OK && v->optional && (st == CCOE_ERR_CONFIG || st == CCOE_ERR_ARG)) {
            ccoe_error_clear(err);
            st = CCOE_OK;
        } else if (st != CCOE_OK) {
            st = ccoe_error_wrap(err, "variant %s", v->name);
        }
    }
    study_free(S);
    return st;
}

ccoe_status ccoe_study_run(const char *path, const ccoe_study_opts *o, FILE *out,
                           ccoe_error *err)
{
    ccoe_comm *c = study_comm(o);
    const int rank0 = !c || c->rank == 0;
    study *S = study_new();
    ccoe_status st = CCOE_OK;
    if (!S) {
        st = ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the study");
        return c ? ccoe_comm_agree(c, st, err) : st; /* the others wait in the set-up's */
    }
    ccoe_config base;
    if ((st = study_setup(S, path, o, &base, err)) != CCOE_OK)
        goto agreed;

    /* the data's domains (for experts_per_domain and the tables) */
    {
        ccoe_config probe = base;
        probe.train.steps = 1;
        probe.ccoe.form = CCOE_FORM_NONE;
        probe.ccoe.experts[0] = probe.ccoe.routes[0] = '\0';
        snprintf(probe.moe.gate, sizeof probe.moe.gate, "%s", CCOE_GATE_NONE);
        ccoe_session s;
        if ((st = ccoe_session_validate(&probe, err)) != CCOE_OK ||
            (st = ccoe_session_open(&s, &probe, 1, err)) != CCOE_OK) {
            st = ccoe_error_wrap(err, "study %s: base config", path);
            goto agreed;
        }
        S->n_domains = s.data.n_domains;
        for (int d = 0; d < S->n_domains; d++) {
            snprintf(S->domains[d], CCOE_NAME_LEN, "%s", s.data.domains[d].name);
            S->dom_share[d] = (double)s.data.domains[d].n_train / (double)s.data.n_train;
            S->dom_task[d] = s.data.domains[d].n_tasks > 0;
        }
        ccoe_session_close(&s);
    }
    if ((st = build_run_list(S, base.model.n_layer, err)) != CCOE_OK)
        goto agreed;
    for (int i = 0; i < S->n_run; i++)
        if ((st = prepare_variant(S, &S->run[i], &base, err)) != CCOE_OK)
            goto agreed;
    if (rank0)
        st = ccoe_fs_mkdirs(S->out_dir, err);
agreed:
    /* every rank set the study up from the same files; agree before the first collective run
     * (a rank that failed alone would leave the others waiting in it) */
    if (c)
        st = ccoe_comm_agree(c, st, err);
    if (st != CCOE_OK)
        goto done;
    if (rank0) {
        char bud[32];
        human(bud, sizeof bud, S->bvalue);
        fprintf(stderr, "study %s: %d variants, budget %s %s each, output in %s", S->name,
                S->n_run, bud, S->bkind == BUDGET_TOKENS ? "tokens" : "FLOPs", S->out_dir);
        if (c)
            fprintf(stderr, ", every variant on %d ranks", c->size);
        fputc('\n', stderr);
    }
    for (int i = 0; i < S->n_run; i++) {
        study_variant *v = &S->run[i];
        if (v->skipped) {
            if (rank0)
                fprintf(stderr, "[%d/%d] %-16s %s\n", i + 1, S->n_run, v->name, v->note);
            continue;
        }
        if ((st = run_variant(S, v, i, o, err)) != CCOE_OK)
            goto done;
    }
    if (!rank0)
        goto done;
    compute_gains(S);
    {
        char machine[300];
        machine_line(machine, sizeof machine, base.run.threads, c ? c->size : 1);
        FILE *f = NULL;
        if ((st = open_out(S->out_dir, "study.md", &f, err)) != CCOE_OK)
            goto done;
        write_markdown(S, f, machine);
        fclose(f);
        if ((st = open_out(S->out_dir, "study.csv", &f, err)) != CCOE_OK)
            goto done;
        write_csv(S, f);
        fclose(f);
        if ((st = write_plot_data(S, err)) != CCOE_OK)
            goto done;
        fputc('\n', out);
        write_markdown(S, out, machine);
        fprintf(out, "\ntable: %s/study.md, %s/study.csv; plots: bash scripts/plot_study.sh %s\n",
                S->out_dir, S->out_dir, S->out_dir);
    }
done:
    study_free(S);
    return st;
}
