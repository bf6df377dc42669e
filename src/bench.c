/* bench.c - `ccoe bench`: training steps per second on the reference shapes. */
#include "bench.h"

#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "gate.h"
#include "model.h"
#include "optim.h"
#include "perf.h"
#include "rng.h"
#include "session.h"
#include "threads.h"

typedef struct bench_shape {
    const char *name;
    int L, C, H, V, B, T;
    int llama; /* LLaMA / Qwen2 blocks: RoPE, RMSNorm, SwiGLU, q/k/v biases, tied head */
    int Hkv, F; /* llama: key/value heads, FFN width */
} bench_shape;

static const bench_shape k_shapes[] = {
    {"small", 4, 256, 4, 256, 8, 128, 0, 0, 0},
    {"tiny-wide", 6, 512, 8, 256, 8, 128, 0, 0, 0},
    {"gpt2-124m", 12, 768, 12, 50304, 4, 64, 0, 0, 0},
    /* Qwen2-0.5B's block (hidden 896, 14 heads over 2 key/value heads, intermediate 4864) and
     * its real vocabulary at 4 of its 24 layers */
    {"qwen2-0.5b-l4", 4, 896, 14, 151936, 4, 64, 1, 2, 4864},
};

/* The process's peak resident set (VmHWM) in bytes, or -1; reset_peak_rss starts it anew
 * (Linux: clear_refs 5), so each shape reports its own. */
static double peak_rss(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    double v = -1;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "VmHWM:", 6) == 0)
            v = strtod(line + 6, NULL) * 1024.0;
    fclose(f);
    return v;
}

static void reset_peak_rss(void)
{
    FILE *f = fopen("/proc/self/clear_refs", "w");
    if (f) {
        fputs("5", f);
        fclose(f);
    }
}

static int only_expert0(const ccoe_param *p, void *ctx)
{
    (void)ctx;
    return p->expert == 0;
}

static int prof_by_time(const void *a, const void *b)
{
    double ta = ((const ccoe_gemm_prof_entry *)a)->seconds;
    double tb = ((const ccoe_gemm_prof_entry *)b)->seconds;
    return (ta < tb) - (ta > tb);
}

/* The GEMM profile of `steps` measured steps that took `total` seconds, slowest shape first. */
static void print_profile(ccoe_gemm_prof *p, int steps, double total, FILE *out)
{
    qsort(p->e, (size_t)p->n, sizeof p->e[0], prof_by_time);
    double gemm_s = 0.0;
    for (int i = 0; i < p->n; i++)
        gemm_s += p->e[i].seconds;
    fprintf(out, "\n  GEMM calls by shape (C(M,N) = op(A)(M,K) op(B)(K,N); per step):\n"
                 "  | op | M | N | K | calls | ms | GFLOP/s | %% of step |\n"
                 "  |---|---|---|---|---|---|---|---|\n");
    for (int i = 0; i < p->n; i++) {
        const ccoe_gemm_prof_entry *e = &p->e[i];
        double fl = 2.0 * e->M * e->N * e->K * (double)e->calls;
        fprintf(out, "  | %s%s%s | %d | %d | %d | %.1f | %.2f | %.1f | %.1f%% |\n",
                e->transa ? "At" : "A", e->transb ? "Bt" : "B", e->bf16 ? " bf16" : "", e->M,
                e->N, e->K,
                (double)e->calls / steps, 1e3 * e->seconds / steps,
                e->seconds > 0 ? fl / e->seconds * 1e-9 : 0.0, 100.0 * e->seconds / total);
    }
    fprintf(out, "  GEMMs %.1f%% of the step (%.2f ms), everything else %.2f ms per step",
            100.0 * gemm_s / total, 1e3 * gemm_s / steps, 1e3 * (total - gemm_s) / steps);
    if (p->dropped)
        fprintf(out, "; %ld calls of further shapes not timed", p->dropped);
    fprintf(out, "\n  (serial GEMMs inside parallel regions count each thread's time)\n\n");
}

/* What one row measured (for the bf16/fp32 ratio line). */
typedef struct bench_result {
    double tok_s, gflops;
    double tok_cpu_s; /* tokens per CPU-second of the process */
} bench_result;

/* One row: `isolated` trains only CCoE expert 0 (o->ccoe set), else everything; linear layers
 * in precision `prec` ("fp32" or "bf16"), utilisation against `peak` (the matching one). */
