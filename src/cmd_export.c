/* cmd_export.c - `ccoe export`: a ccoe model as Hugging Face GPT-2 / LLaMA / Qwen2 directories (src/hf.c
 * does the work). Rank 0 only. */
#include <stdio.h>

#include "cli.h"
#include "hf.h"

static const ccoe_cli_opt k_export_opts[] = {
    {"-o", CCOE_OPT_PATH, "HF_DIR", .help = "the directory to write",
     .flags = CCOE_OPT_REQUIRED},
    {"--path", CCOE_OPT_STRING, "base|EXPERT|all", .def = "base",
     .help = "the base, the base with EXPERT in place, or all: each path in HF_DIR/NAME"},
    {"--dtype", CCOE_OPT_STRING, "f32|bf16|f16", .def = "f32", .choices = "f32|bf16|f16",
     .takes = "f32, bf16 or f16", .help = "the weights' dtype (bf16/f16 rounded to nearest even)"},
};

static int run_export(const ccoe_cli_args *a)
{
    ccoe_hf_export_opts o = {0};
    o.model = a->pos[0];
    o.out_dir = ccoe_cli_str(a, "-o");
    o.path = ccoe_cli_val_of(a, "--path")->count ? ccoe_cli_str(a, "--path") : NULL;
    o.dtype = ccoe_cli_str(a, "--dtype");
    ccoe_error err = {0};
    if (ccoe_hf_export(&o, stdout, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_export = {
    .name = "export",
    .args = "MODEL",
    .summary = "a ccoe model as a Hugging Face directory (GPT2LMHeadModel, LlamaForCausalLM or "
               "Qwen2ForCausalLM; F32, BF16 or F16)",
    .opts = k_export_opts,
    .n_opts = sizeof k_export_opts / sizeof k_export_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "export needs MODEL and -o HF_DIR",
    .run = run_export,
};
