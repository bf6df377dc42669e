/* gate_common.c - small helpers shared by the gate variants: top-K selection, softmax,
 * softplus. Not a gate itself; no ops table here. */
#include "gate.h"

#include <assert.h>
#include <math.h>

void ccoe_gate_select(int32_t *ids, int32_t *kth, const float *score, int E, int K)
{
    assert(K >= 1 && K <= E);
    /* One pass in index order keeping ids[0..K) sorted (descending, ties to the lower index)
     * and `extra`, the best of the rest. A candidate moves up only past strictly smaller scores,
     * so equal scores keep index order, and NaN scores never displace anything: the output is
     * always K valid distinct indices. An entry pushed out of ids ranks above every entry that
     * never got in (it beat them, or tied with a higher index), so it becomes the new extra. */
    int n = 0;
    int32_t extra = -1;
    for (int i = 0; i < E; i++) {
        float s = score[i];
        int p;
        if (n < K) {
            p = n++;
        } else if (s > score[ids[K - 1]]) {
            extra = ids[K - 1];
            p = K - 1;
        } else {
            if (extra < 0 || s > score[extra])
                extra = i;
            continue;
        }
        while (p > 0 && s > score[ids[p - 1]]) {
            ids[p] = ids[p - 1];
            p--;
        }
        ids[p] = i;
    }
    if (kth)
        *kth = extra;
    assert(K < E || extra == -1);
}

float ccoe_gate_softmax(float *p, const float *x, int E)
{
    float mx = x[0];
    for (int i = 1; i < E; i++)
        mx = x[i] > mx ? x[i] : mx;
    float s = 0.0f;
    for (int i = 0; i < E; i++) {
        p[i] = expf(x[i] - mx);
        s += p[i];
    }
    float inv = 1.0f / s;
    for (int i = 0; i < E; i++)
        p[i] *= inv;
    return mx + logf(s);
}

float ccoe_gate_softplus(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

float ccoe_gate_sigmoid(float x)
{
    if (x >= 0.0f)
        return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

double ccoe_gate_softplus_d(double x) { return x > 40.0 ? x : log1p(exp(x)); }

double ccoe_gate_sigmoid_d(double x)
{
    if (x >= 0.0)
        return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}
