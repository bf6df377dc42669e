/* gemm_bf16.c - the bf16 GEMM of the GEMM layer: fp32 operands rounded to bf16 while packed,
 * products summed in fp32 by AVX512-BF16 dot-product instructions, fp32 output.
 *
 * Same row-major contract as ccoe_gemm_run (gemm.h). A GotoBLAS-style blocked driver: for each
 * (NC columns, KC depth) block, op(B) is rounded and packed into NR-column micro-panels shared
 * by the threads; each thread rounds and packs MC-row blocks of op(A) into MR-row micro-panels
 * of its own and runs an MR x NR micro-kernel over them. Packed panels hold bf16 pairs along K
 * (the "VNNI" layout vdpbf16ps reads: one 32-bit word = elements k and k+1, k even, the even one
 * in the low half); an odd K is padded with a zero. Rows and columns past the edge of a panel
 * are zero, so the micro-kernel always runs full size and stores only the valid part.
 *
 * Rounding: round-to-nearest-even on the bit pattern (subnormals rounded, not flushed; NaN stays
 * NaN, quietened; values above the largest bf16 round to infinity), in integer arithmetic so
 * that the scalar ccoe_bf16_round and the vector packing agree bit for bit. vdpbf16ps itself
 * treats bf16 subnormal inputs as zero.
 *
 * Determinism: every element of C is summed over K in one fixed order (KC blocks, then pairs)
 * whatever the thread count, the block a row falls in, or the serial/threaded entry, so results
 * are bit-identical across thread counts.
 *
 * Everything that executes AVX-512 instructions carries a function-level target attribute, so
 * this file builds without -march=native and gemm.c reaches it only after a cpuid check.
 * Packing scratch is allocated once (ccoe_gemm_set_precision), never on the call path.
 */
#include "gemm.h"
#include "gemm_bf16.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <immintrin.h>
#include <omp.h>

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* Micro-kernel tile and cache blocks (in elements of C / K). MR x NR = 8 x 32: 16 accumulator
 * registers, two B loads and eight broadcasts per K pair. KC keeps a B micro-panel (KC x NR
 * bf16, 16 KiB) in L1; MC x KC of A (96 KiB) stays in L2; KC x NC of B (1 MiB) in L2/L3. */
#define MR 8
#define NR 32
#define KC 256
#define KCP (KC / 2) /* K pairs per block */
#define MC_MAX 192
#define NC 2048

/* Below this many multiply-adds per thread a threaded call runs on one thread. */
#define BF16_PAR_MIN_MNK (64L * 64L * 64L)

struct ccoe_gemm_bf16 {
    int nslots;          /* per-thread slots; one more (the last) is shared under `lock` */
    size_t a_words;      /* 32-bit words of a slot's A block */
    size_t b_words;      /* ... and of its B block */
    uint32_t *mem;       /* (nslots + 1) * (a_words + b_words) words, 64-byte aligned */
    omp_lock_t lock;     /* guards the overflow slot */
};

/* ---- rounding ---- */

/* u + rounding increment, with the bf16 in the high half; NaN kept (quietened). */
static inline uint32_t bf16_hi(uint32_t u)
{
    uint32_t r = u + 0x7fffu + ((u >> 16) & 1u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        r = u | 0x00400000u;
    return r & 0xffff0000u;
}

uint16_t ccoe_bf16_round(float x)
{
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return (uint16_t)(bf16_hi(u) >> 16);
}

float ccoe_bf16_float(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static inline uint32_t pair_of(float lo, float hi)
{
    uint32_t a, b;
    memcpy(&a, &lo, sizeof a);
    memcpy(&b, &hi, sizeof b);
    return (bf16_hi(a) >> 16) | bf16_hi(b);
}

/* The vector form of bf16_hi on 16 floats (the low halves are left as they are: callers keep
 * only the high ones). */
BF16_TARGET static inline __m512i bf16_hi16(__m512 x)
{
    const __m512i u = _mm512_castps_si512(x);
    const __m512i one = _mm512_set1_epi32(1);
    __m512i r = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                                     _mm512_and_si512(_mm512_srli_epi32(u, 16), one)));
    const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
    return _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
}

