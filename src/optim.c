/* optim.c - AdamW, clipping and the learning-rate schedule. */
#include "optim.h"

#include <math.h>
#include <omp.h>
#include <string.h>

/* Up to this many floats the gradient norm and AdamW run without a parallel region: too little
 * work to share, and libgomp allocates a team for every region it opens. */
#define OPTIM_SERIAL_MAX 65536

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

/* Part t of nt of the sum of squares of g[0..n): contiguous chunks aligned to 16 floats, so
 * the result depends only on the count nt. */
static double grad_norm_part(const float *g, long long n, int t, int nt)
{
    long long per = ((n + nt - 1) / nt + 15) / 16 * 16;
    long long lo = (long long)t * per, hi = lo + per;
    if (lo > n)
        lo = n;
    if (hi > n)
        hi = n;
    return sum_squares(g + lo, hi - lo);
}

/* Above OPTIM_SERIAL_MAX floats the sum of squares is split into this many parts whatever the
 * thread count (the threads share them), so that the norm, and with it the clipping, is the
 * same for every thread count: run.threads = auto may change the count during a run. */
#define GRAD_NORM_PARTS 64

double ccoe_grad_norm(const float *grads, size_t begin, size_t end)
{
    double part[GRAD_NORM_PARTS];
    long long n = (long long)(end - begin);
    const float *g = grads + begin;
    if (n <= OPTIM_SERIAL_MAX)
        return sqrt(grad_norm_part(g, n, 0, 1));
#pragma omp parallel for schedule(static)
    for (int p = 0; p < GRAD_NORM_PARTS; p++)
        part[p] = grad_norm_part(g, n, p, GRAD_NORM_PARTS);
    double s = 0.0;
    for (int p = 0; p < GRAD_NORM_PARTS; p++) /* fixed order */
        s += part[p];
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

typedef struct adamw_consts {
    float b1, b2, eps, bc1, bc2, lr, gs, wd;
} adamw_consts;

/* Every (filtered) tensor's update; the loops are work-shared when called inside a parallel
 * region, serial otherwise. */
static void adamw_tensors(ccoe_adamw *o, ccoe_model *m, const adamw_consts *k,
                          int (*filter)(const ccoe_param *p, void *ctx), void *ctx)
{
    const float b1 = k->b1, b2 = k->b2, eps = k->eps, bc1 = k->bc1, bc2 = k->bc2;
    const float flr = k->lr, gs = k->gs;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        if (filter && !filter(p, ctx))
            continue;
        float *w = m->param_block + p->offset;
        const float *g = m->grad_block + p->offset;
        float *mm = o->m + p->offset, *vv = o->v + p->offset;
        const float wd = p->decay ? k->wd : 0.0f;
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

void ccoe_adamw_step_scaled(ccoe_adamw *o, ccoe_model *m, const ccoe_train_config *tc, double lr,
                            float gscale, int (*filter)(const ccoe_param *p, void *ctx),
                            void *ctx)
{
    o->t++;
    const adamw_consts k = {
        .b1 = (float)tc->beta1,
        .b2 = (float)tc->beta2,
        .eps = (float)tc->eps,
        .bc1 = 1.0f / (float)(1.0 - pow(tc->beta1, (double)o->t)),
        .bc2 = 1.0f / (float)(1.0 - pow(tc->beta2, (double)o->t)),
        .lr = (float)lr,
        .gs = gscale,
        .wd = (float)tc->weight_decay,
    };
    /* One parallel region for every tensor (each thread takes a static share of each): the
     * update is elementwise, so the split does not change the result. */
    if (o->n <= OPTIM_SERIAL_MAX) {
        adamw_tensors(o, m, &k, filter, ctx);
        return;
    }
#pragma omp parallel
    adamw_tensors(o, m, &k, filter, ctx);
}
