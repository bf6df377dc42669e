/* study_spec.c - the study file: [study] keys, [variant.NAME] sections and their overrides,
 * the budget, the run list (declared variants, the sweep generator, --set study.variants) and
 * each variant's config (base, then its overrides, then the command line's).
 * Not here: the config keys themselves (config.c), training (study_run.c). */
#include "study_impl.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "fs.h"
#include "iniread.h"
#include "session.h"

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

study_variant *ccoe_study_find_variant(study_variant *v, int n, const char *name)
{
    for (int i = 0; i < n; i++)
        if (strcmp(v[i].name, name) == 0)
            return &v[i];
    return NULL;
}

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
    study_variant *v = ccoe_study_find_variant(S->decl, S->n_decl, vname);
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

/* A key of the study file (or a study.KEY=VALUE of the command line): [study] keys, variant
 * keys and overrides, base overrides. Returns 0 on a failure (S->failed, the error in S->err),
 * 1 otherwise. */
int ccoe_study_on_key(void *user, const char *section, const char *key, const char *value)
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
        if (strcmp(key, "init_from") == 0) {
            S->init_from_line = S->line;
            return copy_value(S, S->init_from, sizeof S->init_from, key, value);
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
                          "unknown key study.%s: [study] takes name, description, base, "
                          "init_from, budget, out_dir, variants, sweep, sweep_layers, "
                          "gain_reference",
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
    return ccoe_study_on_key(S, section, key, value) ? CCOE_OK : err->status;
}

/* study.budget (tokens:N or flops:N) into S->bkind and S->bvalue. */
ccoe_status ccoe_study_parse_budget(study *S, ccoe_error *err)
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

/* Reads the study file at path through the INI reader into S. */
ccoe_status ccoe_study_parse_file(study *S, const char *path, ccoe_error *err)
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
ccoe_status ccoe_study_build_run_list(study *S, int n_layer, ccoe_error *err)
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
        study_variant *d = ccoe_study_find_variant(S->decl, S->n_decl, words[i]);
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
        if (ccoe_study_find_variant(S->run, S->n_run, words[i]))
            return ccoe_error_set(err, CCOE_ERR_CONFIG,
                                  "study %s line %d: variant '%s' is listed twice", S->path,
                                  S->variants_line, words[i]);
        S->run[S->n_run++] = *d;
    }
    if (S->sweep[0]) {
        study_variant *t = ccoe_study_find_variant(S->decl, S->n_decl, S->sweep);
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
        if (!ccoe_study_find_variant(S->run, S->n_run, S->decl[j].name) &&
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
    if (S->gain_ref[0] && !ccoe_study_find_variant(S->run, S->n_run, S->gain_ref))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "study %s: gain_reference = %s is not one of the variants",
                              S->path, S->gain_ref);
    return CCOE_OK;
}

/* Applies one override to cfg; a failure names the study file's line (or --set) and where. */
ccoe_status ccoe_study_apply_set(const study *S, const study_set *s, const char *where,
                                 ccoe_config *cfg, ccoe_error *err)
{
    ccoe_status st = ccoe_config_set(cfg, s->text, err);
    if (st == CCOE_OK)
        return st;
    if (s->line > 0)
        return ccoe_error_wrap(err, "study %s line %d (%s)", S->path, s->line, where);
    return ccoe_error_wrap(err, "study --set (%s)", where);
}

/* The variant's config for one step: base + overrides + expert sugar (one expert per domain of
 * S->domains) + its output directory, validated. */
ccoe_status ccoe_study_variant_config(study *S, const study_variant *v, const ccoe_config *base,
                                      ccoe_config *cfg, ccoe_error *err)
{
    *cfg = *base;
    char where[80];
    snprintf(where, sizeof where, "[variant.%s]", v->name);
    ccoe_status st = CCOE_OK;
    for (int i = 0; i < v->n_sets && st == CCOE_OK; i++)
        st = ccoe_study_apply_set(S, &v->sets[i], where, cfg, err);
    if (st == CCOE_OK && v->experts_per_domain > 0) {
        if (!ccoe_form_of(cfg)) {
            char forms[128];
            ccoe_form_list_names(forms, sizeof forms);
            st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                                "study %s line %d: [variant.%s] has experts_per_domain but "
                                "ccoe.form = none: set ccoe.form to one of %s",
                                S->path, v->line, v->name, forms);
        }
        cfg->ccoe.experts[0] = cfg->ccoe.routes[0] = '\0';
        for (int d = 0; d < S->n_domains && st == CCOE_OK; d++) {
            const char *dn = S->domains[d];
            st = ccoe_taskmap_config_add(cfg, dn, v->experts_per_domain, &dn, 1, err);
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
