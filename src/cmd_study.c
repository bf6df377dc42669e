/* cmd_study.c - `ccoe study`: every variant of a study file trained on the same data and budget
 * (study.c). Collective under MPI: each variant trains on every rank. */
#include <stdio.h>

#include "cli.h"
#include "study.h"

static const ccoe_cli_opt k_study_opts[] = {
    {"--set", CCOE_OPT_STRING, "section.key=value",
     .help = "study.KEY=V overrides a [study] key, other keys apply to every variant",
     .flags = CCOE_OPT_REPEAT},
    {"--force", CCOE_OPT_FLAG, .help = "retrain variants whose finished runs would be reused"},
    {"--verbose", CCOE_OPT_FLAG, .help = "each variant's training output (else one line each)"},
};

static int run_study(const ccoe_cli_args *a)
{
    ccoe_study_opts o = {.progress = -1, .comm = a->comm};
    o.sets = ccoe_cli_all(a, "--set", &o.n_sets);
    o.force = ccoe_cli_flag(a, "--force") > 0;
    o.verbose = ccoe_cli_flag(a, "--verbose") > 0;
    ccoe_error err = {0};
    return ccoe_study_run(a->pos[0], &o, stdout, &err) == CCOE_OK ? 0 : ccoe_cli_fail(a, &err);
}

const ccoe_cli_cmd ccoe_cmd_study = {
    .name = "study",
    .args = "STUDY_FILE",
    .summary = "train every variant of a study on the same data and budget; tables and plots",
    .details = "A study file (configs/study-*.ini) has [study] base, budget = tokens:N | "
               "flops:N, out_dir,\nvariants, and [variant.NAME] section.key = value overrides. "
               "Writes OUT_DIR/study.md,\nstudy.csv and plot data (scripts/plot_study.sh "
               "OUT_DIR draws the PNGs); finished runs of the\nsame config are reused "
               "(--force retrains).\n[study] init_from = CKPT starts every variant from "
               "a checkpoint (an imported base: its config too).\n",
    .opts = k_study_opts,
    .n_opts = sizeof k_study_opts / sizeof k_study_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "study needs a STUDY_FILE (e.g. configs/study-default.ini)",
    .collective = 1,
    .run = run_study,
};
