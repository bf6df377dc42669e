/* cmd_train.c - `ccoe train` and `ccoe train-expert`: the command lines of the trainer
 * (train.c) and of isolated CCoE expert training (expert_file.c). Both are collective under MPI. */
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "data.h"
#include "expert_file.h"
#include "session.h"
#include "train.h"

#define MAX_MPI_SETS 64 /* --set mpi.* assignments a resumed run applies over the checkpoint */

static const ccoe_cli_opt k_train_opts[] = {
    {"--set", CCOE_OPT_STRING, "section.key=value", .help = "override a config key",
     .flags = CCOE_OPT_REPEAT},
    {"--resume", CCOE_OPT_PATH, "CKPT", .help = "continue the run of this checkpoint"},
    {"--init-from", CCOE_OPT_PATH, "CKPT",
     .help = "start from another run's weights (e.g. a base model for CCoE expert training)"},
    {"--force", CCOE_OPT_FLAG, .help = "start over even if the output holds a checkpoint"},
    {"--stop-at", CCOE_OPT_INT, "STEP", 1, 1 << 30, .takes = "a step number >= 1",
     .help = "checkpoint and exit after this step (resume later with --resume)"},
    {"--time-limit", CCOE_OPT_INT, "SECONDS", 1, 1 << 30, .takes = "whole seconds >= 1",
     .help = "checkpoint and exit once this much time has passed"},
    {"--progress", CCOE_OPT_FLAG, .help = "a progress bar (default: on a terminal)"},
    {"--no-progress", CCOE_OPT_FLAG, .help = "plain log lines (the later of the two wins)"},
    {"--quiet", CCOE_OPT_FLAG, .help = "no per-step output"},
    {"--train-experts", CCOE_OPT_STRING, "all|NAME,...",
     .help = "train those CCoE experts in isolation, in parallel (placed over the MPI ranks)"},
    {"--allreduce", CCOE_OPT_STRING, "overlap|blocking", .def = "blocking",
     .choices = "overlap|blocking", .takes = "overlap or blocking",
     .help = "MPI: gradient sum during or after backward"},
    {"--ccoe-placement", CCOE_OPT_STRING, "experts|replicated", .def = "replicated",
     .choices = "experts|replicated", .takes = "experts or replicated",
     .help = "MPI: CCoE experts on their owner ranks (rows sent there after the base prefix, "
             "or per block for form ffn) or replicated on every rank"},
};

