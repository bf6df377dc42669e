/* train_impl.h - internals of the trainer shared by its files: train_ctx (one run's state)
 * and the functions one file calls in another. Not a public interface: only src/train*.c
 * include it. Each function is documented at its definition.
 */
#ifndef CCOE_TRAIN_IMPL_H
#define CCOE_TRAIN_IMPL_H

#include <stdint.h>
#include <stdio.h>

#include "checkpoint.h"
#include "comm.h"
#include "optim.h"
#include "placement.h"
#include "session.h"
#include "threads.h"
#include "train.h"

#define DP_BUCKET_FLOATS ((size_t)1 << 19) /* 2 MiB buckets: several per model to overlap */

/* One bucket of the gradient allreduce: floats [begin, end) of the gradient block. */
typedef struct dp_bucket {
    size_t begin, end;
    size_t ready;       /* floats of it that backward has finished this step */
    ccoe_comm_req req;
} dp_bucket;

/* One run of the trainer: the session it trains, the ranks, the optimizer and the run state,
 * the output files, the gradient buckets and the placement of experts on ranks. */
typedef struct train_ctx {
    ccoe_session *s;
    ccoe_comm *comm;         /* the ranks this loop runs over (a serial one when P = 1) */
    ccoe_comm serial;        /* used when the caller passes none, and per expert */
    int rank, P;
    int b0, b1;              /* this rank's rows of every global micro-batch */
    ccoe_adamw opt;
    ccoe_train_state st;
    FILE *metrics;           /* rank 0: metrics_path, opened by ccoe_fs_open_output */
    char metrics_path[CCOE_STR + 96];
    char ckpt_path[CCOE_STR + 64];
    double flops_per_token;
    double peak_gflops, gemm_gflops;
    double step_flops;       /* model FLOPs of the last step, summed over ranks */
    int expert;              /* isolated expert training: its index, else -1 */
    size_t grad_begin, grad_end; /* the trained float range of the parameter block */
    int bar;
    int quiet;               /* no printing (opts->quiet, or a rank other than 0) */
    int expert_mode;         /* one expert of --train-experts: no checkpoints, no evaluation */
    int placed;              /* CCoE experts placed on owner ranks (--ccoe-placement experts) */
    double aux;              /* mean over micro-batches of the summed MoE aux loss, last step */
    char *json;              /* buffer for ccoe_moe_stats_json (MoE models) */
    size_t json_cap;
    /* data-parallel gradient buckets, in issue order (descending offsets) */
    dp_bucket *buckets;
    int n_buckets, issued;
    /* expert-parallel MoE (the model's comm spreads each MoE layer's experts over the ranks):
     * every expert's float range, its owner; n_ep = 0 otherwise */
    size_t (*ep_span)[2];
    int *ep_owner;
    int n_ep;
    /* the expert -> rank map (src/placement.h) of the MoE layers or the CCoE experts, printed
     * at start and recorded in the metrics; n_place = 0: nothing placed */
    int32_t place_map[CCOE_PLACE_MAX];
    int n_place;
    /* run.threads = auto with more than one CPU: the policy choosing each step's count */
    int thr_auto;
    ccoe_threads_auto thr;
    /* moe.train_router_only: frozen[i] = 1 for every parameter i outside the MoE layers'
     * router tensors (its gradient is zeroed before the norm, AdamW skips it); NULL: off */
    unsigned char *frozen;
    ccoe_status hook_st;     /* first failure inside the grad_ready hook */
    ccoe_error hook_err;
    const ccoe_train_opts *o;
} train_ctx;

/* ---- train_state.c ---- */
ccoe_status ccoe_train_router_only_setup(train_ctx *t, ccoe_error *err);
void ccoe_train_zero_frozen(train_ctx *t);
int ccoe_train_router_filter(const ccoe_param *p, void *ctx);

/* ---- train.c ---- */
int ccoe_train_test_hook(const train_ctx *t, const char *mode, long step);
ccoe_status ccoe_train_loop(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err);

/* ---- train_dp.c ---- */
ccoe_status ccoe_train_ep_setup(train_ctx *t, ccoe_error *err);
ccoe_status ccoe_train_place_setup(train_ctx *t, ccoe_error *err);
int ccoe_train_update_filter(const ccoe_param *p, void *ctx);
ccoe_status ccoe_train_ep_gather_what(train_ctx *t, int moments, ccoe_error *err);
ccoe_status ccoe_train_ep_gather(train_ctx *t, ccoe_error *err);
ccoe_status ccoe_train_grad_norm(train_ctx *t, double *out, ccoe_error *err);
ccoe_status ccoe_train_dp_plan(train_ctx *t, ccoe_error *err);
void ccoe_train_dp_reset(train_ctx *t);
void ccoe_train_dp_ready(void *ctx, size_t begin, size_t end);
ccoe_status ccoe_train_dp_finish(train_ctx *t, ccoe_error *err);
ccoe_status ccoe_train_check_replicas(train_ctx *t, ccoe_error *err);

/* ---- train_state.c ---- */
ccoe_status ccoe_train_setup(train_ctx *t, ccoe_session *s, ccoe_config *cfg,
                             const ccoe_train_opts *o, ccoe_st_file **resume_file,
                             int *have_session, ccoe_error *err);
ccoe_status ccoe_train_save_checkpoint(train_ctx *t, ccoe_error *err);

/* ---- train_metrics.c ---- */
void ccoe_train_format_eta(char *out, size_t cap, double seconds);
ccoe_status ccoe_train_metrics_flush(train_ctx *t, ccoe_error *err);
ccoe_status ccoe_train_metrics_close(train_ctx *t, ccoe_status st, ccoe_error *err);
ccoe_status ccoe_train_metrics_trim(train_ctx *t, long step, ccoe_error *err);
void ccoe_train_write_moe_stats(train_ctx *t);
ccoe_status ccoe_train_run_eval(train_ctx *t, int with_tasks, int print_table, ccoe_error *err);
ccoe_status ccoe_train_final_report(train_ctx *t, const char *metrics_name, ccoe_error *err);
void ccoe_train_print_start(train_ctx *t, const ccoe_train_opts *o);

/* ---- train_experts.c ---- */
uint32_t ccoe_train_expert_domains(const ccoe_taskmap *g, int e);
ccoe_status ccoe_train_run_experts(train_ctx *t, const ccoe_train_opts *o, ccoe_error *err);
#endif
