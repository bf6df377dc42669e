/* gemm.h - the one GEMM entry point of ccoe (single precision, row-major).
 *
 * Three backends behind one call: a plain reference loop (kept forever as the oracle), BLIS
 * (strided calls so row-major operands need no copies; AVX-512 kernels selected explicitly
 * because Debian's BLIS otherwise falls back to its slow reference kernels on new CPUs), and
 * libxsmm JIT kernels for small shapes (with fall-back to BLIS when dispatch returns NULL, e.g.
 * for transposed A). The backend is chosen once in ccoe_gemm_init and cached in the context.
 * <blis.h> and <libxsmm.h> are included only by gemm.c.
 *
 * bf16 mixed precision (gemm_bf16.c): the same contract with operands rounded to bf16 while
 * packed and fp32 accumulation and output, on CPUs with AVX512-BF16 only. A context runs it
 * after ccoe_gemm_set_precision(g, CCOE_PRECISION_BF16): explicitly (ccoe_gemm_run_bf16) or as
 * the precision of the model's linear layers (ccoe_gemm_run_linear); ccoe_gemm_run itself
 * always stays fp32.
 */
#ifndef CCOE_GEMM_H
#define CCOE_GEMM_H

#include <stdint.h>

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
    int bf16;   /* 1: calls of the bf16 GEMM (a separate entry from the same shape in fp32) */
    long calls;
    double seconds; /* wall time inside the GEMM layer */
} ccoe_gemm_prof_entry;

typedef struct ccoe_gemm_prof {
    int n;                 /* entries used */
    long dropped;          /* calls of shapes beyond CCOE_GEMM_PROF_MAX (not timed) */
    ccoe_gemm_prof_entry e[CCOE_GEMM_PROF_MAX];
} ccoe_gemm_prof;

/* The precision of a context's linear-layer GEMMs (ccoe_gemm_run_linear). */
typedef enum ccoe_precision {
    CCOE_PRECISION_FP32 = 0, /* everything in fp32 (the default) */
    CCOE_PRECISION_BF16      /* bf16 operands, fp32 accumulation and output */
} ccoe_precision;

typedef struct ccoe_gemm_bf16 ccoe_gemm_bf16; /* bf16 packing scratch (gemm_bf16.c) */

typedef struct ccoe_gemm {
    ccoe_gemm_backend backend; /* resolved choice */
    int nthreads;              /* threads used by one (non-serial) call */
    char kernel_set[80];       /* e.g. "blis:skx" - which kernels actually run ("bf16:avx512bf16+"
                                * in front once bf16 is the linear-layer precision) */
    ccoe_gemm_prof *prof;      /* NULL (the default): no timing; else every call is timed */
    ccoe_precision precision;  /* of ccoe_gemm_run_linear; FP32 unless set_precision changed it */
    ccoe_gemm_bf16 *bf16;      /* owned; non-NULL once bf16 is enabled (ccoe_gemm_free) */
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

/* Sets the precision of ccoe_gemm_run_linear. BF16 checks the CPU (AVX512-BF16 and AVX-512
 * F/BW/VL/DQ; CCOE_GEMM_NO_BF16=1 in the environment pretends it is missing, for testing) and
 * fails with CCOE_ERR_BACKEND naming the missing instructions and the fix (run.precision =
 * fp32) instead of running a slow emulation; then allocates the packing scratch once (one slot
 * per thread), so no call allocates. FP32 keeps any scratch (ccoe_gemm_run_bf16 still works). */
ccoe_status ccoe_gemm_set_precision(ccoe_gemm *g, ccoe_precision p, ccoe_error *err);

/* Frees what set_precision allocated (safe on any initialised context; copies of a context
 * share its scratch: free only the original). */
void ccoe_gemm_free(ccoe_gemm *g);

/* Whether this CPU can run the bf16 GEMM (the check set_precision makes). */
int ccoe_gemm_bf16_available(void);

/* The ccoe_gemm_run contract (all transa/transb, any alpha and beta, M/N/K of 1, odd K) with
 * A and B rounded to bf16 (ccoe_bf16_round) and products summed in fp32. Needs a context with
 * bf16 enabled (g->bf16 != NULL). Results do not depend on the thread count. */
void ccoe_gemm_run_bf16(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                        float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                        float *C, int ldc);
void ccoe_gemm_run_bf16_serial(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                               float alpha, const float *A, int lda, const float *B, int ldb,
                               float beta, float *C, int ldc);

/* A linear layer's GEMM in the context's precision: ccoe_gemm_run (exactly) in FP32,
 * ccoe_gemm_run_bf16 in BF16. The _serial form is safe inside a parallel region. */
void ccoe_gemm_run_linear(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                          float alpha, const float *A, int lda, const float *B, int ldb,
                          float beta, float *C, int ldc);
void ccoe_gemm_run_linear_serial(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                                 float alpha, const float *A, int lda, const float *B, int ldb,
                                 float beta, float *C, int ldc);

/* x rounded to the nearest bf16, ties to even (bit pattern: the top 16 bits of the float).
 * Subnormals are rounded like normals (not flushed); NaN stays a (quiet) NaN of the same sign;
 * finite values beyond the largest bf16 round to infinity. */
uint16_t ccoe_bf16_round(float x);
/* The float a bf16 bit pattern stands for (exact). */
float ccoe_bf16_float(uint16_t h);

/* "fp32", "bf16". */
const char *ccoe_precision_name(ccoe_precision p);
ccoe_status ccoe_precision_parse(const char *s, ccoe_precision *out, ccoe_error *err);

/* The plain reference (what every backend is checked against). */
void ccoe_gemm_ref(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc);

/* "auto", "ref", "blis", "xsmm". */
const char *ccoe_gemm_backend_name(ccoe_gemm_backend b);
ccoe_status ccoe_gemm_backend_parse(const char *s, ccoe_gemm_backend *out, ccoe_error *err);

/* Measures this context's GEMM rate in GFLOP/s on an (n x n x n) problem for about `seconds`
 * in its linear-layer precision (sgemm in fp32, the bf16 GEMM in bf16; benchmarks only; the
 * denominator of model-FLOP utilisation). */
double ccoe_gemm_measure_gflops(const ccoe_gemm *g, int n, double seconds);

#endif
