/* optim.c - AdamW, clipping and the learning-rate schedule. */
#include "optim.h"

#include <math.h>
#include <omp.h>
#include <string.h>

ccoe_status ccoe_adamw_init(ccoe_adamw *o, size_t num_params, ccoe_error *err)
{
    memset(o, 0, sizeof *o);
    CCOE_TRY(ccoe_arena_alloc(&o->mem, 2 * num_params * sizeof(float), "AdamW state", err));
    o->m = ccoe_arena_floats(&o->mem, num_params);
    o->v = ccoe_arena_floats(&o->mem, num_params);
    o->n = num_params;
    return CCOE_OK;
}

void ccoe_adamw_free(ccoe_adamw *o) { ccoe_arena_free(&o->mem); }

double ccoe_lr_at(const ccoe_train_config *tc, long step)
{
    const double lr = tc->lr, min_lr = tc->lr * tc->min_lr_frac;
    if (step < tc->warmup)
        return lr * (double)(step + 1) / (double)tc->warmup;
    if (step >= tc->steps)
        return min_lr;
    double span = (double)(tc->steps - tc->warmup);
    double frac = span > 0 ? (double)(step - tc->warmup) / span : 1.0;
    return min_lr + 0.5 * (1.0 + cos(M_PI * frac)) * (lr - min_lr);
}

/* Sum of squares of g[0, n) in double: 16 independent accumulators (the compiler vectorises
 * them without reassociating), combined in a fixed order. */
static double sum_squares(const float *g, long long n)
{
    double acc[16] = {0};
    long long i = 0;
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 16; k++)
            acc[k] += (double)g[i + k] * (double)g[i + k];
    for (int k = 0; i < n; i++, k++)
        acc[k] += (double)g[i] * (double)g[i];
    for (int w = 8; w >= 1; w /= 2)
        for (int k = 0; k < w; k++)
            acc[k] += acc[k + w];
    return acc[0];
}

double ccoe_grad_norm(const float *grads, size_t begin, size_t end)
{
    enum { MAX_PARTS = 256 };
    double part[MAX_PARTS] = {0};
    long long n = (long long)(end - begin);
    const float *g = grads + begin;
    int used = 1;
#pragma omp parallel if (n > 65536)
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        if (nt > MAX_PARTS)
            nt = MAX_PARTS;
#pragma omp single
        used = nt;
        if (t < nt) {
            /* contiguous chunks aligned to 16 floats: the result depends only on the count */
            long long per = ((n + nt - 1) / nt + 15) / 16 * 16;
            long long lo = (long long)t * per, hi = lo + per;
            if (lo > n)
                lo = n;
            if (hi > n)
                hi = n;
            part[t] = sum_squares(g + lo, hi - lo);
        }
    }
    double s = 0.0;
    for (int t = 0; t < used; t++) /* fixed order: deterministic for a fixed thread count */
        s += part[t];
    return sqrt(s);
}

void ccoe_grad_scale(float *grads, size_t begin, size_t end, float s)
{
    long long n = (long long)(end - begin);
    float *g = grads + begin;
#pragma omp parallel for schedule(static)
    for (long long i = 0; i < n; i++)
        g[i] *= s;
}

void ccoe_adamw_step(ccoe_adamw *o, ccoe_model *m, const ccoe_train_config *tc, double lr,
                     int (*filter)(const ccoe_param *p, void *ctx), void *ctx)
{
    ccoe_adamw_step_scaled(o, m, tc, lr, 1.0f, filter, ctx);
}

void ccoe_adamw_step_scaled(ccoe_adamw *o, ccoe_model *m, const ccoe_train_config *tc, double lr,
                            float gscale, int (*filter)(const ccoe_param *p, void *ctx),
                            void *ctx)
{
    o->t++;
    const float b1 = (float)tc->beta1, b2 = (float)tc->beta2, eps = (float)tc->eps;
    const float bc1 = 1.0f / (float)(1.0 - pow(tc->beta1, (double)o->t));
    const float bc2 = 1.0f / (float)(1.0 - pow(tc->beta2, (double)o->t));
    const float flr = (float)lr, gs = gscale;
    const float wdc = (float)tc->weight_decay;
    /* One parallel region for every tensor (each thread takes a static share of each): the
     * update is elementwise, so the split does not change the result. */
#pragma omp parallel if (o->n > 65536)
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        if (filter && !filter(p, ctx))
            continue;
        float *w = m->param_block + p->offset;
        const float *g = m->grad_block + p->offset;
        float *mm = o->m + p->offset, *vv = o->v + p->offset;
        const float wd = p->decay ? wdc : 0.0f;
        const long long n = (long long)p->numel;
#pragma omp for schedule(static) nowait
        for (long long j = 0; j < n; j++) {
            float gj = g[j] * gs; /* the clip scale: exact when gs == 1 */
            float mj = b1 * mm[j] + (1.0f - b1) * gj;
            float vj = b2 * vv[j] + (1.0f - b2) * gj * gj;
            mm[j] = mj;
            vv[j] = vj;
            float mhat = mj * bc1, vhat = vj * bc2;
            w[j] -= flr * (mhat / (sqrtf(vhat) + eps) + wd * w[j]);
        }
    }
}
