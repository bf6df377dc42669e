/* moe_impl.h - internals of the MoE layer shared by moe.c (the serial layer) and moe_ep.c
 * (expert parallelism). Not a public interface: only those two files include it. Each
 * function is documented at its definition in moe.c.
 */
#ifndef CCOE_MOE_IMPL_H
#define CCOE_MOE_IMPL_H

#include <stdint.h>

#include "gate.h"
#include "moe.h"

/* ---- forward pieces ---- */
ccoe_gate_args ccoe_moe_gate_args(const ccoe_moe *m, const ccoe_moe_acts *a,
                                  const ccoe_moe_pass *pass, int N);
void ccoe_moe_route_forward(const ccoe_moe *m, ccoe_moe_acts *a, const float *inp,
                            const float *params, const ccoe_moe_pass *pass, int N);
int ccoe_moe_experts_forward(const ccoe_moe *m, ccoe_moe_acts *a, const float *params);
void ccoe_moe_shared_forward(const ccoe_moe *m, ccoe_moe_acts *a, float *out, const float *inp,
                             const float *params, int N);
void ccoe_moe_shared_backward(const ccoe_moe *m, float *dinp, float *grads, ccoe_moe_scratch *s,
                              const ccoe_moe_acts *a, const float *dout, const float *inp,
                              const float *params, int N);

/* ---- aux losses and statistics: sums (allreduced under expert parallelism), then values ---- */
double ccoe_moe_aux_sums(const ccoe_moe *m, ccoe_moe_acts *a, const ccoe_gate_args *ga, int N);
void ccoe_moe_aux_values(const ccoe_moe *m, ccoe_moe_acts *a, ccoe_moe_stats *st, double z,
                         int64_t Ntot);
void ccoe_moe_token_sums(const ccoe_moe *m, const ccoe_moe_acts *a, int N, int64_t *dropped,
                         double *h_gate, double *h_router);
void ccoe_moe_finish_stats(const ccoe_moe *m, const ccoe_moe_acts *a, ccoe_moe_stats *st,
                           int64_t N, int64_t rows, int64_t dropped_tokens, double hg, double hr);

/* ---- backward pieces ---- */
void ccoe_moe_combine_backward(float *dweights, float *dy, const float *y, const ccoe_moe_acts *a,
                               const float *dout, int N, int K, int C);
void ccoe_moe_experts_backward(const ccoe_moe *m, float *grads, ccoe_moe_scratch *s,
                               const ccoe_moe_acts *a, const float *params);
void ccoe_moe_scatter_backward(float *dinp, const float *dx, const int32_t *slot, int N, int K,
                               int C);
void ccoe_moe_backward_times(ccoe_moe_stats *st, double t0, double t1, double t2, double t3,
                             double t4);
void ccoe_moe_router_backward(const ccoe_moe *m, float *dinp, float *grads, ccoe_moe_scratch *s,
                              const ccoe_moe_acts *a, const float *inp, const float *params,
                              float aux_scale, int N, int64_t Ntot);

#endif
