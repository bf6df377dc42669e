/* gate_topk.c - softmax top-k gating without noise.
 *
 * The K largest router logits are kept. renormalize = 1: weights = softmax over the kept logits
 * (they sum to 1); renormalize = 0: weights = the full softmax probabilities of the kept experts
 * (they sum to less than 1). Backward with the selection fixed:
 *   renormalised: dlogit_{a_j} = w_j (dw_j - sum_l w_l dw_l), other experts 0;
 *   full softmax: dlogit_i = p_i (D_i - sum_l w_l dw_l), D = dw scattered to the kept experts.
 * Not here: noise (gate_noisy_topk.c).
 */
#include <assert.h>
#include <math.h>

#include "gate.h"

static void topk_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    const int E = a->E, K = a->K;
    assert(K >= 1 && K <= E && E <= CCOE_GATE_MAX_EXPERTS);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        const float *l = a->logits + (size_t)n * E;
        int32_t *id = ids + (size_t)n * K;
        float *w = weights + (size_t)n * K;
        ccoe_gate_select(id, NULL, l, E, K);
        if (a->renormalize) {
            float top = l[id[0]], s = 0.0f;
            for (int j = 0; j < K; j++) {
                w[j] = expf(l[id[j]] - top);
                s += w[j];
            }
            for (int j = 0; j < K; j++)
                w[j] /= s;
        } else {
            float p[CCOE_GATE_MAX_EXPERTS];
            ccoe_gate_softmax(p, l, E);
            for (int j = 0; j < K; j++)
                w[j] = p[id[j]];
        }
        if (kth)
            kth[n] = -1;
    }
}

static void topk_backward(float *dlogits, float *dnoise_logits, const float *dweights,
                          const int32_t *ids, const float *weights, const ccoe_gate_args *a)
{
    (void)dnoise_logits;
    const int E = a->E, K = a->K;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        const float *w = weights + (size_t)n * K, *dw = dweights + (size_t)n * K;
        const int32_t *id = ids + (size_t)n * K;
        float *dl = dlogits + (size_t)n * E;
        float s = 0.0f;
        for (int j = 0; j < K; j++)
            s += w[j] * dw[j];
        if (a->renormalize) {
            for (int j = 0; j < K; j++)
                dl[id[j]] += w[j] * (dw[j] - s);
        } else {
            float p[CCOE_GATE_MAX_EXPERTS];
            ccoe_gate_softmax(p, a->logits + (size_t)n * E, E);
            for (int i = 0; i < E; i++)
                dl[i] -= p[i] * s;
            for (int j = 0; j < K; j++)
                dl[id[j]] += p[id[j]] * dw[j];
        }
    }
}

static void topk_ref_weights(double *w, const int32_t *ids, const ccoe_gate_ref_args *a)
{
    const double *l = a->logits;
    const int E = a->E, K = a->K;
    double mx = l[ids[0]], s = 0.0;
    if (a->renormalize) {
        for (int j = 0; j < K; j++)
            s += exp(l[ids[j]] - mx);
    } else {
        for (int i = 0; i < E; i++)
            mx = l[i] > mx ? l[i] : mx;
        for (int i = 0; i < E; i++)
            s += exp(l[i] - mx);
    }
    for (int j = 0; j < K; j++)
        w[j] = exp(l[ids[j]] - mx) / s;
}

static void topk_ref_backward(double *dlogits, double *dnoise_logits, const double *dw,
                              const int32_t *ids, const ccoe_gate_ref_args *a)
{
    (void)dnoise_logits;
    const int E = a->E, K = a->K;
    double w[CCOE_GATE_MAX_EXPERTS];
    topk_ref_weights(w, ids, a);
    double s = 0.0;
    for (int j = 0; j < K; j++)
        s += w[j] * dw[j];
    if (a->renormalize) {
        for (int j = 0; j < K; j++)
            dlogits[ids[j]] += w[j] * (dw[j] - s);
        return;
    }
    /* full softmax p: w_j = p_{a_j} */
    const double *l = a->logits;
    double mx = l[0], z = 0.0;
    for (int i = 1; i < E; i++)
        mx = l[i] > mx ? l[i] : mx;
    for (int i = 0; i < E; i++)
        z += exp(l[i] - mx);
    for (int i = 0; i < E; i++)
        dlogits[i] -= exp(l[i] - mx) / z * s;
    for (int j = 0; j < K; j++)
        dlogits[ids[j]] += w[j] * dw[j];
}

const ccoe_gate_ops ccoe_gate_topk_ops = {
    .name = "topk",
    .help = "softmax top-k without noise (renormalize = true: kept weights sum to 1)",
    .flags = CCOE_GATE_ROUTER | CCOE_GATE_RENORM_OPT | CCOE_GATE_K1_CONSTANT,
    .forward = topk_forward,
    .backward = topk_backward,
    .load_forward = NULL,
    .load_backward = NULL,
    .ref_weights = topk_ref_weights,
    .ref_backward = topk_ref_backward,
    .ref_load = NULL,
    .ref_load_backward = NULL,
};
