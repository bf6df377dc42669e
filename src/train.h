/* train.h - the training loop of `ccoe train`: data stream -> forward/backward -> clip ->
 * AdamW, with logging (progress bar on a TTY, plain lines otherwise), JSONL metrics, periodic
 * per-domain evaluation and atomic checkpoints; resume continues bit for bit. */
#ifndef CCOE_TRAIN_H
#define CCOE_TRAIN_H

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
} ccoe_train_opts;

/* Trains per cfg. Writes out_dir/metrics.jsonl and out_dir/checkpoint.safetensors, prints the
 * final per-domain table to stdout. A SIGINT/SIGTERM stops after the current step with a
 * checkpoint. Non-finite loss or gradient norm stops with CCOE_ERR_NUMERIC, keeping the last
 * good checkpoint. */
ccoe_status ccoe_train_run(const ccoe_config *cfg, const ccoe_train_opts *opts, ccoe_error *err);

#endif
