/* session.h - everything one process needs to run a model on data: the resolved config, the
 * GEMM context, the tokenizer, the data set, the model and batch buffers. Shared by `train`,
 * `eval` and `bench` so that setup exists once. */
#ifndef CCOE_SESSION_H
#define CCOE_SESSION_H

#include "config.h"
#include "data.h"
#include "eval.h"
#include "taskmap.h"
#include "gemm.h"
#include "model.h"
#include "status.h"
#include "tokenizer.h"

typedef struct ccoe_session {
    ccoe_config cfg;  /* resolved: vocab_size and ffn_hidden filled in */
    ccoe_gemm gemm;
    int max_threads;  /* what buffers are sized for: run.threads, or under auto (0) the CPUs of
                       * this process (the trainer then switches gemm's count, threads.h) */
    ccoe_tokenizer tok;
    ccoe_dataset data;
    int have_data;
    ccoe_taskmap taskmap; /* the CCoE task-expert matrix over the data's domains */
    ccoe_model model;
    ccoe_batch batch;
} ccoe_session;

/* Validates a whole config, section by section, each by its owner: ccoe_config_validate (the
 * schema: per-key ranges, the rules of [model], [train] and [data], derived defaults such as
 * ffn_hidden), then ccoe_moe_config_check ([moe], moe.c), ccoe_placement_config_check
 * ([mpi], placement.c) and ccoe_taskmap_config_check ([ccoe], taskmap.c: the task-expert matrix
 * over the domains the routes name; ccoe_session_open checks it again over the data's
 * domains). Every path that accepts a config calls this: file load and --set (main.c), study
 * variants, checkpoints. */
ccoe_status ccoe_session_validate(ccoe_config *cfg, ccoe_error *err);

/* Resolves cfg against the tokenizer (vocab_size 0 -> tokenizer size rounded up to 64; a
 * vocab smaller than the tokenizer's is an error) and validates it. tok may be NULL for runs
 * without text (benchmarks), where any vocab_size >= 1 goes. */
ccoe_status ccoe_config_resolve(ccoe_config *cfg, const ccoe_tokenizer *tok, ccoe_error *err);

/* Sets up GEMM, tokenizer, (data unless with_data == 0), the task-expert matrix (over the
 * data's domains, or without data over the domains ccoe.routes names), the model
 * (with its CCoE experts) for batches of train.batch_size x model.seq_len, and batch buffers.
 * The model's weights are NOT initialised.
 * On failure everything already set up is released. */
ccoe_status ccoe_session_open(ccoe_session *s, const ccoe_config *cfg, int with_data,
                              ccoe_error *err);
void ccoe_session_close(ccoe_session *s);

#endif
