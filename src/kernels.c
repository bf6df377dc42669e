/* kernels.c - the transformer's layers in float: fast, threaded, checked against kernels_ref.c.
 *
 * Threads: every kernel opens its own OpenMP region over rows, columns or (batch, head) pairs,
 * with the thread count set globally by ccoe_gemm_init. Results do not depend on the thread
 * count except where a GEMM backend's own blocking does: reductions across rows (dweight, dbias,
 * embedding gradients) are split by output element (column, or token id) so that each sum keeps
 * the serial order.
 * Vectorisation: inner loops are plain unit-stride loops (`omp simd` where a reduction or a
 * possible alias would otherwise stop the compiler); exp is a polynomial (exp_approx) the
 * compiler can vectorise, since libm's expf is not vectorised without -ffast-math.
 * Not here: GEMM itself (gemm.c), allocation (every buffer and scratch comes from the caller).
 */
#include "kernels.h"

#include <assert.h>
#include <math.h>
#include <omp.h>
#include <string.h>

#define NORM_EPS 1e-5f /* the epsilon of the forms without one (GPT-2's LayerNorm) */
#define GELU_K0 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_K1 0.044715f

/* Query rows per attention tile: bounds the per-thread score blocks at ATTN_TILE x T and skips
 * most of the masked upper triangle. Measured on Zen 5 (1 thread, hd 64, T 64..1024): 32 beats
 * 64 by 5-15% and 128 by 20-50%; 16 is no better than 32. */
#define ATTN_TILE 32

/* exp(x) in float to about 2 ulp (Cephes expf's polynomial), written so that loops calling it
 * vectorise: exp(x) = 2^n * exp(r), n = round(x / ln 2), |r| <= ln(2) / 2. Inputs below about
 * -87.7 give 0 (no subnormals), inputs above 88 are clamped to exp(88); NaN stays NaN.
 * n is read from the bits of x / ln 2 + 1.5 * 2^23 (whose low mantissa bits hold n) rather than
 * by a float-to-int conversion, which would be undefined for NaN. Unions rather than memcpy for
 * the bit casts: an address-taken copy defeats `omp simd`. */
static inline float exp_approx(float x)
{
    x = x < -88.0f ? -88.0f : x;
    x = x > 88.0f ? 88.0f : x;
    const float magic = 12582912.0f; /* 1.5 * 2^23: adding it rounds to an integer */
    union {
        float f;
        uint32_t u;
    } t, scale;
    t.f = fmaf(x, 1.44269504088896341f, magic);
    float n = t.f - magic;
    float r = fmaf(n, -0.693359375f, x); /* ln 2 split in two for an exact first product */
    r = fmaf(n, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    float y = fmaf(p, r * r, r) + 1.0f;
    /* t.u = 0x4B400000 + n, n in [-127, 127]: the float 2^n, or 0 for n = -127 */
    scale.u = (t.u - 0x4B400000u + 127u) << 23;
    return y * scale.f;
}

/* [lo, hi) of a split of n items into nt nearly equal parts, boundaries rounded to multiples of
 * 16 floats (one cache line) so that threads never share a line. */
static void split16(int n, int nt, int t, int *lo, int *hi)
{
    int blocks = (n + 15) / 16;
    int b0 = (int)((long)blocks * t / nt), b1 = (int)((long)blocks * (t + 1) / nt);
    *lo = b0 * 16 < n ? b0 * 16 : n;
    *hi = b1 * 16 < n ? b1 * 16 : n;
}

/* ---- embedding ---- */

void ccoe_embed_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                        int B, int T, int C)
{
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        const float *restrict we = wte + (size_t)tokens[bt] * C;
        float *restrict o = out + (size_t)bt * C;
        if (!wpe) { /* no position table (rotary positions act inside attention) */
            memcpy(o, we, (size_t)C * sizeof(float));
            continue;
        }
        const float *restrict wp = wpe + (size_t)(bt % T) * C;
        for (int c = 0; c < C; c++)
            o[c] = we[c] + wp[c];
    }
}

/* Tokens repeat, so rows of dwte collide. Each thread owns a contiguous range of token ids (and
 * of positions) and scans all rows, adding only what it owns: no races, each row sums in the
 * serial order. Splitting by column instead (each thread half of every row) is several times
 * slower: the hardware prefetchers pull the other thread's half of the rows. The
 * token range balances only as well as the token ids do; at worst it runs at serial speed. */
