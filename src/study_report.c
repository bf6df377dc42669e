/* study_report.c - what a study writes: the Markdown table (study.md), the CSV (study.csv),
 * the plot data (plot/: .dat files and meta.gp for scripts/plot_study.sh), the sweep gains
 * and the machine line of the report.
 * Not here: the results themselves (study_run.c reads them back). */
#include "study_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs.h"

/* "1.5M" style: 3 significant digits with k/M/G suffix. */
void ccoe_study_human(char *buf, size_t cap, double x)
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

/* "%.Nf" of x (with a sign if plus, times scale, then suffix), or "-" if x is not finite. */
static void fmt_or_dash(char *buf, size_t cap, int digits, int plus, const char *suffix, double x)
{
    if (isfinite(x))
        snprintf(buf, cap, plus ? "%+.*f%s" : "%.*f%s", digits, x, suffix);
    else
        snprintf(buf, cap, "-");
}

/* 1 if a variant that ran has bits per byte (its tokenizer is a BPE): the tables then add
 * them; byte-level studies print as before (bpb = loss / ln 2 there). */
int ccoe_study_has_bpb(const study *S)
{
    for (int i = 0; i < S->n_run; i++)
        for (int d = 0; !S->run[i].skipped && d < S->n_domains; d++)
            if (isfinite(S->run[i].bpb[d]))
                return 1;
    return 0;
}

/* The Markdown report (study.md, and stdout): the comparison table, the held-out loss per
 * domain, and where they apply the expert load and sweep tables and the notes per variant. */
void ccoe_study_write_markdown(const study *S, FILE *f, const char *machine)
{
    char a[32], b[32], c[32], d[32];
    fprintf(f, "# Study %s\n\n", S->name);
    if (S->description[0])
        fprintf(f, "%s\n\n", S->description);
    ccoe_study_human(a, sizeof a, S->bvalue);
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
        ccoe_study_human(a, sizeof a, (double)v->total_params);
        ccoe_study_human(b, sizeof b, v->active_params);
        char fl[32], tk[32], ts[32];
        snprintf(fl, sizeof fl, "%.3g", v->train_flops);
        ccoe_study_human(tk, sizeof tk, (double)v->tokens);
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
    if (ccoe_study_has_bpb(S)) { /* the figure that compares models with other tokenizers */
        fprintf(f, "\nBits per byte per domain (held-out nats / ln 2 / the text bytes of the "
                   "scored tokens):\n\n| variant |");
        for (int dd = 0; dd < S->n_domains; dd++)
            fprintf(f, " %s |", S->domains[dd]);
        fprintf(f, "\n|---|");
        for (int dd = 0; dd < S->n_domains; dd++)
            fputs("---:|", f);
        fputc('\n', f);
        for (int i = 0; i < S->n_run; i++) {
            const study_variant *v = &S->run[i];
            if (v->skipped)
                continue;
            fprintf(f, "| %s |", v->name);
            for (int dd = 0; dd < S->n_domains; dd++) {
                fmt_or_dash(a, sizeof a, 4, 0, "", v->bpb[dd]);
                fprintf(f, " %s |", a);
            }
            fputc('\n', f);
        }
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
                    ccoe_study_human(a, sizeof a, (double)v->total_params);
                    fprintf(f, "| %s (reference) | 0 | %s | %.4f | - | - | - |\n", v->name, a,
                            v->mean_loss);
                }
                continue;
            }
            ccoe_study_human(a, sizeof a, (double)v->total_params);
            ccoe_study_human(b, sizeof b,
                             prev ? (double)v->total_params - (double)prev->total_params : NAN);
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

