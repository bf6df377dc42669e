/* train_metrics.c - what the trainer reports: the JSONL metrics file (flush, close, trim on
 * --resume, the MoE statistics), evaluation during and after training, the start-up report on
 * stderr and the ETA of the log lines.
 * Not here: the per-step metrics and log lines themselves (train_loop in train.c). */
#include "train_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "perf.h"
#include "placement.h"

/* seconds as H:MM:SS (0:00:00 when unknown or beyond 100 hours). */
void ccoe_train_format_eta(char *out, size_t cap, double seconds)
{
    if (!(seconds >= 0) || seconds > 360000)
        seconds = 0;
    long s = (long)seconds;
    snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
}

/* Flushes the metrics (rank 0; OK elsewhere): a failed write or flush (disk full, quota, I/O
 * error) fails the run instead of leaving a silently truncated log. */
ccoe_status ccoe_train_metrics_flush(train_ctx *t, ccoe_error *err)
{
    if (!t->metrics)
        return CCOE_OK;
    /* a write that failed inside fprintf left its errno (called right after the writes) */
    if (!ferror(t->metrics)) {
        errno = 0;
        if (fflush(t->metrics) == 0)
            return CCOE_OK;
    }
    int e = errno ? errno : EIO;
    return ccoe_error_set(err, CCOE_ERR_IO, "cannot write the metrics file '%s': %s",
                          t->metrics_path, strerror(e));
}

/* Closes the metrics (rank 0); st is the run's status, a close failure replaces an OK one. */
ccoe_status ccoe_train_metrics_close(train_ctx *t, ccoe_status st, ccoe_error *err)
{
    if (!t->metrics)
        return st;
    ccoe_status fl = ccoe_train_metrics_flush(t, st == CCOE_OK ? err : NULL);
    errno = 0;
    int bad = fclose(t->metrics) != 0;
    t->metrics = NULL;
    if (st != CCOE_OK)
        return st;
    if (fl != CCOE_OK)
        return fl;
    if (bad)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot write the metrics file '%s': %s",
                              t->metrics_path, strerror(errno ? errno : EIO));
    return CCOE_OK;
}

/* On --resume (rank 0): cuts the metrics back to what the checkpoint holds, so that every
 * step appears once: the lines up to the first one of a step after `step` (logged by the run
 * after its last checkpoint, trained again now) or a partly written one (a killed run) stay,
 * the rest is dropped. Lines are in step order; one without a step is kept. */
ccoe_status ccoe_train_metrics_trim(train_ctx *t, long step, ccoe_error *err)
{
    FILE *f = t->metrics;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long long keep = 0, dropped = 0; /* bytes kept; lines dropped */
    rewind(f);
    while ((n = getline(&line, &cap, f)) > 0) {
        const char *k = strstr(line, "\"step\":");
        if (dropped || line[n - 1] != '\n' || (k && strtol(k + 7, NULL, 10) > step))
            dropped++;
        else
            keep += n;
    }
    free(line);
    int e = ferror(f) ? (errno ? errno : EIO) : 0;
    if (!e && dropped && (fflush(f) != 0 || ftruncate(fileno(f), (off_t)keep) != 0))
        e = errno ? errno : EIO;
    if (!e && fseek(f, 0, SEEK_END) != 0)
        e = errno ? errno : EIO;
    if (e)
        return ccoe_error_set(err, CCOE_ERR_IO, "cannot trim the metrics file '%s' to step %ld "
                              "on --resume: %s", t->metrics_path, step, strerror(e));
    if (dropped && !t->quiet)
        fprintf(stderr, "resume: dropped %lld line%s after step %ld from %s (logged after the "
                        "checkpoint; trained again now)\n",
                dropped, dropped == 1 ? "" : "s", step, t->metrics_path);
    return CCOE_OK;
}

/* The end of a run, after its last checkpoint: the final evaluation (with tasks; its table
 * printed unless quiet), the metrics flushed (agreed on over t->comm) and where the checkpoint
 * and the metrics (out_dir/metrics_name) are. COLLECTIVE. */