void ccoe_embed_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                         int B, int T, int C)
{
    int32_t vmax = 0; /* the vocabulary size is not an argument: the largest id bounds it */
    for (int bt = 0; bt < B * T; bt++)
        vmax = tokens[bt] > vmax ? tokens[bt] : vmax;
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        long v0 = (long)(vmax + 1) * t / nt, v1 = (long)(vmax + 1) * (t + 1) / nt;
        int p0 = (int)((long)T * t / nt), p1 = (int)((long)T * (t + 1) / nt);
        for (int bt = 0; bt < B * T; bt++) {
            const float *restrict d = dout + (size_t)bt * C;
            int32_t tok = tokens[bt];
            int pos = bt % T;
            if (tok >= v0 && tok < v1) {
                float *restrict dwe = dwte + (size_t)tok * C;
                for (int c = 0; c < C; c++)
                    dwe[c] += d[c];
            }
            if (dwpe && pos >= p0 && pos < p1) {
                float *restrict dwp = dwpe + (size_t)pos * C;
                for (int c = 0; c < C; c++)
                    dwp[c] += d[c];
            }
        }
    }
}

/* ---- LayerNorm / RMSNorm ---- */

void ccoe_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                            const float *weight, const float *bias, int N, int C)
{
    ccoe_layernorm_forward_eps(out, mean, rstd, inp, weight, bias, N, C, NORM_EPS);
}

void ccoe_layernorm_forward_eps(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int N, int C, float eps)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict x = inp + (size_t)n * C;
        float *restrict o = out + (size_t)n * C;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int c = 0; c < C; c++)
            s += x[c];
        float m = s / (float)C;
        float v = 0.0f;
#pragma omp simd reduction(+ : v)
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += d * d;
        }
        float rs = 1.0f / sqrtf(v / (float)C + eps);
        for (int c = 0; c < C; c++)
            o[c] = (x[c] - m) * rs * weight[c] + bias[c];
        mean[n] = m;
        rstd[n] = rs;
    }
}

void ccoe_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, const float *mean,
                             const float *rstd, int N, int C)
{
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict d = dout + (size_t)n * C;
            float *restrict dx = dinp + (size_t)n * C;
            float m = mean[n], rs = rstd[n];
            float mdn = 0.0f, mdnx = 0.0f;
#pragma omp simd reduction(+ : mdn, mdnx)
            for (int c = 0; c < C; c++) {
                float dn = d[c] * weight[c];
                mdn += dn;
                mdnx += dn * (x[c] - m) * rs;
            }
            mdn /= (float)C;
            mdnx /= (float)C;
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * rs;
                dx[c] += rs * (d[c] * weight[c] - mdn - xhat * mdnx);
            }
        }
        /* dweight, dbias: sums over rows, split by column (no races, fixed order). */
        int c0, c1;
        split16(C, omp_get_num_threads(), omp_get_thread_num(), &c0, &c1);
        float *restrict dw = dweight;
        float *restrict db = dbias;
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict d = dout + (size_t)n * C;
            float m = mean[n], rs = rstd[n];
            for (int c = c0; c < c1; c++) {
                dw[c] += d[c] * (x[c] - m) * rs;
                db[c] += d[c];
            }
        }
    }
}

void ccoe_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N,
                          int C)
{
    ccoe_rmsnorm_forward_eps(out, rstd, inp, weight, N, C, NORM_EPS);
}

void ccoe_rmsnorm_forward_eps(float *out, float *rstd, const float *inp, const float *weight,
                              int N, int C, float eps)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict x = inp + (size_t)n * C;
        float *restrict o = out + (size_t)n * C;
        float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
        for (int c = 0; c < C; c++)
            ss += x[c] * x[c];
        float rs = 1.0f / sqrtf(ss / (float)C + eps);
        for (int c = 0; c < C; c++)
            o[c] = x[c] * rs * weight[c];
        rstd[n] = rs;
    }
}

void ccoe_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                           const float *weight, const float *rstd, int N, int C)
{
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict d = dout + (size_t)n * C;
            float *restrict dx = dinp + (size_t)n * C;
            float rs = rstd[n];
            float mdnx = 0.0f;
#pragma omp simd reduction(+ : mdnx)
            for (int c = 0; c < C; c++)
                mdnx += d[c] * weight[c] * x[c];
            mdnx *= rs / (float)C;
            for (int c = 0; c < C; c++)
                dx[c] += rs * (d[c] * weight[c] - x[c] * rs * mdnx);
        }
        int c0, c1;
        split16(C, omp_get_num_threads(), omp_get_thread_num(), &c0, &c1);
        float *restrict dw = dweight;
        for (int n = 0; n < N; n++) {
            const float *restrict x = inp + (size_t)n * C;
            const float *restrict d = dout + (size_t)n * C;
            float rs = rstd[n];
            for (int c = c0; c < c1; c++)
                dw[c] += d[c] * x[c] * rs;
        }
    }
}

