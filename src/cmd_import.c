/* cmd_import.c - `ccoe import`: a Hugging Face model directory as a ccoe checkpoint (src/hf.c
 * does the work). Rank 0 only. */
#include <stdio.h>

#include "cli.h"
#include "hf.h"

static const ccoe_cli_opt k_import_opts[] = {
    {"-o", CCOE_OPT_PATH, "BASE.safetensors", .help = "the checkpoint to write",
     .flags = CCOE_OPT_REQUIRED},
    {"--tokenizer", CCOE_OPT_PATH, "DIR|byte",
     .help = "the tokenizer (default: the files next to config.json)"},
    {"--data", CCOE_OPT_PATH, "MANIFEST", .def = "builtin",
     .help = "data.manifest of the checkpoint: the domains experts route from"},
    {"--seq-len", CCOE_OPT_INT, "N", 1, 65536,
     .help = "model.seq_len (default: GPT-2's n_positions; RoPE models min(max_position_"
             "embeddings, 2048))"},
    {"--force", CCOE_OPT_FLAG, .help = "replace an existing output"},
};

static int run_import(const ccoe_cli_args *a)
{
    ccoe_hf_import_opts o = {0};
    o.hf_dir = a->pos[0];
    o.out = ccoe_cli_str(a, "-o");
    o.tokenizer = ccoe_cli_str(a, "--tokenizer");
    o.manifest = ccoe_cli_val_of(a, "--data")->count ? ccoe_cli_str(a, "--data") : NULL;
    o.force = ccoe_cli_flag(a, "--force") > 0;
    o.seq_len = ccoe_cli_val_of(a, "--seq-len")->count ? (int)ccoe_cli_int(a, "--seq-len") : 0;
    ccoe_error err = {0};
    if (ccoe_hf_import(&o, stdout, &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_import = {
    .name = "import",
    .args = "HF_DIR",
    .summary = "a Hugging Face GPT-2, LLaMA, Qwen2 or Mistral directory as a ccoe checkpoint",
    .details = "HF_DIR holds config.json and model.safetensors or its shards (F32/F16/BF16); "
               "its tokenizer\nfiles are copied to BASE.tokenizer/, which becomes "
               "data.tokenizer.\n",
    .opts = k_import_opts,
    .n_opts = sizeof k_import_opts / sizeof k_import_opts[0],
    .min_pos = 1,
    .max_pos = 1,
    .pos_error = "import needs HF_DIR and -o BASE.safetensors",
    .run = run_import,
};