/* ccoe train CONFIG [options]; collective under MPI. */
static int run_train(const ccoe_cli_args *a)
{
    int n_sets = 0;
    const char *const *sets = ccoe_cli_all(a, "--set", &n_sets);
    const char *mpi_sets[MAX_MPI_SETS]; /* applied again over a resumed checkpoint's [mpi] */
    int n_mpi_sets = 0;
    for (int i = 0; i < n_sets; i++) {
        if (strncmp(sets[i], "mpi.", 4) != 0)
            continue;
        if (n_mpi_sets == MAX_MPI_SETS)
            return ccoe_cli_usage_error(a, "too many --set mpi.* assignments at", sets[i]);
        mpi_sets[n_mpi_sets++] = sets[i];
    }
    const ccoe_cli_val *prog = ccoe_cli_val_of(a, "--progress");
    const ccoe_cli_val *noprog = ccoe_cli_val_of(a, "--no-progress");
    ccoe_train_opts o = {
        .resume = ccoe_cli_str(a, "--resume"),
        .init_from = ccoe_cli_str(a, "--init-from"),
        .force = ccoe_cli_flag(a, "--force") > 0,
        .progress = prog->last > noprog->last ? 1 : noprog->last >= 0 ? 0 : -1,
        .quiet = ccoe_cli_flag(a, "--quiet") > 0,
        .stop_at = (long)ccoe_cli_int(a, "--stop-at"),
        .time_limit = (double)ccoe_cli_int(a, "--time-limit"),
        .comm = a->comm,
        .allreduce_overlap = strcmp(ccoe_cli_str(a, "--allreduce"), "overlap") == 0,
        .ccoe_placement = strcmp(ccoe_cli_str(a, "--ccoe-placement"), "experts") == 0,
        .mpi_sets = mpi_sets,
        .n_mpi_sets = n_mpi_sets,
        .train_experts = ccoe_cli_str(a, "--train-experts"),
    };
    if (o.resume && o.init_from)
        return ccoe_cli_usage_error(a, "--resume and --init-from exclude each other", "");
    ccoe_cli_test_hooks_train(&o);
    /* config errors may differ between ranks (a file missing on one node): agreed on below */
    ccoe_error err = {0};
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    ccoe_status st = ccoe_config_load_file(&cfg, a->pos[0], &err);
    for (int i = 0; st == CCOE_OK && i < n_sets; i++)
        st = ccoe_config_set(&cfg, sets[i], &err);
    if (st == CCOE_OK)
        st = ccoe_session_validate(&cfg, &err);
    if (ccoe_comm_agree(a->comm, st, &err) != CCOE_OK) /* collective */
        return ccoe_cli_fail(a, &err);
    if (ccoe_train_run(&cfg, &o, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_train = {
    .name = "train",
    .args = "CONFIG",
    .summary = "train the model described by CONFIG (an INI file in configs/)",
    .details = "--stop-at and --time-limit checkpoint and exit early (resume later with "
               "--resume); --init-from\nstarts from another run's weights. Which rank owns "
               "which expert (MoE or CCoE): --set\nmpi.placement=contiguous|round_robin|"
               "balanced|list and mpi.map=R0,R1,... (on --resume the\ncheckpoint's unless "
               "set again).\n",
    .opts = k_train_opts,
    .n_opts = sizeof k_train_opts / sizeof k_train_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "train needs a CONFIG file",
    .collective = 1,
    .run = run_train,
};

static const ccoe_cli_opt k_train_expert_opts[] = {
    {"--expert", CCOE_OPT_STRING, "NAME", .help = "the expert to train (new or existing)",
     .flags = CCOE_OPT_REQUIRED},
    {"--domain", CCOE_OPT_STRING, "D", .help = "a domain of a new expert (its training data)",
     .flags = CCOE_OPT_REPEAT},
    {"--layers", CCOE_OPT_INT, "N", 1, 256, .takes = "a layer count 1..256",
     .help = "layers of a new expert"},
    {"--form", CCOE_OPT_STRING, "tail|prefix|ffn", .help = "the CCoE form of a new expert"},
    {"--set", CCOE_OPT_STRING, "section.key=value", .help = "override a config key",
     .flags = CCOE_OPT_REPEAT},
    {"-o", CCOE_OPT_PATH, "OUT_DIR", .help = "the run's output directory"},
    {"--push", CCOE_OPT_PATH, "OUT_MODEL", .help = "write MODEL + the trained expert here"},
    {"--force", CCOE_OPT_FLAG, .help = "start over even if OUT_DIR holds a checkpoint"},
    {"--quiet", CCOE_OPT_FLAG, .help = "no per-step output"},
    {"--no-progress", CCOE_OPT_FLAG, .help = "plain log lines instead of a progress bar"},
};

/* ccoe train-expert MODEL --expert NAME ...; collective under MPI. */
static int run_train_expert(const ccoe_cli_args *a)
{
    int n_domains = 0, n_sets = 0;
    const char *const *domains = ccoe_cli_all(a, "--domain", &n_domains);
    const char *const *sets = ccoe_cli_all(a, "--set", &n_sets);
    if (n_domains > CCOE_MAX_DOMAINS)
        return ccoe_cli_usage_error(a, "too many --domain arguments", "");
    ccoe_expert_train_opts o = {
        .model = a->pos[0],
        .name = ccoe_cli_str(a, "--expert"),
        .domains = domains,
        .n_domains = n_domains,
        .layers = (int)ccoe_cli_int(a, "--layers"),
        .form = ccoe_cli_str(a, "--form"),
        .sets = sets,
        .n_sets = n_sets,
        .out_dir = ccoe_cli_str(a, "-o"),
        .push_to = ccoe_cli_str(a, "--push"),
        .force = ccoe_cli_flag(a, "--force") > 0,
        .quiet = ccoe_cli_flag(a, "--quiet") > 0,
        .progress = ccoe_cli_flag(a, "--no-progress") ? 0 : -1,
        .comm = a->comm,
    };
    ccoe_error err = {0};
    return ccoe_expert_train(&o, &err) == CCOE_OK ? 0 : ccoe_cli_fail(a, &err);
}

const ccoe_cli_cmd ccoe_cmd_train_expert = {
    .name = "train-expert",
    .args = "MODEL",
    .summary = "train one CCoE expert with everything else frozen, on its domains' data only",
    .details = "A new expert (needs --domain; starts as a copy of the base it replaces) or an "
               "existing one\n(continual training); --push writes MODEL + the trained expert.\n",
    .opts = k_train_expert_opts,
    .n_opts = sizeof k_train_expert_opts / sizeof k_train_expert_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "train-expert needs a MODEL checkpoint",
    .collective = 1,
    .run = run_train_expert,
};