/* 16 pairs from two vectors of the same 16 indices at k (even) and k + 1. */
BF16_TARGET static inline __m512i pairs_vertical(__m512 even, __m512 odd)
{
    return _mm512_mask_blend_epi16(0xAAAAAAAAu, _mm512_srli_epi32(bf16_hi16(even), 16),
                                   bf16_hi16(odd));
}

/* 16 pairs from 32 consecutive elements of one row (k, k+1, ..., k+31). */
BF16_TARGET static inline __m512i pairs_horizontal(__m512 x0, __m512 x1)
{
    /* output word w is the high half of element w: source word 2w + 1 of (x0, x1) */
    const __m512i idx = _mm512_set_epi16(63, 61, 59, 57, 55, 53, 51, 49, 47, 45, 43, 41, 39, 37,
                                         35, 33, 31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7,
                                         5, 3, 1);
    return _mm512_permutex2var_epi16(bf16_hi16(x0), idx, bf16_hi16(x1));
}

/* Transposes 16 rows of 16 32-bit words in place. */
BF16_TARGET static inline void transpose16(__m512i r[16])
{
    __m512 t[16], s[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_castsi512_ps(_mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]));
        t[2 * i + 1] = _mm512_castsi512_ps(_mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
    }
    /* s[4g + c], 128-bit lane L: rows 4g..4g+3 of column 4L + c */
    for (int g = 0; g < 4; g++) {
        s[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], _MM_SHUFFLE(3, 2, 3, 2));
        s[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(1, 0, 1, 0));
        s[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], _MM_SHUFFLE(3, 2, 3, 2));
    }
    for (int c = 0; c < 4; c++) {
        t[c] = _mm512_shuffle_f32x4(s[c], s[4 + c], 0x88);      /* g0, g1 of columns c, c+8 */
        t[4 + c] = _mm512_shuffle_f32x4(s[c], s[4 + c], 0xdd);  /* ... of columns 4+c, 12+c */
        t[8 + c] = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(s[8 + c], s[12 + c], 0xdd);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm512_castps_si512(_mm512_shuffle_f32x4(t[c], t[8 + c], 0x88));
        r[c + 8] = _mm512_castps_si512(_mm512_shuffle_f32x4(t[c], t[8 + c], 0xdd));
        r[c + 4] = _mm512_castps_si512(_mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0x88));
        r[c + 12] = _mm512_castps_si512(_mm512_shuffle_f32x4(t[4 + c], t[12 + c], 0xdd));
    }
}

/* ---- packing ----
 * A block of an operand: n indices (rows of op(A) or columns of op(B)) by kc values of K, at
 * src[idx * s_idx + k * s_k]. Packed into ceil(n / R) micro-panels of R indices, each kp = ceil(kc
 * / 2) pairs deep: word (idx, p) at dst[(idx / R) * kp * R + p * R + idx % R]. */

static inline size_t packed_at(int R, int kp, int idx, int p)
{
    return (size_t)(idx / R) * kp * R + (size_t)p * R + idx % R;
}

/* Contiguous along the index (s_idx == 1): rows k, k + 1 of the storage give 16 pairs at once. */
BF16_TARGET static void pack_vertical(uint32_t *dst, int R, const float *src, size_t s_k, int n,
                                      int kc)
{
    const int kp = (kc + 1) / 2, np = (n + R - 1) / R;
    const int w = R < 16 ? R : 16; /* words per store: R is 8 or a multiple of 16 */
    const __mmask16 wm = (__mmask16)((1u << w) - 1u);
    for (int p = 0; p < kp; p++) {
        const float *r0 = src + (size_t)(2 * p) * s_k;
        const float *r1 = 2 * p + 1 < kc ? r0 + s_k : NULL;
        for (int q = 0; q < np; q++) {
            uint32_t *d = dst + (size_t)q * kp * R + (size_t)p * R;
            for (int j = 0; j < R; j += w) {
                const int i0 = q * R + j, m = n - i0 < w ? (n - i0 > 0 ? n - i0 : 0) : w;
                const __mmask16 k = (__mmask16)((1u << m) - 1u);
                const __m512 e = _mm512_maskz_loadu_ps(k, r0 + i0);
                const __m512 o = r1 ? _mm512_maskz_loadu_ps(k, r1 + i0) : _mm512_setzero_ps();
                _mm512_mask_storeu_epi32(d + j, wm, _mm512_maskz_mov_epi32(k, pairs_vertical(e, o)));
            }
        }
    }
}

