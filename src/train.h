/* train.h - the training loop of `ccoe train`: data stream -> forward/backward -> clip ->
 * AdamW, with logging (progress bar on a TTY, plain lines otherwise), JSONL metrics, periodic
 * per-domain evaluation and atomic checkpoints; resume continues bit for bit. */
#ifndef CCOE_TRAIN_H
#define CCOE_TRAIN_H

#include "comm.h"
#include "config.h"
#include "status.h"

typedef struct ccoe_train_opts {
    const char *resume; /* checkpoint to continue from, or NULL */
    const char *init_from; /* fresh run starting from this checkpoint's weights (its base and
                            * any experts it has; new experts are initialised per ccoe.init) */
    int force;          /* start over even if out_dir already holds a checkpoint */
    int progress;       /* -1: progress bar if stderr is a TTY; 0: log lines; 1: bar */
    int quiet;          /* no per-step output */
    long stop_at;       /* > 0: checkpoint and return after this step (the schedule still
                         * spans train.steps), e.g. to fit a batch job's time limit */
    double time_limit;  /* > 0: checkpoint and return once this many seconds have passed */
    ccoe_comm *comm;    /* NULL: a single process. Otherwise data parallelism over comm (every
                         * rank passes the same cfg and opts): each rank takes a contiguous
                         * slice of every global micro-batch, gradients of the replicated
                         * parameters are summed by bucketed non-blocking allreduce overlapped
                         * with the backward pass; rank 0 alone prints and writes files */
    int allreduce_overlap; /* data parallelism: 1 = start each gradient bucket's non-blocking
                            * allreduce from backward as soon as it is final (overlap); 0
                            * (default) = blocking allreduce of the buckets after backward,
                            * 10x less time in the allreduce with Open MPI 4.1 on 2 cores
                            * (papers/mpi.md) */
    int ccoe_placement;    /* data parallelism with CCoE experts (no MoE blocks): 1 = each
                            * expert lives on one rank (mpi.placement), its rows travel there
                            * after the base prefix (form ffn: in each covered block's FFN) and
                            * back in backward
                            * (ccoe_model_set_placement; training only, the experts are synced
                            * from their owners before evaluation and checkpoints); 0 (default)
                            * = experts replicated, their gradients summed like the base's */
    const char *const *mpi_sets; /* --resume: the command line's "mpi.KEY=VALUE" assignments
                                  * (n_mpi_sets), applied over the checkpoint's [mpi] section
                                  * (otherwise the checkpoint's placement is kept) */
    int n_mpi_sets;
    const char *train_experts; /* "all" or "NAME,NAME,...": isolated training of several CCoE
                                * experts at once, placed over the ranks by cfg.mpi (list:
                                * mpi.map; otherwise blocks or round robin of the listed ones),
                                * each on its own domains' data with the base frozen (each
                                * equals a run with ccoe.train_expert = NAME), then gathered
                                * into one checkpoint; NULL = off */
    /* Test hook (tests only; src/cmd_testhook.c fills it from CCOE_TEST_FAIL_RANK / _STEP /
     * _MODE in a build with CCOE_TEST_HOOKS): rank test_fail_rank fails at step
     * test_fail_step (1-based) with mode "error" (a local error reported through the per-step
     * agreement), "nan" (a non-finite local loss), "abort" (an
     * error returned without agreement: main aborts the job), "kill" (SIGKILL to itself) or
     * "file" (at start-up: its data manifest is a missing file). NULL mode = off. */
    const char *test_fail_mode;
    int test_fail_rank;
    long test_fail_step;
    /* Test hook (CCOE_TEST_THREADS_SLOW, same build option): under run.threads = auto, the
     * policy sees every step that ran on more than one thread as this many times slower (a
     * busy neighbour on demand); 0 = off. */
    double test_threads_slow;
} ccoe_train_opts;

/* Trains per cfg. Writes out_dir/metrics.jsonl and out_dir/checkpoint.safetensors, prints the
 * final per-domain table to stdout. A SIGINT/SIGTERM stops after the current step with a
 * checkpoint. Non-finite loss or gradient norm stops with CCOE_ERR_NUMERIC, keeping the last
 * good checkpoint. COLLECTIVE on opts->comm when set: failures on one rank are agreed on at
 * start-up and before every step, so every rank returns an error (opts->comm->failed_rank set)
 * instead of waiting; an error returned with failed_rank = -1 means the other ranks may be
 * waiting and the caller must abort the job (main does). The result does not depend on the
 * rank count beyond floating-point summation order. */
ccoe_status ccoe_train_run(const ccoe_config *cfg, const ccoe_train_opts *opts, ccoe_error *err);

#endif
