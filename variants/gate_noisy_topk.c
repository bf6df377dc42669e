/* gate_noisy_topk.c - noisy top-k gating (Eq. 3, Shazeer et al. 2017) and its smooth load
 * estimator.
 *
 *   sigma_i = softplus((x W_noise)_i) + noise_eps      (noise_eps = 0 is Eq. 3 exactly)
 *   H_i     = (x W_g)_i + StdNormal_i * sigma_i
 *   G       = softmax(KeepTopK(H, K))                   (kept weights sum to 1)
 *   P(x, i) = Phi(((x W_g)_i - kth_excluding(H, K, i)) / sigma_i)
 * kth_excluding(H, K, i) is the K-th largest of H without H_i: the (K+1)-th largest of H when i
 * is kept, the K-th largest otherwise. The normals come from the caller (drawn once per forward
 * and stored, zeros when evaluating), so backward and finite differences reuse them.
 * Backward (selection fixed): dH_{a_j} = w_j (dw_j - sum_l w_l dw_l); dlogit += dH;
 * dnoise_logit += dH * noise * sigmoid(noise_logit). The load backward also reaches the experts
 * that hold the thresholds. Derivations: papers/moe.md.
 */
#include <assert.h>
#include <math.h>

#include "gate.h"

#define INV_SQRT2 0.70710678118654752440
#define INV_SQRT2PI 0.39894228040143267794

static inline float noisy_score(const ccoe_gate_args *a, size_t at)
{
    float sigma = ccoe_gate_softplus(a->noise_logits[at]) + a->noise_eps;
    return a->logits[at] + a->noise[at] * sigma;
}

static void noisy_forward(int32_t *ids, float *weights, int32_t *kth, const ccoe_gate_args *a)
{
    const int E = a->E, K = a->K;
    assert(K >= 1 && K <= E && E <= CCOE_GATE_MAX_EXPERTS && kth);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        float H[CCOE_GATE_MAX_EXPERTS];
        for (int i = 0; i < E; i++)
            H[i] = noisy_score(a, (size_t)n * E + i);
        int32_t *id = ids + (size_t)n * K;
        float *w = weights + (size_t)n * K;
        ccoe_gate_select(id, &kth[n], H, E, K);
        float top = H[id[0]], s = 0.0f;
        for (int j = 0; j < K; j++) {
            w[j] = expf(H[id[j]] - top);
            s += w[j];
        }
        for (int j = 0; j < K; j++)
            w[j] /= s;
    }
}

static void noisy_backward(float *dlogits, float *dnoise_logits, const float *dweights,
                           const int32_t *ids, const float *weights, const ccoe_gate_args *a)
{
    const int E = a->E, K = a->K;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        const float *w = weights + (size_t)n * K, *dw = dweights + (size_t)n * K;
        const int32_t *id = ids + (size_t)n * K;
        float s = 0.0f;
        for (int j = 0; j < K; j++)
            s += w[j] * dw[j];
        for (int j = 0; j < K; j++) {
            size_t at = (size_t)n * E + id[j];
            float dH = w[j] * (dw[j] - s);
            dlogits[at] += dH;
            dnoise_logits[at] += dH * a->noise[at] * ccoe_gate_sigmoid(a->noise_logits[at]);
        }
    }
}

static void noisy_load_forward(float *P, const int32_t *ids, const int32_t *kth,
                               const ccoe_gate_args *a)
{
    const int E = a->E, K = a->K;
    assert(K < E);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        unsigned char kept[CCOE_GATE_MAX_EXPERTS] = {0};
        const int32_t *id = ids + (size_t)n * K;
        for (int j = 0; j < K; j++)
            kept[id[j]] = 1;
        size_t row = (size_t)n * E;
        float thr_in = noisy_score(a, row + kth[n]), thr_out = noisy_score(a, row + id[K - 1]);
        for (int i = 0; i < E; i++) {
            float sigma = ccoe_gate_softplus(a->noise_logits[row + i]) + a->noise_eps;
            float z = (a->logits[row + i] - (kept[i] ? thr_in : thr_out)) / sigma;
            P[row + i] = 0.5f * erfcf(-z * (float)INV_SQRT2);
        }
    }
}

