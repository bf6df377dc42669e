/* kernels.h - the transformer's layers as forward/backward pairs (float, row-major).
 *
 * Conventions (as in llm.c): outputs first, then inputs, then sizes. Forward OVERWRITES its
 * outputs. Backward ACCUMULATES (+=) into every gradient it writes (dinp, dweight, dbias), so
 * gradients are zeroed once per step by the caller. N is the number of rows (tokens, B*T).
 * Dimension letters: B batch, T time, C channels, H heads (hd = C/H), Hkv key/value heads
 * (grouped-query attention), F FFN hidden, V vocab.
 * No kernel allocates; the ones that need scratch take it from the caller.
 * Each kernel has a double-precision reference with the same argument order in kernels_ref.h.
 */
#ifndef CCOE_KERNELS_H
#define CCOE_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "gemm.h"

/* out(B,T,C) = wte[tokens[b,t]] + wpe[t]; wte (V,C), wpe (Tmax,C) or NULL (no position
 * table: out = wte[tokens]; the backward then leaves dwpe, also NULL, alone). */
void ccoe_embed_forward(float *out, const int32_t *tokens, const float *wte, const float *wpe,
                        int B, int T, int C);
void ccoe_embed_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                         int B, int T, int C);

/* LayerNorm over C: out(N,C), mean(N), rstd(N) saved for backward; weight, bias (C).
 * rstd = 1 / sqrt(var + eps); the form without eps uses 1e-5 (GPT-2's). Backward needs only
 * the saved rstd, so it takes no eps. */
void ccoe_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                            const float *weight, const float *bias, int N, int C);
void ccoe_layernorm_forward_eps(float *out, float *mean, float *rstd, const float *inp,
                                const float *weight, const float *bias, int N, int C, float eps);
void ccoe_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                             const float *inp, const float *weight, const float *mean,
                             const float *rstd, int N, int C);

/* RMSNorm over C: out(N,C), rstd(N) = 1 / sqrt(mean(x^2) + eps); weight (C). The form without
 * eps uses 1e-5; LLaMA/Qwen2 configs give rms_norm_eps (1e-5 or 1e-6). */
void ccoe_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, int N,
                          int C);
void ccoe_rmsnorm_forward_eps(float *out, float *rstd, const float *inp, const float *weight,
                              int N, int C, float eps);
void ccoe_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                           const float *weight, const float *rstd, int N, int C);

/* out(N,OC) = inp(N,IC) * weight(OC,IC)^T + bias(OC); bias may be NULL. */
void ccoe_linear_forward(const ccoe_gemm *g, float *out, const float *inp, const float *weight,
                         const float *bias, int N, int IC, int OC);
/* dinp(N,IC) += dout * weight; dweight(OC,IC) += dout^T * inp; dbias(OC) += colsum(dout).
 * dinp and/or dbias may be NULL (not wanted). */
void ccoe_linear_backward(const ccoe_gemm *g, float *dinp, float *dweight, float *dbias,
                          const float *dout, const float *inp, const float *weight, int N,
                          int IC, int OC);
/* The same two in fp32 whatever the context's linear-layer precision (g->precision): for the
 * MoE routers, whose logits decide the routing (papers/bf16.md). */
void ccoe_linear_forward_fp32(const ccoe_gemm *g, float *out, const float *inp,
                              const float *weight, const float *bias, int N, int IC, int OC);
void ccoe_linear_backward_fp32(const ccoe_gemm *g, float *dinp, float *dweight, float *dbias,
                               const float *dout, const float *inp, const float *weight, int N,
                               int IC, int OC);

/* Causal multi-head self-attention. qkv (B,T,3C): q = [0,C), k = [C,2C), v = [2C,3C), head h
 * owns columns [h*hd, (h+1)*hd) of each. out (B,T,C); lse (B,H,T) the row log-sum-exp of the
 * scaled scores, saved for backward. Scale 1/sqrt(hd). scratch: ccoe_attention_scratch_floats.
 * The kernels run g->nthreads threads, each using its own slice of scratch, so pass nthreads >=
 * g->nthreads; about 2 * nthreads * T * (C/H + 32) floats (not T^2), non-decreasing in T, so
 * scratch sized for the largest T serves every shorter one. */