/* ---- linear ---- */

/* The GEMMs of a linear layer: in the context's linear-layer precision (ccoe_gemm_run_linear),
 * or in fp32 whatever it is (routers). */
typedef void (*gemm_fn)(const ccoe_gemm *, int, int, int, int, int, float, const float *, int,
                        const float *, int, float, float *, int);

static void linear_forward(gemm_fn run, const ccoe_gemm *g, float *out, const float *inp,
                           const float *weight, const float *bias, int N, int IC, int OC)
{
    if (bias) {
#pragma omp parallel for schedule(static)
        for (int n = 0; n < N; n++)
            memcpy(out + (size_t)n * OC, bias, (size_t)OC * sizeof(float));
    }
    run(g, 0, 1, N, OC, IC, 1.0f, inp, IC, weight, IC, bias ? 1.0f : 0.0f, out, OC);
}

void ccoe_linear_forward(const ccoe_gemm *g, float *out, const float *inp, const float *weight,
                         const float *bias, int N, int IC, int OC)
{
    linear_forward(ccoe_gemm_run_linear, g, out, inp, weight, bias, N, IC, OC);
}

void ccoe_linear_forward_fp32(const ccoe_gemm *g, float *out, const float *inp,
                              const float *weight, const float *bias, int N, int IC, int OC)
{
    linear_forward(ccoe_gemm_run, g, out, inp, weight, bias, N, IC, OC);
}

static void linear_backward(gemm_fn run, const ccoe_gemm *g, float *dinp, float *dweight,
                            float *dbias, const float *dout, const float *inp,
                            const float *weight, int N, int IC, int OC);