ccoe_status ccoe_train_final_report(train_ctx *t, const char *metrics_name, ccoe_error *err)
{
    CCOE_TRY(ccoe_train_run_eval(t, 1, !t->quiet, err));
    CCOE_TRY(ccoe_comm_agree(t->comm, ccoe_train_metrics_flush(t, err), err));
    if (!t->quiet)
        printf("checkpoint: %s\nmetrics:    %s/%s\n", t->ckpt_path, t->s->cfg.train.out_dir,
               metrics_name);
    return CCOE_OK;
}

/* ,"moe":[{"layer":l, <ccoe_moe_stats_json fields>}, ...] of the last micro-batch. */
void ccoe_train_write_moe_stats(train_ctx *t)
{
    const ccoe_model *m = &t->s->model;
    fputs(",\"moe\":[", t->metrics);
    for (int i = 0; i < m->n_moe; i++) {
        int n = ccoe_moe_stats_json(&m->moe_stats[i], t->json, t->json_cap);
        if (n >= 0 && (size_t)n >= t->json_cap) { /* logging only: grow and retry once */
            char *nb = realloc(t->json, (size_t)n + 1);
            if (nb) {
                t->json = nb;
                t->json_cap = (size_t)n + 1;
                n = ccoe_moe_stats_json(&m->moe_stats[i], t->json, t->json_cap);
            }
        }
        if (n < 1 || (size_t)n >= t->json_cap)
            continue;
        fprintf(t->metrics, "%s{\"layer\":%d,%s", i ? "," : "", m->moe_layer[i], t->json + 1);
    }
    fputc(']', t->metrics);
}

/* Every rank evaluates its share of the batches and tasks (ccoe_eval_domains); with placed
 * CCoE experts rank 0 evaluates every path alone after gathering them. Rank 0 writes.
 * COLLECTIVE. A failed exchange is returned without agreement (the other ranks may wait in
 * it: main ends the job). */
ccoe_status ccoe_train_run_eval(train_ctx *t, int with_tasks, int print_table, ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_comm_phase(t->comm, "evaluation", t->st.step);
    if (t->expert_mode)
        return CCOE_OK;
    ccoe_comm *split = t->comm;
    if (t->placed) {
        /* rank 0 evaluates every path alone: the CCoE experts' parameters from their owners */
        CCOE_TRY(ccoe_train_ep_gather_what(t, 0, err));
        s->model.place_active = 0;
        if (t->rank != 0)
            return CCOE_OK;
        split = NULL;
    }
    ccoe_domain_eval ev[CCOE_MAX_DOMAINS];
    CCOE_TRY(ccoe_eval_domains(&s->model, &s->data, &s->tok, &s->batch,
                               s->cfg.train.eval_batches, with_tasks, split, ev, err));
    CCOE_TRY(ccoe_model_comm_status(&s->model, err));
    if (t->rank != 0)
        return CCOE_OK;
    fprintf(t->metrics, "{\"step\":%ld,\"eval\":", t->st.step);
    ccoe_eval_json(t->metrics, &s->data, ev);
    ccoe_eval_moe_json(t->metrics, &s->data, ev);
    fputs("}\n", t->metrics); /* the caller flushes (metrics_flush) */
    if (print_table) {
        printf("\nper-domain evaluation after %ld steps:\n", t->st.step);
        ccoe_eval_print(stdout, &s->data, ev);
        fflush(stdout);
    }
    return CCOE_OK;
}

/* The start-up report on stderr: resolved config, model and data sizes, machine rates, ranks
 * and placement, what the run continues from, warnings about the config. */
