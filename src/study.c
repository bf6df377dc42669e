/* study.c - `ccoe study`: the same data and the same training budget for a set of variants,
 * one comparison table (Markdown + CSV) and the data behind the plots.
 *
 * Parsing reuses the config module: every override is a ccoe_config_set assignment, so a study
 * file accepts exactly the keys `ccoe train --set` accepts, with the same messages. What the
 * study layer adds: [study] keys, [variant.NAME] sections, the budget -> steps conversion and
 * the sweep generator (study_spec.c), training the variants and reading their results back
 * (study_run.c), the tables and plot data (study_report.c). This file holds the study's
 * lifetime: its set-up from the file and the command line, ccoe_study_check and
 * ccoe_study_run; the pieces share the study struct through study_impl.h. It does not train
 * anything itself (ccoe_train_run does) and does not draw (scripts/plot_study.sh does).
 */
#include "study.h"

#include <stdlib.h>
#include <string.h>

#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "fs.h"
#include "session.h"
#include "study_impl.h"

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
    if ((st = ccoe_study_parse_file(S, path, err)) != CCOE_OK)
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
            if (!ccoe_study_on_key(S, "study", key, eq + 1))
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
    if ((st = ccoe_study_parse_budget(S, err)) != CCOE_OK)
        return st;

    /* the base config: defaults, base file (relative to the study file), inline sections;
     * without a base file but with study.init_from, the checkpoint's own config (its model,
     * tokenizer and data: an imported base's derived config) */
    ccoe_config_defaults(base);
    if (S->init_from[0]) {
        if (S->init_from[0] == '/')
            snprintf(S->init_path, sizeof S->init_path, "%s", S->init_from);
        else
            snprintf(S->init_path, sizeof S->init_path, "%s%s", S->dir, S->init_from);
        ccoe_config stored;
        ccoe_st_file *f = NULL;
        FILE *note = !o->comm || o->comm->rank == 0 ? stderr : NULL;
        st = ccoe_checkpoint_open_log(S->init_path, &stored, &f, note, err);
        ccoe_st_close(f);
        if (st != CCOE_OK) {
            st = ccoe_error_wrap(err, "study %s line %d (init_from = %s)", path,
                                 S->init_from_line, S->init_from);
            if (st == CCOE_ERR_IO)
                err->status = st = CCOE_ERR_CONFIG;
            return st;
        }
        if (!S->base[0])
            *base = stored;
    }
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
        if ((st = ccoe_study_apply_set(S, &S->base_sets[i], "base", base, err)) != CCOE_OK)
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
        st = ccoe_study_build_run_list(S, base.model.n_layer, err);
    for (int i = 0; i < S->n_run && st == CCOE_OK; i++) {
        study_variant *v = &S->run[i];
        st = ccoe_study_variant_config(S, v, &base, &cfg, err);
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
    ccoe_comm *c = ccoe_study_comm(o);
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
        probe.ccoe.form = (ccoe_form)0; /* none: the base model alone */
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
    if ((st = ccoe_study_build_run_list(S, base.model.n_layer, err)) != CCOE_OK)
        goto agreed;
    for (int i = 0; i < S->n_run; i++)
        if ((st = ccoe_study_prepare_variant(S, &S->run[i], &base, err)) != CCOE_OK)
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
        ccoe_study_human(bud, sizeof bud, S->bvalue);
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
        if ((st = ccoe_study_run_variant(S, v, i, o, err)) != CCOE_OK)
            goto done;
    }
    if (!rank0)
        goto done;
    ccoe_study_compute_gains(S);
    {
        char machine[300];
        ccoe_study_machine_line(machine, sizeof machine, base.run.threads, c ? c->size : 1);
        FILE *f = NULL;
        if ((st = ccoe_study_open_out(S->out_dir, "study.md", &f, err)) != CCOE_OK)
            goto done;
        ccoe_study_write_markdown(S, f, machine);
        fclose(f);
        if ((st = ccoe_study_open_out(S->out_dir, "study.csv", &f, err)) != CCOE_OK)
            goto done;
        ccoe_study_write_csv(S, f);
        fclose(f);
        if ((st = ccoe_study_write_plot_data(S, err)) != CCOE_OK)
            goto done;
        fputc('\n', out);
        ccoe_study_write_markdown(S, out, machine);
        fprintf(out, "\ntable: %s/study.md, %s/study.csv; plots: bash scripts/plot_study.sh %s\n",
                S->out_dir, S->out_dir, S->out_dir);
    }
done:
    study_free(S);
    return st;
}