void ccoe_linear_backward(const ccoe_gemm *g, float *dinp, float *dweight, float *dbias,
                          const float *dout, const float *inp, const float *weight, int N,
                          int IC, int OC)
{
    linear_backward(ccoe_gemm_run_linear, g, dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
}

void ccoe_linear_backward_fp32(const ccoe_gemm *g, float *dinp, float *dweight, float *dbias,
                               const float *dout, const float *inp, const float *weight, int N,
                               int IC, int OC)
{
    linear_backward(ccoe_gemm_run, g, dinp, dweight, dbias, dout, inp, weight, N, IC, OC);
}

static void linear_backward(gemm_fn run, const ccoe_gemm *g, float *dinp, float *dweight,
                            float *dbias, const float *dout, const float *inp,
                            const float *weight, int N, int IC, int OC)
{
    if (dinp)
        run(g, 0, 0, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    run(g, 1, 0, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
    if (dbias) {
#pragma omp parallel
        {
            int o0, o1;
            split16(OC, omp_get_num_threads(), omp_get_thread_num(), &o0, &o1);
            float *restrict db = dbias;
            for (int n = 0; n < N; n++) {
                const float *restrict d = dout + (size_t)n * OC;
                for (int o = o0; o < o1; o++)
                    db[o] += d[o];
            }
        }
    }
}

/* ---- causal self-attention, grouped-query (multi-head when Hkv == H) ----
 * Per (b, kv head g) (one thread each), for each of the H / Hkv query heads h of the group
 * (h = g * (H / Hkv) + r, the grouping of Hugging Face's repeat_kv), query rows in tiles of up to
 * ATTN_TILE rows; tile [i0, i1) sees keys [0, i1). All GEMMs are small and single-threaded,
 * shaped so that the libxsmm backend can take them (libxsmm 1.17 needs an untransposed row-major
 * B and alpha = 1; BLIS's packing costs about half the time at these sizes): K^T (pre-scaled by
 * 1/sqrt(hd)) and V^T are transposed once per (b, g) into scratch and serve every head of the
 * group.
 *   forward:  S = Q_t (s K)^T; causal mask + row softmax in place (lse saved); O_t = P V
 *             (P unnormalised, O_t's rows scaled by 1 / rowsum afterwards).
 *   backward: P = exp(S - lse); dP = dO_t V^T; dS = s P (dP - D), D_i = dO_i . O_i;
 *             dQ_t += dS K; dK += dS^T Q_t; dV += P^T dO_t   (straight into dqkv: each (b, g)
 *             owns its k and v columns and the q columns of its heads, so threads never
 *             collide; dK and dV sum over the group's heads in head order).
 * Masked entries are exact zeros, so a later token never changes an earlier output. With
 * Hkv == H every group is one head and the operations are those of plain multi-head attention,
 * in the same order. */

/* Per-thread scratch layout: Kt (hd, ld), Vt (hd, ld), P (tile, ld), dP (tile, ld), D (tile)
 * (the forward uses Kt, P, and D for the row sums' inverses). */
typedef struct attn_layout {
    int hd, ld, tile;
    size_t kt, vt, p, dp, d, per_thread; /* offsets and size in floats */
} attn_layout;

static int round16(int n) { return (n + 15) / 16 * 16; }

static attn_layout attn_layout_of(int T, int hd)
{
    attn_layout a;
    a.hd = hd;
    a.ld = round16(T);
    a.tile = T < ATTN_TILE ? T : ATTN_TILE;
    size_t kv = (size_t)a.hd * a.ld, blk = (size_t)a.tile * a.ld;
    a.kt = 0;
    a.vt = kv;
    a.p = 2 * kv;
    a.dp = a.p + blk;
    a.d = a.dp + blk;
    a.per_thread = a.d + (size_t)round16(a.tile);
    return a;
}

size_t ccoe_gqa_scratch_floats(int B, int T, int H, int Hkv, int hd, int nthreads)
{
    (void)B, (void)H, (void)Hkv;
    return (size_t)(nthreads > 0 ? nthreads : 1) * attn_layout_of(T, hd).per_thread;
}

size_t ccoe_attention_scratch_floats(int B, int T, int C, int H, int nthreads)
{
    return ccoe_gqa_scratch_floats(B, T, H, H, C / H, nthreads);
}

/* dst(hd, ld): dst[d][j] = alpha * src[j * stride + d] for j < T, in blocks of 16 rows. */
static void transpose_scaled(float *restrict dst, int ld, const float *restrict src, int stride,
                             int T, int hd, float alpha)
{
    for (int j0 = 0; j0 < T; j0 += 16) {
        int j1 = j0 + 16 < T ? j0 + 16 : T;
        for (int d = 0; d < hd; d++)
            for (int j = j0; j < j1; j++)
                dst[(size_t)d * ld + j] = alpha * src[(size_t)j * stride + d];
    }
}

/* Causal mask and unnormalised row softmax of a score block S (rows i0..i0+m, keys 0..n = i0+m)
 * in place: S <- exp(S - rowmax), masked entries exact zeros; writes the row log-sum-exp to
 * lse[i0..i0+m) and 1 / rowsum to inv[0..m) (the caller scales O = S V by it: m x hd work
 * instead of m x n). Row i sees keys 0..i. Rows are short (T <= ~1k), so per-row loop overhead
 * matters: the loops run over that count rounded up to 16 (still within ld) with the extra
 * entries set to -inf, in explicit blocks of 16 lanes with lane-wise partial max/sum (faster
 * than `omp simd` reductions, whose prologues and remainders dominate here). */
static void attn_softmax_rows(float *S, int ld, float *lse, float *inv, int i0, int m, int n)
{
    for (int r = 0; r < m; r++) {
        float *restrict s = S + (size_t)r * ld;
        int nv = i0 + r + 1, nb = round16(nv);
        for (int j = nv; j < nb; j++)
            s[j] = -INFINITY;
        float vm[16], vs[16];
        for (int l = 0; l < 16; l++)
            vm[l] = s[l];
        for (int jb = 16; jb < nb; jb += 16)
            for (int l = 0; l < 16; l++)
                vm[l] = s[jb + l] > vm[l] ? s[jb + l] : vm[l];
        float mx = vm[0];
        for (int l = 1; l < 16; l++)
            mx = vm[l] > mx ? vm[l] : mx;
        for (int l = 0; l < 16; l++)
            vs[l] = 0.0f;
        for (int jb = 0; jb < nb; jb += 16)
            for (int l = 0; l < 16; l++) {
                float e = exp_approx(s[jb + l] - mx);
                s[jb + l] = e;
                vs[l] += e;
            }
        float sum = 0.0f;
        for (int l = 0; l < 16; l++)
            sum += vs[l];
        for (int j = nb; j < n; j++)
            s[j] = 0.0f;
        inv[r] = 1.0f / sum;
        lse[i0 + r] = mx + logf(sum);
    }
}

/* In place: P = exp(S - lse) (the forward's probabilities) and dP <- scale * P (dP - D), the
 * score gradient; masked entries become exact zeros in both (same rounding-up as above). */
static void attn_dscores_rows(float *P, float *dP, int ld, const float *lse, const float *D,
                              float scale, int i0, int m, int n)
{
    for (int r = 0; r < m; r++) {
        float *restrict p = P + (size_t)r * ld;
        float *restrict dp = dP + (size_t)r * ld;
        int nv = i0 + r + 1, nb = round16(nv);
        for (int j = nv; j < nb; j++)
            p[j] = -INFINITY;
        float li = lse[i0 + r], Dr = D[r];
        for (int jb = 0; jb < nb; jb += 16)
            for (int l = 0; l < 16; l++) {
                float pj = exp_approx(p[jb + l] - li);
                p[jb + l] = pj;
                dp[jb + l] = scale * pj * (dp[jb + l] - Dr);
            }
        for (int j = nb; j < n; j++) {
            p[j] = 0.0f;
            dp[j] = 0.0f;
        }
    }
}

void ccoe_gqa_forward(const ccoe_gemm *g, float *out, float *lse, const float *qkv,
                      float *scratch, int B, int T, int H, int Hkv, int hd)
{
    assert(H > 0 && Hkv > 0 && H % Hkv == 0);
    attn_layout a = attn_layout_of(T, hd);
    const int W = (H + 2 * Hkv) * hd, C = H * hd, ld = a.ld, tile = a.tile, rep = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    int nt = g->nthreads > 0 ? g->nthreads : 1;
#pragma omp parallel num_threads(nt)
    {
        float *ws = scratch + (size_t)omp_get_thread_num() * a.per_thread;
        float *Kt = ws + a.kt, *S = ws + a.p, *inv = ws + a.d;
#pragma omp for schedule(static)
        for (int bg = 0; bg < B * Hkv; bg++) {
            int b = bg / Hkv, kvh = bg % Hkv;
            const float *row0 = qkv + (size_t)b * T * W;
            const float *k = row0 + (size_t)(H + kvh) * hd;
            const float *v = row0 + (size_t)(H + Hkv + kvh) * hd;
            transpose_scaled(Kt, ld, k, W, T, hd, scale);
            for (int h = kvh * rep; h < (kvh + 1) * rep; h++) {
                const float *q = row0 + (size_t)h * hd;
                float *o = out + (size_t)b * T * C + (size_t)h * hd;
                float *l = lse + ((size_t)b * H + h) * T;
                for (int i0 = 0; i0 < T; i0 += tile) {
                    int m = T - i0 < tile ? T - i0 : tile, n = i0 + m;
                    ccoe_gemm_run_serial(g, 0, 0, m, n, hd, 1.0f, q + (size_t)i0 * W, W, Kt, ld,
                                         0.0f, S, ld);
                    attn_softmax_rows(S, ld, l, inv, i0, m, n);
                    float *ot = o + (size_t)i0 * C;
                    ccoe_gemm_run_serial(g, 0, 0, m, hd, n, 1.0f, S, ld, v, W, 0.0f, ot, C);
                    for (int r = 0; r < m; r++) {
                        float *restrict orow = ot + (size_t)r * C;
                        float ir = inv[r];
                        for (int d = 0; d < hd; d++)
                            orow[d] *= ir;
                    }
                }
            }
        }
    }
}

void ccoe_attention_forward(const ccoe_gemm *g, float *out, float *lse, const float *qkv,
                            float *scratch, int B, int T, int C, int H)
{
    ccoe_gqa_forward(g, out, lse, qkv, scratch, B, T, H, H, C / H);
}

void ccoe_gqa_decode(float *out, const float *qkv, const float *kv, size_t row_stride,
                     const int *rows, const int *pos, float *scratch, int n, int H, int Hkv,
                     int hd, int nthreads)
{
    assert(H > 0 && Hkv > 0 && H % Hkv == 0);
    const int W = (H + 2 * Hkv) * hd, C = H * hd, KV = Hkv * hd, rep = H / Hkv;
    const float scale = 1.0f / sqrtf((float)hd);
    int maxlen = 1;
    for (int i = 0; i < n; i++)
        if (pos[i] + 1 > maxlen)
            maxlen = pos[i] + 1;
    int nt = nthreads > 0 ? nthreads : 1;
#pragma omp parallel num_threads(nt)
    {
        float *s = scratch + (size_t)omp_get_thread_num() * maxlen;
#pragma omp for schedule(static)
        for (int ih = 0; ih < n * H; ih++) {
            const int i = ih / H, h = ih % H, len = pos[i] + 1;
            const float *restrict q = qkv + (size_t)i * W + (size_t)h * hd;
            const float *cache = kv + (size_t)rows[i] * row_stride + (size_t)(h / rep) * hd;
            float *restrict o = out + (size_t)i * C + (size_t)h * hd;
            float mx = -INFINITY;
            for (int t = 0; t < len; t++) {
                const float *restrict k = cache + (size_t)t * 2 * KV;
                float d = 0.0f;
#pragma omp simd reduction(+ : d)
                for (int j = 0; j < hd; j++)
                    d += q[j] * k[j];
                s[t] = d * scale;
                mx = s[t] > mx ? s[t] : mx;
            }
            float sum = 0.0f;
            for (int t = 0; t < len; t++) {
                s[t] = expf(s[t] - mx);
                sum += s[t];
            }
            for (int j = 0; j < hd; j++)
                o[j] = 0.0f;
            for (int t = 0; t < len; t++) {
                const float *restrict v = cache + (size_t)t * 2 * KV + KV;
                const float p = s[t];
#pragma omp simd
                for (int j = 0; j < hd; j++)
                    o[j] += p * v[j];
            }
            const float inv = 1.0f / sum;
            for (int j = 0; j < hd; j++)
                o[j] *= inv;
        }
    }
}

void ccoe_attention_decode(float *out, const float *qkv, const float *kv, size_t row_stride,
                           const int *rows, const int *pos, float *scratch, int n, int C, int H,
                           int nthreads)
{
    ccoe_gqa_decode(out, qkv, kv, row_stride, rows, pos, scratch, n, H, H, C / H, nthreads);
}

void ccoe_gqa_backward(const ccoe_gemm *g, float *dqkv, const float *dout, const float *qkv,
                       const float *out, const float *lse, float *scratch, int B, int T, int H,
                       int Hkv, int hd)
{
    assert(H > 0 && Hkv > 0 && H % Hkv == 0);
    attn_layout a = attn_layout_of(T, hd);
    const int W = (H + 2 * Hkv) * hd, C = H * hd, ld = a.ld, tile = a.tile, rep = H / Hkv;
    float scale = 1.0f / sqrtf((float)hd);
    int nt = g->nthreads > 0 ? g->nthreads : 1;
#pragma omp parallel num_threads(nt)
    {
        float *ws = scratch + (size_t)omp_get_thread_num() * a.per_thread;
        float *Kt = ws + a.kt, *Vt = ws + a.vt, *P = ws + a.p, *dP = ws + a.dp, *D = ws + a.d;
#pragma omp for schedule(static)
        for (int bg = 0; bg < B * Hkv; bg++) {
            int b = bg / Hkv, kvh = bg % Hkv;
            size_t row0 = (size_t)b * T * W;
            size_t koff = row0 + (size_t)(H + kvh) * hd, voff = koff + (size_t)Hkv * hd;
            const float *k = qkv + koff;
            float *dk = dqkv + koff, *dv = dqkv + voff;
            transpose_scaled(Kt, ld, k, W, T, hd, scale);
            transpose_scaled(Vt, ld, qkv + voff, W, T, hd, 1.0f);
            for (int h = kvh * rep; h < (kvh + 1) * rep; h++) {
                size_t qoff = row0 + (size_t)h * hd;
                size_t ooff = (size_t)b * T * C + (size_t)h * hd;
                const float *q = qkv + qoff;
                float *dq = dqkv + qoff;
                const float *o = out + ooff, *dO = dout + ooff;
                const float *l = lse + ((size_t)b * H + h) * T;
                for (int i0 = 0; i0 < T; i0 += tile) {
                    int m = T - i0 < tile ? T - i0 : tile, n = i0 + m;
                    const float *qt = q + (size_t)i0 * W, *dot = dO + (size_t)i0 * C;
                    ccoe_gemm_run_serial(g, 0, 0, m, n, hd, 1.0f, qt, W, Kt, ld, 0.0f, P, ld);
                    ccoe_gemm_run_serial(g, 0, 0, m, n, hd, 1.0f, dot, C, Vt, ld, 0.0f, dP, ld);
                    for (int r = 0; r < m; r++) {
                        const float *restrict orow = o + (size_t)(i0 + r) * C;
                        const float *restrict drow = dot + (size_t)r * C;
                        float dd = 0.0f;
#pragma omp simd reduction(+ : dd)
                        for (int d = 0; d < hd; d++)
                            dd += drow[d] * orow[d];
                        D[r] = dd;
                    }
                    attn_dscores_rows(P, dP, ld, l, D, scale, i0, m, n);
                    ccoe_gemm_run_serial(g, 0, 0, m, hd, n, 1.0f, dP, ld, k, W, 1.0f,
                                         dq + (size_t)i0 * W, W);
                    ccoe_gemm_run_serial(g, 1, 0, n, hd, m, 1.0f, dP, ld, qt, W, 1.0f, dk, W);
                    ccoe_gemm_run_serial(g, 1, 0, n, hd, m, 1.0f, P, ld, dot, C, 1.0f, dv, W);
                }
            }
        }
    }
}

void ccoe_attention_backward(const ccoe_gemm *g, float *dqkv, const float *dout, const float *qkv,
                             const float *out, const float *lse, float *scratch, int B, int T,
                             int C, int H)
{
    ccoe_gqa_backward(g, dqkv, dout, qkv, out, lse, scratch, B, T, H, H, C / H);
}

/* ---- rotary position embeddings ----
 * Rows are independent: one thread per block of rows; within a head the pairs (i, i + half) are
 * unit-stride in both halves, so the loop vectorises. `omp simd` asserts what the compiler
 * cannot prove: out is inp or disjoint from it, and each lane reads its two inputs before
 * writing its two outputs. */

ccoe_status ccoe_rope_table_init(float *cos_t, float *sin_t, int Tmax, int hd, double theta,
                                 ccoe_error *err)
{
    if (hd < 2 || hd % 2 != 0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "RoPE head size %d: rotate-half pairs need an even head size >= 2 "
                              "(n_embd / n_head)", hd);
    if (Tmax < 1)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "RoPE table of %d positions: give at least one (the context "
                              "length)", Tmax);
    if (!isfinite(theta) || theta <= 0.0)
        return ccoe_error_set(err, CCOE_ERR_ARG,
                              "rope_theta %g: use a finite base > 0 (10000 for LLaMA 2, 1e6 "
                              "for Qwen2)", theta);
    const int half = hd / 2;
    const float base = (float)theta;
    for (int i = 0; i < half; i++) {
        /* transformers: arange(0, dim, 2).float() / dim, base ** that, 1.0 / that, in float32 */
        float e = (float)(2 * i) / (float)hd;
        float inv = 1.0f / (float)pow((double)base, (double)e);
        for (int p = 0; p < Tmax; p++) {
            float ang = (float)p * inv; /* inv_freq @ position_ids in float32 */
            cos_t[(size_t)p * half + i] = (float)cos((double)ang);
            sin_t[(size_t)p * half + i] = (float)sin((double)ang);
        }
    }
    return CCOE_OK;
}

/* Rotates the nh heads of one row by the angles of table row cs, sn (half each); sign +1 is the
 * forward rotation, -1 its inverse. acc: o += R x instead of o = R x. */
static inline void rope_row(float *o, const float *x, const float *restrict cs,
                            const float *restrict sn, int nh, int hd, float sign, int acc)
{
    const int half = hd / 2;
    for (int h = 0; h < nh; h++) {
        float *oh = o + (size_t)h * hd;
        const float *xh = x + (size_t)h * hd;
        if (acc) {
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float x1 = xh[i], x2 = xh[i + half], c = cs[i], s = sign * sn[i];
                oh[i] += x1 * c - x2 * s;
                oh[i + half] += x2 * c + x1 * s;
            }
        } else {
#pragma omp simd
            for (int i = 0; i < half; i++) {
                float x1 = xh[i], x2 = xh[i + half], c = cs[i], s = sign * sn[i];
                oh[i] = x1 * c - x2 * s;
                oh[i + half] = x2 * c + x1 * s;
            }
        }
    }
}

void ccoe_rope_forward(float *out, const float *inp, const float *cos_t, const float *sin_t,
                       int B, int T, int pos0, int nh, int hd, int stride)
{
    assert(hd >= 2 && hd % 2 == 0);
    const int half = hd / 2;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        size_t p = (size_t)(pos0 + bt % T) * half;
        rope_row(out + (size_t)bt * stride, inp + (size_t)bt * stride, cos_t + p, sin_t + p, nh,
                 hd, 1.0f, 0);
    }
}