/* Contiguous along K (s_k == 1): 16 indices x 16 pairs per step through a transpose; the edges
 * (fewer than 16 indices or pairs left, an odd K) one word at a time. */
BF16_TARGET static void pack_horizontal(uint32_t *dst, int R, const float *src, size_t s_idx,
                                        int n, int kc)
{
    const int kp = (kc + 1) / 2, np = (n + R - 1) / R, npad = np * R;
    const int kfull = kc / 32 * 16; /* pairs covered by whole 32-element loads */
    const int nfull = n / 16 * 16;
    for (int i0 = 0; i0 < nfull; i0 += 16) {
        for (int p0 = 0; p0 < kfull; p0 += 16) {
            __m512i r[16];
            for (int i = 0; i < 16; i++) {
                const float *s = src + (size_t)(i0 + i) * s_idx + 2 * (size_t)p0;
                r[i] = pairs_horizontal(_mm512_loadu_ps(s), _mm512_loadu_ps(s + 16));
            }
            transpose16(r);
            /* R is a multiple of 8: 16 indices from i0 (a multiple of 16) are in one panel when
             * R >= 16, else in two halves of two panels */
            for (int p = 0; p < 16; p++) {
                if (R % 16 == 0) {
                    _mm512_storeu_si512(dst + packed_at(R, kp, i0, p0 + p), r[p]);
                } else {
                    _mm256_storeu_si256((__m256i *)(dst + packed_at(R, kp, i0, p0 + p)),
                                        _mm512_castsi512_si256(r[p]));
                    _mm256_storeu_si256((__m256i *)(dst + packed_at(R, kp, i0 + 8, p0 + p)),
                                        _mm512_extracti64x4_epi64(r[p], 1));
                }
            }
        }
        for (int i = i0; i < i0 + 16; i++) {
            const float *s = src + (size_t)i * s_idx;
            for (int p = kfull; p < kp; p++)
                dst[packed_at(R, kp, i, p)] =
                    pair_of(s[2 * p], 2 * p + 1 < kc ? s[2 * p + 1] : 0.0f);
        }
    }
    for (int i = nfull; i < npad; i++) {
        const float *s = src + (size_t)i * s_idx;
        for (int p = 0; p < kp; p++)
            dst[packed_at(R, kp, i, p)] =
                i < n ? pair_of(s[2 * p], 2 * p + 1 < kc ? s[2 * p + 1] : 0.0f) : 0u;
    }
}

/* Either layout, or neither contiguous (a 1-wide operand): the general case word by word. */
BF16_TARGET static void pack(uint32_t *dst, int R, const float *src, size_t s_idx, size_t s_k,
                             int n, int kc)
{
    if (s_idx == 1 && n > 1) {
        pack_vertical(dst, R, src, s_k, n, kc);
    } else if (s_k == 1 && kc > 1) {
        pack_horizontal(dst, R, src, s_idx, n, kc);
    } else {
        const int kp = (kc + 1) / 2, npad = (n + R - 1) / R * R;
        for (int i = 0; i < npad; i++)
            for (int p = 0; p < kp; p++) {
                const float *s = src + (size_t)i * s_idx + (size_t)(2 * p) * s_k;
                dst[packed_at(R, kp, i, p)] =
                    i < n ? pair_of(s[0], 2 * p + 1 < kc ? s[s_k] : 0.0f) : 0u;
            }
    }
}

/* ---- micro-kernel ---- */

/* C(mr, nr) = alpha * Ap Bp + beta * C for one MR x NR tile (mr <= MR, nr <= NR valid); Ap is an
 * A micro-panel (kp pairs x MR), Bp a B micro-panel (kp pairs x NR). beta == 0 does not read C. */