/* study.csv: the header line, then one row per variant. */
void ccoe_study_write_csv(const study *S, FILE *f)
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
               "sweep_layers,gain_per_param");
    const int bpb = ccoe_study_has_bpb(S); /* bpb_<domain> last, with a BPE tokenizer only */
    for (int d = 0; bpb && d < S->n_domains; d++)
        fprintf(f, ",bpb_%s", S->domains[d]);
    fputc('\n', f);
    for (int i = 0; i < S->n_run; i++) {
        const study_variant *v = &S->run[i];
        char label[sizeof v->label]; /* no commas or quotes: plain split-on-comma CSV */
        snprintf(label, sizeof label, "%s", v->label);
        for (char *p = label; *p; p++)
            if (*p == ',' || *p == '"')
                *p = ';';
        fprintf(f, "%s,%s,%s", v->name, label, v->skipped ? "skipped" : "ok");
        if (v->skipped) {
            int cols = 11 + 2 * S->n_domains + 8 + (bpb ? S->n_domains : 0);
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
            fprintf(f, ",%.6g", v->gain);
        else
            fputc(',', f);
        for (int d = 0; bpb && d < S->n_domains; d++)
            if (isfinite(v->bpb[d]))
                fprintf(f, ",%.6f", v->bpb[d]);
            else
                fputc(',', f);
        fputc('\n', f);
    }
}

/* Opens dir/name for writing (never through a symlink). */
ccoe_status ccoe_study_open_out(const char *dir, const char *name, FILE **f, ccoe_error *err)
{
    char path[CCOE_STR + 128];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    *f = ccoe_fs_open_output(path, 0, "study output file", err); /* never through a symlink */
    return *f ? CCOE_OK : err->status;
}

/* The data behind scripts/plot_study.sh (gnuplot): OUT/plot/{meta.gp, curves.dat, val.dat,
 * domains.dat, acc.dat, load_<variant>.dat, sweep.dat}. */
ccoe_status ccoe_study_write_plot_data(const study *S, ccoe_error *err)
{
    char dir[CCOE_STR + 16];
    snprintf(dir, sizeof dir, "%s/plot", S->out_dir);
    CCOE_TRY(ccoe_fs_mkdirs(dir, err));
    FILE *f;
    int tokens_axis = S->bkind == BUDGET_TOKENS;
    CCOE_TRY(ccoe_study_open_out(dir, "meta.gp", &f, err));
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
    CCOE_TRY(ccoe_study_open_out(dir, "curves.dat", &f, err));
    FILE *g;
    if (ccoe_study_open_out(dir, "val.dat", &g, err) != CCOE_OK) {
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
    CCOE_TRY(ccoe_study_open_out(dir, "domains.dat", &f, err));
    if (ccoe_study_open_out(dir, "acc.dat", &g, err) != CCOE_OK) {
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
        CCOE_TRY(ccoe_study_open_out(dir, name, &f, err));
        for (int d = 0; d < S->n_domains; d++) {
            for (int e = 0; e < v->E; e++)
                fprintf(f, "%s%.3f", e ? " " : "", 100.0 * v->load[(size_t)d * v->E + e]);
            fputc('\n', f);
        }
        fclose(f);
    }

    if (nsweep) {
        CCOE_TRY(ccoe_study_open_out(dir, "sweep.dat", &f, err));
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

/* Sweep gains: for each sweep point, the drop in mean validation loss per parameter added since
 * the previous point (the first against study.gain_reference or the first plain variant). */
void ccoe_study_compute_gains(study *S)
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

/* The report's machine line: CPU model, CPUs online, ranks and threads per run. */
void ccoe_study_machine_line(char *buf, size_t cap, int threads, int ranks)
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
    char th[16] = "auto"; /* run.threads = 0 */
    if (threads > 0)
        snprintf(th, sizeof th, "%d", threads);
    if (ranks > 1)
        snprintf(buf, cap, "Machine: %s, %ld CPUs online (rank 0's node), %d MPI ranks x %s "
                 "threads per run", model, ncpu, ranks, th);
    else
        snprintf(buf, cap, "Machine: %s, %ld CPUs online, %s threads per run", model, ncpu, th);
}
