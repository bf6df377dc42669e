/* moe_ref.c - double-precision reference of the MoE layer, forward and backward.
 *
 * Plain per-token loops over each token's K slots, with the ccoe_ref_* kernels and the gates'
 * ref_* members, written for clarity only. The routing (expert choices, capacity decisions,
 * noise) is an input, so the layer is a smooth function of inputs and parameters: finite
 * differences check this backward, and this forward/backward checks the fast float layer.
 * The aux losses are recomputed here from their definitions (papers/moe.md), independently of
 * moe.c. Not used on the training path. Scratch comes from the caller.
 */
#include <assert.h>
#include <math.h>
#include <string.h>

#include "kernels_ref.h"
#include "moe.h"

#define ABSENT ((size_t)-1)
#define CV_EPS 1e-10

/* Scratch layout (doubles). */
typedef struct ref_bufs {
    double *imp, *load, *frac, *pmean, *dimp, *dload, *csw; /* (E) */
    double *logits, *nl, *noise, *p, *P, *dl, *dnl;          /* (E) */
    double *w, *dw;                                          /* (K) */
    double *fch, *dfch;                                      /* (F2) */
    double *act, *dact;                                      /* (F) */
    double *y, *dyv;                                         /* (C) */
} ref_bufs;

static size_t ref_layout(const ccoe_moe *m, double *base, ref_bufs *b)
{
    size_t off = 0;
#define CARVE(field, n)                          \
    do {                                         \
        b->field = base ? base + off : NULL;     \
        off += (size_t)(n);                      \
    } while (0)
    CARVE(imp, m->E);
    CARVE(load, m->E);
    CARVE(frac, m->E);
    CARVE(pmean, m->E);
    CARVE(dimp, m->E);
    CARVE(dload, m->E);
    CARVE(csw, m->E);
    CARVE(logits, m->E);
    CARVE(nl, m->E);
    CARVE(noise, m->E);
    CARVE(p, m->E);
    CARVE(P, m->E);
    CARVE(dl, m->E);
    CARVE(dnl, m->E);
    CARVE(w, m->K);
    CARVE(dw, m->K);
    CARVE(fch, m->F2);
    CARVE(dfch, m->F2);
    CARVE(act, m->F);
    CARVE(dact, m->F);
    CARVE(y, m->C);
    CARVE(dyv, m->C);
#undef CARVE
    return off;
}

size_t ccoe_moe_ref_scratch_doubles(const ccoe_moe *m)
{
    ref_bufs b;
    return ref_layout(m, NULL, &b);
}

/* Expert e's tensor at off: routed experts e >= 0, shared expert s as e = -1 - s. */
static size_t ebase(const ccoe_moe *m, int e)
{
    return e >= 0 ? m->off_experts + (size_t)e * m->expert_stride
                  : m->off_shared + (size_t)(-1 - e) * m->expert_stride;
}

static const double *eparam(const ccoe_moe *m, const double *params, int e, size_t off)
{
    return off == ABSENT ? NULL : params + ebase(m, e) + off;
}

static double *egrad(const ccoe_moe *m, double *grads, int e, size_t off)
{
    return off == ABSENT ? NULL : grads + ebase(m, e) + off;
}

static int has_router(const ccoe_moe *m) { return m->off_router != ABSENT; }
static int has_load(const ccoe_moe *m) { return m->off_noise != ABSENT && m->K < m->E; }

/* Router logits of token n and the gate's arguments; b->w = its gate weights. */
static void token_route(const ccoe_moe *m, const double *params, const double *h,
                        const ccoe_moe_routing *r, int n, ref_bufs *b, ccoe_gate_ref_args *ga)
{
    const int E = m->E, C = m->C, K = m->K;
    memset(ga, 0, sizeof *ga);
    ga->E = E;
    ga->K = K;
    ga->renormalize = m->cfg.renormalize;
    ga->noise_eps = m->cfg.noise_eps;
    if (has_router(m)) {
        ccoe_ref_linear_forward(b->logits, h, params + m->off_router, NULL, 1, C, E);
        ga->logits = b->logits;
    }
    if (m->off_noise != ABSENT) {
        ccoe_ref_linear_forward(b->nl, h, params + m->off_noise, NULL, 1, C, E);
        for (int i = 0; i < E; i++)
            b->noise[i] = r->noise ? r->noise[(size_t)n * E + i] : 0.0;
        ga->noise_logits = b->nl;
        ga->noise = b->noise;
    }
    const int32_t *ids = r->ids + (size_t)n * K;
    if (m->gate->ref_weights)
        m->gate->ref_weights(b->w, ids, ga);
    else
        for (int j = 0; j < K; j++)
            b->w[j] = 1.0;
}

