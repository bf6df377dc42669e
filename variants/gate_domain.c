/* gate_domain.c - rule-based gating (CCoE Section 4.2, Eqs. 6-7): each token goes to exactly
 * one expert, chosen by its sequence's domain through the table domain -> expert index.
 *
 * Weight 1, no router parameters, no auxiliary losses, no backward. A domain that should run
 * the plain base FFN maps to the expert that holds the base FFN's weights (the caller includes
 * the base FFN as one of the E experts). Domain ids are checked against the table at setup
 * (ccoe_moe_check_domains); here an out-of-range id is an internal error. Always dropless
 * (CCOE_GATE_DROPLESS): the rule decides where a token goes, a capacity would only skip it.
 */
#include <assert.h>

#include "gate.h"

static void domain_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    assert(a->K == 1 && a->domains && a->domain_expert && a->T >= 1);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        int32_t d = a->domains[n / a->T];
        assert(d >= 0 && d < a->n_domains);
        int32_t e = a->domain_expert[d];
        assert(e >= 0 && e < a->E);
        ids[n] = e;
        weights[n] = 1.0f;
        if (kth)
            kth[n] = -1;
    }
}

const ccoe_gate_ops ccoe_gate_domain_ops = {
    .name = "domain",
    .help = "rule-based: domain -> expert table, weight 1, no router (CCoE Eqs. 6-7)",
    .flags = CCOE_GATE_DOMAIN | CCOE_GATE_ONE_EXPERT | CCOE_GATE_DROPLESS,
    .forward = domain_forward,
    .backward = NULL,
    .load_forward = NULL,
    .load_backward = NULL,
    .ref_weights = NULL,
    .ref_backward = NULL,
    .ref_load = NULL,
    .ref_load_backward = NULL,
};