BF16_TARGET static void micro_kernel(int kp, const uint32_t *restrict ap,
                                     const uint32_t *restrict bp, float *C, int ldc, int mr,
                                     int nr, float alpha, float beta)
{
    __m512 c[MR][2];
    for (int r = 0; r < MR; r++)
        c[r][0] = c[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < kp; p++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512(bp + (size_t)p * NR);
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512(bp + (size_t)p * NR + 16);
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            const __m512bh a = (__m512bh)_mm512_set1_epi32((int)ap[(size_t)p * MR + r]);
            c[r][0] = _mm512_dpbf16_ps(c[r][0], a, b0);
            c[r][1] = _mm512_dpbf16_ps(c[r][1], a, b1);
        }
    }
    const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1u);
    const __mmask16 m1 = nr >= 32 ? 0xffff : nr > 16 ? (__mmask16)((1u << (nr - 16)) - 1u) : 0;
    const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
    for (int r = 0; r < mr; r++) {
        float *row = C + (size_t)r * ldc;
        __m512 v0 = _mm512_mul_ps(va, c[r][0]), v1 = _mm512_mul_ps(va, c[r][1]);
        if (beta == 1.0f) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, row));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, row + 16));
        } else if (beta != 0.0f) {
            v0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, row), v0);
            v1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, row + 16), v1);
        }
        _mm512_mask_storeu_ps(row, m0, v0);
        _mm512_mask_storeu_ps(row + 16, m1, v1);
    }
}

/* ---- driver ---- */

typedef struct bf16_call {
    int transa, transb, M, N, K;
    float alpha, beta;
    const float *A, *B;
    int lda, ldb, ldc;
    float *C;
} bf16_call;

/* The part of the call thread `tid` of `nt` runs (nt > 1: inside a parallel region of nt
 * threads, all of them running this with the same arguments). Bp is shared, Ap the thread's. */
BF16_TARGET static void bf16_blocks(const bf16_call *c, int tid, int nt, uint32_t *Ap,
                                    uint32_t *Bp)
{
    const int M = c->M, N = c->N, K = c->K;
    /* op(A)[i][k] = A[i * a_i + k * a_k]; op(B)[k][j] = B[j * b_j + k * b_k] */
    const size_t a_i = c->transa ? 1 : (size_t)c->lda, a_k = c->transa ? (size_t)c->lda : 1;
    const size_t b_j = c->transb ? (size_t)c->ldb : 1, b_k = c->transb ? 1 : (size_t)c->ldb;
    /* row blocks: as few as MC_MAX allows, a multiple of nt when threaded, MR-aligned */
    int n_ic = (M + MC_MAX - 1) / MC_MAX;
    if (nt > 1)
        n_ic = (n_ic + nt - 1) / nt * nt;
    int mc = (M + n_ic - 1) / n_ic;
    mc = (mc + MR - 1) / MR * MR;
    if (mc > MC_MAX)
        mc = MC_MAX;
    n_ic = (M + mc - 1) / mc;
    /* with fewer row blocks than threads, each row block's columns are split too */
    const int n_jsplit = n_ic < nt ? nt : 1;
    const int jobs = n_ic * n_jsplit;
    for (int jc = 0; jc < N; jc += NC) {
        const int nc = N - jc < NC ? N - jc : NC, n_jr = (nc + NR - 1) / NR;
        for (int pc = 0; pc < K; pc += KC) {
            const int kc = K - pc < KC ? K - pc : KC, kp = (kc + 1) / 2;
            const float beta = pc == 0 ? c->beta : 1.0f;
            /* pack op(B)[pc.., jc..] by groups of micro-panels, spread over the threads */
            const int per = (n_jr + nt - 1) / nt;
            for (int q = tid * per; q < n_jr && q < (tid + 1) * per; q += 4) {
                const int q1 = q + 4 < (tid + 1) * per ? q + 4 : (tid + 1) * per;
                const int j0 = q * NR, nj = (q1 < n_jr ? q1 * NR : nc) - j0;
                pack(Bp + (size_t)q * kp * NR, NR, c->B + (size_t)(jc + j0) * b_j + (size_t)pc * b_k,
                     b_j, b_k, nj, kc);
            }
            if (nt > 1) {
#pragma omp barrier
            }
            for (int job = tid; job < jobs; job += nt) {
                const int ib = job / n_jsplit, js = job % n_jsplit;
                const int i0 = ib * mc, mcur = M - i0 < mc ? M - i0 : mc;
                const int jr0 = (int)((long)n_jr * js / n_jsplit);
                const int jr1 = (int)((long)n_jr * (js + 1) / n_jsplit);
                if (jr0 >= jr1)
                    continue;
                pack(Ap, MR, c->A + (size_t)i0 * a_i + (size_t)pc * a_k, a_i, a_k, mcur, kc);
                for (int jr = jr0; jr < jr1; jr++) {
                    const int j = jr * NR, nr = nc - j < NR ? nc - j : NR;
                    const uint32_t *bp = Bp + (size_t)jr * kp * NR;
                    for (int ir = 0; ir * MR < mcur; ir++) {
                        const int mr = mcur - ir * MR < MR ? mcur - ir * MR : MR;
                        micro_kernel(kp, Ap + (size_t)ir * kp * MR, bp,
                                     c->C + (size_t)(i0 + ir * MR) * c->ldc + jc + j, c->ldc, mr,
                                     nr, c->alpha, beta);
                    }
                }
            }
            if (nt > 1) {
#pragma omp barrier
            }
        }
    }
}

