/* form_prefix.c - Eq. 5: every expert follows the first ccoe.prefix_layers base blocks with
 * l_i blocks of its own. */
#include "form.h"

static ccoe_status prefix_validate(const ccoe_config *cfg, ccoe_error *err)
{
    const int L = cfg->model.n_layer, lb = cfg->ccoe.prefix_layers;
    if (lb < 0 || lb > L)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.prefix_layers = %d is out of range: allowed 0..%d (n_layer)",
                              lb, L);
    return CCOE_OK;
}

static int prefix_cap(int L) { return L / 2; }

static int prefix_branch(const ccoe_ccoe_config *c, int L, int layers)
{
    (void)L;
    (void)layers;
    return c->prefix_layers;
}

const ccoe_form_ops ccoe_form_prefix_ops = {
    .name = "prefix",
    .title = "prefix (Eq. 5)",
    .help = "Eq. 5: every expert follows the first prefix_layers base blocks",
    .id = CCOE_FORM_PREFIX,
    .flags = CCOE_FF_PREFIX_LAYERS,
    .file_kind = "blocks",
    .exchange = CCOE_EXCHANGE_BRANCH,
    .validate = prefix_validate,
    .default_cap = prefix_cap,
    .layer_limit = NULL, /* an expert may be deeper than what follows its prefix */
    .branch = prefix_branch,
    .path_name = ccoe_form_blocks_path_name,
    .validate_placement = NULL,
};
