/* gemm.c - the GEMM layer: reference loops, BLIS and libxsmm behind ccoe_gemm_run.
 *
 * Everything is row-major single precision. BLIS is called through its typed expert API with
 * explicit row/column strides, so row-major and transposed operands need no copies; the thread
 * count travels in a per-call rntm_t (no global state is changed per call). libxsmm 1.x JIT
 * kernels are column-major: a row-major C = op(A) op(B) is the column-major C^T = op(B)^T op(A)^T,
 * so the operands are passed swapped. libxsmm 1.17 only handles alpha = 1, beta in {0, 1} and an
 * untransposed first (column-major) operand, i.e. transb = 0 here; everything else falls back to
 * BLIS. This is the only file that includes <blis.h> and <libxsmm.h>.
 *
 * BLIS kernel choice: Debian's runtime-dispatched BLIS 0.9 does not recognise recent CPUs (e.g.
 * AMD Zen 5) and then silently runs its reference kernels, several times slower. BLIS reads BLIS_ARCH_TYPE once, when it first initialises, so the first ccoe_gemm_init
 * sets it (unless the user already did) before BLIS's first call, and reports what BLIS chose.
 *
 * The bf16 GEMM (packing and AVX512-BF16 kernels) lives in gemm_bf16.c; this file dispatches
 * to it, times it and owns the precision setting.
 *
 * Not here: batched/grouped GEMM, anything allocating memory on the call path.
 */
#define _GNU_SOURCE /* setenv */
#include "gemm.h"

#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

/* BLIS 0.9's header defines hundreds of unused static functions; keep our warnings readable. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic ignored "-Wtype-limits"
#include <blis.h>
#pragma GCC diagnostic pop
#include <libxsmm.h>

#include "gemm_bf16.h"
#include "perf.h"

/* ---- AUTO policy (see gemm_auto_uses_xsmm; papers/kernels.md has the measurements) ---- */

/* AUTO uses libxsmm for every problem of at most this many multiply-adds (2^25, e.g. 256^3) ... */
#define CCOE_GEMM_XSMM_SMALL_MNK (1L << 25)
/* ... and for larger untransposed ones whose op(B) (K x N floats) fits in 3/4 of the 1 MiB L2,
 * unless a leading dimension is a multiple of this many floats (4 KiB: cache-set aliasing). */
#define CCOE_GEMM_XSMM_MAX_KN (192L * 1024L)
#define CCOE_GEMM_XSMM_ALIAS_LD 1024

/* A threaded libxsmm call splits the rows of C into blocks for OpenMP only when it has at least
 * this many multiply-adds per thread and this many rows per thread; otherwise one thread runs it. */
#define CCOE_GEMM_XSMM_PAR_MIN_MNK (64L * 64L * 64L)
#define CCOE_GEMM_XSMM_PAR_MIN_ROWS 16

/* ---- BLIS small-problem ("sup") path ----
 * BLIS 0.9 sends a product to its unpacked small-problem kernels whenever one dimension is under
 * the configuration's threshold (zen3 sgemm: m < 512, n < 200 or k < 240), so every 256-token
 * GEMM of the GPT-2-124M shape (M = B*T = 256) ran there, reading strided operands unpacked,
 * at about half the packed path's speed; the small path wins or ties only on small or thin
 * problems (papers/kernels.md). Above this many multiply-adds, with every dimension at least
 * the minimum, it is switched off per call. BLIS's skx configuration has no small path
 * (thresholds 0), so AVX-512 runs are unaffected. CCOE_BLIS_SUP=on leaves the choice to BLIS,
 * =off never takes the small path (for rerunning the comparison). */
#define CCOE_GEMM_BLIS_SUP_MAX_MNK (1L << 24)
#define CCOE_GEMM_BLIS_SUP_MIN_DIM 32

/* ---- process-wide one-time setup (BLIS and libxsmm are process-global libraries) ---- */

