/* cmd_bench.c - `ccoe bench`: training throughput and model-FLOP utilisation on reference
 * shapes (bench.c). Rank 0 only. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "cli.h"
#include "gate.h"

/* --threads: auto or 1..1024 */
static int threads_ok(const char *v)
{
    if (strcmp(v, "auto") == 0)
        return 1;
    char *end = NULL;
    long n = strtol(v, &end, 10);
    return end != v && *end == '\0' && n >= 1 && n <= 1024;
}

/* --moe: none or a registered gate (variants/gate_registry.c). */
static void moe_choices(char *buf, size_t cap)
{
    ccoe_gate_list_names(buf, cap, 1);
}

static const ccoe_cli_opt k_bench_opts[] = {
    {"--shape", CCOE_OPT_STRING, "small|tiny-wide|gpt2-124m|qwen2-0.5b-l4|all", .def = "all",
     .help = "the reference shape(s) measured"},
    {"--steps", CCOE_OPT_INT, "N", 1, 100000, .def = "10", .help = "measured steps per shape"},
    {"--threads", CCOE_OPT_STRING, "N|auto", .def = "2", .check = threads_ok,
     .takes = "a thread count 1..1024 or auto",
     .help = "OpenMP threads; auto: measured and switched as in training (run.threads = auto; "
             "its first probe runs in the warm-up)"},
    {"--gemm", CCOE_OPT_STRING, "B", .def = "auto", .help = "the GEMM backend"},
    {"--ffn", CCOE_OPT_STRING, "gelu|swiglu", .def = "gelu", .choices = "gelu|swiglu",
     .takes = "gelu or swiglu", .help = "the FFN of every block"},
    {"--moe", CCOE_OPT_STRING, "none|GATE", .def = "none", .choices_fn = moe_choices,
     .help = "every block an MoE of 8 experts, top-2, with this gate"},
    {"--ccoe", CCOE_OPT_STRING, "none|tail|prefix|ffn", .def = "none",
     .help = "one CCoE expert of this form: full vs isolated expert training"},
    {"--precision", CCOE_OPT_STRING, "fp32|bf16|both", .def = "fp32",
     .choices = "fp32|bf16|both", .takes = "fp32, bf16 or both",
     .help = "run.precision of the measured runs; both: fp32 and bf16 rows and their ratio"},
    {"--profile", CCOE_OPT_FLAG,
     .help = "each shape's GEMM calls by size (time per step, GFLOP/s, share of the step)"},
};

static int run_bench(const ccoe_cli_args *a)
{
    const ccoe_bench_opts o = {.shape = ccoe_cli_str(a, "--shape"),
                               .steps = (int)ccoe_cli_int(a, "--steps"),
                               .threads = strcmp(ccoe_cli_str(a, "--threads"), "auto") == 0
                                              ? 0
                                              : atoi(ccoe_cli_str(a, "--threads")),
                               .gemm = ccoe_cli_str(a, "--gemm"),
                               .ffn = ccoe_cli_str(a, "--ffn"),
                               .moe = ccoe_cli_str(a, "--moe"),
                               .ccoe = ccoe_cli_str(a, "--ccoe"),
                               .profile = ccoe_cli_flag(a, "--profile") > 0,
                               .precision = ccoe_cli_str(a, "--precision")};
    ccoe_error err = {0};
    if (ccoe_bench_run(&o, stdout, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_bench = {
    .name = "bench",
    .args = "",
    .summary = "training throughput and model-FLOP utilisation on reference shapes",
    .opts = k_bench_opts,
    .n_opts = sizeof k_bench_opts / sizeof k_bench_opts[0],
    .min_pos = 0,
    .max_pos = 0,
    .run = run_bench,
};
