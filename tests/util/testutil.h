/* testutil.h - helpers shared by the CMocka tests: deterministic fills, comparisons against
 * double-precision references, and finite-difference gradient checks. */
#ifndef CCOE_TESTUTIL_H
#define CCOE_TESTUTIL_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>

#include <cmocka.h>

/* Fills x[0..n) with uniform values in [-scale, scale) from a seeded generator. */
void tu_fill_uniform(float *x, size_t n, uint64_t seed, float scale);
void tu_fill_uniform_d(double *x, size_t n, uint64_t seed, double scale);
void tu_to_double(double *dst, const float *src, size_t n);
void tu_to_float(float *dst, const double *src, size_t n);

/* Largest |a - b| / (atol + rtol * |b|) over n elements; <= 1 means "close". Prints the worst
 * index with `what` when it exceeds 1. */
double tu_close_ratio(const char *what, const float *a, const double *b, size_t n, double atol,
                      double rtol);

/* Asserts (CMocka) that float a matches double reference b within atol + rtol*|b|. */
#define TU_ASSERT_CLOSE(what, a, b, n, atol, rtol) \
    assert_true(tu_close_ratio((what), (a), (b), (n), (atol), (rtol)) <= 1.0)

#endif
