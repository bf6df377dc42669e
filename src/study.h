/* study.h - `ccoe study`: train a set of model variants on the same data under the same
 * training budget (tokens or FLOPs) and write one comparison table.
 *
 * A study file (configs/study-*.ini; format in the header of configs/study-default.ini and in
 * `ccoe help`) names a base config, a budget, an output directory and the variants, each a list
 * of `section.key = value` overrides applied with the config module's own --set machinery. Each
 * variant is trained in-process by ccoe_train_run into OUT_DIR/<variant>/; the study then reads
 * back metrics.jsonl and the final evaluation, measures parameters and FLOPs from the built
 * model, collects per-expert load statistics of MoE variants on the validation split, and
 * writes OUT_DIR/study.md, OUT_DIR/study.csv and the plot data OUT_DIR/plot/ (*.dat, meta.gp) that
 * scripts/plot_study.sh turns into PNGs. It is not a scheduler: variants run one after another
 * in this process.
 */
#ifndef CCOE_STUDY_H
#define CCOE_STUDY_H

#include <stdio.h>

#include "status.h"

typedef struct ccoe_study_opts {
    const char *const *sets; /* "section.key=value" applied to every variant after the base
                              * ("study.key=value" overrides a [study] key) */
    int n_sets;
    int force;    /* retrain variants whose directory holds a different or unfinished run */
    int verbose;  /* pass each variant's training output through (else one line per variant) */
    int progress; /* with verbose: -1 auto, 0 log lines, 1 progress bar */
    struct ccoe_comm *comm; /* NULL or one rank: this process trains every variant. More ranks
                             * (mpirun -np P ccoe study): COLLECTIVE, every rank calls
                             * ccoe_study_run with the same file and options; each variant
                             * trains on all ranks (ccoe_train_run with this comm: data
                             * parallel, MoE experts spread over the ranks), rank 0 alone
                             * prints, reads the results and writes the tables */
} ccoe_study_opts;

/* Runs the study described by the file at path and prints its Markdown table to out (rank 0).
 * A variant whose directory already holds a finished run of exactly its config is reused, not
 * retrained. Bad study files are CCOE_ERR_CONFIG naming the line and key. */
ccoe_status ccoe_study_run(const char *path, const ccoe_study_opts *o, FILE *out,
                           ccoe_error *err);

/* Checks a study file without training or reading data: the [study] keys, the budget, the base
 * config (read relative to the study file), every variant's overrides and the run list, with
 * ccoe_study_run's messages (o: its --set overrides; NULL = none). A variant's one-expert-per-
 * domain sugar is not expanded (the domains come from the data), and budgets are not turned into
 * steps. Writes nothing. */
ccoe_status ccoe_study_check(const char *path, const ccoe_study_opts *o, ccoe_error *err);

#endif
