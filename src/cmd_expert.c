/* cmd_expert.c - `ccoe push` and `ccoe pop`: CCoE experts into and out of a model file
 * (expert_file.c does the work). Rank 0 only. */
#include <stdio.h>

#include "cli.h"
#include "data.h"
#include "expert_file.h"

static const ccoe_cli_opt k_push_opts[] = {
    {"--domain", CCOE_OPT_STRING, "D", .help = "route this domain to the expert",
     .flags = CCOE_OPT_REPEAT},
    {"-o", CCOE_OPT_PATH, "OUT", .help = "write the result here (default: MODEL in place)"},
};

static int run_push(const ccoe_cli_args *a)
{
    int n = 0;
    const char *const *domains = ccoe_cli_all(a, "--domain", &n);
    if (n > CCOE_MAX_DOMAINS)
        return ccoe_cli_usage_error(a, "too many --domain arguments", "");
    const char *model = a->pos[0], *file = a->pos[1];
    const char *out = ccoe_cli_str(a, "-o") ? ccoe_cli_str(a, "-o") : model;
    ccoe_error err = {0};
    if (ccoe_expert_push(model, file, domains, n, out, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    printf("pushed %s into %s -> %s\n", file, model, out);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_push = {
    .name = "push",
    .args = "MODEL EXPERT_FILE",
    .summary = "add a CCoE expert (last position of its CoE layer) or replace an expert's weights",
    .opts = k_push_opts,
    .n_opts = sizeof k_push_opts / sizeof k_push_opts[0],
    .min_pos = 2,
    .max_pos = 2,
    .pos_error = "push needs MODEL and EXPERT_FILE",
    .run = run_push,
};

static const ccoe_cli_opt k_pop_opts[] = {
    {"--expert", CCOE_OPT_STRING, "NAME", .help = "the expert", .flags = CCOE_OPT_REQUIRED},
    {"-o", CCOE_OPT_PATH, "FILE",
     .help = "the expert's copy (with --remove: the model without it; default MODEL)"},
    {"--remove", CCOE_OPT_FLAG, .help = "remove the expert (its domains use the base)"},
};

static int run_pop(const ccoe_cli_args *a)
{
    const char *model = a->pos[0], *name = ccoe_cli_str(a, "--expert");
    const char *out = ccoe_cli_str(a, "-o");
    const int remove = ccoe_cli_flag(a, "--remove") > 0;
    if (!remove && !out)
        return ccoe_cli_usage_error(a, "pop needs -o FILE for the expert (or --remove)", "");
    ccoe_error err = {0};
    ccoe_status s = remove ? ccoe_expert_remove(model, name, out ? out : model, &err)
                           : ccoe_expert_pop(model, name, out, &err);
    if (s != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    printf("%s expert %s of %s -> %s\n", remove ? "removed" : "copied", name, model,
           out ? out : model);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_pop = {
    .name = "pop",
    .args = "MODEL",
    .summary = "deep-copy an expert out of a model (-o FILE), or remove it (--remove [-o OUT])",
    .opts = k_pop_opts,
    .n_opts = sizeof k_pop_opts / sizeof k_pop_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "pop needs MODEL",
    .run = run_pop,
};