typedef struct gemm_global {
    ccoe_status status;    /* outcome of the one-time setup (BLIS and libxsmm unusable if not OK) */
    char msg[512];         /* its error message */
    char blis_name[32];    /* bli_arch_string of BLIS's configuration (+ ",sup-on/off") */
    char xsmm_name[24];    /* libxsmm target ("cpx", "hsw", ...) */
    int xsmm_ok;           /* libxsmm can JIT on this CPU */
    int xsmm_avx512;       /* libxsmm's kernels are AVX-512 ones (the larger-problem rule) */
    int blis_sup;          /* CCOE_BLIS_SUP: 0 auto (our policy), 1 on (BLIS decides), 2 off */
} gemm_global;

static pthread_once_t gemm_once = PTHREAD_ONCE_INIT;
static gemm_global gemm_g;

/* Configurations registered in Debian's x86_64 BLIS 0.9 build (intel64 + amd64 + generic);
 * asking BLIS for any other id makes it abort. */
static int blis_arch_is_registered(long id)
{
    switch (id) {
    case BLIS_ARCH_SKX:
    case BLIS_ARCH_KNL:
    case BLIS_ARCH_HASWELL:
    case BLIS_ARCH_SANDYBRIDGE:
    case BLIS_ARCH_PENRYN:
    case BLIS_ARCH_ZEN3:
    case BLIS_ARCH_ZEN2:
    case BLIS_ARCH_ZEN:
    case BLIS_ARCH_EXCAVATOR:
    case BLIS_ARCH_STEAMROLLER:
    case BLIS_ARCH_PILEDRIVER:
    case BLIS_ARCH_BULLDOZER:
    case BLIS_ARCH_GENERIC:
        return 1;
    default:
        return 0;
    }
}

/* The BLIS configuration this CPU should run: skx (AVX-512) where the CPU has the AVX-512
 * subsets its kernels use, an AVX2/FMA configuration otherwise, -1 (let BLIS decide) below. */
static long blis_arch_for_cpu(void)
{
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
        return BLIS_ARCH_SKX;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        return __builtin_cpu_is("amd") ? BLIS_ARCH_ZEN3 : BLIS_ARCH_HASWELL;
    return -1;
}