size_t ccoe_attention_scratch_floats(int B, int T, int C, int H, int nthreads);
void ccoe_attention_forward(const ccoe_gemm *g, float *out, float *lse, const float *qkv,
                            float *scratch, int B, int T, int C, int H);
/* dqkv (B,T,3C) += gradient; out and lse from the forward. */
void ccoe_attention_backward(const ccoe_gemm *g, float *dqkv, const float *dout, const float *qkv,
                             const float *out, const float *lse, float *scratch, int B, int T,
                             int C, int H);

/* Incremental decoding: one query row per sequence against that sequence's cached keys and
 * values. For i < n: qkv row i (3C; its q part is used) attends to positions 0 .. pos[i] of
 * cache row rows[i], which starts at kv + rows[i] * row_stride and holds (pos[i] + 1) rows of
 * [k | v] (2C floats each; position pos[i] already written). out (n, C). Equals row pos[i] of
 * ccoe_attention_forward on the full sequence. scratch: nthreads * (max pos + 1) floats. */
void ccoe_attention_decode(float *out, const float *qkv, const float *kv, size_t row_stride,
                           const int *rows, const int *pos, float *scratch, int n, int C, int H,
                           int nthreads);

/* Grouped-query attention (GQA): H query heads share Hkv key/value heads (Hkv divides H; query
 * head h reads kv head h / (H / Hkv), the grouping of Hugging Face's repeat_kv), causal, scale
 * 1/sqrt(hd). qkv (B,T,W) with W = (H + 2 Hkv) hd: q = [0, H hd), k = [H hd, (H + Hkv) hd),
 * v = [(H + Hkv) hd, W), head j owning columns [j hd, (j+1) hd) of its part. out (B,T,H hd);
 * lse (B,H,T). With Hkv == H this is ccoe_attention_* with C = H hd, bit for bit (those are
 * these with Hkv = H). Threads share the (b, kv head) pairs: B * Hkv of them, so a batch with
 * fewer pairs than threads leaves threads idle. scratch: ccoe_gqa_scratch_floats (the same size
 * as multi-head attention's at the same T and hd). */
size_t ccoe_gqa_scratch_floats(int B, int T, int H, int Hkv, int hd, int nthreads);
void ccoe_gqa_forward(const ccoe_gemm *g, float *out, float *lse, const float *qkv,
                      float *scratch, int B, int T, int H, int Hkv, int hd);
/* dqkv (B,T,W) += gradient; dk and dv of a kv head sum over the H / Hkv query heads that read
 * it. out and lse from the forward. */
void ccoe_gqa_backward(const ccoe_gemm *g, float *dqkv, const float *dout, const float *qkv,
                       const float *out, const float *lse, float *scratch, int B, int T, int H,
                       int Hkv, int hd);
/* Decode step of GQA: as ccoe_attention_decode, with qkv rows of W floats (q part used) and a
 * cache of 2 Hkv hd floats per position, [k (Hkv hd) | v (Hkv hd)]. out (n, H hd). Equals row
 * pos[i] of ccoe_gqa_forward on the full sequence. scratch: nthreads * (max pos + 1) floats. */
void ccoe_gqa_decode(float *out, const float *qkv, const float *kv, size_t row_stride,
                     const int *rows, const int *pos, float *scratch, int n, int H, int Hkv,
                     int hd, int nthreads);