static ccoe_status bench_one(const bench_shape *sh, const ccoe_bench_opts *o, int isolated,
                             const char *prec, double peak, bench_result *res, FILE *out,
                             ccoe_error *err)
{
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    cfg.model.n_layer = sh->L;
    cfg.model.n_embd = sh->C;
    cfg.model.n_head = sh->H;
    cfg.model.vocab_size = sh->V;
    cfg.model.seq_len = sh->T;
    cfg.model.ffn_hidden = 0;
    cfg.model.ffn = strcmp(o->ffn, "swiglu") == 0 ? CCOE_FFN_SWIGLU : CCOE_FFN_GELU;
    if (sh->llama) {
        cfg.model.pos = CCOE_POS_ROPE;
        cfg.model.norm = CCOE_NORM_RMSNORM;
        cfg.model.ffn = CCOE_FFN_SWIGLU;
        cfg.model.bias = 0;
        cfg.model.qkv_bias = 1;
        cfg.model.n_kv_head = sh->Hkv;
        cfg.model.ffn_hidden = sh->F;
        cfg.model.rope_theta = 1e6;
        cfg.model.norm_eps = 1e-6;
    }
    cfg.train.batch_size = sh->B;
    if (!ccoe_gate_is_none(o->moe)) {
        /* 8 experts; K as the gate allows (its flags), each expert 4C / K wide so that the K
         * active experts cost the dense FFN's 4C; gates without a router get no router losses */
        const ccoe_gate_ops *g = ccoe_gate_find(o->moe);
        if (!g)
            return ccoe_error_set(err, CCOE_ERR_ARG, "bench --moe %s: not a gate of the registry",
                                  o->moe);
        snprintf(cfg.moe.gate, sizeof cfg.moe.gate, "%s", o->moe);
        cfg.moe.n_experts = 8;
        cfg.moe.top_k = (g->flags & CCOE_GATE_ALL_EXPERTS) ? 8
                        : (g->flags & CCOE_GATE_ONE_EXPERT) ? 1
                                                            : 2;
        cfg.moe.expert_hidden = 4 * sh->C / cfg.moe.top_k;
        if (!(g->flags & CCOE_GATE_ROUTER))
            cfg.moe.w_switch = cfg.moe.w_z = cfg.moe.w_importance = 0.0;
    }
    const int with_ccoe = o->ccoe && strcmp(o->ccoe, "none") != 0;
    if (with_ccoe) {
        char set[64];
        snprintf(set, sizeof set, "ccoe.form=%s", o->ccoe);
        CCOE_TRY(ccoe_config_set(&cfg, set, err));
        snprintf(cfg.ccoe.experts, sizeof cfg.ccoe.experts, "x:%d", sh->L / 2);
        snprintf(cfg.ccoe.routes, sizeof cfg.ccoe.routes, "d:x");
        cfg.ccoe.prefix_layers = sh->L / 2;
    }
    cfg.run.threads = o->threads;
    snprintf(cfg.run.gemm, sizeof cfg.run.gemm, "%s", o->gemm);
    snprintf(cfg.run.precision, sizeof cfg.run.precision, "%s", prec);
    const int bf16 = strcmp(prec, "bf16") == 0;
    reset_peak_rss();
    ccoe_session s;
    CCOE_TRY(ccoe_session_open(&s, &cfg, 0, err));
    ccoe_adamw opt;
    ccoe_status st = ccoe_adamw_init(&opt, s.model.num_params, err);
    if (st != CCOE_OK) {
        ccoe_session_close(&s);
        return st;
    }
    ccoe_model *m = &s.model;
    ccoe_model_init_weights(m, 1, CCOE_INIT_COPY);
    size_t g0 = 0, g1 = m->num_params; /* the trained range */
    if (isolated) {
        /* as train-expert does: the frozen base runs forward only */
        st = ccoe_model_set_train_path(m, 1, err);
        if (st != CCOE_OK) {
            ccoe_adamw_free(&opt);
            ccoe_session_close(&s);
            return st;
        }
        g0 = m->expert_begin[0];
        g1 = m->expert_end[0];
    }
    ccoe_rng r;
    ccoe_rng_seed(&r, 42);
    const int B = sh->B, T = sh->T, N = B * T;
    for (int i = 0; i < N; i++) {
        s.batch.tokens[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)sh->V);
        s.batch.targets[i] = (int32_t)ccoe_rng_below(&r, (uint64_t)sh->V);
    }
    for (int b = 0; b < B; b++)
        s.batch.domains[b] = 0; /* with an expert: every sequence takes its path */
    double sgemm = ccoe_gemm_measure_gflops(&s.gemm, 1024, 1.0);
    double t_fwd = 0, t_bwd = 0, t_opt = 0, flops = 0;
    ccoe_gemm_prof *prof = NULL;
    if (o->profile && !(prof = calloc(1, sizeof *prof))) {
        ccoe_adamw_free(&opt);
        ccoe_session_close(&s);
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the GEMM profile");
    }
    m->train = 1;
    double cpu0 = 0.0;
    /* --threads auto: the policy of training; its first probe runs in the warm-up (extended
     * until it has decided), later probes are measured like any step */
    ccoe_threads_auto thr;
    const int autoth = cfg.run.threads == 0 && s.max_threads > 1;
    long on[4] = {0}; /* measured steps on 1, 2, 3, more threads */
    if (autoth)
        ccoe_threads_auto_init(&thr, s.max_threads);
    for (int it = -2; it < o->steps; it++) {
        const int step_threads = s.gemm.nthreads;
        if (it == 0)
            cpu0 = ccoe_cpu_now();
        if (it == 0)
            s.gemm.prof = prof; /* time the measured steps only */
        double t0 = ccoe_now();
        ccoe_model_zero_grad(m);
        long count;
        ccoe_model_forward(m, s.batch.tokens, s.batch.targets, s.batch.domains, B, T, &count);
        double t1 = ccoe_now();
        ccoe_model_backward(m, 1.0f / (float)count, 1.0f);
        double t2 = ccoe_now();
        double gn = ccoe_grad_norm(m->grad_block, g0, g1);
        ccoe_adamw_step_scaled(&opt, m, &cfg.train, 1e-4, gn > 1.0 ? (float)(1.0 / gn) : 1.0f,
                               isolated ? only_expert0 : NULL, NULL);
        double t3 = ccoe_now();
        if (autoth) {
            int next = ccoe_threads_auto_step(&thr, t3 - t0);
            if (next != step_threads)
                ccoe_gemm_set_threads(&s.gemm, next);
            if (it == -1 && thr.probes == 0)
                it--; /* one more warm-up step */
        }
        if (it >= 0)
            on[step_threads < 4 ? step_threads - 1 : 3]++;
        if (it >= 0) {
            flops += ccoe_model_last_flops(m);
            t_fwd += t1 - t0;
            t_bwd += t2 - t1;
            t_opt += t3 - t2;
        }
    }
    const double cpu = ccoe_cpu_now() - cpu0;
    double total = t_fwd + t_bwd + t_opt;
    char gemm[160];
    snprintf(gemm, sizeof gemm, "%s", s.gemm.kernel_set);
    if (autoth) { /* how many measured steps ran on each count: "auto 1t:28 2t:2" */
        snprintf(gemm + strlen(gemm), sizeof gemm - strlen(gemm), ", auto");
        for (int k = 0; k < 4; k++)
            if (on[k])
                snprintf(gemm + strlen(gemm), sizeof gemm - strlen(gemm), " %s%dt:%ld",
                         k < 3 ? "" : ">", k < 3 ? k + 1 : 3, on[k]);
    }
    double tok_s = (double)N * o->steps / total;
    double gflops = flops / total * 1e-9; /* active model FLOPs actually computed */
    res->tok_s = tok_s;
    res->tok_cpu_s = cpu > 0 ? (double)N * o->steps / cpu : 0.0;
    res->gflops = gflops;
    const double mib = 1024.0 * 1024.0;
    const double acts = (double)m->act_mem.cap / mib;
    const double mem = (double)(m->param_mem.cap + m->grad_mem.cap + m->act_mem.cap) / mib +
                       2.0 * (double)opt.n * sizeof(float) / mib; /* + AdamW's two moments */
    char dims[96];
    snprintf(dims, sizeof dims, "L%d C%d H%d V%d B%d T%d", sh->L, sh->C, sh->H, sh->V, B, T);
    if (sh->llama)
        snprintf(dims + strlen(dims), sizeof dims - strlen(dims), " Hkv%d F%d rope", sh->Hkv,
                 sh->F);
    fprintf(out,
            "| %-9s%s%s | %s | %6.2fM | %9.0f | %6.1f | %5.1f%% | %5.1f%% | "
            "%4.0f/%4.0f/%3.0f | %s | %.0f | %.0f | %.0f |\n",
            sh->name, !with_ccoe ? "" : isolated ? " expert only" : " full", bf16 ? " bf16" : "",
            dims, (double)m->num_params / 1e6, tok_s, gflops, 100.0 * gflops / sgemm,
            100.0 * gflops / peak, 100.0 * t_fwd / total, 100.0 * t_bwd / total,
            100.0 * t_opt / total, gemm, acts, mem, peak_rss() / mib);
    if (prof)
        print_profile(prof, o->steps, total, out);
    fflush(out);
    s.gemm.prof = NULL;
    free(prof);
    ccoe_adamw_free(&opt);
    ccoe_session_close(&s);
    return CCOE_OK;
}