static void gemm_global_setup(void)
{
    gemm_global *s = &gemm_g;
    s->status = CCOE_OK;

    /* 1. Decide BLIS_ARCH_TYPE before BLIS initialises (it reads the variable exactly once). */
    long want = -1;
    int user_set = 0;
    const char *env = getenv("BLIS_ARCH_TYPE");
    if (env && env[0]) {
        /* BLIS parses with atoi-like rules ("skx" silently becomes 0) and aborts on ids it was
         * not built with: check the value here so that a typo becomes an error message. */
        char *end = NULL;
        errno = 0;
        long v = strtol(env, &end, 10);
        if (errno || end == env || *end != '\0' || (v != -1 && !blis_arch_is_registered(v))) {
            s->status = CCOE_ERR_BACKEND;
            snprintf(s->msg, sizeof s->msg,
                     "BLIS_ARCH_TYPE='%s' is not a BLIS architecture id this BLIS was built with; "
                     "use an integer (%d = skx/AVX-512, %d = haswell/AVX2, %d = zen3, -1 = "
                     "autodetect) or unset it and let ccoe choose",
                     env, (int)BLIS_ARCH_SKX, (int)BLIS_ARCH_HASWELL, (int)BLIS_ARCH_ZEN3);
            return;
        }
        want = v;
        user_set = 1;
    } else {
        want = blis_arch_for_cpu();
        if (want >= 0) {
            char buf[16];
            snprintf(buf, sizeof buf, "%ld", want);
            setenv("BLIS_ARCH_TYPE", buf, 1);
        }
    }

    /* 1b. CCOE_BLIS_SUP (auto | on | off): the small-problem policy, for measuring it. */
    const char *sup = getenv("CCOE_BLIS_SUP");
    if (!sup || !sup[0] || strcmp(sup, "auto") == 0) {
        s->blis_sup = 0;
    } else if (strcmp(sup, "on") == 0 || strcmp(sup, "off") == 0) {
        s->blis_sup = sup[1] == 'n' ? 1 : 2;
    } else {
        s->status = CCOE_ERR_BACKEND;
        snprintf(s->msg, sizeof s->msg,
                 "CCOE_BLIS_SUP='%s' is not auto, on or off; unset it for the default (auto)",
                 sup);
        return;
    }

    /* 2. Initialise BLIS (bli_init must precede bli_arch_query_id when BLIS_ARCH_TYPE is set). */
    bli_init();
    arch_t got = bli_arch_query_id();
    snprintf(s->blis_name, sizeof s->blis_name, "%s", bli_arch_string(got));
    if (!user_set && want >= 0 && (long)got != want && got == BLIS_ARCH_GENERIC) {
        /* Some code called BLIS before us, so it already chose its slow reference kernels. */
        s->status = CCOE_ERR_BACKEND;
        snprintf(s->msg, sizeof s->msg,
                 "BLIS was initialised before ccoe_gemm_init and runs its reference kernels "
                 "(blis:%s, about 5x slower) instead of %s; call ccoe_gemm_init before any other "
                 "BLIS use or export BLIS_ARCH_TYPE=%ld",
                 s->blis_name, bli_arch_string((arch_t)want), want);
        return;
    }

    if (s->blis_sup != 0) /* a non-default policy shows in every reported kernel set */
        snprintf(s->blis_name + strlen(s->blis_name), sizeof s->blis_name - strlen(s->blis_name),
                 ",sup-%s", s->blis_sup == 1 ? "on" : "off");

    /* 3. libxsmm: JIT needs at least AVX2 here (below that it would return no kernels). */
    libxsmm_init();
    snprintf(s->xsmm_name, sizeof s->xsmm_name, "%s", libxsmm_get_target_arch());
    s->xsmm_ok = libxsmm_get_target_archid() >= LIBXSMM_X86_AVX2;
    s->xsmm_avx512 = libxsmm_get_target_archid() >= LIBXSMM_X86_AVX512;
}

/* ---- shared helpers ---- */

/* C(M,N) = beta * C, overwriting (NaN-safe) when beta == 0. */
static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        if (beta == 0.0f)
            memset(c, 0, (size_t)N * sizeof *c);
        else if (beta != 1.0f)
            for (int j = 0; j < N; j++)
                c[j] *= beta;
    }
}

/* Handles the cases no backend needs to see; returns 1 when C is already final. */
static int gemm_trivial(int transa, int transb, int M, int N, int K, float alpha, int lda,
                        int ldb, float beta, float *C, int ldc)
{
    assert(M >= 0 && N >= 0 && K >= 0);
    assert(ldc >= N || M <= 1);
    if (M == 0 || N == 0)
        return 1;
    if (K == 0 || alpha == 0.0f) { /* BLAS semantics: A and B are not read */
        scale_c(M, N, beta, C, ldc);
        return 1;
    }
    assert(lda >= (transa ? M : K) || (transa ? K : M) == 1);
    assert(ldb >= (transb ? K : N) || (transb ? N : K) == 1);
    (void)transa;
    (void)transb;
    (void)lda;
    (void)ldb;
    return 0;
}

/* ---- reference ---- */

