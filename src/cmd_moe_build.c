/* cmd_moe_build.c - `ccoe upcycle` (sparse upcycling of a dense model) and `ccoe merge` (the
 * Branch-Train-MiX merge of a CCoE model's experts): moe_build.c does the work. Rank 0 only. */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "gate.h"
#include "moe_build.h"

/* The gates of the registry (variants/gates.def), without none: --gate's allowed values. */
static void gate_choices(char *buf, size_t cap)
{
    ccoe_gate_list_names(buf, cap, 0);
}

#define BUILD_OPTS(what)                                                                       \
    {"-o", CCOE_OPT_PATH, "MOE_CKPT", .help = "write the MoE checkpoint here",                 \
     .flags = CCOE_OPT_REQUIRED},                                                              \
    {"--top-k", CCOE_OPT_INT, "K", 1, 1024, .takes = "a whole number 1..1024 (<= E)",          \
     .help = "experts per token (default: 2, or E for softmax, 1 for one-expert gates)"},      \
    {"--gate", CCOE_OPT_STRING, "G", .def = "topk", .choices_fn = gate_choices,                \
     .help = "moe.gate of the output (a gate of the registry)"},                               \
    {"--router", CCOE_OPT_STRING, "random|zero", .def = "random", .choices = "random|zero",    \
     .takes = "random or zero",                                                                \
     .help = "the router's start: the fresh MoE init N(0, model.init_std), or zero"},          \
    {"--seed", CCOE_OPT_UINT, "S", 0, 18446744073709551615.0, .def = "0",                              \
     .help = "seed of the router init (default 0: the " what "'s train.seed)"},                \
    {"--set", CCOE_OPT_STRING, "moe.key=value", .flags = CCOE_OPT_REPEAT,                      \
     .help = "another [moe] key of the output (capacity_factor, w_switch, ...)"}

static const ccoe_cli_opt k_upcycle_opts[] = {
    {"--experts", CCOE_OPT_INT, "E", 1, 512, .takes = "a whole number 1..512",
     .help = "experts per MoE layer: copies of the dense FFN", .flags = CCOE_OPT_REQUIRED},
    {"--every", CCOE_OPT_INT, "N", 1, 256, .def = "1", .takes = "a whole number 1..256",
     .help = "block l becomes MoE when (l + 1) % N == 0 (moe.every)"},
    BUILD_OPTS("dense model"),
};

static const ccoe_cli_opt k_merge_opts[] = {
    {"--with-base", CCOE_OPT_FLAG, .help = "the base FFN as one more expert (the last)"},
    BUILD_OPTS("model"),
};

static void fill_opts(const ccoe_cli_args *a, ccoe_build_opts *o)
{
    memset(o, 0, sizeof *o);
    o->gate = ccoe_cli_str(a, "--gate");
    o->top_k = (int)ccoe_cli_int(a, "--top-k");
    o->router = strcmp(ccoe_cli_str(a, "--router"), "zero") == 0 ? CCOE_ROUTER_ZERO
                                                                   : CCOE_ROUTER_RANDOM;
    o->seed = ccoe_cli_uint(a, "--seed");
    o->sets = ccoe_cli_all(a, "--set", &o->n_sets);
}

static void print_report(const char *verb, const char *in, const char *out,
                         const ccoe_build_report *r)
{
    printf("%s %s -> %s: %d MoE layers of %d experts, top-%d; %d tensors copied, %d averaged, "
           "%d router tensors initialised\n",
           verb, in, out, r->n_moe_layers, r->n_experts, r->top_k, r->copied, r->averaged,
           r->fresh);
    if (!r->sums_to_one)
        printf("note: moe.renormalize = false: the combine weights do not sum to one, so the "
               "output's loss differs from the input's from the start\n");
    if (r->note[0])
        printf("note: %s\n", r->note);
    printf("continue training with: ccoe train CONFIG --init-from %s %s\n", out, r->sets);
}

static int run_upcycle(const ccoe_cli_args *a)
{
    ccoe_build_opts o;
    fill_opts(a, &o);
    o.n_experts = (int)ccoe_cli_int(a, "--experts");
    o.every = (int)ccoe_cli_int(a, "--every");
    ccoe_build_report r;
    ccoe_error err = {0};
    if (ccoe_moe_upcycle(a->pos[0], ccoe_cli_str(a, "-o"), &o, &r, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    print_report("upcycled", a->pos[0], ccoe_cli_str(a, "-o"), &r);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_upcycle = {
    .name = "upcycle",
    .args = "DENSE_CKPT",
    .summary = "sparse upcycling: a dense model's FFNs copied into the experts of an MoE",
    .details = "Each MoE block's E experts start as copies of that block's FFN, every other "
               "tensor is copied;\nthe router is new (--router). With combine weights summing "
               "to one the output's loss\nequals the input's. papers/upcycle-merge.md.\n",
    .opts = k_upcycle_opts,
    .n_opts = sizeof k_upcycle_opts / sizeof k_upcycle_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "upcycle takes DENSE_CKPT --experts E -o MOE_CKPT",
    .run = run_upcycle,
};

static int run_merge(const ccoe_cli_args *a)
{
    ccoe_build_opts o;
    fill_opts(a, &o);
    o.with_base = ccoe_cli_flag(a, "--with-base") > 0;
    ccoe_build_report r;
    ccoe_error err = {0};
    if (ccoe_moe_merge(a->pos[0], ccoe_cli_str(a, "-o"), &o, &r, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    print_report("merged", a->pos[0], ccoe_cli_str(a, "-o"), &r);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_merge = {
    .name = "merge",
    .args = "MODEL",
    .summary = "Branch-Train-MiX: a CCoE model's experts as the experts of a learned-router MoE",
    .details = "Every base block gets an MoE layer; expert k is the FFN CCoE path k runs there "
               "(the expert's\nown, else the base's); the other tensors are the mean over the "
               "paths. Train the router\nalone with --set moe.train_router_only=true. "
               "papers/upcycle-merge.md.\n",
    .opts = k_merge_opts,
    .n_opts = sizeof k_merge_opts / sizeof k_merge_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "merge takes MODEL -o MOE_CKPT",
    .run = run_merge,
};