/* Rotary position embeddings, the rotate-half convention of Hugging Face's LLaMA/Qwen2 code:
 * each head vector x (hd floats, hd even, half = hd / 2) at position p becomes
 *   out[i]        = x[i] cos(p f_i) - x[i + half] sin(p f_i)
 *   out[i + half] = x[i + half] cos(p f_i) + x[i] sin(p f_i),   f_i = theta^(-2i / hd), i < half
 * (not the interleaved pairs (2i, 2i+1) of the RoPE paper and of Meta's original checkpoints).
 * Tables cos, sin (Tmax, half), caller-owned, filled once by ccoe_rope_table_init; rows of inp
 * and out are `stride` floats apart and rotate heads [0, nh) at columns [j hd, (j+1) hd) (in a
 * GQA qkv row, q and k are the first H + Hkv heads: one call rotates both; v is untouched). */

/* Fills cos, sin (Tmax, hd / 2) with the same float32 steps as transformers'
 * _compute_default_rope_parameters and LlamaRotaryEmbedding.forward: f_i = 1 / theta^(2i / hd),
 * angle = p * f_i rounded to float, then its cosine and sine. Fails (CCOE_ERR_ARG, naming the
 * value and the fix) on odd or non-positive hd, Tmax < 1, or theta not finite or <= 0. */
ccoe_status ccoe_rope_table_init(float *cos, float *sin, int Tmax, int hd, double theta,
                                 ccoe_error *err);
/* out (B,T,stride) = rotation of inp's heads at positions pos0 + t (pos0 + T <= Tmax): pos0 is
 * the first position of the chunk (0 for training, the cache length when decoding). OVERWRITES
 * the rotated columns of out only; out may be inp (in place) or disjoint from it. */
void ccoe_rope_forward(float *out, const float *inp, const float *cos, const float *sin, int B,
                       int T, int pos0, int nh, int hd, int stride);
/* The same for N rows, row n at position pos[n] (a decode step of sequences of different
 * lengths). */
void ccoe_rope_forward_at(float *out, const float *inp, const float *cos, const float *sin,
                          const int *pos, int N, int nh, int hd, int stride);
/* The backward of a rotation is the inverse rotation (angle -p f_i): dinp += R^T dout on the
 * rotated columns. dinp may be dout: then the rotated columns of dout are REPLACED by R^T dout
 * (the in-place use: the gradient of the rotated q, k becomes that of the unrotated ones). */
void ccoe_rope_backward(float *dinp, const float *dout, const float *cos, const float *sin, int B,
                        int T, int pos0, int nh, int hd, int stride);

/* GELU, tanh approximation (GPT-2): out(N) = gelu(inp). */
void ccoe_gelu_forward(float *out, const float *inp, size_t N);
void ccoe_gelu_backward(float *dinp, const float *inp, const float *dout, size_t N);

/* SwiGLU: inp (N, 2F) = [gate | up] per row; out (N,F) = silu(gate) * up. */
void ccoe_swiglu_forward(float *out, const float *inp, int N, int F);
void ccoe_swiglu_backward(float *dinp, const float *inp, const float *dout, int N, int F);

/* out(N) = a + b (out may be a or b). (backward of a residual is the identity: callers add
 * dout to both.) */
void ccoe_residual_forward(float *out, const float *a, const float *b, size_t N);
/* da(N) += dout; db(N) += dout. */
void ccoe_residual_backward(float *da, float *db, const float *dout, size_t N);

/* Softmax cross-entropy. logits (N,V) -> probs (N,V) (overwritten; may alias logits),
 * losses (N) = -log p[target]; rows whose target < 0 are ignored (loss 0).
 * Returns the sum of the losses of the counted rows. */
double ccoe_crossentropy_forward(float *losses, float *probs, const float *logits,
                                 const int32_t *targets, int N, int V);
/* dlogits(N,V) = (probs - onehot(target)) * scale; rows with target < 0 get 0. OVERWRITES
 * (dlogits may alias probs). scale is usually 1 / (number of counted rows). */
void ccoe_crossentropy_backward(float *dlogits, const float *probs, const int32_t *targets,
                                float scale, int N, int V);

#endif