void ccoe_gemm_ref(int transa, int transb, int M, int N, int K, float alpha, const float *A,
                   int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (gemm_trivial(transa, transb, M, N, K, alpha, lda, ldb, beta, C, ldc))
        return;
    /* op(A)[i][p] and op(B)[p][j] as strides: a row-major (R, S) matrix X with leading dimension
     * ld has X[r][s] = X[r*ld + s]; its transpose swaps the two strides. */
    size_t ars = transa ? 1 : (size_t)lda, acs = transa ? (size_t)lda : 1;
    size_t brs = transb ? 1 : (size_t)ldb, bcs = transb ? (size_t)ldb : 1;
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * ldc;
        const float *a = A + (size_t)i * ars;
        if (!transb) { /* row i of C += op(A)[i][p] * row p of B: contiguous inner loop */
            scale_c(1, N, beta, c, ldc);
            for (int p = 0; p < K; p++) {
                float ap = alpha * a[(size_t)p * acs];
                const float *b = B + (size_t)p * brs;
                for (int j = 0; j < N; j++)
                    c[j] += ap * b[j];
            }
        } else { /* dot products over rows of B (N, K) */
            for (int j = 0; j < N; j++) {
                const float *b = B + (size_t)j * bcs;
                float acc = 0.0f;
                for (int p = 0; p < K; p++)
                    acc += a[(size_t)p * acs] * b[p];
                c[j] = alpha * acc + (beta == 0.0f ? 0.0f : beta * c[j]);
            }
        }
    }
}

/* ---- BLIS ---- */

static void gemm_blis(int nthreads, int transa, int transb, int M, int N, int K, float alpha,
                      const float *A, int lda, const float *B, int ldb, float beta, float *C,
                      int ldc)
{
    rntm_t rntm;
    bli_rntm_init(&rntm);
    bli_rntm_set_num_threads(nthreads > 1 ? nthreads : 1, &rntm);
    if (gemm_g.blis_sup == 2 ||
        (gemm_g.blis_sup == 0 && (long)M * N * K > CCOE_GEMM_BLIS_SUP_MAX_MNK &&
         M >= CCOE_GEMM_BLIS_SUP_MIN_DIM && N >= CCOE_GEMM_BLIS_SUP_MIN_DIM &&
         K >= CCOE_GEMM_BLIS_SUP_MIN_DIM))
        bli_rntm_disable_l3_sup(&rntm);
    inc_t rsa = transa ? 1 : lda, csa = transa ? lda : 1;
    inc_t rsb = transb ? 1 : ldb, csb = transb ? ldb : 1;
    bli_sgemm_ex(BLIS_NO_TRANSPOSE, BLIS_NO_TRANSPOSE, M, N, K, &alpha, (float *)A, rsa, csa,
                 (float *)B, rsb, csb, &beta, C, ldc, 1, NULL, &rntm);
}

/* ---- libxsmm ---- */

/* Column-major kernel for rows [.., .. + rows) of the row-major C: m = N, n = rows, k = K,
 * first operand B (N columns, ld ldb), second operand A (ld lda, transposed when transa).
 * Returns NULL when libxsmm has no kernel for it. No cache of our own: libxsmm's registry lookup
 * costs a tiny fraction of even a small product. */
static libxsmm_smmfunction xsmm_kernel(int transa, int rows, int N, int K, int lda, int ldb,
                                       float beta, int ldc)
{
    const libxsmm_blasint m = N, n = rows, k = K;
    const libxsmm_blasint xlda = ldb, xldb = lda, xldc = ldc;
    const float one = 1.0f;
    const int flags = (transa ? LIBXSMM_GEMM_FLAG_TRANS_B : 0) |
                      (beta == 0.0f ? LIBXSMM_GEMM_FLAG_BETA_0 : 0);
    const int prefetch = LIBXSMM_GEMM_PREFETCH_NONE;
    return libxsmm_smmdispatch(m, n, k, &xlda, &xldb, &xldc, &one, &beta, &flags, &prefetch);
}

/* Whether libxsmm 1.17 can express this call at all (before asking its registry). */
static int xsmm_expressible(int transb, float alpha, float beta)
{
    return !transb && alpha == 1.0f && (beta == 0.0f || beta == 1.0f);
}

/* Runs the call with libxsmm on `nthreads` threads (row blocks of C); returns 0 without touching
 * C when libxsmm has no kernel for it. */
