/* train.c - the training loop, single-process or data-parallel over a ccoe_comm: one optimizer
 * step (micro-batches, the gradient sum over ranks, clipping, AdamW), the loop around it
 * (agreement between the ranks, stop signals, --stop-at and --time-limit, the per-step metrics
 * and log lines, periodic evaluation and checkpoints), and ccoe_train_run, which sets up a run,
 * starts the loop and tears the run down.
 *
 * Data parallelism (opts->comm with P > 1): train.batch_size stays the GLOBAL micro-batch.
 * Every rank reads the same data stream and takes the contiguous rows [b0, b1) of each
 * micro-batch (ccoe_comm_split), so the run does what one process would do: token counts and
 * losses are summed over ranks, the backward scale uses the global token count, and the
 * gradients of the replicated parameters are summed by allreduces of buckets (contiguous
 * float ranges of at most DP_BUCKET_FLOATS, train_dp.c) in one fixed order on every rank: with
 * opts->allreduce_overlap non-blocking ones started from the model's grad_ready hook as soon as
 * backward has finished them and waited after backward, by default blocking ones after
 * backward (faster with Open MPI 4.1 on this 2-core machine: papers/mpi.md). Clipping and
 * AdamW then run identically everywhere, so the replicas stay bit-identical (checked at the
 * end). Rank 0 alone prints, writes metrics and checkpoints.
 *
 * Failures: before every step the ranks agree (one tiny allreduce) on local failures, stop
 * signals and the time limit, so a rank that failed makes every rank return an error naming it
 * instead of leaving the others in a collective; errors that cannot wait for the agreement
 * are returned with comm->failed_rank = -1 and main aborts the job (among them a failed
 * exchange inside the model's forward or backward: ccoe_model_comm_status).
 *
 * Several CCoE experts at once (opts->train_experts, train_experts.c): rank r trains the
 * experts placed on it one after another, each exactly as `ccoe.train_expert = NAME` would
 * (fresh optimizer, its domains' data from position 0); the experts' regions are then
 * broadcast from their owners and rank 0 writes one checkpoint.
 *
 * The rest of the trainer shares train_ctx through train_impl.h: train_dp.c (gradient buckets
 * and their allreduce, expert-parallel spans, the gradient norm, the replica check),
 * train_state.c (set-up: resume, init-from, fresh weights; checkpoint saves), train_metrics.c
 * (the metrics file, evaluation, the start-up report), train_experts.c (--train-experts). */
#include "train.h"

#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "checkpoint.h"
#include "optim.h"
#include "perf.h"
#include "placement.h"
#include "session.h"
#include "train_impl.h"

static volatile sig_atomic_t g_stop_signal = 0;

static void on_signal(int sig) { g_stop_signal = sig; }

static int only_expert(const ccoe_param *p, void *ctx)
{
    return p->expert == *(const int *)ctx;
}

/* Whether the test hook of opts (test_fail_*) fires here: this mode, this rank, and this step
 * (step < 0: at any). */
int ccoe_train_test_hook(const train_ctx *t, const char *mode, long step)
{
    const ccoe_train_opts *o = t->o;
    return o->test_fail_mode && strcmp(o->test_fail_mode, mode) == 0 &&
           o->test_fail_rank == t->rank && (step < 0 || o->test_fail_step == step);
}

/* ---- one optimizer step ---- */

/* The lowest rank whose flag is set (COLLECTIVE; every rank passes its own flag). */
static ccoe_status lowest_rank(train_ctx *t, int flag, int *out, ccoe_error *err)
{
    double v = flag ? (double)(t->P - t->rank) : 0.0;
    CCOE_TRY(t->comm->ops->allreduce_max_f64(t->comm, &v, 1, err));
    *out = v > 0 ? t->P - (int)v : -1;
    return CCOE_OK;
}

/* grad_accum micro-batches, gradient sum over ranks, clip, AdamW. Returns the mean loss.
 * COLLECTIVE on t->comm. */
