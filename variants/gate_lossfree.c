/* gate_lossfree.c - DeepSeek-V3's gate with auxiliary-loss-free load balancing (Liu et al.
 * 2024, "DeepSeek-V3 Technical Report", Sec. 2.1.2, Eqs. 13-16; Wang et al. 2024, "Auxiliary-
 * Loss-Free Load Balancing Strategy for Mixture-of-Experts").
 *
 * Affinities s_i = sigmoid(logit_i). The K experts kept are the K largest of s_i + b_i, with
 * b (E) the layer's selection bias (router.score_bias, ccoe_gate_args.score_bias); the weights
 * use the affinities alone, normalised over the kept experts:
 *     w_j = s_{a_j} / sum_l s_{a_l}.
 * The bias only decides the selection, so the weights (and the loss) have no gradient with
 * respect to it; it is state that the trainer moves after each optimizer step by
 * b_i += rate * sign(mean_e load_e - load_i) (ccoe_moe_bias_update in src/moe.c). Backward with
 * the selection fixed (S = sum_l s_{a_l}):
 *     dlogit_{a_j} = s_{a_j} (1 - s_{a_j}) (dw_j - sum_l w_l dw_l) / S, other experts 0.
 * With K = 1 the weight is always 1 (CCOE_GATE_K1_CONSTANT). papers/moe.md, "Auxiliary-loss-
 * free balancing".
 */
#include <assert.h>
#include <math.h>

#include "gate.h"

static void lossfree_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    const int E = a->E, K = a->K;
    assert(K >= 1 && K <= E && E <= CCOE_GATE_MAX_EXPERTS);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        const float *l = a->logits + (size_t)n * E;
        int32_t *id = ids + (size_t)n * K;
        float *w = weights + (size_t)n * K;
        float s[CCOE_GATE_MAX_EXPERTS], h[CCOE_GATE_MAX_EXPERTS];
        for (int i = 0; i < E; i++) {
            s[i] = ccoe_gate_sigmoid(l[i]);
            h[i] = a->score_bias ? s[i] + a->score_bias[i] : s[i];
        }
        ccoe_gate_select(id, NULL, h, E, K);
        float sum = 0.0f;
        for (int j = 0; j < K; j++)
            sum += s[id[j]];
        for (int j = 0; j < K; j++)
            w[j] = s[id[j]] / sum;
        if (kth)
            kth[n] = -1;
    }
}

static void lossfree_backward(float *dlogits, float *dnoise_logits, const float *dweights,
                              const int32_t *ids, const float *weights, const ccoe_gate_args *a)
{
    (void)dnoise_logits;
    const int E = a->E, K = a->K;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        const float *l = a->logits + (size_t)n * E;
        const float *w = weights + (size_t)n * K, *dw = dweights + (size_t)n * K;
        const int32_t *id = ids + (size_t)n * K;
        float *dl = dlogits + (size_t)n * E;
        float s[CCOE_GATE_MAX_EXPERTS];
        float sum = 0.0f, dot = 0.0f;
        for (int j = 0; j < K; j++) {
            s[j] = ccoe_gate_sigmoid(l[id[j]]);
            sum += s[j];
            dot += w[j] * dw[j];
        }
        for (int j = 0; j < K; j++)
            dl[id[j]] += s[j] * (1.0f - s[j]) * (dw[j] - dot) / sum;
    }
}

static void lossfree_ref_weights(double *w, const int32_t *ids, const ccoe_gate_ref_args *a)
{
    double sum = 0.0;
    for (int j = 0; j < a->K; j++) {
        w[j] = ccoe_gate_sigmoid_d(a->logits[ids[j]]);
        sum += w[j];
    }
    for (int j = 0; j < a->K; j++)
        w[j] /= sum;
}

static void lossfree_ref_backward(double *dlogits, double *dnoise_logits, const double *dw,
                                  const int32_t *ids, const ccoe_gate_ref_args *a)
{
    (void)dnoise_logits;
    const int K = a->K;
    double s[CCOE_GATE_MAX_EXPERTS], sum = 0.0;
    for (int j = 0; j < K; j++) {
        s[j] = ccoe_gate_sigmoid_d(a->logits[ids[j]]);
        sum += s[j];
    }
    /* w_j = s_j / S: dL/ds_j = (dw_j - sum_l w_l dw_l) / S; ds/dlogit = s (1 - s) */
    double dot = 0.0;
    for (int j = 0; j < K; j++)
        dot += s[j] / sum * dw[j];
    for (int j = 0; j < K; j++)
        dlogits[ids[j]] += s[j] * (1.0 - s[j]) * (dw[j] - dot) / sum;
}

const ccoe_gate_ops ccoe_gate_lossfree_ops = {
    .name = "lossfree",
    .help = "sigmoid affinities, top-k of affinity + per-expert bias, weights normalised over "
            "the kept experts; the bias moves by moe.bias_rate each step (DeepSeek-V3)",
    .flags = CCOE_GATE_ROUTER | CCOE_GATE_SCORE_BIAS | CCOE_GATE_K1_CONSTANT,
    .forward = lossfree_forward,
    .backward = lossfree_backward,
    .load_forward = NULL,
    .load_backward = NULL,
    .ref_weights = lossfree_ref_weights,
    .ref_backward = lossfree_ref_backward,
    .ref_load = NULL,
    .ref_load_backward = NULL,
};
