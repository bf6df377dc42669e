/* kernels_ref.c - double-precision reference kernels (the oracle for kernels.c).
 *
 * Written for clarity only: plain loops, no threads, no scratch, no tricks. Same argument order
 * and the same contract as the float kernels (forward overwrites; backward accumulates, except
 * cross-entropy backward, which overwrites). Not used on the training path. The derivations are
 * the textbook ones; the finite-difference tests in tests/test_kernels.c check every backward.
 */
#include "kernels_ref.h"

#include <math.h>

#define REF_EPS 1e-5
#define REF_GELU_K0 0.7978845608028654 /* sqrt(2/pi) */
#define REF_GELU_K1 0.044715

void ccoe_ref_embed_forward(double *out, const int32_t *tokens, const double *wte,
                            const double *wpe, int B, int T, int C)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            const double *we = wte + (size_t)tokens[b * T + t] * C;
            const double *wp = wpe + (size_t)t * C;
            double *o = out + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++)
                o[c] = we[c] + wp[c];
        }
}

void ccoe_ref_embed_backward(double *dwte, double *dwpe, const double *dout,
                             const int32_t *tokens, int B, int T, int C)
{
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            double *dwe = dwte + (size_t)tokens[b * T + t] * C;
            double *dwp = dwpe + (size_t)t * C;
            const double *d = dout + ((size_t)b * T + t) * C;
            for (int c = 0; c < C; c++) {
                dwe[c] += d[c];
                dwp[c] += d[c];
            }
        }
}

void ccoe_ref_layernorm_forward(double *out, double *mean, double *rstd, const double *inp,
                                const double *weight, const double *bias, int N, int C)
{
    ccoe_ref_layernorm_forward_eps(out, mean, rstd, inp, weight, bias, N, C, REF_EPS);
}

void ccoe_ref_layernorm_forward_eps(double *out, double *mean, double *rstd, const double *inp,
                                    const double *weight, const double *bias, int N, int C,
                                    double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        double *o = out + (size_t)n * C;
        double m = 0.0;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
        double v = 0.0;
        for (int c = 0; c < C; c++)
            v += (x[c] - m) * (x[c] - m);
        v /= C;
        double rs = 1.0 / sqrt(v + eps);
        for (int c = 0; c < C; c++)
            o[c] = (x[c] - m) * rs * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = rs;
    }
}

void ccoe_ref_layernorm_backward(double *dinp, double *dweight, double *dbias, const double *dout,
                                 const double *inp, const double *weight, const double *mean,
                                 const double *rstd, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        const double *d = dout + (size_t)n * C;
        double *dx = dinp + (size_t)n * C;
        double m = mean[n], rs = rstd[n];
        double mdn = 0.0, mdnx = 0.0; /* means of dnorm and dnorm * xhat */
        for (int c = 0; c < C; c++) {
            double xhat = (x[c] - m) * rs;
            double dn = d[c] * weight[c];
            mdn += dn;
            mdnx += dn * xhat;
        }
        mdn /= C;
        mdnx /= C;
        for (int c = 0; c < C; c++) {
            double xhat = (x[c] - m) * rs;
            double dn = d[c] * weight[c];
            dbias[c] += d[c];
            dweight[c] += d[c] * xhat;
            dx[c] += rs * (dn - mdn - xhat * mdnx);
        }
    }
}

void ccoe_ref_rmsnorm_forward(double *out, double *rstd, const double *inp, const double *weight,
                              int N, int C)
{
    ccoe_ref_rmsnorm_forward_eps(out, rstd, inp, weight, N, C, REF_EPS);
}

void ccoe_ref_rmsnorm_forward_eps(double *out, double *rstd, const double *inp,
                                  const double *weight, int N, int C, double eps)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        double *o = out + (size_t)n * C;
        double ms = 0.0;
        for (int c = 0; c < C; c++)
            ms += x[c] * x[c];
        ms /= C;
        double rs = 1.0 / sqrt(ms + eps);
        for (int c = 0; c < C; c++)
            o[c] = x[c] * rs * weight[c];
        rstd[n] = rs;
    }
}

void ccoe_ref_rmsnorm_backward(double *dinp, double *dweight, const double *dout,
                               const double *inp, const double *weight, const double *rstd, int N,
                               int C)
{
    for (int n = 0; n < N; n++) {
        const double *x = inp + (size_t)n * C;
        const double *d = dout + (size_t)n * C;
        double *dx = dinp + (size_t)n * C;
        double rs = rstd[n];
        double mdnx = 0.0;
        for (int c = 0; c < C; c++)
            mdnx += d[c] * weight[c] * x[c] * rs;
        mdnx /= C;
        for (int c = 0; c < C; c++) {
            double xhat = x[c] * rs;
            dweight[c] += d[c] * xhat;
            dx[c] += rs * (d[c] * weight[c] - xhat * mdnx);
        }
    }
}