ccoe_status ccoe_bench_run(const ccoe_bench_opts *o, FILE *out, ccoe_error *err)
{
    /* Arguments and the GEMM backend first, so that a mistake is reported before any output. */
    int known = strcmp(o->shape, "all") == 0;
    for (size_t i = 0; i < sizeof k_shapes / sizeof k_shapes[0]; i++)
        known |= strcmp(o->shape, k_shapes[i].name) == 0;
    if (!known)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "unknown bench shape '%s': allowed small, tiny-wide, gpt2-124m, "
                              "qwen2-0.5b-l4, all",
                              o->shape);
    const char *prec = o->precision ? o->precision : "fp32";
    const int both = strcmp(prec, "both") == 0;
    if (!both && strcmp(prec, "fp32") != 0 && strcmp(prec, "bf16") != 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "unknown bench precision '%s': allowed fp32, bf16, both", prec);
    const int with_bf16 = both || strcmp(prec, "bf16") == 0;
    const int with_fp32 = both || strcmp(prec, "fp32") == 0;
    ccoe_gemm_backend backend;
    ccoe_gemm check;
    CCOE_TRY(ccoe_gemm_backend_parse(o->gemm, &backend, err));
    const int nt = o->threads > 0 ? o->threads : ccoe_threads_available();
    CCOE_TRY(ccoe_gemm_init(&check, backend, nt, err));
    if (with_bf16) {
        ccoe_status st = ccoe_gemm_set_precision(&check, CCOE_PRECISION_BF16, err);
        ccoe_gemm_free(&check);
        if (st != CCOE_OK)
            return ccoe_error_wrap(err, "bench --precision %s", prec);
    }
    double peak = ccoe_measure_fma_peak(nt, 0.6);
    double peak_bf16 = with_bf16 ? ccoe_measure_bf16_peak(nt, 0.6) : 0.0;
    const int with_ccoe = o->ccoe && strcmp(o->ccoe, "none") != 0;
    char threads[32];
    if (o->threads > 0)
        snprintf(threads, sizeof threads, "%d", o->threads);
    else
        snprintf(threads, sizeof threads, "auto (1..%d)", nt);
    fprintf(out, "threads %s, ffn %s, moe %s, ccoe %s, measured fp32 FMA peak %.0f GFLOP/s (%s)",
            threads, o->ffn, o->moe, o->ccoe ? o->ccoe : "none", peak, ccoe_simd_name());
    if (with_bf16)
        fprintf(out, ", bf16 dot-product peak %.0f GFLOP/s (vdpbf16ps)", peak_bf16);
    fprintf(out, "\n");
    if (with_ccoe)
        fprintf(out, "one %s expert of L/2 layers serves every sequence: full training of the "
                     "model vs isolated training of the expert (base frozen)\n",
                o->ccoe);
    fprintf(out, "| shape | dims | params | tok/s | GFLOP/s | MFU/sgemm | MFU/peak | "
                 "fwd/bwd/opt %% | gemm | acts MiB | model MiB | peak RSS MiB |\n"
                 "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t i = 0; i < sizeof k_shapes / sizeof k_shapes[0]; i++) {
        if (strcmp(o->shape, "all") != 0 && strcmp(o->shape, k_shapes[i].name) != 0)
            continue;
        for (int iso = 0; iso <= with_ccoe; iso++) {
            bench_result r32 = {0}, r16 = {0};
            if (with_fp32)
                CCOE_TRY(bench_one(&k_shapes[i], o, iso, "fp32", peak, &r32, out, err));
            if (with_bf16)
                CCOE_TRY(bench_one(&k_shapes[i], o, iso, "bf16", peak_bf16, &r16, out, err));
            if (both)
                fprintf(out,
                        "| %-9s%s bf16/fp32 | | | %.2fx | %.2fx | | | | per CPU-s %.2fx | | | |\n",
                        k_shapes[i].name, !with_ccoe ? "" : iso ? " expert only" : " full",
                        r32.tok_s > 0 ? r16.tok_s / r32.tok_s : 0.0,
                        r32.gflops > 0 ? r16.gflops / r32.gflops : 0.0,
                        r32.tok_cpu_s > 0 ? r16.tok_cpu_s / r32.tok_cpu_s : 0.0);
        }
    }
    fprintf(out, "(MFU/sgemm: model FLOP/s over the measured 1024^3 sgemm rate of the same "
                 "context; FLOPs per token = 6N + 12LCT; acts: the activation arena; model: "
                 "parameters, gradients, activations and AdamW moments; peak RSS: the process "
                 "during the shape's run)\n");
    if (with_bf16)
        fprintf(out, "(bf16 rows: linear layers in bf16 (run.precision = bf16); MFU/sgemm over "
                     "the 1024^3 bf16 GEMM rate, MFU/peak over the bf16 dot-product peak)\n");
    if (both)
        fprintf(out, "(bf16/fp32: ratios of tok/s and GFLOP/s; per CPU-s: of tokens per CPU-second "
                     "of the process, the steadier figure on a loaded machine with 1 thread)\n");
    return CCOE_OK;
}
