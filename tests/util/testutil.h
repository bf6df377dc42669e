/* testutil.h - helpers shared by the CMocka tests: deterministic fills, comparisons against
 * double-precision references, and finite-difference gradient checks. */
#ifndef CCOE_TESTUTIL_H
#define CCOE_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

/* Fills x[0..n) with uniform values in [-scale, scale) from a seeded generator. */
void tu_fill_uniform(float *x, size_t n, uint64_t seed, float scale);
void tu_fill_uniform_d(double *x, size_t n, uint64_t seed, double scale);
void tu_to_double(double *dst, const float *src, size_t n);
void tu_to_float(float *dst, const double *src, size_t n);
/* Uniform float input in [-scale, scale) and its exact double copy. */
void tu_fill_pair(float *f, double *d, size_t n, uint64_t seed, float scale);
/* want[i] = g0[i] + 2 * g[i]: the expected gradient after two accumulating backward calls on
 * a gradient pre-filled with g0. */
void tu_twice_plus(double *want, const float *g0, const double *g, size_t n);

/* The three GEMM contexts kernel tests compare: AUTO (what the trainer uses), BLIS only and the
 * plain reference, each with `nthreads` threads. Returns 0, or -1 after printing the error (a
 * CMocka group setup's failure value). */
struct ccoe_gemm;
int tu_gemm_contexts(struct ccoe_gemm *g_auto, struct ccoe_gemm *g_blis, struct ccoe_gemm *g_ref,
                     int nthreads);

/* Largest |a - b| / (atol + rtol * |b|) over n elements; <= 1 means "close". Prints the worst
 * index with `what` when it exceeds 1. */
double tu_close_ratio(const char *what, const float *a, const double *b, size_t n, double atol,
                      double rtol);

/* Asserts (CMocka) that float a matches double reference b within atol + rtol*|b|. */
#define TU_ASSERT_CLOSE(what, a, b, n, atol, rtol) \
    assert_true(tu_close_ratio((what), (a), (b), (n), (atol), (rtol)) <= 1.0)

/* Asserts (CMocka) that ccoe_error err's message contains text; prints the message if not. */
#define TU_ASSERT_MSG_HAS(err, text)                                                       \
    do {                                                                                   \
        if (!strstr((err).msg, (text)))                                                    \
            fprintf(stderr, "message lacks '%s':\n  %s\n", (const char *)(text), (err).msg); \
        assert_non_null(strstr((err).msg, (text)));                                        \
    } while (0)

/* The same comparison with a double-precision result under test. */
double tu_close_ratio_d(const char *what, const double *a, const double *b, size_t n, double atol,
                        double rtol);
#define TU_ASSERT_CLOSE_D(what, a, b, n, atol, rtol) \
    assert_true(tu_close_ratio_d((what), (a), (b), (n), (atol), (rtol)) <= 1.0)

/* A scalar objective of some state (the inputs live in ctx and are perturbed in place). */
typedef double (*tu_objective)(void *ctx);

/* Central-difference gradient check: for each i, perturbs x[i] by +h and -h (restoring it
 * exactly), forms (f(+h) - f(-h)) / 2h and compares it with the analytic grad[i]. Returns the
 * largest |grad - numeric| / (atol + rtol * |numeric|) (<= 1 passes); prints the worst index
 * with `what` when it exceeds 1. Double precision: h ~ 1e-6 gives ~1e-9 absolute accuracy for
 * objectives of order 1-100. */
double tu_gradcheck(const char *what, tu_objective f, void *ctx, double *x, const double *grad,
                    size_t n, double h, double atol, double rtol);
#define TU_ASSERT_GRAD(what, f, ctx, x, grad, n, h, atol, rtol) \
    assert_true(tu_gradcheck((what), (f), (ctx), (x), (grad), (n), (h), (atol), (rtol)) <= 1.0)


/* Whole-model gradient check: for every parameter tensor of m, the derivative of loss(m, ctx)
 * along a random unit direction inside that tensor (central differences, step h) must match
 * the gradient already in m->grad_block within atol + rtol*|numeric|. Failures are printed
 * with `what` and the tensor name; returns how many failed. Parameters are restored. */
struct ccoe_model;
int tu_model_gradcheck(struct ccoe_model *m, double (*loss)(struct ccoe_model *m, void *ctx),
                       void *ctx, uint64_t seed, float h, double atol, double rtol,
                       const char *what);

/* Zeroed allocations that fail the test on NULL (n may be 0); free with free(). */
double *tu_dnew(size_t n);
float *tu_fnew(size_t n);
int32_t *tu_inew(size_t n);
/* sum of a[i] * b[i] */
double tu_ddot(const double *a, const double *b, size_t n);

/* The whole file at path (malloc'd, caller frees; one spare byte); *n its size. Fails the test
 * if it cannot be read. */
unsigned char *tu_slurp(const char *path, size_t *n);

/* A fresh directory /tmp/ccoe_test_TAG_XXXXXX (malloc'd name; fails the test if it cannot be
 * made), the whole tree below a directory removed, and a text file DIR/NAME written whole. */
char *tu_mkdtemp(const char *tag);
void tu_rm_tree(const char *dir);
void tu_write_text(const char *dir, const char *name, const char *text);

struct ccoe_config;
/* A 1-layer, 16-wide model on the builtin data, `steps` steps into out_dir, evaluated on one
 * batch without task decoding at the end: the quickest run that trains and checkpoints. */
void tu_tiny_train_config(struct ccoe_config *cfg, const char *out_dir, long steps);

#endif
