/* test_moe_mpi.c - expert parallelism of the MoE layer and model over real MPI ranks
 * (mpi/comm_mpi.c): the per-rank checks of tests/util/ep_cases.c (dispatch round trip with
 * identity experts, layer equivalence for every gate, model equivalence through
 * ccoe_model_set_comm, incremental decoding), run by CTest with -np 2 and -np 4. Exit status 0 = every check passed
 * on every rank.
 *
 * CCOE_EP_BENCH=1 instead times training steps of an MoE transformer (the `ccoe bench` small
 * shape with every FFN an E = 8, K = 2 top-k layer) and reports, per step, the bytes of token
 * rows this rank sent and the share of the step spent in the MoE exchanges
 * (scripts/bench_ep.sh). Optional: CCOE_EP_BENCH_STEPS (default 10), CCOE_EP_BENCH_B (global
 * batch, default 8), CCOE_EP_BENCH_CF (capacity factor, default 0 = dropless).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_mpi.h"
#include "config.h"
#include "moe_ep_train.h"
#include "ep_cases.h"
#include "gemm.h"
#include "model.h"
#include "optim.h"
#include "perf.h"
#include "rng.h"
#include "session.h"

static int env_int(const char *name, int dflt)
{
    const char *v = getenv(name);
    return v && *v ? atoi(v) : dflt;
}

/* One training step per iteration: forward + backward on this rank's rows, the gradient sum
 * over ranks (the whole block: simple and exact, see src/moe_ep_train.h), AdamW. */
static int bench(ccoe_comm *comm, const ccoe_gemm *g)
{
    const int P = comm->size, r = comm->rank;
    const int steps = env_int("CCOE_EP_BENCH_STEPS", 10), Bg = env_int("CCOE_EP_BENCH_B", 8);
    const double cf = getenv("CCOE_EP_BENCH_CF") ? atof(getenv("CCOE_EP_BENCH_CF")) : 0.0;
    const int T = 128, V = 256;
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.n_layer = 4;
    c.model.n_embd = 256;
    c.model.n_head = 4;
    c.model.vocab_size = V;
    c.model.seq_len = T;
    c.train.batch_size = Bg;
    snprintf(c.moe.gate, sizeof c.moe.gate, "topk");
    c.moe.n_experts = 8;
    c.moe.top_k = 2;
    c.moe.every = 1;
    c.moe.expert_hidden = 2 * c.model.n_embd;
    c.moe.capacity_factor = cf;
    c.moe.w_switch = 0.01;
    ccoe_error err;
    ccoe_error_clear(&err);
    int b0, b1;
    ccoe_comm_split(Bg, P, r, &b0, &b1);
    const int B = b1 - b0;
    ccoe_model m;
    ccoe_adamw opt;
    if (B < 1 || ccoe_session_validate(&c, &err) != CCOE_OK ||
        ccoe_model_init_moe(&m, &c.model, NULL, &c.moe, B, T, g, g->nthreads, &err) != CCOE_OK ||
        ccoe_model_set_comm(&m, comm, NULL, &err) != CCOE_OK ||
        ccoe_adamw_init(&opt, m.num_params, &err) != CCOE_OK) {
        fprintf(stderr, "[rank %d] bench setup: %s (B per rank %d)\n", r, err.msg, B);
        return 1;
    }
    ccoe_model_init_weights(&m, 1, CCOE_INIT_RANDOM);
    int32_t *tok = malloc(sizeof(int32_t) * (size_t)Bg * T), *tgt = malloc(sizeof(int32_t) * (size_t)Bg * T);
    ccoe_rng rng;
    ccoe_rng_seed(&rng, 3);
    double t_step = 0, t_ex = 0, t_ar = 0, bytes = 0, meta = 0, t_experts = 0, rows_in = 0;
    int measured = 0;
    for (int s = 0; s < steps + 2; s++) {
        for (int i = 0; i < Bg * T; i++) {
            tok[i] = (int32_t)ccoe_rng_below(&rng, V);
            tgt[i] = (int32_t)ccoe_rng_below(&rng, V);
        }
        comm->ops->barrier(comm, &err);
        double t0 = ccoe_now();
        ccoe_model_zero_grad(&m);
        m.train = 1;
        m.step = (uint64_t)s;
        m.token_offset = (int64_t)b0 * T;
        long count = 0;
        ccoe_model_forward(&m, tok + (size_t)b0 * T, tgt + (size_t)b0 * T, NULL, B, T, &count);
        ccoe_model_backward(&m, 1.0f / (float)(Bg * T), 1.0f);
        ccoe_ep_traffic tr;
        ccoe_ep_traffic_last(&m, &tr);
        for (int i = 0; i < m.n_moe && s >= 2; i++) {
            const ccoe_moe_stats *st = &m.moe_stats[i];
            t_experts += st->t_fwd_experts + st->t_bwd_experts;
            rows_in += m.moe_acts[i].rows;
        }
        double ta = ccoe_now();
        if (comm->ops->allreduce_f32(comm, m.grad_block, m.num_params, &err) != CCOE_OK) {
            fprintf(stderr, "[rank %d] %s\n", r, err.msg);
            return 1;
        }
        double tb = ccoe_now();
        ccoe_adamw_step(&opt, &m, &c.train, 1e-3, NULL, NULL);
        double dt = ccoe_now() - t0;
        if (s >= 2) { /* two warm-up steps */
            t_step += dt;
            t_ex += tr.seconds;
            t_ar += tb - ta;
            bytes += (double)tr.bytes_tokens;
            meta += (double)tr.bytes_meta;
            measured++;
        }
    }
    double v[5] = {t_step / measured, t_ex / measured, t_ar / measured, bytes / measured,
                   meta / measured};
    double mx[5];
    memcpy(mx, v, sizeof v);
    comm->ops->allreduce_max_f64(comm, mx, 5, &err);
    if (r == 0) {
        printf("ep bench: %d rank(s), global batch %d x %d tokens, small shape L4 C256, every FFN "
               "topk E=8 K=2 F=512, capacity_factor %g, %d steps\n",
               P, Bg, T, cf, measured);
        printf("| ranks | step ms | MoE exchange ms (share) | grad allreduce ms | token bytes "
               "sent/step/rank | meta bytes/step/rank | tok/s |\n");
        printf("| %d | %.1f | %.1f (%.1f%%) | %.1f | %.0f | %.0f | %.0f |\n", P, 1e3 * mx[0],
               1e3 * v[1], 100.0 * v[1] / v[0], 1e3 * v[2], v[3], v[4],
               (double)Bg * T / mx[0]);
    }
    if (getenv("CCOE_EP_BENCH_VERBOSE"))
        fprintf(stderr, "[rank %d] experts fwd+bwd %.1f ms/step on %.0f received rows/step; "
                        "exchange %.1f ms/step\n",
                r, 1e3 * t_experts / measured, rows_in / measured, 1e3 * t_ex / measured);
    free(tok);
    free(tgt);
    ccoe_adamw_free(&opt);
    ccoe_model_free(&m);
    return 0;
}

