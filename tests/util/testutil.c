/* testutil.c - shared test helpers. */
#define _GNU_SOURCE /* nftw */
#include "testutil.h"

#include <ftw.h>
#include <stdlib.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "gemm.h"
#include "model.h"
#include "rng.h"

void tu_fill_uniform(float *x, size_t n, uint64_t seed, float scale)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = (2.0f * ccoe_rng_uniform(&r) - 1.0f) * scale;
}

void tu_fill_uniform_d(double *x, size_t n, uint64_t seed, double scale)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        x[i] = (2.0 * (double)ccoe_rng_uniform(&r) - 1.0) * scale;
}

void tu_to_double(double *dst, const float *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i];
}

void tu_to_float(float *dst, const double *src, size_t n)
{
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
}

void tu_fill_pair(float *f, double *d, size_t n, uint64_t seed, float scale)
{
    tu_fill_uniform(f, n, seed, scale);
    tu_to_double(d, f, n);
}

void tu_twice_plus(double *want, const float *g0, const double *g, size_t n)
{
    for (size_t i = 0; i < n; i++)
        want[i] = (double)g0[i] + 2.0 * g[i];
}

int tu_gemm_contexts(struct ccoe_gemm *g_auto, struct ccoe_gemm *g_blis, struct ccoe_gemm *g_ref,
                     int nthreads)
{
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_gemm_init(g_blis, CCOE_GEMM_BLIS, nthreads, &err) != CCOE_OK ||
        ccoe_gemm_init(g_ref, CCOE_GEMM_REF, nthreads, &err) != CCOE_OK ||
        ccoe_gemm_init(g_auto, CCOE_GEMM_AUTO, nthreads, &err) != CCOE_OK) {
        fprintf(stderr, "gemm init: %s\n", err.msg);
        return -1;
    }
    return 0;
}

double tu_close_ratio(const char *what, const float *a, const double *b, size_t n, double atol,
                      double rtol)
{
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        double r = d / (atol + rtol * fabs(b[i]));
        if (!(r <= worst)) { /* also catches NaN */
            worst = isnan(r) ? INFINITY : r;
            wi = i;
        }
    }
    if (worst > 1.0)
        fprintf(stderr, "%s: worst mismatch at %zu: got %.9g want %.9g (ratio %.3g)\n", what, wi,
                (double)a[wi], b[wi], worst);
    return worst;
}

double tu_close_ratio_d(const char *what, const double *a, const double *b, size_t n, double atol,
                        double rtol)
{
    double worst = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double r = fabs(a[i] - b[i]) / (atol + rtol * fabs(b[i]));
        if (!(r <= worst)) {
            worst = isnan(r) ? INFINITY : r;
            wi = i;
        }
    }
    if (worst > 1.0)
        fprintf(stderr, "%s: worst mismatch at %zu: got %.17g want %.17g (ratio %.3g)\n", what, wi,
                a[wi], b[wi], worst);
    return worst;
}

double tu_gradcheck(const char *what, tu_objective f, void *ctx, double *x, const double *grad,
                    size_t n, double h, double atol, double rtol)
{
    double worst = 0.0, wnum = 0.0;
    size_t wi = 0;
    for (size_t i = 0; i < n; i++) {
        double x0 = x[i];
        x[i] = x0 + h;
        double fp = f(ctx);
        x[i] = x0 - h;
        double fm = f(ctx);
        x[i] = x0;
        double num = (fp - fm) / (2.0 * h);
        double r = fabs(grad[i] - num) / (atol + rtol * fabs(num));
        if (!(r <= worst)) {
            worst = isnan(r) ? INFINITY : r;
            wi = i;
            wnum = num;
        }
    }
    f(ctx); /* leave the state as it was (outputs of the unperturbed inputs) */
    if (worst > 1.0)
        fprintf(stderr, "%s: gradient mismatch at %zu: analytic %.12g numeric %.12g (ratio %.3g)\n",
                what, wi, grad[wi], wnum, worst);
    return worst;
}

int tu_model_gradcheck(struct ccoe_model *m, double (*loss)(struct ccoe_model *m, void *ctx),
                       void *ctx, uint64_t seed, float h, double atol, double rtol,
                       const char *what)
{
    ccoe_rng r;
    ccoe_rng_seed(&r, seed);
    float *dir = malloc(m->num_params * sizeof(float));
    float *saved = malloc(m->num_params * sizeof(float));
    int failures = 0;
    for (int i = 0; i < m->n_params; i++) {
        const ccoe_param *p = &m->params[i];
        float *w = m->param_block + p->offset;
        const float *gw = m->grad_block + p->offset;
        double norm = 0.0, analytic = 0.0;
        for (size_t j = 0; j < p->numel; j++) {
            dir[j] = ccoe_rng_uniform(&r) - 0.5f;
            norm += (double)dir[j] * dir[j];
        }
        norm = sqrt(norm);
        for (size_t j = 0; j < p->numel; j++) {
            dir[j] = (float)(dir[j] / norm);
            analytic += (double)dir[j] * gw[j];
        }
        memcpy(saved, w, p->numel * sizeof(float));
        for (size_t j = 0; j < p->numel; j++)
            w[j] = saved[j] + h * dir[j];
        double lp = loss(m, ctx);
        for (size_t j = 0; j < p->numel; j++)
            w[j] = saved[j] - h * dir[j];
        double lm = loss(m, ctx);
        memcpy(w, saved, p->numel * sizeof(float));
        double numeric = (lp - lm) / (2.0 * (double)h);
        if (!(fabs(numeric - analytic) <= atol + rtol * fabs(numeric))) {
            fprintf(stderr, "%s: %s: analytic %.6g numeric %.6g\n", what, p->name, analytic,
                    numeric);
            failures++;
        }
    }
    free(dir);
    free(saved);
    return failures;
}

double *tu_dnew(size_t n)
{
    double *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

float *tu_fnew(size_t n)
{
    float *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

int32_t *tu_inew(size_t n)
{
    int32_t *p = calloc(n ? n : 1, sizeof *p);
    assert_non_null(p);
    return p;
}

double tu_ddot(const double *a, const double *b, size_t n)
{
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

unsigned char *tu_slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    rewind(f);
    unsigned char *buf = malloc((size_t)size + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    *n = (size_t)size;
    return buf;
}

void tu_tiny_train_config(ccoe_config *cfg, const char *out_dir, long steps)
{
    ccoe_config_defaults(cfg);
    cfg->model.n_layer = 1;
    cfg->model.n_embd = 16;
    cfg->model.n_head = 2;
    cfg->model.seq_len = 16;
    cfg->train.batch_size = 2;
    cfg->train.steps = steps;
    cfg->train.eval_every = 0;
    cfg->train.eval_batches = 1;
    cfg->data.task_examples = 0;
    snprintf(cfg->train.out_dir, sizeof cfg->train.out_dir, "%s", out_dir);
}

char *tu_mkdtemp(const char *tag)
{
    char buf[256];
    snprintf(buf, sizeof buf, "/tmp/ccoe_test_%s_XXXXXX", tag);
    char *dir = strdup(buf);
    assert_non_null(dir);
    assert_non_null(mkdtemp(dir));
    return dir;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void tu_rm_tree(const char *dir) { nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS); }

void tu_write_text(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}