void ccoe_ref_linear_forward(double *out, const double *inp, const double *weight,
                             const double *bias, int N, int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = bias ? bias[o] : 0.0;
            for (int i = 0; i < IC; i++)
                s += inp[(size_t)n * IC + i] * weight[(size_t)o * IC + i];
            out[(size_t)n * OC + o] = s;
        }
}

void ccoe_ref_linear_backward(double *dinp, double *dweight, double *dbias, const double *dout,
                              const double *inp, const double *weight, int N, int IC, int OC)
{
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double d = dout[(size_t)n * OC + o];
            if (dbias)
                dbias[o] += d;
            for (int i = 0; i < IC; i++) {
                if (dinp)
                    dinp[(size_t)n * IC + i] += d * weight[(size_t)o * IC + i];
                dweight[(size_t)o * IC + i] += d * inp[(size_t)n * IC + i];
            }
        }
}

/* Scaled score of query row i against key row j of head h in batch b. */
static double ref_score(const double *qkv, int b, int i, int j, int h, int T, int C, int hd)
{
    const double *q = qkv + ((size_t)b * T + i) * 3 * C + (size_t)h * hd;
    const double *k = qkv + ((size_t)b * T + j) * 3 * C + C + (size_t)h * hd;
    double s = 0.0;
    for (int d = 0; d < hd; d++)
        s += q[d] * k[d];
    return s / sqrt((double)hd);
}

void ccoe_ref_attention_forward(double *out, double *lse, const double *qkv, int B, int T, int C,
                                int H)
{
    int hd = C / H;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double m = -INFINITY;
                for (int j = 0; j <= i; j++)
                    m = fmax(m, ref_score(qkv, b, i, j, h, T, C, hd));
                double s = 0.0;
                for (int j = 0; j <= i; j++)
                    s += exp(ref_score(qkv, b, i, j, h, T, C, hd) - m);
                double l = m + log(s);
                double *o = out + ((size_t)b * T + i) * C + (size_t)h * hd;
                for (int d = 0; d < hd; d++)
                    o[d] = 0.0;
                for (int j = 0; j <= i; j++) {
                    double p = exp(ref_score(qkv, b, i, j, h, T, C, hd) - l);
                    const double *v = qkv + ((size_t)b * T + j) * 3 * C + 2 * C + (size_t)h * hd;
                    for (int d = 0; d < hd; d++)
                        o[d] += p * v[d];
                }
                lse[((size_t)b * H + h) * T + i] = l;
            }
}

void ccoe_ref_attention_backward(double *dqkv, const double *dout, const double *qkv,
                                 const double *out, const double *lse, int B, int T, int C, int H)
{
    (void)out; /* D_i is formed from P and dP directly, independent of the saved output */
    int hd = C / H;
    double scale = 1.0 / sqrt((double)hd);
    size_t C3 = 3 * (size_t)C;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double l = lse[((size_t)b * H + h) * T + i];
                const double *dO = dout + ((size_t)b * T + i) * C + (size_t)h * hd;
                const double *q = qkv + ((size_t)b * T + i) * C3 + (size_t)h * hd;
                double *dq = dqkv + ((size_t)b * T + i) * C3 + (size_t)h * hd;
                /* D_i = sum_j P_ij dP_ij */
                double D = 0.0;
                for (int j = 0; j <= i; j++) {
                    const double *v = qkv + ((size_t)b * T + j) * C3 + 2 * C + (size_t)h * hd;
                    double p = exp(ref_score(qkv, b, i, j, h, T, C, hd) - l);
                    double dp = 0.0;
                    for (int d = 0; d < hd; d++)
                        dp += dO[d] * v[d];
                    D += p * dp;
                }
                for (int j = 0; j <= i; j++) {
                    const double *k = qkv + ((size_t)b * T + j) * C3 + C + (size_t)h * hd;
                    const double *v = k + C;
                    double *dk = dqkv + ((size_t)b * T + j) * C3 + C + (size_t)h * hd;
                    double *dv = dk + C;
                    double p = exp(ref_score(qkv, b, i, j, h, T, C, hd) - l);
                    double dp = 0.0;
                    for (int d = 0; d < hd; d++)
                        dp += dO[d] * v[d];
                    double ds = p * (dp - D);
                    for (int d = 0; d < hd; d++) {
                        dq[d] += scale * ds * k[d];
                        dk[d] += scale * ds * q[d];
                        dv[d] += p * dO[d];
                    }
                }
            }
}

void ccoe_ref_gelu_forward(double *out, const double *inp, size_t N)
{
    for (size_t i = 0; i < N; i++) {
        double x = inp[i];
        double u = REF_GELU_K0 * (x + REF_GELU_K1 * x * x * x);
        out[i] = 0.5 * x * (1.0 + tanh(u));
    }
}