static ccoe_status train_step(train_ctx *t, double *loss_out, double *gnorm_out, double lr,
                              ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_model *m = &s->model;
    ccoe_comm *c = t->comm;
    const ccoe_train_config *tc = &s->cfg.train;
    const int B = tc->batch_size, T = s->cfg.model.seq_len;
    const int b0 = t->b0, nb = t->b1 - t->b0;
    ccoe_model_zero_grad(m);
    /* summed over ranks: loss, aux * tokens (aux losses are per-rank means), flops */
    double sums[3] = {0.0, 0.0, 0.0};
    double aux_sum = 0.0;
    int64_t tokens = 0;
    const int nan_hook = ccoe_train_test_hook(t, "nan", t->st.step + 1);
    /* MoE routing: training noise keyed by (seed, step, layer, token of the step) */
    m->train = 1;
    m->place_active = t->placed; /* forward and backward exchange rows: every rank runs them */
    /* expert-parallel MoE layers exchange tokens too: a rank without rows (B < P) runs the
     * model on zero rows so that it takes part in every exchange */
    const int exchange = t->placed || (t->P > 1 && m->n_moe > 0 && m->moe.ep_size == t->P);
    m->step = (uint64_t)t->st.step;
    const long step = t->st.step + 1;
    for (int micro = 0; micro < tc->grad_accum; micro++) {
        ccoe_comm_phase(c, "forward/backward exchange", step);
        /* every rank reads the whole global micro-batch and keeps its rows */
        ccoe_data_next_batch(&s->data, s->batch.tokens, s->batch.targets, s->batch.domains, B);
        long count = 0;
        double lsum = 0.0, aux = 0.0;
        m->token_offset = ((int64_t)micro * B + b0) * T;
        if (nb > 0 || exchange) {
            lsum = ccoe_model_forward(m, s->batch.tokens + (size_t)b0 * T,
                                      s->batch.targets + (size_t)b0 * T, s->batch.domains + b0,
                                      nb, T, &count);
            aux = m->aux_loss;
            /* a failed exchange: the other ranks may wait in it, so no agreement (main ends
             * the job) */
            CCOE_TRY(ccoe_model_comm_status(m, err));
        }
        if (nan_hook)
            lsum = NAN;
        int64_t gcount = count;
        ccoe_comm_phase(c, "token count", step);
        if (t->P > 1)
            CCOE_TRY(c->ops->allreduce_i64(c, &gcount, 1, err));
        ccoe_comm_phase(c, "forward/backward exchange", step);
        sums[0] += lsum;
        sums[1] += aux * (double)count;
        aux_sum += aux;
        tokens += gcount;
        const int last = micro == tc->grad_accum - 1;
        if (last && t->P > 1) {
            ccoe_train_dp_reset(t);
            if (t->o->allreduce_overlap) {
                m->grad_ready = ccoe_train_dp_ready;
                m->grad_ready_ctx = t;
            }
        }
        /* every training row is full, so each micro-batch counts B*T tokens; the aux losses
         * are means per micro-batch (papers/moe.md, loss scaling) */
        if ((nb > 0 || exchange) && gcount > 0) {
            ccoe_model_backward(m, 1.0f / ((float)gcount * (float)tc->grad_accum),
                                1.0f / (float)tc->grad_accum);
            CCOE_TRY(ccoe_model_comm_status(m, err));
            sums[2] += ccoe_model_last_flops(m);
        }
        m->grad_ready = NULL;
        m->grad_ready_ctx = NULL;
    }
    m->train = 0;
    m->place_active = 0;
    double loss, aux;
    const int local_bad = !isfinite(sums[0]) || !isfinite(sums[1]);
    if (t->P > 1) {
        ccoe_comm_phase(c, "allreduce of gradients", step);
        CCOE_TRY(ccoe_train_dp_finish(t, err));
        ccoe_comm_phase(c, "loss sums", step);
        CCOE_TRY(c->ops->allreduce_f64(c, sums, 3, err));
        loss = sums[0] / (double)tokens;
        aux = sums[1] / (double)tokens;
    } else {
        loss = sums[0] / (double)tokens;
        aux = aux_sum / (double)tc->grad_accum;
    }
    t->step_flops = sums[2];
    double gnorm;
    ccoe_comm_phase(c, "gradient norm", step);
    if (t->frozen)
        ccoe_train_zero_frozen(t); /* the norm and clipping see the trained tensors alone */
    CCOE_TRY(ccoe_train_grad_norm(t, &gnorm, err));
    t->aux = aux;
    *loss_out = loss;
    *gnorm_out = gnorm;
    if (!isfinite(loss) || !isfinite(t->aux) || !isfinite(gnorm)) {
        /* every rank sees the same global values: name the rank whose own loss went bad */
        char where[48] = "";
        if (t->P > 1) {
            int bad = -1;
            CCOE_TRY(lowest_rank(t, local_bad, &bad, err));
            if (bad >= 0)
                snprintf(where, sizeof where, " on rank %d", bad);
            c->failed_rank = bad >= 0 ? bad : 0; /* every rank returns this error */
        }
        return ccoe_error_set(err, CCOE_ERR_NUMERIC,
                              "non-finite %s at step %ld%s (loss %g, MoE aux loss %g, grad norm "
                              "%g, lr %g): lower train.lr, raise train.warmup or set "
                              "train.grad_clip; the last good checkpoint (if any) is kept at %s",
                              !isfinite(loss)    ? "loss"
                              : !isfinite(t->aux) ? "MoE aux loss"
                                                  : "gradient norm",
                              t->st.step + 1, where, loss, t->aux, gnorm, lr, t->ckpt_path);
    }
    /* clipping is fused into the update (the gradient block itself stays unscaled) */
    float gs = tc->grad_clip > 0 && gnorm > tc->grad_clip ? (float)(tc->grad_clip / gnorm) : 1.0f;
    if (t->frozen)
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, ccoe_train_router_filter, t);
    else if (t->n_ep > 0)
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, ccoe_train_update_filter, t);
    else if (t->expert >= 0)
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, only_expert, &t->expert);
    else
        ccoe_adamw_step_scaled(&t->opt, m, tc, lr, gs, NULL, NULL);
    /* auxiliary-loss-free balancing: the selection bias follows the step's loads (summed over
     * data-parallel ranks; expert-parallel statistics are global already). Training one CCoE
     * expert freezes the base, the MoE blocks included. */
    if (t->expert < 0) {
        ccoe_comm_phase(c, "MoE load counts", step);
        CCOE_TRY(ccoe_model_moe_bias_step(m, t->P > 1 && m->moe.ep_size != t->P ? c : NULL, err));
    } else if (m->moe_step_load) { /* drop the counts */
        memset(m->moe_step_load, 0, sizeof(double) * (size_t)m->n_moe * (size_t)m->moe.E);
    }
    return CCOE_OK;
}