void ccoe_rope_forward_at(float *out, const float *inp, const float *cos_t, const float *sin_t,
                          const int *pos, int N, int nh, int hd, int stride)
{
    assert(hd >= 2 && hd % 2 == 0);
    const int half = hd / 2;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        size_t p = (size_t)pos[n] * half;
        rope_row(out + (size_t)n * stride, inp + (size_t)n * stride, cos_t + p, sin_t + p, nh,
                 hd, 1.0f, 0);
    }
}

void ccoe_rope_backward(float *dinp, const float *dout, const float *cos_t, const float *sin_t,
                        int B, int T, int pos0, int nh, int hd, int stride)
{
    assert(hd >= 2 && hd % 2 == 0);
    const int half = hd / 2, acc = dinp != dout;
#pragma omp parallel for schedule(static)
    for (int bt = 0; bt < B * T; bt++) {
        size_t p = (size_t)(pos0 + bt % T) * half;
        rope_row(dinp + (size_t)bt * stride, dout + (size_t)bt * stride, cos_t + p, sin_t + p,
                 nh, hd, -1.0f, acc);
    }
}

/* ---- pointwise ---- */

/* gelu(x) = 0.5 x (1 + tanh u) = x * sigmoid(2u), u = k0 (x + k1 x^3): the sigmoid form has
 * no cancellation for either sign of x. */
