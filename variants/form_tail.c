/* form_tail.c - Eq. 4: expert i replaces the last l_i base blocks with blocks of its own (and,
 * with ccoe.own_head, its own final norm and head). */
#include "form.h"

static int tail_cap(int L) { return L / 2; }

static int tail_limit(int L) { return L; }

static int tail_branch(const ccoe_ccoe_config *c, int L, int layers)
{
    (void)c;
    return L - layers;
}

const ccoe_form_ops ccoe_form_tail_ops = {
    .name = "tail",
    .title = "tail (Eq. 4)",
    .help = "Eq. 4: expert i replaces the last l_i base blocks",
    .id = CCOE_FORM_TAIL,
    .flags = 0,
    .file_kind = "blocks",
    .exchange = CCOE_EXCHANGE_BRANCH,
    .validate = NULL,
    .default_cap = tail_cap,
    .layer_limit = tail_limit,
    .branch = tail_branch,
    .path_name = ccoe_form_blocks_path_name,
    .validate_placement = NULL,
};
