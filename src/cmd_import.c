/* cmd_import.c - `ccoe import HF_DIR -o BASE.safetensors [--tokenizer DIR|byte]
 * [--data MANIFEST] [--force]`. */
#include <stdio.h>
#include <string.h>

#include "hf.h"

int ccoe_cmd_import(int argc, char **argv)
{
    ccoe_hf_import_opts o = {0};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
            o.out = argv[++i];
        else if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            o.tokenizer = argv[++i];
        else if (strcmp(argv[i], "--data") == 0 && i + 1 < argc)
            o.manifest = argv[++i];
        else if (strcmp(argv[i], "--force") == 0)
            o.force = 1;
        else if (argv[i][0] != '-' && !o.hf_dir)
            o.hf_dir = argv[i];
        else {
            fprintf(stderr, "ccoe: usage error: unknown or incomplete import argument: %s\n"
                            "usage: ccoe import HF_DIR -o BASE.safetensors [--tokenizer DIR|byte] "
                            "[--data MANIFEST] [--force]\n",
                    argv[i]);
            return 2;
        }
    }
    if (!o.hf_dir || !o.out) {
        fprintf(stderr, "ccoe: usage error: import needs HF_DIR and -o BASE.safetensors\n"
                        "usage: ccoe import HF_DIR -o BASE.safetensors [--tokenizer DIR|byte] "
                        "[--data MANIFEST] [--force]\n");
        return 2;
    }
    ccoe_error err = {0};
    if (ccoe_hf_import(&o, stdout, &err) != CCOE_OK) {
        fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err.status), err.msg);
        return ccoe_error_exit_code(&err);
    }
    return 0;
}
