/* gate_expert_choice.c - expert-choice routing (Zhou et al. 2022, "Mixture-of-Experts with
 * Expert Choice Routing", arXiv:2202.09368): instead of each token picking its top-k experts,
 * each expert picks its top-cap tokens of the batch.
 *
 * Scores S = softmax(h W_g^T) over the experts of each token (the paper's token-to-expert
 * affinity). Expert e keeps the cap rows of the batch with the largest S[., e] (ties to the
 * lower row), cap = ceil(capacity_factor * N / E) (capped at N), so capacity_factor is the
 * average number of experts per token. The combine weight of a kept (token, expert) pair is
 * S[n, e] itself, not renormalised (the paper's G = TopK(S^T, cap) gating matrix). A token
 * picked by no expert gets output 0 from the layer: only the residual carries it.
 *
 * The layer runs with K = E slots per token (ids: every expert, descending logit, as the
 * softmax gate), weights = S at those experts, and `choose` decides which slots are kept in place of the capacity rule; the
 * dropped slots get dweight = 0, so the backward is the full-softmax one with the selection held
 * fixed: dlogit_i = p_i (dw_i - sum_l p_l dw_l).
 *
 * Causality: a token's experts depend on every other row of the batch, later positions
 * included. With k_causal >= 1 (decoding, ccoe_moe_pass.causal) `choose` falls back to per-token
 * top-k over the same scores, k = the average experts per token. papers/moe.md, "Expert choice".
 */
#include <assert.h>
#include <math.h>

#include "gate.h"

/* Scores, combine weights and their backward over all K = E slots are exactly the softmax
 * gate's (Eq. 2: every expert, descending logit); only `choose` differs. */
static void ec_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    assert(a->K == a->E && a->E <= CCOE_GATE_MAX_EXPERTS);
    ccoe_gate_softmax_ops.forward(ids, weights, kth, a);
}

static void ec_backward(float *dlogits, float *dnoise_logits, const float *dweights,
                        const int32_t *ids, const float *weights, const ccoe_gate_args *a)
{
    ccoe_gate_softmax_ops.backward(dlogits, dnoise_logits, dweights, ids, weights, a);
}

static void ec_ref_weights(double *w, const int32_t *ids, const ccoe_gate_ref_args *a)
{
    assert(a->K == a->E);
    ccoe_gate_softmax_ops.ref_weights(w, ids, a);
}

static void ec_ref_backward(double *dlogits, double *dnoise_logits, const double *dw,
                            const int32_t *ids, const ccoe_gate_ref_args *a)
{
    ccoe_gate_softmax_ops.ref_backward(dlogits, dnoise_logits, dw, ids, a);
}

/* 1 if pick x ranks above pick y: the higher score, ties (and NaN against NaN) to the lower
 * row; a NaN score ranks below every number. */
static int better(ccoe_gate_pick x, ccoe_gate_pick y)
{
    const int xn = isnan(x.s), yn = isnan(y.s);
    if (xn != yn)
        return yn;
    if (!xn && x.s != y.s)
        return x.s > y.s;
    return x.n < y.n;
}

/* Min-heap on `better` (the root is the worst kept pick): restore from position i down. */
static void sift_down(ccoe_gate_pick *h, int64_t len, int64_t i)
{
    for (;;) {
        int64_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < len && better(h[w], h[l]))
            w = l;
        if (r < len && better(h[w], h[r]))
            w = r;
        if (w == i)
            return;
        ccoe_gate_pick t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static void sift_up(ccoe_gate_pick *h, int64_t i)
{
    while (i > 0) {
        int64_t p = (i - 1) / 2;
        if (!better(h[p], h[i]))
            return;
        ccoe_gate_pick t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static void ec_choose(int32_t *keep, const int32_t *ids, const float *scores, int64_t N, int E,
                      int64_t cap, int k_causal, ccoe_gate_pick *work)
{
    if (k_causal >= 1) { /* per-token top-k: row n reads only row n */
        const int k = k_causal < E ? k_causal : E;
#pragma omp parallel for schedule(static)
        for (int64_t n = 0; n < N; n++) {
            /* the row's scores by expert, its k best (ties to the lower expert), marked in
             * slot order: the same choice whatever the slot order */
            int32_t *kp = keep + (size_t)n * E, top[CCOE_GATE_MAX_EXPERTS];
            float byx[CCOE_GATE_MAX_EXPERTS];
            int32_t pick[CCOE_GATE_MAX_EXPERTS];
            for (int j = 0; j < E; j++)
                byx[ids ? ids[(size_t)n * E + j] : j] = scores[(size_t)n * E + j];
            ccoe_gate_select(top, NULL, byx, E, k);
            for (int e = 0; e < E; e++)
                pick[e] = -1;
            for (int j = 0; j < k; j++)
                pick[top[j]] = 0;
            for (int j = 0; j < E; j++)
                kp[j] = pick[ids ? ids[(size_t)n * E + j] : j];
        }
        return;
    }
    if (cap <= 0 || cap >= N) {
        for (int64_t t = 0; t < N * E; t++)
            keep[t] = 0;
        return;
    }
    /* one pass over every slot: expert e's heap (work + e cap) holds its cap best rows so far;
     * then a slot is kept iff its row ranks at or above the worst of its expert's heap */
    int64_t len[CCOE_GATE_MAX_EXPERTS];
    for (int e = 0; e < E; e++)
        len[e] = 0;
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < E; j++) {
            const int e = ids ? ids[(size_t)n * E + j] : j;
            ccoe_gate_pick *h = work + (size_t)e * cap, c = {scores[(size_t)n * E + j], n};
            if (len[e] < cap) {
                h[len[e]] = c;
                sift_up(h, len[e]++);
            } else if (better(c, h[0])) {
                h[0] = c;
                sift_down(h, len[e], 0);
            }
        }
#pragma omp parallel for schedule(static)
    for (int64_t n = 0; n < N; n++)
        for (int j = 0; j < E; j++) {
            const int e = ids ? ids[(size_t)n * E + j] : j;
            const ccoe_gate_pick thr = work[(size_t)e * cap], c = {scores[(size_t)n * E + j], n};
            keep[(size_t)n * E + j] = (c.n == thr.n || better(c, thr)) ? 0 : -1;
        }
}

const ccoe_gate_ops ccoe_gate_expert_choice_ops = {
    .name = "expert_choice",
    .help = "each expert picks its top ceil(capacity_factor N / E) tokens of the batch, "
            "weight = softmax score (Zhou et al. 2022); decoding: per-token top-k",
    .flags = CCOE_GATE_ROUTER | CCOE_GATE_EXPERT_CHOICE,
    .forward = ec_forward,
    .backward = ec_backward,
    .load_forward = NULL,
    .load_backward = NULL,
    .ref_weights = ec_ref_weights,
    .ref_backward = ec_ref_backward,
    .ref_load = NULL,
    .ref_load_backward = NULL,
    .choose = ec_choose,
};