int main(int argc, char **argv)
{
    ccoe_comm comm;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_comm_mpi_init(&comm, &argc, &argv, &err) != CCOE_OK) {
        fprintf(stderr, "MPI init: %s\n", err.msg);
        return 1;
    }
    ccoe_gemm g;
    const int threads = env_int("OMP_NUM_THREADS", 1);
    if (ccoe_gemm_init(&g, CCOE_GEMM_AUTO, threads, &err) != CCOE_OK) {
        fprintf(stderr, "[rank %d] gemm: %s\n", comm.rank, err.msg);
        comm.ops->abort(&comm, 1);
    }
    int fails = 0;
    if (getenv("CCOE_EP_BENCH")) {
        fails = bench(&comm, &g);
    } else {
        const struct {
            const char *name;
            int (*fn)(ccoe_comm *, const ccoe_gemm *);
        } suites[] = {{"round trip (identity experts)", tu_ep_round_trips},
                      {"layer equivalence (every gate)", tu_ep_layer_cases},
                      {"model equivalence (every gate)", tu_ep_model_cases},
                      {"incremental decoding", tu_ep_decode_cases},
                      {"data-parallel evaluation", tu_ep_eval_cases}};
        for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
            int64_t f = suites[i].fn(&comm, &g);
            if (comm.ops->allreduce_i64(&comm, &f, 1, &err) != CCOE_OK) {
                fprintf(stderr, "[rank %d] %s\n", comm.rank, err.msg);
                comm.ops->abort(&comm, 1);
            }
            if (comm.rank == 0)
                printf("%-34s %d ranks: %s (%lld failed checks)\n", suites[i].name, comm.size,
                       f ? "FAILED" : "ok", (long long)f);
            fails += f != 0;
        }
    }
    int64_t all = fails;
    comm.ops->allreduce_i64(&comm, &all, 1, &err);
    ccoe_comm_mpi_finalize(&comm);
    return all ? 1 : 0;
}
