/* form_ffn.c - Eqs. 6-7: expert i is the FFNs of the last l_i base blocks; attention and norms
 * stay shared (FFN-level, rule-gated). */
#include "form.h"
#include "gate.h"

#include <stdio.h>
#include <string.h>

static ccoe_status ffn_validate(const ccoe_config *cfg, ccoe_error *err)
{
    if (!ccoe_gate_is_none(cfg->moe.gate))
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "ccoe.form = ffn gives the last l_i blocks rule-gated FFN experts "
                              "and cannot be combined with [moe] (moe.gate = %s): set moe.gate = "
                              "none, or use moe.gate = domain without ccoe.form for the learned-"
                              "layout variant",
                              cfg->moe.gate);
    return CCOE_OK;
}

/* FFN experts may cover every block */
static int ffn_cap(int L) { return L; }

static int ffn_limit(int L) { return L; }

static int ffn_branch(const ccoe_ccoe_config *c, int L, int layers)
{
    (void)c;
    return L - layers;
}

static void ffn_path_name(char *buf, size_t cap, const char *name, int branch, int layers, int L)
{
    (void)layers;
    snprintf(buf, cap, "base[0:%d] + %.32s FFN[%d:%d]", L, name, branch, L);
}

static ccoe_status ffn_validate_placement(int own_head, ccoe_error *err)
{
    if (own_head)
        return ccoe_error_set(err, CCOE_ERR_CONFIG,
                              "CCoE expert placement of FFN experts (ccoe.form = ffn) needs the "
                              "shared head: set ccoe.own_head = false or run without placement");
    return CCOE_OK;
}

const ccoe_form_ops ccoe_form_ffn_ops = {
    .name = "ffn",
    .title = "ffn (Eqs. 6-7)",
    .help = "Eqs. 6-7: expert i is the FFNs of the last l_i base blocks",
    .id = CCOE_FORM_FFN,
    .flags = CCOE_FF_EXPERT_FFN,
    .file_kind = "ffn",
    .exchange = CCOE_EXCHANGE_FFN,
    .validate = ffn_validate,
    .default_cap = ffn_cap,
    .layer_limit = ffn_limit,
    .branch = ffn_branch,
    .path_name = ffn_path_name,
    .validate_placement = ffn_validate_placement,
};