static int gemm_xsmm(int nthreads, int transa, int transb, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc)
{
    if (!gemm_g.xsmm_ok || !xsmm_expressible(transb, alpha, beta))
        return 0;
    long mnk = (long)M * N * K;
    int nt = nthreads;
    if (nt > 1 && (mnk < CCOE_GEMM_XSMM_PAR_MIN_MNK * nt || M < CCOE_GEMM_XSMM_PAR_MIN_ROWS * nt))
        nt = 1;
    if (nt <= 1) {
        libxsmm_smmfunction f = xsmm_kernel(transa, M, N, K, lda, ldb, beta, ldc);
        if (!f)
            return 0;
        f(B, A, C);
        return 1;
    }
    /* nt blocks of mb rows (the last one shorter): at most two distinct kernels. */
    int mb = (M + nt - 1) / nt;
    int last = M - (nt - 1) * mb;
    if (last <= 0) { /* tiny M relative to nt: cannot happen given the row minimum above */
        nt = 1;
        mb = last = M;
    }
    libxsmm_smmfunction f = xsmm_kernel(transa, mb, N, K, lda, ldb, beta, ldc);
    libxsmm_smmfunction fl = last == mb ? f : xsmm_kernel(transa, last, N, K, lda, ldb, beta, ldc);
    if (!f || !fl)
        return 0;
    size_t astep = transa ? 1 : (size_t)lda; /* distance between rows of op(A) */
#pragma omp parallel for num_threads(nt) schedule(static, 1)
    for (int t = 0; t < nt; t++) {
        size_t r0 = (size_t)t * mb;
        (t == nt - 1 ? fl : f)(B, A + r0 * astep, C + r0 * ldc);
    }
    return 1;
}

/* ---- dispatch ---- */

/* AUTO policy: libxsmm where its unpacked JIT kernels beat BLIS, BLIS for the rest
 * (papers/kernels.md has the measurements behind it):
 * - small problems: BLIS's packing and thread setup dominate, libxsmm is faster.
 * - larger problems: libxsmm does no packing or cache blocking and re-reads op(B) for every few
 *   rows of C. While op(B) stays in L2 it still wins or ties with AVX-512 kernels; beyond that
 *   it falls behind, most under contention, and also with 4 KiB leading dimensions (cache-set
 *   aliasing) and with transposed A.
 * With AVX2-only kernels (libxsmm "hsw", BLIS "zen3"/"haswell") the larger-problem rule loses
 * and only the small rule applies. */
static int gemm_auto_uses_xsmm(int transa, int M, int N, int K, int ldb, int ldc)
{
    if ((long)M * N * K <= CCOE_GEMM_XSMM_SMALL_MNK)
        return 1;
    return gemm_g.xsmm_avx512 && !transa && (long)K * N <= CCOE_GEMM_XSMM_MAX_KN &&
           ldb % CCOE_GEMM_XSMM_ALIAS_LD != 0 && ldc % CCOE_GEMM_XSMM_ALIAS_LD != 0;
}

