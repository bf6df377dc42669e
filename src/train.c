/* train.c - the dense training loop. */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checkpoint.h"
#include "optim.h"
#include "perf.h"
#include "session.h"

static volatile sig_atomic_t g_stop_signal = 0;

static void on_signal(int sig) { g_stop_signal = sig; }

/* mkdir -p */
static ccoe_status make_dirs(const char *path, ccoe_error *err)
{
    char buf[CCOE_STR + 8];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ccoe_error_set(err, CCOE_ERR_IO, "cannot create directory %s: %s", buf,
                                      strerror(errno));
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return CCOE_OK;
}

static void format_eta(char *out, size_t cap, double seconds)
{
    if (!(seconds >= 0) || seconds > 360000)
        seconds = 0;
    long s = (long)seconds;
    snprintf(out, cap, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
}

typedef struct train_ctx {
    ccoe_session *s;
    ccoe_adamw opt;
    ccoe_train_state st;
    FILE *metrics;
    char ckpt_path[CCOE_STR + 64];
    double flops_per_token;
    double peak_gflops, gemm_gflops;
    double step_flops;       /* model FLOPs of the last step */
    int expert;              /* isolated expert training: its index, else -1 */
    size_t grad_begin, grad_end; /* the trained float range of the parameter block */
    int bar;
    double aux;              /* mean over micro-batches of the summed MoE aux loss, last step */
    char *json;              /* buffer for ccoe_moe_stats_json (MoE models) */
    size_t json_cap;
} train_ctx;

static int only_expert(const ccoe_param *p, void *ctx)
{
    return p->expert == *(const int *)ctx;
}

static ccoe_status save_checkpoint(train_ctx *t, ccoe_error *err)
{
    t->st.data_pos = t->s->data.pos;
    return ccoe_checkpoint_save(t->ckpt_path, &t->s->cfg, &t->s->model, &t->opt, &t->st, err);
}

/* ,"moe":[{"layer":l, <ccoe_moe_stats_json fields>}, ...] of the last micro-batch. */
static void write_moe_stats(train_ctx *t)
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

static void run_eval(train_ctx *t, int with_tasks, int print_table)
{
    ccoe_session *s = t->s;
    ccoe_domain_eval ev[CCOE_MAX_DOMAINS];
    ccoe_eval_domains(&s->model, &s->data, &s->tok, &s->batch, s->cfg.train.eval_batches,
                      with_tasks, ev);
    fprintf(t->metrics, "{\"step\":%ld,\"eval\":", t->st.step);
    ccoe_eval_json(t->metrics, &s->data, ev);
    fputs("}\n", t->metrics);
    fflush(t->metrics);
    if (print_table) {
        printf("\nper-domain evaluation after %ld steps:\n", t->st.step);
        ccoe_eval_print(stdout, &s->data, ev);
        fflush(stdout);
    }
}

/* One optimizer step: grad_accum micro-batches, clip, AdamW. Returns the mean loss. */
static ccoe_status train_step(train_ctx *t, double *loss_out, double *gnorm_out, double lr,
                              ccoe_error *err)
{
    ccoe_session *s = t->s;
    ccoe_model *m = &s->model;
    const ccoe_train_config *tc = &s->cfg.train;
    const int B = tc->batch_size, T = s->cfg.model.seq_len;
    ccoe_model_zero_grad(m);
    double loss_sum = 0.0, aux_sum = 0.0;
    long tokens = 0;
    t->step_flops = 0.0;
    /* MoE routing: training noise keyed by (seed, step, layer, token of the step) */
    m->train = 1;
    m->step = (uint64_t)t->st.step;
    for (int micro = 0; micro < tc->grad_accum; micro++) {
        ccoe_data_next_batch(&s->data, s->batch.tokens, s->batch.targets, s->batch.domains, B);
        long count = 0;
        m->token_offset = (int64_t)micro * B * T;
        loss_sum += ccoe_model_forward(m, s->batch.tokens, s->batch.targets, s->batch.domains, B, T,
                                       &count);
        aux_sum += m->aux_loss;
        tokens += count;
        /* every training row is full, so each micro-batch counts B*T tokens; the aux losses
         * are means per micro-batch (papers/moe.md, loss scaling) */
        ccoe_model_backward(m, 1.0f / ((float)count * (float)tc->grad_accum),
                            1.0f / (float)tc->grad_accum);
        t->step_flops += ccoe_model_last_flops(m);
    }
    m->train = 0;
    double loss = loss_sum / (double)tokens;
    double gnorm = ccoe_grad_norm(m->grad_block, t->grad_begin, t->grad_end);
    t->aux = aux_sum / (double)tc->grad_accum;
    *loss_out = loss;
    *gnorm_out = gnorm;
    if (!isfinite(loss) || !isfinite(t->aux) || !isfinite(gnorm))
        return ccoe_error_set(err, CCOE_ERR_NUMERIC,
                              "non-finite %s at step %ld (loss %g, MoE aux loss %g, grad norm %g, "
                              "lr %g): lower train.lr, raise train.warmup or set "
                              "train.grad_clip; the last good checkpoint (if any) is kept at %s",
                              !isfinite(loss)    ? "loss"
                              : !isfinite(t->aux) ? "MoE aux loss"
                                                  : "gradient norm",
                              t->st.step + 1, loss, t->aux, gnorm, lr, t->ckpt_path);
    if (tc->grad_clip > 0 && gnorm > tc->grad_clip)
        ccoe_grad_scale(m->grad_block, t->grad_begin, t->grad_end,
                        (float)(tc->grad_clip / gnorm));
    if (t->expert >= 0)
        ccoe_adamw_step(&t->opt, m, tc, lr, only_expert, &t->expert);
    else
        ccoe_adamw_step(&t->opt, m, tc, lr, NULL, NULL);
    return CCOE_OK;
}

static ccoe_status train_loop(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_session *s = t->s;
    const ccoe_train_config *tc = &s->cfg.train;
    const long tokens_per_step = (long)tc->batch_size * s->cfg.model.seq_len * tc->grad_accum;
    double window_t0 = ccoe_now(), window_tokens = 0, window_flops = 0, run_t0 = ccoe_now();
    double tok_s = 0.0;
    long first_step = t->st.step;
    while (t->st.step < tc->steps) {
        double lr = ccoe_lr_at(tc, t->st.step);
        double loss, gnorm;
        double t0 = ccoe_now();
        CCOE_TRY(train_step(t, &loss, &gnorm, lr, err));
        double dt = ccoe_now() - t0;
        t->st.step++;
        window_tokens += (double)tokens_per_step;
        window_flops += t->step_flops;
        double step_tok_s = (double)tokens_per_step / dt;
        double step_gflops = t->step_flops / dt * 1e-9;
        double mfu = step_gflops / t->peak_gflops;
        int last = t->st.step == tc->steps;
        fprintf(t->metrics,
                "{\"step\":%ld,\"loss\":%.6f,\"lr\":%.6g,\"grad_norm\":%.6g,\"tok_per_s\":%.1f,"
                "\"mfu_peak\":%.4f,\"mfu_sgemm\":%.4f,\"step_ms\":%.3f",
                t->st.step, loss, lr, gnorm, step_tok_s, mfu, step_gflops / t->gemm_gflops,
                dt * 1e3);
        if (s->model.n_moe > 0) {
            /* loss stays the CE (perplexity); the trained objective adds the aux losses */
            fprintf(t->metrics, ",\"aux_loss\":%.6g,\"objective\":%.6f", t->aux, loss + t->aux);
            if (t->st.step % tc->log_every == 0 || last)
                write_moe_stats(t);
        }
        fputs("}\n", t->metrics);
        if (!o->quiet && (t->st.step % tc->log_every == 0 || last || t->bar)) {
            double now = ccoe_now();
            double mfu_w = 0.0;
            if (now > window_t0) {
                tok_s = window_tokens / (now - window_t0);
                mfu_w = window_flops / (now - window_t0) * 1e-9 / t->peak_gflops;
            }
            double eta_s = (double)(tc->steps - t->st.step) * (double)tokens_per_step / tok_s;
            char eta[32];
            format_eta(eta, sizeof eta, eta_s);
            if (t->bar) {
                int width = 24;
                int filled = (int)((double)width * (double)t->st.step / (double)tc->steps);
                char bar[32];
                for (int i = 0; i < width; i++)
                    bar[i] = i < filled ? '#' : '.';
                bar[width] = '\0';
                fprintf(stderr, "\r[%s] %ld/%ld loss %.4f | %.0f tok/s | MFU %.1f%% | ETA %s  ",
                        bar, t->st.step, tc->steps, loss, tok_s, 100.0 * mfu_w, eta);
                if (last)
                    fputc('\n', stderr);
            } else {
                fprintf(stderr,
                        "step %6ld/%ld | loss %.4f | lr %.3g | grad %.3f | %.0f tok/s | MFU "
                        "%.1f%% | ETA %s\n",
                        t->st.step, tc->steps, loss, lr, gnorm, tok_s, 100.0 * mfu_w, eta);
            }
            fflush(stderr);
            window_t0 = ccoe_now();
            window_tokens = 0;
            window_flops = 0;
        }
        if (!last && tc->eval_every > 0 && t->st.step % tc->eval_every == 0) {
            double e0 = ccoe_now();
            run_eval(t, 0, 0);
            window_t0 += ccoe_now() - e0; /* evaluation is not training throughput */
        }
        if (!last && tc->ckpt_every > 0 && t->st.step % tc->ckpt_every == 0)
            CCOE_TRY(save_checkpoint(t, err));
        if ((o->stop_at > 0 && t->st.step >= o->stop_at && !last) ||
            (o->time_limit > 0 && ccoe_now() - run_t0 >= o->time_limit && !last)) {
            CCOE_TRY(save_checkpoint(t, err));
            if (!o->quiet)
                fprintf(stderr, "stopping after step %ld of %ld (%s); continue with --resume %s\n",
                        t->st.step, tc->steps, o->stop_at > 0 ? "--stop-at" : "--time-limit",
                        t->ckpt_path);
            return CCOE_OK;
        }
        if (g_stop_signal) {
            CCOE_TRY(save_checkpoint(t, err));
            return ccoe_error_set(err, CCOE_ERR_ARG,
                                  "stopped by signal %d after step %ld; checkpoint saved to %s: "
                                  "continue with --resume %s",
                                  (int)g_stop_signal, t->st.step, t->ckpt_path, t->ckpt_path);
        }
    }
    double total = ccoe_now() - run_t0;
    if (!o->quiet && t->st.step > first_step)
        fprintf(stderr, "trained %ld steps in %.1f s (%.0f tok/s average incl. evaluation)\n",
                t->st.step - first_step, total,
                (double)(t->st.step - first_step) * (double)tokens_per_step / total);
    CCOE_TRY(save_checkpoint(t, err));
    run_eval(t, 1, !o->quiet);
    if (!o->quiet)
        printf("checkpoint: %s\nmetrics:    %s/metrics.jsonl\n", t->ckpt_path,
               s->cfg.train.out_dir);
    return CCOE_OK;
}

ccoe_status ccoe_train_run(const ccoe_config *cfg_in, const ccoe_train_opts *o, ccoe_error *err)
{
    ccoe_config cfg = *cfg_in;
    ccoe_st_file *resume_file = NULL;
    ccoe_status st;
    if (o->resume) {
        /* the checkpoint's stored config wins over the command line for everything that shapes
         * the run; only the step budget, logging and output knobs may change */
        ccoe_config stored;
        CCOE_TRY(ccoe_checkpoint_open(o->resume, &stored, &resume_file, err));
        stored.train.steps = cfg.train.steps;
        stored.train.log_every = cfg.train.log_every;
        stored.train.eval_every = cfg.train.eval_every;
        stored.train.ckpt_every = cfg.train.ckpt_every;
        stored.run = cfg.run;
        memcpy(stored.train.out_dir, cfg.train.out_dir, sizeof stored.train.out_dir);
        cfg = stored;
    }
    char ckpt_path[CCOE_STR + 64];
    snprintf(ckpt_path, sizeof ckpt_path, "%s/checkpoint.safetensors", cfg.train.out_dir);
    if (!o->resume && !o->force && access(ckpt_path, F_OK) == 0) {
        ccoe_st_close(resume_file);
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "%s already exists: continue it with --resume %s, start over with "
                              "--force, or choose another train.out_dir",
                              ckpt_path, ckpt_path);
    }
    if ((st = make_dirs(cfg.train.out_dir, err)) != CCOE_OK) {
        ccoe_st_close(resume_file);
        return st;
    }

    ccoe_session s;
    if ((st = ccoe_session_open(&s, &cfg, 1, err)) != CCOE_OK) {
        ccoe_st_close(resume_file);
        return st;
    }
    train_ctx t;
    memset(&t, 0, sizeof t);
    t.s = &s;
    snprintf(t.ckpt_path, sizeof t.ckpt_path, "%s", ckpt_path);
    t.expert = -1;
    t.grad_begin = 0;
    t.grad_end = s.model.num_params;
    if ((st = ccoe_adamw_init(&t.opt, s.model.num_params, err)) != CCOE_OK)
        goto done;
    if (s.model.n_moe > 0) {
        t.json_cap = 4096 + (size_t)s.model.moe.E * 64;
        t.json = malloc(t.json_cap);
        if (!t.json) {
            st = ccoe_error_set(err, CCOE_ERR_NOMEM, "cannot allocate the MoE log buffer");
            goto done;
        }
    }
    if (s.cfg.ccoe.train_expert[0]) {
        /* isolated expert training: only the expert learns, only on its domains' data */
        int e = ccoe_gating_find_expert(&s.gating, s.cfg.ccoe.train_expert);
        uint32_t mask = 0;
        for (int d = 0; d < s.gating.n_domains; d++)
            if (s.gating.route[d] == e)
                mask |= 1u << d;
        if (!mask) {
            st = ccoe_error_set(err, CCOE_ERR_CONFIG,
                                "ccoe.train_expert = %s, but no domain routes to it: add "
                                "DOMAIN:%s to ccoe.routes",
                                s.cfg.ccoe.train_expert, s.cfg.ccoe.train_expert);
            goto done;
        }
        if ((st = ccoe_data_restrict(&s.data, mask, err)) != CCOE_OK)
            goto done;
        t.expert = e;
        s.model.train_path = 1 + e;
        t.grad_begin = s.model.expert_begin[e];
        t.grad_end = s.model.expert_end[e];
    }
    ccoe_rng_seed(&t.st.rng, s.cfg.train.seed ^ 0x7261696eULL);
    if (resume_file) {
        st = ccoe_checkpoint_load(resume_file, o->resume, &s.model, &t.opt, &t.st, err);
        ccoe_st_close(resume_file);
        resume_file = NULL;
        if (st != CCOE_OK)
            goto done;
        ccoe_data_seek(&s.data, t.st.data_pos);
    } else if (o->init_from) {
        ccoe_config other;
        ccoe_st_file *f = NULL;
        int missing[CCOE_MAX_EXPERTS] = {0};
        ccoe_model_init_weights(&s.model, s.cfg.train.seed, CCOE_INIT_RANDOM);
        st = ccoe_checkpoint_open(o->init_from, &other, &f, err);
        if (st == CCOE_OK)
            st = ccoe_checkpoint_load_init(f, o->init_from, &s.model, missing, err);
        ccoe_st_close(f);
        if (st != CCOE_OK)
            goto done;
        for (int e = 0; e < s.gating.n_experts; e++)
            if (missing[e] && s.cfg.ccoe.init == CCOE_INIT_COPY)
                ccoe_model_expert_copy_base(&s.model, e);
        ccoe_data_seek(&s.data, 0);
    } else {
        ccoe_model_init_weights(&s.model, s.cfg.train.seed, s.cfg.ccoe.init);
        ccoe_data_seek(&s.data, 0);
    }
    char mpath[CCOE_STR + 64];
    snprintf(mpath, sizeof mpath, "%s/metrics.jsonl", s.cfg.train.out_dir);
    t.metrics = fopen(mpath, o->resume ? "a" : "w");
    if (!t.metrics) {
        st = ccoe_error_set(err, CCOE_ERR_IO, "cannot open %s for writing: %s", mpath,
                            strerror(errno));
        goto done;
    }
    t.flops_per_token =
        ccoe_model_train_flops_per_token(&s.cfg.model, s.cfg.model.n_layer, s.cfg.model.seq_len);
    t.peak_gflops = ccoe_measure_fma_peak(s.cfg.run.threads, 0.15);
    t.gemm_gflops = ccoe_gemm_measure_gflops(&s.gemm, 768, 0.2);
    t.bar = o->progress < 0 ? isatty(fileno(stderr)) : o->progress;
    if (!o->quiet) {
        char *ini = ccoe_config_to_ini(&s.cfg);
        fprintf(stderr, "# resolved config\n%s", ini ? ini : "");
        free(ini);
        fprintf(stderr,
                "model: %.2fM parameters, %.1f MFLOP/token (train) | data: %d domains, %zu train "
                "/ %zu val sequences of %d tokens\n"
                "threads %d | gemm %s | fp32 peak %.0f GFLOP/s (%s, measured) | sgemm %.0f "
                "GFLOP/s (measured)\n",
                (double)s.model.num_params / 1e6, t.flops_per_token / 1e6, s.data.n_domains,
                s.data.n_train, s.data.n_val, s.cfg.model.seq_len, s.cfg.run.threads,
                s.gemm.kernel_set, t.peak_gflops, ccoe_simd_name(), t.gemm_gflops);
        if (o->resume)
            fprintf(stderr, "resuming %s at step %ld\n", o->resume, t.st.step);
        if (o->init_from)
            fprintf(stderr, "weights from %s\n", o->init_from);
        if (s.gating.n_experts > 0)
            ccoe_gating_print(stderr, &s.gating);
        if (t.expert >= 0)
            fprintf(stderr, "isolated training of expert '%s' (%.2fM parameters); everything "
                            "else is frozen\n",
                    s.gating.experts[t.expert].name, (double)(t.grad_end - t.grad_begin) / 1e6);
    }
    fprintf(t.metrics,
            "{\"event\":\"start\",\"step\":%ld,\"params\":%zu,\"flops_per_token\":%.0f,"
            "\"peak_gflops\":%.1f,\"sgemm_gflops\":%.1f,\"threads\":%d,\"gemm\":\"%s\","
            "\"config_hash\":\"%016llx\"}\n",
            t.st.step, s.model.num_params, t.flops_per_token, t.peak_gflops, t.gemm_gflops,
            s.cfg.run.threads, s.gemm.kernel_set, (unsigned long long)ccoe_config_hash(&s.cfg));
    g_stop_signal = 0;
    struct sigaction sa, old_int, old_term;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    st = train_loop(&t, o, err);
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
done:
    if (t.metrics)
        fclose(t.metrics);
    ccoe_st_close(resume_file);
    ccoe_adamw_free(&t.opt);
    free(t.json);
    ccoe_session_close(&s);
    return st;
}
