/* gemm.h - the one GEMM entry point of ccoe (single precision, row-major).
 *
 * Three backends behind one call: a plain reference loop (kept forever as the oracle), BLIS
 * (strided calls so row-major operands need no copies; AVX-512 kernels selected explicitly
 * because Debian's BLIS otherwise falls back to its slow reference kernels on new CPUs), and
 * libxsmm JIT kernels for small shapes (with fall-back to BLIS when dispatch returns NULL, e.g.
 * for transposed A). The backend is chosen once in ccoe_gemm_init and cached in the context.
 * <blis.h> and <libxsmm.h> are included only by gemm.c.
 */
#ifndef CCOE_GEMM_H
#define CCOE_GEMM_H

#include "status.h"

typedef enum ccoe_gemm_backend {
    CCOE_GEMM_AUTO = 0, /* libxsmm for small shapes, BLIS otherwise */
    CCOE_GEMM_REF,      /* plain loops */
    CCOE_GEMM_BLIS,     /* BLIS only */
    CCOE_GEMM_XSMM      /* libxsmm where it dispatches, BLIS fall-back */
} ccoe_gemm_backend;

/* Optional per-shape timing of every call (`ccoe bench --profile`): one entry per distinct
 * (transa, transb, M, N, K), filled in call order. Off unless a context points at a table. */
#define CCOE_GEMM_PROF_MAX 96
typedef struct ccoe_gemm_prof_entry {
    int transa, transb, M, N, K;
    long calls;
    double seconds; /* wall time inside the GEMM layer */
} ccoe_gemm_prof_entry;

typedef struct ccoe_gemm_prof {
    int n;                 /* entries used */
    long dropped;          /* calls of shapes beyond CCOE_GEMM_PROF_MAX (not timed) */
    ccoe_gemm_prof_entry e[CCOE_GEMM_PROF_MAX];
} ccoe_gemm_prof;

typedef struct ccoe_gemm {
    ccoe_gemm_backend backend; /* resolved choice */
    int nthreads;              /* threads used by one (non-serial) call */
    char kernel_set[80];       /* e.g. "blis:skx" - which kernels actually run */
    ccoe_gemm_prof *prof;      /* NULL (the default): no timing; else every call is timed */
} ccoe_gemm;

/* Chooses and initialises the backend once; sets the thread count of BLIS and OpenMP.
 * nthreads <= 0 means 1. Fails with CCOE_ERR_BACKEND if the backend cannot run here. */
ccoe_status ccoe_gemm_init(ccoe_gemm *g, ccoe_gemm_backend backend, int nthreads, ccoe_error *err);

/* Changes the thread count of later calls (and of OpenMP's parallel regions) to nthreads (<= 0
 * means 1), e.g. between training steps under run.threads = auto; the results of a call do not
 * depend on it. Not from inside a parallel region. */
void ccoe_gemm_set_threads(ccoe_gemm *g, int nthreads);

/* C(M,N) = alpha * op(A)(M,K) * op(B)(K,N) + beta * C, all row-major.
 * transa = 0: A is stored (M,K) with row stride lda; transa = 1: A is stored (K,M).
 * transb = 0: B is stored (K,N) with row stride ldb; transb = 1: B is stored (N,K).
 * beta = 0 overwrites C (C may hold garbage); beta = 1 accumulates. M, N or K may be 1.
 * K == 0 scales C by beta. Uses g->nthreads threads; do not call from a parallel region. */
void ccoe_gemm_run(const ccoe_gemm *g, int transa, int transb, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* The same contract, single-threaded: safe inside an OpenMP parallel region. */
void ccoe_gemm_run_serial(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                          float alpha, const float *A, int lda, const float *B, int ldb,
                          float beta, float *C, int ldc);

/* The plain reference (what every backend is checked against). */
void ccoe_gemm_ref(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* "auto", "ref", "blis", "xsmm". */
const char *ccoe_gemm_backend_name(ccoe_gemm_backend b);
ccoe_status ccoe_gemm_backend_parse(const char *s, ccoe_gemm_backend *out, ccoe_error *err);

/* Measures this context's sgemm rate in GFLOP/s on an (n x n x n) problem for about `seconds`
 * (benchmarks only; used as the denominator of model-FLOP utilisation). */
double ccoe_gemm_measure_gflops(const ccoe_gemm *g, int n, double seconds);

#endif
