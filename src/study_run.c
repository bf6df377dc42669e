/* study_run.c - running one variant of a study: its config resolved and measured (parameters,
 * active parameters, FLOPs per token), trained by ccoe_train_run in its own directory (or a
 * finished run of exactly its config reused), and its results read back: metrics.jsonl, the
 * final evaluation, the MoE load per domain on the validation split.
 * Not here: the training loop (train.c), the tables (study_report.c). */
#include "study_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

#include "checkpoint.h"
#include "comm.h"
#include "config.h"
#include "fs.h"
#include "moe.h"
#include "session.h"
#include "train.h"

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

/* An optional variant that could not run: marked skipped with why and the error's message in
 * its note, the error cleared. Returns CCOE_OK (the study goes on). */
static ccoe_status skip_variant(study_variant *v, const char *why, ccoe_error *err)
{
    v->skipped = 1;
    snprintf(v->note, sizeof v->note, "skipped (optional; %s: %.330s)", why, err->msg);
    ccoe_error_clear(err);
    return CCOE_OK;
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
    if (ccoe_form_of(c) && len < cap) {
        len += (size_t)snprintf(buf + len, cap - len, ", CCoE %s", ccoe_form_of(c)->title);
        if ((ccoe_form_of(c)->flags & CCOE_FF_PREFIX_LAYERS) && len < cap)
            len += (size_t)snprintf(buf + len, cap - len, " l_b=%d", c->ccoe.prefix_layers);
        if (v->experts_per_domain > 0 && len < cap)
            snprintf(buf + len, cap - len, " l_i=%d per domain", v->experts_per_domain);
    }
}

/* Parameters one token of `path` uses, counting k/E of each MoE expert matrix. */
double ccoe_study_active_params(const ccoe_model *m, int path)
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

/* Builds the variant's config (base + overrides + sweep/expert sugar + budget) and measures its
 * model (parameters, FLOPs per token). A config error of an optional variant marks it skipped. */
ccoe_status ccoe_study_prepare_variant(study *S, study_variant *v, const ccoe_config *base,
                                       ccoe_error *err)
{
    ccoe_config cfg;
    ccoe_status st = ccoe_study_variant_config(S, v, base, &cfg, err);
    ccoe_session s;
    if (st == CCOE_OK)
        st = ccoe_session_open(&s, &cfg, 1, err);
    if (st != CCOE_OK) {
        if (v->optional && (st == CCOE_ERR_CONFIG || st == CCOE_ERR_ARG)) {
            return skip_variant(v, "this build rejects it", err);
        }
        return ccoe_error_wrap(err, "variant %s", v->name);
    }
    const ccoe_model *m = &s.model;
    const int T = s.cfg.model.seq_len;
    double fwd = 0, act = 0;
    for (int d = 0; d < S->n_domains; d++) {
        int path = s.taskmap.n_domains > d ? s.taskmap.route[d] + 1 : 0;
        fwd += S->dom_share[d] * ccoe_model_path_forward_flops(m, path, T);
        act += S->dom_share[d] * ccoe_study_active_params(m, path);
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
        v->loss[d] = v->ppl[d] = v->acc[d] = v->bpb[d] = NAN;
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
                    v->bpb[d] = jnum(o, "bpb"); /* written with a BPE tokenizer only */
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
 * expert's share, the drop rate the training capacity gives on these tokens (evaluation
 * itself is dropless by default) and the mutual information between domain and expert. */
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
            dropped += (double)m->moe_tot_dropped[3 * l + 2]; /* at the training capacity */
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

/* 1 if the file at path was modified after OUT/checkpoint.safetensors (or either is gone). */
static int newer_file(const char *path, const study_variant *v)
{
    char ck[CCOE_STR + 64];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", v->cfg.train.out_dir);
    struct stat a, b;
    if (stat(path, &a) != 0 || stat(ck, &b) != 0)
        return 1;
    return a.st_mtim.tv_sec > b.st_mtim.tv_sec ||
           (a.st_mtim.tv_sec == b.st_mtim.tv_sec && a.st_mtim.tv_nsec > b.st_mtim.tv_nsec);
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
ccoe_comm *ccoe_study_comm(const ccoe_study_opts *o)
{
    return o->comm && o->comm->size > 1 ? o->comm : NULL;
}

/* Trains variant v (or reuses its finished run) and reads its results. COLLECTIVE with a
 * study communicator: rank 0 decides whether to reuse and tells the others, every rank
 * trains (data parallel, or expert parallel for MoE variants), rank 0 alone prints and reads
 * the results, and the ranks agree on the outcome, so they return the same status. */
ccoe_status ccoe_study_run_variant(study *S, study_variant *v, int idx, const ccoe_study_opts *o,
                                   ccoe_error *err)
{
    ccoe_comm *c = ccoe_study_comm(o);
    const int rank0 = !c || c->rank == 0;
    const study_variant *src =
        v->init_from[0] ? ccoe_study_find_variant(S->run, S->n_run, v->init_from) : NULL;
    int src_new = src && !src->reused; /* its start weights changed: retrain */
    /* finished run of this config, directory holds a run, the study's start checkpoint is
     * newer than the run (which started from other weights: retrain) */
    int have[3] = {0, 0, 0};
    if (rank0) {
        have[0] = finished_run(v, &have[1]);
        have[2] = have[1] && !v->init_from[0] && S->init_path[0] && newer_file(S->init_path, v);
    }
    if (c)
        CCOE_TRY(c->ops->bcast(c, have, sizeof have, 0, err));
    src_new |= have[2];
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
        ccoe_study_human(tk, sizeof tk, (double)v->tokens);
        if (rank0) {
            fprintf(stderr, "[%d/%d] %-16s %ld steps, %s tokens, %.3g FLOPs: %s ...%s", idx + 1,
                    S->n_run, v->name, v->steps, tk, v->train_flops, v->label,
                    o->verbose ? "\n" : "");
            fflush(stderr);
        }
        ccoe_train_opts to = {.force = 1, .progress = o->verbose ? o->progress : 0,
                              .quiet = !o->verbose, .comm = c};
        char from[CCOE_STR + 96];
        if (!v->init_from[0] && S->init_path[0])
            to.init_from = S->init_path; /* study.init_from: every variant's start weights */
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
                return skip_variant(v, "training failed", err);
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