static void gemm_dispatch(const ccoe_gemm *g, int nthreads, int transa, int transb, int M, int N,
                          int K, float alpha, const float *A, int lda, const float *B, int ldb,
                          float beta, float *C, int ldc)
{
    if (gemm_trivial(transa, transb, M, N, K, alpha, lda, ldb, beta, C, ldc))
        return;
    switch (g->backend) {
    case CCOE_GEMM_REF:
        ccoe_gemm_ref(transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    case CCOE_GEMM_XSMM:
        if (gemm_xsmm(nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
            return;
        break;
    case CCOE_GEMM_AUTO:
        if (gemm_auto_uses_xsmm(transa, M, N, K, ldb, ldc) &&
            gemm_xsmm(nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc))
            return;
        break;
    case CCOE_GEMM_BLIS:
        break;
    }
    gemm_blis(nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* Adds one timed call to the profile table (serial calls may come from several threads). */
static void prof_add(ccoe_gemm_prof *p, int bf16, int transa, int transb, int M, int N, int K,
                     double sec)
{
#pragma omp critical(ccoe_gemm_prof)
    {
        int i = 0;
        while (i < p->n && !(p->e[i].transa == transa && p->e[i].transb == transb &&
                             p->e[i].M == M && p->e[i].N == N && p->e[i].K == K &&
                             p->e[i].bf16 == bf16))
            i++;
        if (i == p->n && p->n < CCOE_GEMM_PROF_MAX)
            p->e[p->n++] = (ccoe_gemm_prof_entry){transa, transb, M, N, K, bf16, 0, 0.0};
        if (i < p->n) {
            p->e[i].calls++;
            p->e[i].seconds += sec;
        } else {
            p->dropped++;
        }
    }
}

static void gemm_call(const ccoe_gemm *g, int nthreads, int transa, int transb, int M, int N,
                      int K, float alpha, const float *A, int lda, const float *B, int ldb,
                      float beta, float *C, int ldc)
{
    if (!g->prof) {
        gemm_dispatch(g, nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    double t0 = ccoe_now();
    gemm_dispatch(g, nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    prof_add(g->prof, 0, transa, transb, M, N, K, ccoe_now() - t0);
}

static void gemm_call_bf16(const ccoe_gemm *g, int nthreads, int transa, int transb, int M, int N,
                           int K, float alpha, const float *A, int lda, const float *B, int ldb,
                           float beta, float *C, int ldc)
{
    assert(g->bf16); /* ccoe_gemm_set_precision(BF16) first */
    if (gemm_trivial(transa, transb, M, N, K, alpha, lda, ldb, beta, C, ldc))
        return;
    double t0 = g->prof ? ccoe_now() : 0.0;
    gemm_bf16_run(g->bf16, nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C,
                  ldc);
    if (g->prof)
        prof_add(g->prof, 1, transa, transb, M, N, K, ccoe_now() - t0);
}

void ccoe_gemm_run_bf16(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                        float alpha, const float *A, int lda, const float *B, int ldb, float beta,
                        float *C, int ldc)
{
    gemm_call_bf16(g, g->nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ccoe_gemm_run_bf16_serial(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                               float alpha, const float *A, int lda, const float *B, int ldb,
                               float beta, float *C, int ldc)
{
    gemm_call_bf16(g, 1, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ccoe_gemm_run_linear(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                          float alpha, const float *A, int lda, const float *B, int ldb,
                          float beta, float *C, int ldc)
{
    if (g->precision == CCOE_PRECISION_BF16)
        gemm_call_bf16(g, g->nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C,
                       ldc);
    else
        gemm_call(g, g->nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ccoe_gemm_run_linear_serial(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                                 float alpha, const float *A, int lda, const float *B, int ldb,
                                 float beta, float *C, int ldc)
{
    if (g->precision == CCOE_PRECISION_BF16)
        gemm_call_bf16(g, 1, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    else
        gemm_call(g, 1, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- precision ---- */

int ccoe_gemm_bf16_available(void)
{
    const char *off = getenv("CCOE_GEMM_NO_BF16");
    if (off && off[0] && strcmp(off, "0") != 0)
        return 0;
    return gemm_bf16_cpu_ok();
}

ccoe_status ccoe_gemm_set_precision(ccoe_gemm *g, ccoe_precision p, ccoe_error *err)
{
    static const char bf16_tag[] = "bf16:avx512bf16+";
    const size_t tag = sizeof bf16_tag - 1;
    const int tagged = strncmp(g->kernel_set, bf16_tag, tag) == 0;
    if (p == CCOE_PRECISION_FP32) {
        if (tagged)
            memmove(g->kernel_set, g->kernel_set + tag, strlen(g->kernel_set + tag) + 1);
        g->precision = p;
        return CCOE_OK;
    }
    if (p != CCOE_PRECISION_BF16)
        return ccoe_error_set(err, CCOE_ERR_ARG, "unknown precision id %d (allowed: fp32, bf16)",
                              (int)p);
    if (!ccoe_gemm_bf16_available())
        return ccoe_error_set(err, CCOE_ERR_BACKEND,
                              "precision bf16 needs a CPU with the AVX512-BF16 instructions "
                              "(avx512_bf16 in /proc/cpuinfo, with AVX-512 F/BW/VL/DQ)%s; this "
                              "one has none, and ccoe does not emulate them (slower than fp32): "
                              "set run.precision = fp32",
                              getenv("CCOE_GEMM_NO_BF16") ? " (CCOE_GEMM_NO_BF16 is set)" : "");
    if (!g->bf16 && !(g->bf16 = gemm_bf16_new(g->nthreads)))
        return ccoe_error_set(err, CCOE_ERR_NOMEM, "out of memory for the bf16 GEMM's packing "
                              "scratch");
    if (!tagged) { /* the kernel set names the bf16 kernels in front of the fp32 ones */
        char rest[sizeof g->kernel_set];
        snprintf(rest, sizeof rest, "%s", g->kernel_set);
        snprintf(g->kernel_set, sizeof g->kernel_set, "%s%.63s", bf16_tag, rest);
    }
    g->precision = p;
    return CCOE_OK;
}

void ccoe_gemm_free(ccoe_gemm *g)
{
    gemm_bf16_free(g->bf16);
    g->bf16 = NULL;
    g->precision = CCOE_PRECISION_FP32;
}

const char *ccoe_precision_name(ccoe_precision p)
{
    return p == CCOE_PRECISION_BF16 ? "bf16" : p == CCOE_PRECISION_FP32 ? "fp32" : "unknown";
}

ccoe_status ccoe_precision_parse(const char *s, ccoe_precision *out, ccoe_error *err)
{
    if (s && strcmp(s, "fp32") == 0) {
        *out = CCOE_PRECISION_FP32;
        return CCOE_OK;
    }
    if (s && strcmp(s, "bf16") == 0) {
        *out = CCOE_PRECISION_BF16;
        return CCOE_OK;
    }
    return ccoe_error_set(err, CCOE_ERR_ARG, "unknown precision '%s' (allowed: fp32, bf16)",
                          s ? s : "(null)");
}

void ccoe_gemm_run(const ccoe_gemm *g, int transa, int transb, int M, int N, int K, float alpha,
                   const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    gemm_call(g, g->nthreads, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ccoe_gemm_run_serial(const ccoe_gemm *g, int transa, int transb, int M, int N, int K,
                          float alpha, const float *A, int lda, const float *B, int ldb,
                          float beta, float *C, int ldc)
{
    gemm_call(g, 1, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* ---- setup ---- */

ccoe_status ccoe_gemm_init(ccoe_gemm *g, ccoe_gemm_backend backend, int nthreads, ccoe_error *err)
{
    memset(g, 0, sizeof *g);
    if (backend < CCOE_GEMM_AUTO || backend > CCOE_GEMM_XSMM)
        return ccoe_error_set(err, CCOE_ERR_ARG, "unknown GEMM backend id %d (allowed: auto, ref, "
                              "blis, xsmm)", (int)backend);
    if (nthreads <= 0)
        nthreads = 1;
    g->nthreads = nthreads;

    pthread_once(&gemm_once, gemm_global_setup);
    if (gemm_g.status != CCOE_OK && backend != CCOE_GEMM_REF) /* ref needs neither library */
        return ccoe_error_set(err, gemm_g.status, "GEMM backend %s: %s",
                              ccoe_gemm_backend_name(backend), gemm_g.msg);

    switch (backend) {
    case CCOE_GEMM_REF:
        snprintf(g->kernel_set, sizeof g->kernel_set, "ref");
        break;
    case CCOE_GEMM_BLIS:
        snprintf(g->kernel_set, sizeof g->kernel_set, "blis:%s", gemm_g.blis_name);
        break;
    case CCOE_GEMM_XSMM:
        if (!gemm_g.xsmm_ok)
            return ccoe_error_set(err, CCOE_ERR_BACKEND, "GEMM backend xsmm: libxsmm cannot JIT "
                                  "kernels on this CPU (target '%s', needs AVX2 or better); use "
                                  "backend auto or blis", gemm_g.xsmm_name);
        snprintf(g->kernel_set, sizeof g->kernel_set, "xsmm:%s+blis:%s", gemm_g.xsmm_name,
                 gemm_g.blis_name);
        break;
    case CCOE_GEMM_AUTO:
        if (gemm_g.xsmm_ok) {
            snprintf(g->kernel_set, sizeof g->kernel_set, "xsmm:%s+blis:%s", gemm_g.xsmm_name,
                     gemm_g.blis_name);
        } else { /* libxsmm unusable: AUTO resolves to BLIS */
            backend = CCOE_GEMM_BLIS;
            snprintf(g->kernel_set, sizeof g->kernel_set, "blis:%s", gemm_g.blis_name);
        }
        break;
    }
    g->backend = backend;
    bli_thread_set_num_threads(nthreads);
    omp_set_num_threads(nthreads);
    return CCOE_OK;
}

void ccoe_gemm_set_threads(ccoe_gemm *g, int nthreads)
{
    g->nthreads = nthreads > 0 ? nthreads : 1;
    bli_thread_set_num_threads(g->nthreads);
    omp_set_num_threads(g->nthreads);
}

const char *ccoe_gemm_backend_name(ccoe_gemm_backend b)
{
    switch (b) {
    case CCOE_GEMM_AUTO:
        return "auto";
    case CCOE_GEMM_REF:
        return "ref";
    case CCOE_GEMM_BLIS:
        return "blis";
    case CCOE_GEMM_XSMM:
        return "xsmm";
    }
    return "unknown";
}

ccoe_status ccoe_gemm_backend_parse(const char *s, ccoe_gemm_backend *out, ccoe_error *err)
{
    static const ccoe_gemm_backend all[] = {CCOE_GEMM_AUTO, CCOE_GEMM_REF, CCOE_GEMM_BLIS,
                                            CCOE_GEMM_XSMM};
    for (size_t i = 0; s && i < sizeof all / sizeof all[0]; i++) {
        if (strcmp(s, ccoe_gemm_backend_name(all[i])) == 0) {
            *out = all[i];
            return CCOE_OK;
        }
    }
    return ccoe_error_set(err, CCOE_ERR_ARG, "unknown GEMM backend '%s' (allowed: auto, ref, blis, "
                          "xsmm)", s ? s : "(null)");
}

/* ---- benchmark ---- */

/* Returns 0.0 when n <= 0 or the three n x n buffers cannot be allocated. Allocates (benchmarks
 * only, never on a training path). Measures ccoe_gemm_run_linear: the bf16 GEMM in a context
 * whose linear-layer precision is bf16. */
double ccoe_gemm_measure_gflops(const ccoe_gemm *g, int n, double seconds)
{
    if (n <= 0)
        return 0.0;
    size_t nn = (size_t)n * n, bytes = (nn * sizeof(float) + 63) / 64 * 64;
    float *a = aligned_alloc(64, bytes), *b = aligned_alloc(64, bytes), *c = aligned_alloc(64, bytes);
    double rate = 0.0;
    if (a && b && c) {
        for (size_t i = 0; i < nn; i++) {
            a[i] = (float)((i * 7 + 3) % 13) / 13.0f - 0.5f;
            b[i] = (float)((i * 5 + 1) % 11) / 11.0f - 0.5f;
        }
        ccoe_gemm_run_linear(g, 0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n); /* warm-up */
        long reps = 0;
        double t0 = ccoe_now(), t = t0;
        do {
            ccoe_gemm_run_linear(g, 0, 0, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            reps++;
            t = ccoe_now();
        } while (t - t0 < seconds || reps < 2);
        rate = 2.0 * (double)n * n * n * (double)reps / (t - t0) * 1e-9;
    }
    free(a);
    free(b);
    free(c);
    return rate;
}