void ccoe_ref_gelu_backward(double *dinp, const double *inp, const double *dout, size_t N)
{
    for (size_t i = 0; i < N; i++) {
        double x = inp[i];
        double u = REF_GELU_K0 * (x + REF_GELU_K1 * x * x * x);
        double t = tanh(u);
        double du = REF_GELU_K0 * (1.0 + 3.0 * REF_GELU_K1 * x * x);
        dinp[i] += dout[i] * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du);
    }
}

void ccoe_ref_swiglu_forward(double *out, const double *inp, int N, int F)
{
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double g = inp[(size_t)n * 2 * F + f];
            double u = inp[(size_t)n * 2 * F + F + f];
            out[(size_t)n * F + f] = g / (1.0 + exp(-g)) * u;
        }
}

void ccoe_ref_swiglu_backward(double *dinp, const double *inp, const double *dout, int N, int F)
{
    for (int n = 0; n < N; n++)
        for (int f = 0; f < F; f++) {
            double g = inp[(size_t)n * 2 * F + f];
            double u = inp[(size_t)n * 2 * F + F + f];
            double d = dout[(size_t)n * F + f];
            double s = 1.0 / (1.0 + exp(-g));
            dinp[(size_t)n * 2 * F + f] += d * u * s * (1.0 + g * (1.0 - s));
            dinp[(size_t)n * 2 * F + F + f] += d * g * s;
        }
}

double ccoe_ref_crossentropy_forward(double *losses, double *probs, const double *logits,
                                     const int32_t *targets, int N, int V)
{
    double total = 0.0;
    for (int n = 0; n < N; n++) {
        const double *x = logits + (size_t)n * V;
        double *p = probs + (size_t)n * V;
        int32_t t = targets[n];
        double m = -INFINITY;
        for (int v = 0; v < V; v++)
            m = fmax(m, x[v]);
        double xt = t >= 0 ? x[t] : 0.0; /* read before p (which may alias x) is written */
        double s = 0.0;
        for (int v = 0; v < V; v++)
            s += exp(x[v] - m);
        for (int v = 0; v < V; v++)
            p[v] = exp(x[v] - m) / s;
        losses[n] = t >= 0 ? log(s) - (xt - m) : 0.0;
        total += losses[n];
    }
    return total;
}

void ccoe_ref_crossentropy_backward(double *dlogits, const double *probs, const int32_t *targets,
                                    double scale, int N, int V)
{
    for (int n = 0; n < N; n++) {
        int32_t t = targets[n];
        for (int v = 0; v < V; v++) {
            double p = probs[(size_t)n * V + v];
            dlogits[(size_t)n * V + v] = t >= 0 ? (p - (v == t ? 1.0 : 0.0)) * scale : 0.0;
        }
    }
}

/* ---- grouped-query attention: query head h reads kv head h / (H / Hkv) ---- */

/* Row width W = (H + 2 Hkv) hd; column offsets of q head h, k and v of kv head kvh. */
static size_t gqa_q(int h, int hd) { return (size_t)h * hd; }
static size_t gqa_k(int kvh, int H, int hd) { return (size_t)(H + kvh) * hd; }
static size_t gqa_v(int kvh, int H, int Hkv, int hd) { return (size_t)(H + Hkv + kvh) * hd; }

static double gqa_score(const double *qkv, int b, int i, int j, int h, int T, int H, int Hkv,
                        int hd)
{
    size_t W = (size_t)(H + 2 * Hkv) * hd;
    const double *q = qkv + ((size_t)b * T + i) * W + gqa_q(h, hd);
    const double *k = qkv + ((size_t)b * T + j) * W + gqa_k(h / (H / Hkv), H, hd);
    double s = 0.0;
    for (int d = 0; d < hd; d++)
        s += q[d] * k[d];
    return s / sqrt((double)hd);
}

void ccoe_ref_gqa_forward(double *out, double *lse, const double *qkv, int B, int T, int H,
                          int Hkv, int hd)
{
    size_t W = (size_t)(H + 2 * Hkv) * hd, C = (size_t)H * hd;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                double m = -INFINITY;
                for (int j = 0; j <= i; j++)
                    m = fmax(m, gqa_score(qkv, b, i, j, h, T, H, Hkv, hd));
                double s = 0.0;
                for (int j = 0; j <= i; j++)
                    s += exp(gqa_score(qkv, b, i, j, h, T, H, Hkv, hd) - m);
                double l = m + log(s);
                double *o = out + ((size_t)b * T + i) * C + gqa_q(h, hd);
                for (int d = 0; d < hd; d++)
                    o[d] = 0.0;
                for (int j = 0; j <= i; j++) {
                    double p = exp(gqa_score(qkv, b, i, j, h, T, H, Hkv, hd) - l);
                    const double *v =
                        qkv + ((size_t)b * T + j) * W + gqa_v(h / (H / Hkv), H, Hkv, hd);
                    for (int d = 0; d < hd; d++)
                        o[d] += p * v[d];
                }
                lse[((size_t)b * H + h) * T + i] = l;
            }
}

