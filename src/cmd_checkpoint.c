/* cmd_checkpoint.c - the commands that read or rewrite checkpoint files without training:
 * `ccoe info`, `ccoe compare`, `ccoe reseal` (checkpoint.c does the work). Rank 0 only. */
#include <stdio.h>

#include "checkpoint.h"
#include "cli.h"

static int run_info(const ccoe_cli_args *a)
{
    ccoe_error err = {0};
    if (ccoe_checkpoint_print_info(stdout, a->pos[0], &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_info = {
    .name = "info",
    .args = "CHECKPOINT",
    .summary = "stored config, training state and tensors of a checkpoint",
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "info takes exactly one CHECKPOINT",
    .run = run_info,
};

static const ccoe_cli_opt k_compare_opts[] = {
    {"--params", CCOE_OPT_FLAG,
     .help = "only the parameter tensors both hold (no optimizer state, no metadata)"},
    {"--only-base", CCOE_OPT_FLAG, .help = "as --params, and the experts' tensors skipped too"},
};

static int run_compare(const ccoe_cli_args *a)
{
    const int params = ccoe_cli_flag(a, "--params"), base = ccoe_cli_flag(a, "--only-base");
    if (params + base > 1)
        return ccoe_cli_usage_error(a, "compare takes A B [--params | --only-base]", "");
    ccoe_error err = {0};
    int same = 0;
    const int mode = base ? CCOE_CMP_BASE : params ? CCOE_CMP_PARAMS : CCOE_CMP_ALL;
    if (ccoe_checkpoint_compare_files(a->pos[0], a->pos[1], mode, stdout, &same, &err) !=
        CCOE_OK)
        return ccoe_cli_fail(a, &err);
    return same ? 0 : 1;
}

const ccoe_cli_cmd ccoe_cmd_compare = {
    .name = "compare",
    .args = "A B",
    .summary = "compare two files bit for bit (exit 0 if identical, 1 if not)",
    .details = "By default every tensor (optimizer state included), the tensor sets and the "
               "metadata.\n",
    .opts = k_compare_opts,
    .n_opts = sizeof k_compare_opts / sizeof k_compare_opts[0],
    .min_pos = 2,
    .max_pos = 2,
    .pos_error = "compare takes A B [--params | --only-base]",
    .run = run_compare,
};

static const ccoe_cli_opt k_reseal_opts[] = {
    {"-o", CCOE_OPT_PATH, "OUT", .help = "write here (default: rewrite CHECKPOINT in place)"},
};

static int run_reseal(const ccoe_cli_args *a)
{
    const char *in = a->pos[0], *out = ccoe_cli_str(a, "-o") ? ccoe_cli_str(a, "-o") : in;
    ccoe_error err = {0};
    char note[200] = "";
    if (ccoe_checkpoint_reseal(in, out, note, sizeof note, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    printf("resealed %s -> %s with a whole-file checksum; %s\n", in, out, note);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_reseal = {
    .name = "reseal",
    .args = "CHECKPOINT",
    .summary = "add the whole-file checksum to a checkpoint an older ccoe wrote",
    .details = "The file is checked as a load would (data checksum if any, config, shapes, "
               "finite values)\nand rewritten with the checksum.\n",
    .opts = k_reseal_opts,
    .n_opts = sizeof k_reseal_opts / sizeof k_reseal_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "reseal takes CHECKPOINT [-o OUT]",
    .run = run_reseal,
};