void ccoe_gelu_forward(float *out, const float *inp, size_t N)
{
    const float *restrict x = inp;
    float *restrict o = out;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float u = GELU_K0 * (x[i] + GELU_K1 * x[i] * x[i] * x[i]);
        o[i] = x[i] / (1.0f + exp_approx(-2.0f * u));
    }
}

/* d gelu / dx = s + 2 x s (1 - s) du/dx with s = sigmoid(2u); 1 - s = e s with e = exp(-2u)
 * (formed first: e alone may be ~1e38, e s <= 1). */
void ccoe_gelu_backward(float *dinp, const float *inp, const float *dout, size_t N)
{
    const float *restrict x = inp;
    const float *restrict d = dout;
    float *restrict dx = dinp;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        float xi = x[i];
        float u = GELU_K0 * (xi + GELU_K1 * xi * xi * xi);
        float e = exp_approx(-2.0f * u);
        float s = 1.0f / (1.0f + e);
        float oms = e * s;
        float du = GELU_K0 * (1.0f + 3.0f * GELU_K1 * xi * xi);
        dx[i] += d[i] * (s + 2.0f * xi * s * oms * du);
    }
}

void ccoe_swiglu_forward(float *out, const float *inp, int N, int F)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict gate = inp + (size_t)n * 2 * F;
        const float *restrict up = gate + F;
        float *restrict o = out + (size_t)n * F;
        for (int f = 0; f < F; f++)
            o[f] = gate[f] / (1.0f + exp_approx(-gate[f])) * up[f];
    }
}