void ccoe_train_print_start(train_ctx *t, const ccoe_train_opts *o)
{
    ccoe_session *s = t->s;
    char *ini = ccoe_config_to_ini(&s->cfg);
    fprintf(stderr, "# resolved config\n%s", ini ? ini : "");
    free(ini);
    char threads[48];
    if (s->cfg.run.threads > 0)
        snprintf(threads, sizeof threads, "%d", s->cfg.run.threads);
    else
        snprintf(threads, sizeof threads, "auto (1..%d, measured)", s->max_threads);
    fprintf(stderr,
            "model: %.2fM parameters, %.1f MFLOP/token (train) | data: %d domains, %zu train "
            "/ %zu val sequences of %d tokens\n"
            "threads %s | gemm %s | fp32 peak %.0f GFLOP/s (%s, measured) | sgemm %.0f "
            "GFLOP/s (measured)\n",
            (double)s->model.num_params / 1e6, t->flops_per_token / 1e6, s->data.n_domains,
            s->data.n_train, s->data.n_val, s->cfg.model.seq_len, threads,
            s->gemm.kernel_set, t->peak_gflops, ccoe_simd_name(), t->gemm_gflops);
    if (t->P > 1)
        fprintf(stderr,
                "%d ranks (%s): %s; %d gradient buckets of up to %.1f MiB, %s\n", t->P,
                t->comm->ops->name,
                o->train_experts ? "experts trained in parallel"
                                 : "data parallel, global batch split by rows",
                t->n_buckets, (double)DP_BUCKET_FLOATS * 4.0 / (1 << 20),
                o->allreduce_overlap ? "non-blocking allreduce overlapped with backward"
                                     : "blocking allreduce after backward");
    if (t->n_place > 0) {
        const char *names[CCOE_MAX_EXPERTS];
        int ccoe = t->placed;
        for (int e = 0; ccoe && e < t->n_place; e++)
            names[e] = s->taskmap.experts[e].name;
        char map[4096];
        ccoe_placement_format(t->place_map, t->n_place, ccoe ? names : NULL, map, sizeof map);
        fprintf(stderr, "placement: expert -> rank (%s experts, mpi.placement = %s): %s\n",
                ccoe ? "CCoE" : "MoE (every MoE layer)",
                ccoe_placement_name(s->cfg.mpi.placement), map);
        if (ccoe && t->P <= 64) { /* what balanced evens out: each owner's training sequences */
            double load[CCOE_MAX_EXPERTS], per_rank[64] = {0};
            ccoe_placement_ccoe_load(&s->taskmap, &s->data, load);
            for (int e = 0; e < t->n_place; e++)
                per_rank[t->place_map[e]] += load[e];
            fputs("placement: training sequences of each rank's experts:", stderr);
            for (int q = 0; q < t->P; q++)
                fprintf(stderr, " %.0f", per_rank[q]);
            fputc('\n', stderr);
        }
    }
    if (o->resume)
        fprintf(stderr, "resuming %s at step %ld\n", o->resume, t->st.step);
    if (o->init_from)
        fprintf(stderr, "weights from %s\n", o->init_from);
    if (s->taskmap.n_experts > 0)
        ccoe_taskmap_print(stderr, &s->taskmap);
    const ccoe_moe_config *mc = &s->model.moe.cfg;
    const unsigned gf = s->model.n_moe > 0 ? s->model.moe.gate->flags : 0;
    const int renorm_opt = (gf & CCOE_GATE_RENORM_OPT) != 0;
    if ((gf & CCOE_GATE_K1_CONSTANT) && mc->top_k == 1 && (!renorm_opt || mc->renormalize))
        fprintf(stderr,
                "warning: moe.gate = %s with moe.top_k = 1%s: the kept expert's weight is always "
                "1, so the router learns only from the balancing losses; use moe.gate = topk "
                "with moe.renormalize = false (Switch) or moe.top_k >= 2\n",
                mc->gate, renorm_opt ? " and renormalize" : "");
    if (t->expert >= 0)
        fprintf(stderr, "isolated training of expert '%s' (%.2fM parameters); everything "
                        "else is frozen\n",
                s->taskmap.experts[t->expert].name, (double)(t->grad_end - t->grad_begin) / 1e6);
}