static void noisy_load_backward(float *dlogits, float *dnoise_logits, const double *dload,
                                const int32_t *ids, const int32_t *kth, const ccoe_gate_args *a)
{
    const int E = a->E, K = a->K;
    assert(K < E);
#pragma omp parallel for schedule(static)
    for (int n = 0; n < a->N; n++) {
        unsigned char kept[CCOE_GATE_MAX_EXPERTS] = {0};
        const int32_t *id = ids + (size_t)n * K;
        for (int j = 0; j < K; j++)
            kept[id[j]] = 1;
        size_t row = (size_t)n * E;
        int32_t t_in = kth[n], t_out = id[K - 1];
        float thr_in = noisy_score(a, row + t_in), thr_out = noisy_score(a, row + t_out);
        float dthr_in = 0.0f, dthr_out = 0.0f; /* d/d(threshold H) */
        for (int i = 0; i < E; i++) {
            float nl = a->noise_logits[row + i];
            float sigma = ccoe_gate_softplus(nl) + a->noise_eps;
            float z = (a->logits[row + i] - (kept[i] ? thr_in : thr_out)) / sigma;
            float c = (float)dload[i] * (float)INV_SQRT2PI * expf(-0.5f * z * z) / sigma;
            dlogits[row + i] += c;
            dnoise_logits[row + i] -= c * z * ccoe_gate_sigmoid(nl);
            if (kept[i])
                dthr_in -= c;
            else
                dthr_out -= c;
        }
        /* H_t = logit_t + noise_t * sigma_t */
        int32_t t[2] = {t_in, t_out};
        float d[2] = {dthr_in, dthr_out};
        for (int q = 0; q < 2; q++) {
            size_t at = row + t[q];
            dlogits[at] += d[q];
            dnoise_logits[at] += d[q] * a->noise[at] * ccoe_gate_sigmoid(a->noise_logits[at]);
        }
    }
}

/* ---- references (one token, double) ---- */

static double ref_sigma(const ccoe_gate_ref_args *a, int i)
{
    return ccoe_gate_softplus_d(a->noise_logits[i]) + a->noise_eps;
}

static double ref_score(const ccoe_gate_ref_args *a, int i)
{
    return a->logits[i] + a->noise[i] * ref_sigma(a, i);
}

static void noisy_ref_weights(double *w, const int32_t *ids, const ccoe_gate_ref_args *a)
{
    double top = ref_score(a, ids[0]), s = 0.0;
    for (int j = 0; j < a->K; j++) {
        w[j] = exp(ref_score(a, ids[j]) - top);
        s += w[j];
    }
    for (int j = 0; j < a->K; j++)
        w[j] /= s;
}

/* dlogits, dnoise_logits += dH_i * dH_i/d(.) */
static void ref_score_backward(double *dlogits, double *dnoise_logits, double dH, int i,
                               const ccoe_gate_ref_args *a)
{
    dlogits[i] += dH;
    dnoise_logits[i] += dH * a->noise[i] * ccoe_gate_sigmoid_d(a->noise_logits[i]);
}

static void noisy_ref_backward(double *dlogits, double *dnoise_logits, const double *dw,
                               const int32_t *ids, const ccoe_gate_ref_args *a)
{
    double w[CCOE_GATE_MAX_EXPERTS];
    noisy_ref_weights(w, ids, a);
    double s = 0.0;
    for (int j = 0; j < a->K; j++)
        s += w[j] * dw[j];
    for (int j = 0; j < a->K; j++)
        ref_score_backward(dlogits, dnoise_logits, w[j] * (dw[j] - s), ids[j], a);
}

static int ref_kept(const int32_t *ids, int K, int i)
{
    for (int j = 0; j < K; j++)
        if (ids[j] == i)
            return 1;
    return 0;
}

static void noisy_ref_load(double *P, const int32_t *ids, int32_t kth,
                           const ccoe_gate_ref_args *a)
{
    for (int i = 0; i < a->E; i++) {
        int t = ref_kept(ids, a->K, i) ? kth : ids[a->K - 1];
        double z = (a->logits[i] - ref_score(a, t)) / ref_sigma(a, i);
        P[i] = 0.5 * erfc(-z * INV_SQRT2);
    }
}

static void noisy_ref_load_backward(double *dlogits, double *dnoise_logits, const double *dP,
                                    const int32_t *ids, int32_t kth,
                                    const ccoe_gate_ref_args *a)
{
    for (int i = 0; i < a->E; i++) {
        int t = ref_kept(ids, a->K, i) ? kth : ids[a->K - 1];
        double sigma = ref_sigma(a, i);
        double z = (a->logits[i] - ref_score(a, t)) / sigma;
        double dz = dP[i] * INV_SQRT2PI * exp(-0.5 * z * z); /* dP/dz */
        /* z = (logit_i - H_t) / sigma_i */
        dlogits[i] += dz / sigma;
        dnoise_logits[i] += -dz * z / sigma * ccoe_gate_sigmoid_d(a->noise_logits[i]);
        ref_score_backward(dlogits, dnoise_logits, -dz / sigma, t, a);
    }
}

const ccoe_gate_ops ccoe_gate_noisy_topk_ops = {
    .name = "noisy_topk",
    .help = "noisy top-k gating (Eq. 3, Shazeer et al. 2017), noise only in training",
    .flags = CCOE_GATE_ROUTER | CCOE_GATE_NOISE | CCOE_GATE_K1_CONSTANT,
    .forward = noisy_forward,
    .backward = noisy_backward,
    .load_forward = noisy_load_forward,
    .load_backward = noisy_load_backward,
    .ref_weights = noisy_ref_weights,
    .ref_backward = noisy_ref_backward,
    .ref_load = noisy_ref_load,
    .ref_load_backward = noisy_ref_load_backward,
};