/* silu'(g) = s + g s (1 - s) with s = sigmoid(g), 1 - s = e s, e = exp(-g) (e s <= 1). */
void ccoe_swiglu_backward(float *dinp, const float *inp, const float *dout, int N, int F)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *restrict gate = inp + (size_t)n * 2 * F;
        const float *restrict up = gate + F;
        const float *restrict d = dout + (size_t)n * F;
        float *restrict dgate = dinp + (size_t)n * 2 * F;
        float *restrict dup = dgate + F;
        for (int f = 0; f < F; f++) {
            float gf = gate[f];
            float e = exp_approx(-gf);
            float s = 1.0f / (1.0f + e);
            float oms = e * s;
            dgate[f] += d[f] * up[f] * (s + gf * s * oms);
            dup[f] += d[f] * gf * s;
        }
    }
}

void ccoe_residual_forward(float *out, const float *a, const float *b, size_t N)
{
    /* no restrict: out may be a or b (in-place residual adds); each element is read and
     * written at the same index only, so the simd loop stays valid */
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++)
        out[i] = a[i] + b[i];
}

void ccoe_residual_backward(float *da, float *db, const float *dout, size_t N)
{
    float *restrict x = da;
    float *restrict y = db;
    const float *restrict d = dout;
#pragma omp parallel for simd schedule(static)
    for (size_t i = 0; i < N; i++) {
        x[i] += d[i];
        y[i] += d[i];
    }
}