/* ---- the loop ---- */

/* COLLECTIVE on t->comm. A failure on one rank reaches every rank at the next agreement. */
ccoe_status ccoe_train_loop(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_comm *c = t->comm;
    const ccoe_train_config *tc = &s->cfg.train;
    const long tokens_per_step = (long)tc->batch_size * s->cfg.model.seq_len * tc->grad_accum;
    double window_t0 = ccoe_now(), window_tokens = 0, window_flops = 0, run_t0 = ccoe_now();
    double tok_s = 0.0;
    long first_step = t->st.step;
    ccoe_status local = CCOE_OK; /* this rank's failure since the last agreement */
    for (;;) {
        if (local == CCOE_OK && ccoe_train_test_hook(t, "error", t->st.step + 1))
            local = ccoe_error_set(err, CCOE_ERR_IO,
                                   "test hook CCOE_TEST_FAIL_MODE=error: injected failure "
                                   "before step %ld",
                                   t->st.step + 1);
        if (ccoe_train_test_hook(t, "abort", t->st.step + 1))
            return ccoe_error_set(err, CCOE_ERR_IO,
                                  "test hook CCOE_TEST_FAIL_MODE=abort: injected failure before "
                                  "step %ld, without agreement",
                                  t->st.step + 1);
        if (ccoe_train_test_hook(t, "kill", t->st.step + 1))
            raise(SIGKILL);
        /* agreement: failures, a stop signal on any rank, rank 0's clock for --time-limit */
        double flags[2] = {(double)g_stop_signal,
                           t->rank == 0 && o->time_limit > 0 &&
                                   ccoe_now() - run_t0 >= o->time_limit
                               ? 1.0
                               : 0.0};
        ccoe_comm_phase(c, "agreement before the step", t->st.step + 1);
        CCOE_TRY(ccoe_comm_agree_flags(c, local, flags, 2, err));
        if (t->st.step >= tc->steps)
            break;
        const int stop_signal = (int)flags[0], time_up = flags[1] > 0;
        if (t->st.step > first_step &&
            ((o->stop_at > 0 && t->st.step >= o->stop_at) || time_up)) {
            CCOE_TRY(ccoe_comm_agree(c, ccoe_train_save_checkpoint(t, err), err));
            if (!t->quiet)
                fprintf(stderr, "stopping after step %ld of %ld (%s); continue with --resume %s\n",
                        t->st.step, tc->steps, o->stop_at > 0 && t->st.step >= o->stop_at
                                                   ? "--stop-at" : "--time-limit",
                        t->ckpt_path);
            return CCOE_OK;
        }
        if (stop_signal) {
            CCOE_TRY(ccoe_comm_agree(c, ccoe_train_save_checkpoint(t, err), err));
            c->failed_rank = 0; /* every rank returns this error */
            ccoe_error_set(err, CCOE_ERR_STOPPED,
                           "stopped by signal %d (%s) after step %ld; checkpoint saved to %s: "
                           "continue with --resume %s",
                           stop_signal, strsignal(stop_signal), t->st.step, t->ckpt_path,
                           t->ckpt_path);
            err->signal = stop_signal;
            return CCOE_ERR_STOPPED;
        }
        double lr = ccoe_lr_at(tc, t->st.step);
        double loss, gnorm;
        ccoe_comm_stats c0 = c->stats;
        double t0 = ccoe_now();
        CCOE_TRY(train_step(t, &loss, &gnorm, lr, err));
        double dt = ccoe_now() - t0;
        ccoe_comm_stats c1 = c->stats;
        t->st.step++;
        window_tokens += (double)tokens_per_step;
        window_flops += t->step_flops;
        double step_tok_s = (double)tokens_per_step / dt;
        double step_gflops = t->step_flops / dt * 1e-9 / t->P; /* per rank */
        double mfu = step_gflops / t->peak_gflops;
        int last = t->st.step == tc->steps;
        double ar = (c1.allreduce_s - c0.allreduce_s) * 1e3;
        double ex = (c1.exchange_s - c0.exchange_s) * 1e3;
        double wt = (c1.wait_s - c0.wait_s) * 1e3;
        double compute = dt * 1e3 - ar - ex - wt;
        const int step_threads = s->gemm.nthreads;
        if (t->thr_auto) {
            /* the next step's count from this one's compute time (waits for other ranks are
             * not this rank's speed); buffers are sized for the most, so no allocation */
            double sec = (compute > 0 ? compute : dt * 1e3) * 1e-3;
            if (o->test_threads_slow > 0 && step_threads > 1)
                sec *= o->test_threads_slow;
            int next = ccoe_threads_auto_step(&t->thr, sec);
            if (next != step_threads)
                ccoe_gemm_set_threads(&s->gemm, next);
        }
        if (t->metrics) {
            fprintf(t->metrics,
                    "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tok_per_s\":%.1f,"
                    "\"mfu_peak\":%.4f,\"mfu_sgemm\":%.4f,\"step_ms\":%.3f,\"compute_ms\":%.3f,"
                    "\"allreduce_ms\":%.3f,\"exchange_ms\":%.3f,\"wait_ms\":%.3f,"
                    "\"bytes_allreduce\":%llu,\"bytes_exchanged\":%llu",
                    t->st.step, loss, lr, gnorm, step_tok_s, mfu, step_gflops / t->gemm_gflops,
                    dt * 1e3, compute > 0 ? compute : 0.0, ar, ex, wt,
                    (unsigned long long)(c1.bytes_allreduce - c0.bytes_allreduce),
                    (unsigned long long)(c1.bytes_exchanged - c0.bytes_exchanged));
            if (t->thr_auto)
                fprintf(t->metrics, ",\"threads\":%d", step_threads);
            if (s->model.n_moe > 0) {
                /* loss stays the CE (perplexity); the trained objective adds the aux losses */
                fprintf(t->metrics, ",\"aux_loss\":%.6g,\"objective\":%.6f", t->aux,
                        loss + t->aux);
                if (t->st.step % tc->log_every == 0 || last)
                    ccoe_train_write_moe_stats(t);
            }
            fputs("}\n", t->metrics);
            /* every step's line on disk, or the run fails (at the next agreement) saying why */
            local = ccoe_train_metrics_flush(t, err);
        }
        if (!t->quiet && (t->st.step % tc->log_every == 0 || last || t->bar)) {
            double now = ccoe_now();
            double mfu_w = 0.0;
            if (now > window_t0) {
                tok_s = window_tokens / (now - window_t0);
                mfu_w = window_flops / t->P / (now - window_t0) * 1e-9 / t->peak_gflops;
            }
            double eta_s = (double)(tc->steps - t->st.step) * (double)tokens_per_step / tok_s;
            char eta[32];
            ccoe_train_format_eta(eta, sizeof eta, eta_s);
            const char *who = t->expert_mode ? s->taskmap.experts[t->expert].name : NULL;
            if (t->bar) {
                int width = 24;
                int filled = (int)((double)width * (double)t->st.step / (double)tc->steps);
                char bar[32];
                for (int i = 0; i < width; i++)
                    bar[i] = i < filled ? '#' : '.';
                bar[width] = '\0';
                fprintf(stderr, "\r%s%s[%s] %ld/%ld loss %.4f | %.0f tok/s | MFU %.1f%% | ETA %s  ",
                        who ? who : "", who ? " " : "", bar, t->st.step, tc->steps, loss, tok_s,
                        100.0 * mfu_w, eta);
                if (last)
                    fputc('\n', stderr);
            } else {
                char thr[32] = "";
                if (t->thr_auto)
                    snprintf(thr, sizeof thr, " | %d thr", step_threads);
                fprintf(stderr,
                        "%s%sstep %6ld/%ld | loss %.4f | lr %.3g | grad %.3f | %.0f tok/s | MFU "
                        "%.1f%% | ETA %s%s\n",
                        who ? who : "", who ? ": " : "", t->st.step, tc->steps, loss, lr, gnorm,
                        tok_s, 100.0 * mfu_w, eta, thr);
            }
            fflush(stderr);
            window_t0 = ccoe_now();
            window_tokens = 0;
            window_flops = 0;
        }
        if (!last && tc->eval_every > 0 && t->st.step % tc->eval_every == 0) {
            double e0 = ccoe_now();
            CCOE_TRY(ccoe_train_run_eval(t, 0, 0, err));
            if (local == CCOE_OK)
                local = ccoe_train_metrics_flush(t, err);
            window_t0 += ccoe_now() - e0; /* evaluation is not training throughput */
        }
        if (local == CCOE_OK && !last && tc->ckpt_every > 0 && t->st.step % tc->ckpt_every == 0)
            local = ccoe_train_save_checkpoint(t, err);
    }
    double total = ccoe_now() - run_t0;
    if (!t->quiet && t->st.step > first_step)
        fprintf(stderr, "%s%strained %ld steps in %.1f s (%.0f tok/s average incl. evaluation)\n",
                t->expert_mode ? s->taskmap.experts[t->expert].name : "",
                t->expert_mode ? ": " : "", t->st.step - first_step, total,
                (double)(t->st.step - first_step) * (double)tokens_per_step / total);
    if (!t->quiet && t->thr_auto)
        fprintf(stderr, "threads auto: %ld probes, %ld switches, ending on %d of %d\n",
                t->thr.probes, t->thr.switches, s->gemm.nthreads, s->max_threads);
    if (t->expert_mode)
        return CCOE_OK;
    CCOE_TRY(ccoe_train_check_replicas(t, err));
    CCOE_TRY(ccoe_comm_agree(c, ccoe_train_save_checkpoint(t, err), err));
    return ccoe_train_final_report(t, "metrics.jsonl", err);
}