static uint32_t *slot_a(const ccoe_gemm_bf16 *s, int i)
{
    return s->mem + (size_t)i * (s->a_words + s->b_words);
}

static uint32_t *slot_b(const ccoe_gemm_bf16 *s, int i)
{
    return slot_a(s, i) + s->a_words;
}

void gemm_bf16_run(const ccoe_gemm_bf16 *s, int nthreads, int transa, int transb, int M, int N,
                   int K, float alpha, const float *A, int lda, const float *B, int ldb,
                   float beta, float *C, int ldc)
{
    const bf16_call c = {transa, transb, M, N, K, alpha, beta, A, B, lda, ldb, ldc, C};
    int nt = nthreads < s->nslots ? nthreads : s->nslots;
    if (nt > 1 && (long)M * N * K < BF16_PAR_MIN_MNK * nt)
        nt = 1;
    if (nt <= 1) {
        /* a serial call may come from any thread of a caller's parallel region */
        const int tid = omp_in_parallel() ? omp_get_thread_num() : 0;
        if (tid < s->nslots) {
            bf16_blocks(&c, 0, 1, slot_a(s, tid), slot_b(s, tid));
        } else { /* a team larger than the context was set up for: the shared slot, in turn */
            omp_lock_t *lk = (omp_lock_t *)&s->lock;
            omp_set_lock(lk);
            bf16_blocks(&c, 0, 1, slot_a(s, s->nslots), slot_b(s, s->nslots));
            omp_unset_lock(lk);
        }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        /* a smaller team than asked for still covers every job: the loops use its real size */
        const int tn = omp_get_num_threads(), tid = omp_get_thread_num();
        bf16_blocks(&c, tid, tn, slot_a(s, tid), slot_b(s, 0));
    }
}

int gemm_bf16_cpu_ok(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512bf16");
}

ccoe_gemm_bf16 *gemm_bf16_new(int nthreads)
{
    ccoe_gemm_bf16 *s = calloc(1, sizeof *s);
    if (!s)
        return NULL;
    int n = nthreads;
    if (omp_get_max_threads() > n)
        n = omp_get_max_threads();
    if (omp_get_num_procs() > n)
        n = omp_get_num_procs();
    s->nslots = n > 0 ? n : 1;
    s->a_words = (size_t)MC_MAX * KCP;
    s->b_words = (size_t)NC * KCP;
    const size_t bytes = (size_t)(s->nslots + 1) * (s->a_words + s->b_words) * sizeof(uint32_t);
    s->mem = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!s->mem) {
        free(s);
        return NULL;
    }
    memset(s->mem, 0, bytes);
    omp_init_lock(&s->lock);
    return s;
}

void gemm_bf16_free(ccoe_gemm_bf16 *s)
{
    if (!s)
        return;
    omp_destroy_lock(&s->lock);
    free(s->mem);
    free(s);
}
