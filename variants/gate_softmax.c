/* gate_softmax.c - dense softmax gating (Eq. 2): G(x) = softmax(x W_g), every expert weighted.
 *
 * K = E: every token reaches every expert (ids sorted by probability, so a capacity limit drops
 * a token's least likely experts first). Backward: dlogits = p * (dw - <p, dw>).
 * Not here: top-k selection (gate_topk.c), noise (gate_noisy_topk.c).
 */
#include <assert.h>
#include <math.h>

#include "gate.h"

static void softmax_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    const int E = a->E;
    assert(a->K == E && E <= CCOE_GATE_MAX_EXPERTS);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        float p[CCOE_GATE_MAX_EXPERTS];
        const float *l = a->logits + (size_t)n * E;
        ccoe_gate_softmax(p, l, E);
        int32_t *id = ids + (size_t)n * E;
        ccoe_gate_select(id, NULL, l, E, E);
        for (int j = 0; j < E; j++)
            weights[(size_t)n * E + j] = p[id[j]];
        if (kth)
            kth[n] = -1;
    }
}

static void softmax_backward(float *dlogits, float *dnoise_logits, const float *dweights,
                             const int32_t *ids, const float *weights, const ccoe_gate_args *a)
{
    (void)dnoise_logits;
    const int E = a->E;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        const float *w = weights + (size_t)n * E, *dw = dweights + (size_t)n * E;
        const int32_t *id = ids + (size_t)n * E;
        float *dl = dlogits + (size_t)n * E;
        float s = 0.0f;
        for (int j = 0; j < E; j++)
            s += w[j] * dw[j];
        for (int j = 0; j < E; j++)
            dl[id[j]] += w[j] * (dw[j] - s);
    }
}

static void softmax_ref_weights(double *w, const int32_t *ids, const ccoe_gate_ref_args *a)
{
    const double *l = a->logits;
    double mx = l[0], s = 0.0;
    for (int i = 1; i < a->E; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < a->E; i++)
        s += exp(l[i] - mx);
    for (int j = 0; j < a->K; j++)
        w[j] = exp(l[ids[j]] - mx) / s;
}

static void softmax_ref_backward(double *dlogits, double *dnoise_logits, const double *dw,
                                 const int32_t *ids, const ccoe_gate_ref_args *a)
{
    (void)dnoise_logits;
    double w[CCOE_GATE_MAX_EXPERTS];
    softmax_ref_weights(w, ids, a);
    double s = 0.0;
    for (int j = 0; j < a->K; j++)
        s += w[j] * dw[j];
    for (int j = 0; j < a->K; j++)
        dlogits[ids[j]] += w[j] * (dw[j] - s);
}

const ccoe_gate_ops ccoe_gate_softmax_ops = {
    .name = "softmax",
    .help = "dense softmax over all E experts (Eq. 2; top_k must equal n_experts)",
    .flags = CCOE_GATE_ROUTER | CCOE_GATE_ALL_EXPERTS,
    .forward = softmax_forward,
    .backward = softmax_backward,
    .load_forward = NULL,
    .load_backward = NULL,
    .ref_weights = softmax_ref_weights,
    .ref_backward = softmax_ref_backward,
    .ref_load = NULL,
    .ref_load_backward = NULL,
};