ccoe_status ccoe_train_run(const ccoe_config *cfg_in, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_config cfg = *cfg_in;
    ccoe_st_file *resume_file = NULL;
    ccoe_session s;
    int have_session = 0;
    train_ctx t;
    memset(&t, 0, sizeof t);
    memset(&s, 0, sizeof s);
    ccoe_comm_serial(&t.serial);
    t.comm = o->comm ? o->comm : &t.serial;
    t.comm->failed_rank = -1;
    t.rank = t.comm->rank;
    t.P = t.comm->size;
    t.o = o;
    t.s = &s;
    t.expert = -1;
    t.quiet = o->quiet || t.rank != 0;
    ccoe_status st = ccoe_train_setup(&t, &s, &cfg, o, &resume_file, &have_session, err);
    /* every rank learns whether any failed, and that all configs are the same */
    uint64_t h = have_session ? ccoe_config_hash(&s.cfg) : 0;
    double flags[4] = {(double)(h >> 32), (double)(h & 0xffffffffu), -(double)(h >> 32),
                       -(double)(h & 0xffffffffu)};
    st = ccoe_comm_agree_flags(t.comm, st, flags, 4, err);
    if (st == CCOE_OK && (flags[0] != -flags[2] || flags[1] != -flags[3])) {
        st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                            "the ranks resolved different configs (hash of rank %d: %016llx): "
                            "give every rank the same config file, data and command line",
                            t.rank, (unsigned long long)h);
        t.comm->failed_rank = 0;
    }
    /* every rank has the same config now: the same watchdog timeout, set at the same point */
    if (st == CCOE_OK)
        ccoe_comm_set_timeout(t.comm, s.cfg.mpi.timeout);
    /* the model communicates too (expert-parallel MoE layers), except while experts train
     * independently; COLLECTIVE, then agreed on */
    if (st == CCOE_OK && t.P > 1 && !o->train_experts) {
        const int32_t *owner = NULL;
        if (s.model.n_moe > 0) {
            st = ccoe_placement_map(&s.cfg.mpi, s.model.moe.E, t.P, NULL, t.place_map, err);
            t.n_place = s.model.moe.E;
            owner = t.place_map;
        }
        if (st == CCOE_OK)
            st = ccoe_model_set_comm(&s.model, t.comm, owner, err);
        if (st == CCOE_OK)
            st = ccoe_train_ep_setup(&t, err);
        if (st == CCOE_OK && o->ccoe_placement)
            st = ccoe_train_place_setup(&t, err);
        if (st == CCOE_OK)
            st = ccoe_train_dp_plan(&t, err);
        st = ccoe_comm_agree(t.comm, st, err);
    }
    if (st != CCOE_OK)
        goto done;
    ccoe_comm_split(s.cfg.train.batch_size, t.P, t.rank, &t.b0, &t.b1);
    t.bar = o->progress < 0 ? isatty(fileno(stderr)) : o->progress;
    if (!t.quiet)
        ccoe_train_print_start(&t, o);
    if (t.metrics)
        fprintf(t.metrics,
                "{\"event\":\"start\",\"step\":%ld,\"params\":%zu,\"flops_per_token\":%.0f,"
                "\"peak_gflops\":%.1f,\"sgemm_gflops\":%.1f,\"threads\":%d,\"ranks\":%d,"
                "\"gemm\":\"%s\",\"config_hash\":\"%016llx\"}\n",
                t.st.step, s.model.num_params, t.flops_per_token, t.peak_gflops, t.gemm_gflops,
                s.max_threads, t.P, s.gemm.kernel_set,
                (unsigned long long)ccoe_config_hash(&s.cfg));
    if (t.metrics && t.n_place > 0) {
        fprintf(t.metrics, "{\"event\":\"placement\",\"step\":%ld,\"experts\":\"%s\","
                           "\"policy\":\"%s\",\"ranks\":%d,\"owner\":[",
                t.st.step, t.placed ? "ccoe" : "moe", ccoe_placement_name(s.cfg.mpi.placement),
                t.P);
        for (int e = 0; e < t.n_place; e++)
            fprintf(t.metrics, "%s%d", e ? "," : "", (int)t.place_map[e]);
        fputs("]}\n", t.metrics);
    }
    g_stop_signal = 0;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    st = o->train_experts ? ccoe_train_run_experts(&t, o, err) : ccoe_train_loop(&t, o, err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
done:
    st = ccoe_train_metrics_close(&t, st, err);
    ccoe_st_close(resume_file);
    ccoe_adamw_free(&t.opt);
    free(t.json);
    free(t.buckets);
    free(t.ep_span);
    free(t.ep_owner);
    free(t.frozen);
    if (have_session)
        ccoe_session_close(&s);
    return st;
}