/* p (E) = softmax(x); returns logsumexp(x). */
static double ref_softmax(double *p, const double *x, int E)
{
    double mx = x[0], s = 0.0;
    for (int i = 1; i < E; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < E; i++)
        s += exp(x[i] - mx);
    for (int i = 0; i < E; i++)
        p[i] = exp(x[i] - mx) / s;
    return mx + log(s);
}

static int slot_kept(const ccoe_moe_routing *r, size_t at) { return !r->slot || r->slot[at] >= 0; }

/* y (C) = expert e applied to h (C); keeps fch (F2) and act (F). */
static void expert_forward(const ccoe_moe *m, const double *params, int e, const double *h,
                           ref_bufs *b)
{
    ccoe_ref_linear_forward(b->fch, h, eparam(m, params, e, m->off_fc_w),
                            eparam(m, params, e, m->off_fc_b), 1, m->C, m->F2);
    if (m->cfg.expert == CCOE_MOE_GELU)
        ccoe_ref_gelu_forward(b->act, b->fch, (size_t)m->F);
    else
        ccoe_ref_swiglu_forward(b->act, b->fch, 1, m->F);
    ccoe_ref_linear_forward(b->y, b->act, eparam(m, params, e, m->off_proj_w),
                            eparam(m, params, e, m->off_proj_b), 1, m->F, m->C);
}

static double cv2(const double *x, int E)
{
    double mean = 0.0, v = 0.0;
    for (int i = 0; i < E; i++)
        mean += x[i] / E;
    for (int i = 0; i < E; i++)
        v += (x[i] - mean) * (x[i] - mean) / E;
    return v / (mean * mean + CV_EPS);
}

/* d (E) = scale * dCV^2/dx, from CV^2 = v / (mean^2 + eps):
 * dv/dx_i = 2 (x_i - mean) / E, dmean/dx_i = 1 / E. */
static void cv2_grad(double *d, const double *x, int E, double scale)
{
    double mean = 0.0, v = 0.0;
    for (int i = 0; i < E; i++)
        mean += x[i] / E;
    for (int i = 0; i < E; i++)
        v += (x[i] - mean) * (x[i] - mean) / E;
    double D = mean * mean + CV_EPS;
    for (int i = 0; i < E; i++) {
        double dv = 2.0 * (x[i] - mean) / E, dD = 2.0 * mean / E;
        d[i] = scale * (dv / D - v * dD / (D * D));
    }
}

/* The E-sized sums over tokens: Importance, smooth Load, f, P-bar; returns sum of lse^2. With
 * out non-NULL also runs the experts and writes the layer output. */
static double ref_pass(const ccoe_moe *m, double *out, const double *inp, const double *params,
                       const ccoe_moe_routing *r, ref_bufs *b, int N)
{
    const int E = m->E, K = m->K, C = m->C;
    for (int i = 0; i < E; i++)
        b->imp[i] = b->load[i] = b->frac[i] = b->pmean[i] = 0.0;
    double z = 0.0;
    for (int n = 0; n < N; n++) {
        const double *h = inp + (size_t)n * C;
        const int32_t *ids = r->ids + (size_t)n * K;
        ccoe_gate_ref_args ga;
        token_route(m, params, h, r, n, b, &ga);
        if (out) {
            double *o = out + (size_t)n * C;
            for (int c = 0; c < C; c++)
                o[c] = 0.0;
            for (int j = 0; j < K; j++) {
                if (!slot_kept(r, (size_t)n * K + j))
                    continue;
                expert_forward(m, params, ids[j], h, b);
                for (int c = 0; c < C; c++)
                    o[c] += b->w[j] * b->y[c];
            }
            for (int sh = 0; sh < m->cfg.n_shared; sh++) { /* shared experts, weight 1 */
                expert_forward(m, params, -1 - sh, h, b);
                for (int c = 0; c < C; c++)
                    o[c] += b->y[c];
            }
        }
        for (int j = 0; j < K; j++) {
            b->imp[ids[j]] += b->w[j];
            b->frac[ids[j]] += 1.0 / ((double)N * K);
        }
        if (has_router(m)) {
            double lse = ref_softmax(b->p, b->logits, E);
            for (int i = 0; i < E; i++)
                b->pmean[i] += b->p[i] / N;
            z += lse * lse;
        }
        if (has_load(m)) {
            m->gate->ref_load(b->P, ids, r->kth[n], &ga);
            for (int i = 0; i < E; i++)
                b->load[i] += b->P[i];
        }
    }
    return z;
}

/* One expert (e as ebase) on token h with weight w and output gradient d: dh (C) += and the
 * expert's gradients += of w <d, Expert_e(h)>; returns <d, Expert_e(h)> (the weight's
 * gradient). */