void ccoe_ref_gqa_backward(double *dqkv, const double *dout, const double *qkv, const double *out,
                           const double *lse, int B, int T, int H, int Hkv, int hd)
{
    (void)out; /* D_i is formed from P and dP directly, independent of the saved output */
    double scale = 1.0 / sqrt((double)hd);
    size_t W = (size_t)(H + 2 * Hkv) * hd, C = (size_t)H * hd;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            int kvh = h / (H / Hkv);
            for (int i = 0; i < T; i++) {
                double l = lse[((size_t)b * H + h) * T + i];
                const double *dO = dout + ((size_t)b * T + i) * C + gqa_q(h, hd);
                const double *q = qkv + ((size_t)b * T + i) * W + gqa_q(h, hd);
                double *dq = dqkv + ((size_t)b * T + i) * W + gqa_q(h, hd);
                double D = 0.0; /* D_i = sum_j P_ij dP_ij */
                for (int j = 0; j <= i; j++) {
                    const double *v = qkv + ((size_t)b * T + j) * W + gqa_v(kvh, H, Hkv, hd);
                    double p = exp(gqa_score(qkv, b, i, j, h, T, H, Hkv, hd) - l);
                    double dp = 0.0;
                    for (int d = 0; d < hd; d++)
                        dp += dO[d] * v[d];
                    D += p * dp;
                }
                for (int j = 0; j <= i; j++) {
                    size_t rj = ((size_t)b * T + j) * W;
                    const double *k = qkv + rj + gqa_k(kvh, H, hd);
                    const double *v = qkv + rj + gqa_v(kvh, H, Hkv, hd);
                    double *dk = dqkv + rj + gqa_k(kvh, H, hd);
                    double *dv = dqkv + rj + gqa_v(kvh, H, Hkv, hd);
                    double p = exp(gqa_score(qkv, b, i, j, h, T, H, Hkv, hd) - l);
                    double dp = 0.0;
                    for (int d = 0; d < hd; d++)
                        dp += dO[d] * v[d];
                    double ds = p * (dp - D);
                    for (int d = 0; d < hd; d++) {
                        dq[d] += scale * ds * k[d];
                        dk[d] += scale * ds * q[d];
                        dv[d] += p * dO[d];
                    }
                }
            }
        }
}

/* ---- rotary position embeddings (rotate-half) ---- */

void ccoe_ref_rope_table(double *cos_t, double *sin_t, int Tmax, int hd, double theta)
{
    int half = hd / 2;
    for (int p = 0; p < Tmax; p++)
        for (int i = 0; i < half; i++) {
            double ang = p * pow(theta, -2.0 * i / hd);
            cos_t[(size_t)p * half + i] = cos(ang);
            sin_t[(size_t)p * half + i] = sin(ang);
        }
}

/* o = R(sign * angle) x on the nh heads of one row (x may be o). acc: o += instead. */
static void ref_rope_row(double *o, const double *x, const double *c, const double *s, int nh,
                         int hd, double sign, int acc)
{
    int half = hd / 2;
    for (int h = 0; h < nh; h++)
        for (int i = 0; i < half; i++) {
            double x1 = x[h * hd + i], x2 = x[h * hd + i + half];
            double y1 = x1 * c[i] - x2 * sign * s[i], y2 = x2 * c[i] + x1 * sign * s[i];
            o[h * hd + i] = acc ? o[h * hd + i] + y1 : y1;
            o[h * hd + i + half] = acc ? o[h * hd + i + half] + y2 : y2;
        }
}

void ccoe_ref_rope_forward(double *out, const double *inp, const double *cos_t,
                           const double *sin_t, int B, int T, int pos0, int nh, int hd, int stride)
{
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * stride, p = (size_t)(pos0 + t) * half;
            ref_rope_row(out + r, inp + r, cos_t + p, sin_t + p, nh, hd, 1.0, 0);
        }
}

void ccoe_ref_rope_backward(double *dinp, const double *dout, const double *cos_t,
                            const double *sin_t, int B, int T, int pos0, int nh, int hd,
                            int stride)
{
    int half = hd / 2;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            size_t r = ((size_t)b * T + t) * stride, p = (size_t)(pos0 + t) * half;
            ref_rope_row(dinp + r, dout + r, cos_t + p, sin_t + p, nh, hd, -1.0,
                         dinp != dout);
        }
}
