/* kernels_ref.h - plain double-precision references of every kernel in kernels.h.
 *
 * Same arguments and the same overwrite/accumulate contract, in double, written for clarity
 * only. They are the oracle: finite-difference tests check their backward passes, and the fast
 * float kernels are checked against them. Never used on the training path.
 */
#ifndef CCOE_KERNELS_REF_H
#define CCOE_KERNELS_REF_H

#include <stddef.h>
#include <stdint.h>

void ccoe_ref_embed_forward(double *out, const int32_t *tokens, const double *wte,
                            const double *wpe, int B, int T, int C);
void ccoe_ref_embed_backward(double *dwte, double *dwpe, const double *dout,
                             const int32_t *tokens, int B, int T, int C);
void ccoe_ref_layernorm_forward(double *out, double *mean, double *rstd, const double *inp,
                                const double *weight, const double *bias, int N, int C);
void ccoe_ref_layernorm_backward(double *dinp, double *dweight, double *dbias, const double *dout,
                                 const double *inp, const double *weight, const double *mean,
                                 const double *rstd, int N, int C);
void ccoe_ref_layernorm_forward_eps(double *out, double *mean, double *rstd, const double *inp,
                                    const double *weight, const double *bias, int N, int C,
                                    double eps);
void ccoe_ref_rmsnorm_forward(double *out, double *rstd, const double *inp, const double *weight,
                              int N, int C);
void ccoe_ref_rmsnorm_forward_eps(double *out, double *rstd, const double *inp,
                                  const double *weight, int N, int C, double eps);
void ccoe_ref_rmsnorm_backward(double *dinp, double *dweight, const double *dout,
                               const double *inp, const double *weight, const double *rstd, int N,
                               int C);
void ccoe_ref_linear_forward(double *out, const double *inp, const double *weight,
                             const double *bias, int N, int IC, int OC);
void ccoe_ref_linear_backward(double *dinp, double *dweight, double *dbias, const double *dout,
                              const double *inp, const double *weight, int N, int IC, int OC);
void ccoe_ref_attention_forward(double *out, double *lse, const double *qkv, int B, int T, int C,
                                int H);
void ccoe_ref_attention_backward(double *dqkv, const double *dout, const double *qkv,
                                 const double *out, const double *lse, int B, int T, int C, int H);
/* GQA: the same layout as ccoe_gqa_forward / _backward. */
void ccoe_ref_gqa_forward(double *out, double *lse, const double *qkv, int B, int T, int H,
                          int Hkv, int hd);
void ccoe_ref_gqa_backward(double *dqkv, const double *dout, const double *qkv, const double *out,
                           const double *lse, int B, int T, int H, int Hkv, int hd);
/* RoPE: exact tables cos(p theta^(-2i/hd)), sin(...) in double, and the rotation of
 * ccoe_rope_forward / _backward (out may be inp; dinp may be dout, replacing it). */
void ccoe_ref_rope_table(double *cos, double *sin, int Tmax, int hd, double theta);
void ccoe_ref_rope_forward(double *out, const double *inp, const double *cos, const double *sin,
                           int B, int T, int pos0, int nh, int hd, int stride);
void ccoe_ref_rope_backward(double *dinp, const double *dout, const double *cos,
                            const double *sin, int B, int T, int pos0, int nh, int hd,
                            int stride);
void ccoe_ref_gelu_forward(double *out, const double *inp, size_t N);
void ccoe_ref_gelu_backward(double *dinp, const double *inp, const double *dout, size_t N);
void ccoe_ref_swiglu_forward(double *out, const double *inp, int N, int F);
void ccoe_ref_swiglu_backward(double *dinp, const double *inp, const double *dout, int N, int F);
double ccoe_ref_crossentropy_forward(double *losses, double *probs, const double *logits,
                                     const int32_t *targets, int N, int V);
void ccoe_ref_crossentropy_backward(double *dlogits, const double *probs, const int32_t *targets,
                                    double scale, int N, int V);

#endif