static double expert_backward(const ccoe_moe *m, double *dh, double *dparams,
                              const double *params, int e, double w, const double *h,
                              const double *d, ref_bufs *b)
{
    const int C = m->C, F = m->F, F2 = m->F2;
    expert_forward(m, params, e, h, b);
    double dw = 0.0;
    for (int c = 0; c < C; c++) {
        dw += d[c] * b->y[c];
        b->dyv[c] = w * d[c];
    }
    for (int f = 0; f < F; f++)
        b->dact[f] = 0.0;
    ccoe_ref_linear_backward(b->dact, egrad(m, dparams, e, m->off_proj_w),
                             egrad(m, dparams, e, m->off_proj_b), b->dyv, b->act,
                             eparam(m, params, e, m->off_proj_w), 1, F, C);
    for (int f = 0; f < F2; f++)
        b->dfch[f] = 0.0;
    if (m->cfg.expert == CCOE_MOE_GELU)
        ccoe_ref_gelu_backward(b->dfch, b->fch, b->dact, (size_t)F);
    else
        ccoe_ref_swiglu_backward(b->dfch, b->fch, b->dact, 1, F);
    ccoe_ref_linear_backward(dh, egrad(m, dparams, e, m->off_fc_w),
                             egrad(m, dparams, e, m->off_fc_b), b->dfch, h,
                             eparam(m, params, e, m->off_fc_w), 1, C, F2);
    return dw;
}

/* DeepSeek-V3's sequence-wise balance from its definition: for each sequence q of r->T rows
 * (the last possibly shorter), f_i = E / (K T_q) * #{(t, j): ids_tj = i}, P_i = (1 / T_q)
 * sum_t sigmoid(l_ti) / sum_k sigmoid(l_tk); value = mean over sequences of sum_i f_i P_i.
 * With dparams non-NULL instead: adds scale * d(value)/d(params) and to dinp (the router's
 * backward of the logits' gradient), f held (it counts the fixed selection). */
static double ref_seq_balance(const ccoe_moe *m, double *dinp, double *dparams,
                              const double *inp, const double *params,
                              const ccoe_moe_routing *r, double scale, ref_bufs *b, int N)
{
    const int E = m->E, K = m->K, C = m->C, T = r->T > 0 ? r->T : N;
    const int nq = (N + T - 1) / T;
    double v = 0.0;
    for (int q = 0; q < nq; q++) {
        const int r0 = q * T, r1 = r0 + T < N ? r0 + T : N, Tq = r1 - r0;
        for (int i = 0; i < E; i++)
            b->csw[i] = 0.0; /* f of this sequence */
        for (int n = r0; n < r1; n++)
            for (int j = 0; j < K; j++)
                b->csw[r->ids[(size_t)n * K + j]] += (double)E / ((double)K * Tq);
        for (int n = r0; n < r1; n++) {
            const double *h = inp + (size_t)n * C;
            ccoe_ref_linear_forward(b->logits, h, params + m->off_router, NULL, 1, C, E);
            double S = 0.0;
            for (int i = 0; i < E; i++) {
                b->p[i] = 1.0 / (1.0 + exp(-b->logits[i]));
                S += b->p[i];
            }
            for (int i = 0; i < E; i++)
                v += b->csw[i] * b->p[i] / S / Tq / nq;
            if (!dparams)
                continue;
            /* d/dl_k of sum_i c_i s_i / S, c_i = scale f_i / (T_q nq) */
            double dot = 0.0;
            for (int i = 0; i < E; i++)
                dot += b->csw[i] * b->p[i] / S;
            for (int k = 0; k < E; k++)
                b->dl[k] = scale / ((double)Tq * nq) * b->p[k] * (1.0 - b->p[k]) *
                           (b->csw[k] - dot) / S;
            ccoe_ref_linear_backward(dinp + (size_t)n * C, dparams + m->off_router, NULL, b->dl,
                                     h, params + m->off_router, 1, C, E);
        }
    }
    return v;
}

double ccoe_moe_ref_forward(const ccoe_moe *m, double *out, ccoe_moe_aux *aux, const double *inp,
                            const double *params, const ccoe_moe_routing *r, double *scratch,
                            int N)
{
    ref_bufs b;
    ref_layout(m, scratch, &b);
    double z = ref_pass(m, out, inp, params, r, &b, N);
    ccoe_moe_aux a;
    memset(&a, 0, sizeof a);
    if (has_router(m)) {
        double sw = 0.0;
        for (int i = 0; i < m->E; i++)
            sw += b.frac[i] * b.pmean[i];
        a.importance = m->cfg.w_importance * cv2(b.imp, m->E);
        a.switch_ = m->cfg.w_switch * m->E * sw;
        a.z = m->cfg.w_z * z / N;
        if (has_load(m))
            a.load = m->cfg.w_load * cv2(b.load, m->E);
    }
    a.total = a.importance + a.load + a.switch_ + a.z;
    if (m->cfg.w_seq != 0.0) {
        a.seq = m->cfg.w_seq * ref_seq_balance(m, NULL, NULL, inp, params, r, 0.0, &b, N);
        a.total += a.seq;
    }
    if (aux)
        *aux = a;
    return a.total;
}