/* ---- softmax cross-entropy ----
 * probs may alias logits (and dlogits may alias probs): the loops below read and write the same
 * index in one iteration, which `omp simd` vectorises without the compiler's alias checks. */

double ccoe_crossentropy_forward(float *losses, float *probs, const float *logits,
                                 const int32_t *targets, int N, int V)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *x = logits + (size_t)n * V;
        float *p = probs + (size_t)n * V;
        int32_t t = targets[n];
        float mx = -INFINITY;
#pragma omp simd reduction(max : mx)
        for (int v = 0; v < V; v++)
            mx = x[v] > mx ? x[v] : mx;
        float xt = t >= 0 ? x[t] : 0.0f; /* before p overwrites it */
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int v = 0; v < V; v++) {
            float e = exp_approx(x[v] - mx);
            p[v] = e;
            sum += e;
        }
        float inv = 1.0f / sum;
#pragma omp simd
        for (int v = 0; v < V; v++)
            p[v] *= inv;
        losses[n] = t >= 0 ? (float)(log((double)sum) - ((double)xt - (double)mx)) : 0.0f;
    }
    double total = 0.0;
    for (int n = 0; n < N; n++)
        total += losses[n];
    return total;
}

void ccoe_crossentropy_backward(float *dlogits, const float *probs, const int32_t *targets,
                                float scale, int N, int V)
{
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const float *p = probs + (size_t)n * V;
        float *d = dlogits + (size_t)n * V;
        int32_t t = targets[n];
        if (t < 0) {
            memset(d, 0, (size_t)V * sizeof(float));
            continue;
        }
        float pt = p[t];
#pragma omp simd
        for (int v = 0; v < V; v++)
            d[v] = p[v] * scale;
        d[t] = (pt - 1.0f) * scale;
    }
}
