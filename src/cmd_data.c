/* cmd_data.c - `ccoe data write-builtin` (the embedded data set as files) and
 * `ccoe help-config` (every config key). Rank 0 only. */
#include <stdio.h>

#include "cli.h"
#include "config.h"
#include "data.h"

static int run_write_builtin(const ccoe_cli_args *a)
{
    ccoe_error err = {0};
    if (ccoe_data_write_builtin(a->pos[0], &err) != CCOE_OK)
        return ccoe_cli_fail(a, &err);
    printf("wrote the builtin data set and %s/manifest.ini\n", a->pos[0]);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_data_write_builtin = {
    .name = "data write-builtin",
    .args = "DIR",
    .summary = "write the embedded default data set as files plus a manifest",
    .min_pos = 1,
    .max_pos = 1,
    .run = run_write_builtin,
};

static int run_help_config(const ccoe_cli_args *a)
{
    ccoe_config_print_help(stdout);
    return 0;
}

const ccoe_cli_cmd ccoe_cmd_help_config = {
    .name = "help-config",
    .args = "",
    .summary = "every config key with its allowed values and default",
    .min_pos = 0,
    .max_pos = 0,
    .run = run_help_config,
};