void ccoe_moe_ref_backward(const ccoe_moe *m, double *dinp, double *dparams, const double *dout,
                           const double *inp, const double *params, const ccoe_moe_routing *r,
                           double aux_scale, double *scratch, int N)
{
    const int E = m->E, K = m->K, C = m->C;
    ref_bufs b;
    ref_layout(m, scratch, &b);
    ref_pass(m, NULL, inp, params, r, &b, N);
    /* coefficients of the aux gradients (they depend on sums over all tokens) */
    cv2_grad(b.dimp, b.imp, E, aux_scale * m->cfg.w_importance);
    if (has_load(m))
        cv2_grad(b.dload, b.load, E, aux_scale * m->cfg.w_load);
    for (int i = 0; i < E; i++) /* switch: d/dP-bar_i = w E f_i, P-bar_i = mean_n p_ni */
        b.csw[i] = aux_scale * m->cfg.w_switch * E * b.frac[i] / N;
    const double cz = aux_scale * m->cfg.w_z * 2.0 / N; /* z: d/dlse_n = w 2 lse_n / N */

    for (int n = 0; n < N; n++) {
        const double *h = inp + (size_t)n * C;
        const double *d = dout + (size_t)n * C;
        double *dh = dinp + (size_t)n * C;
        const int32_t *ids = r->ids + (size_t)n * K;
        ccoe_gate_ref_args ga;
        token_route(m, params, h, r, n, &b, &ga);
        for (int j = 0; j < K; j++) {
            b.dw[j] = 0.0;
            if (!slot_kept(r, (size_t)n * K + j))
                continue;
            b.dw[j] = expert_backward(m, dh, dparams, params, ids[j], b.w[j], h, d, &b);
        }
        for (int sh = 0; sh < m->cfg.n_shared; sh++)
            expert_backward(m, dh, dparams, params, -1 - sh, 1.0, h, d, &b);
        if (!has_router(m))
            continue;
        for (int j = 0; j < K; j++) /* importance: Imp_i = sum of the gate values of i */
            b.dw[j] += b.dimp[ids[j]];
        for (int i = 0; i < E; i++)
            b.dl[i] = b.dnl[i] = 0.0;
        m->gate->ref_backward(b.dl, b.dnl, b.dw, ids, &ga);
        double lse = ref_softmax(b.p, b.logits, E);
        /* softmax backward of dp_i = csw_i + cz lse (the z-loss: dlse/dlogit = p) */
        double dot = 0.0;
        for (int i = 0; i < E; i++)
            dot += b.p[i] * b.csw[i];
        for (int i = 0; i < E; i++)
            b.dl[i] += b.p[i] * (b.csw[i] - dot) + cz * lse * b.p[i];
        if (has_load(m))
            m->gate->ref_load_backward(b.dl, b.dnl, b.dload, ids, r->kth[n], &ga);
        ccoe_ref_linear_backward(dh, dparams + m->off_router, NULL, b.dl, h,
                                 params + m->off_router, 1, C, E);
        if (m->off_noise != ABSENT)
            ccoe_ref_linear_backward(dh, dparams + m->off_noise, NULL, b.dnl, h,
                                     params + m->off_noise, 1, C, E);
    }
    if (m->cfg.w_seq != 0.0) /* last: it reuses the per-token buffers and csw */
        ref_seq_balance(m, dinp, dparams, inp, params, r, aux_scale * m->cfg.w_seq, &b, N);
}

void ccoe_moe_ref_expert_choice(int32_t *keep, const double *S, int64_t N, int E, int64_t cap,
                                int k_causal)
{
    for (int64_t n = 0; n < N; n++)
        for (int e = 0; e < E; e++) {
            const double s = S[n * E + e];
            int64_t rank = 0;
            if (k_causal >= 1) {
                for (int f = 0; f < E; f++)
                    rank += S[n * E + f] > s || (S[n * E + f] == s && f < e);
                keep[n * E + e] = rank < k_causal ? 0 : -1;
            } else {
                for (int64_t o = 0; o < N; o++)
                    rank += S[o * E + e] > s || (S[o * E + e] == s && o < n);
                keep[n * E + e] = (cap <= 0 || rank < cap) ? 0 : -1;
            }
        }
}
