/* cmd_export.c - `ccoe export MODEL [--path base|EXPERT|all] -o HF_DIR`. */
#include <stdio.h>
#include <string.h>

#include "hf.h"

int ccoe_cmd_export(int argc, char **argv)
{
    ccoe_hf_export_opts o = {0};
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "-o") == 0 && i + 1 < argc)
            o.out_dir = argv[++i];
        else if (strcmp(argv[i], "--path") == 0 && i + 1 < argc)
            o.path = argv[++i];
        else if (argv[i][0] != '-' && !o.model)
            o.model = argv[i];
        else {
            fprintf(stderr, "ccoe: usage error: unknown or incomplete export argument: %s\n"
                            "usage: ccoe export MODEL [--path base|EXPERT|all] -o HF_DIR\n",
                    argv[i]);
            return 2;
        }
    }
    if (!o.model || !o.out_dir) {
        fprintf(stderr, "ccoe: usage error: export needs MODEL and -o HF_DIR\n"
                        "usage: ccoe export MODEL [--path base|EXPERT|all] -o HF_DIR\n");
        return 2;
    }
    ccoe_error err = {0};
    if (ccoe_hf_export(&o, stdout, &err) != CCOE_OK) {
        fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err.status), err.msg);
        return ccoe_error_exit_code(&err);
    }
    return 0;
}
