/* place_cases.h - CCoE expert placement (ccoe_model_set_placement) equivalence cases, shared by
 * the in-process fake-rank test (tests/test_ccoe_place.c) and the MPI one
 * (tests/mpi/test_ccoe_place_mpi.c). */
#ifndef CCOE_PLACE_CASES_H
#define CCOE_PLACE_CASES_H

#include "comm.h"
#include "gemm.h"

/* Forms tail, prefix and ffn (per-block exchange), pre/post-LN, shared/own heads, an expert
 * without rows, a rank without rows (B < P): P ranks with placed experts against the
 * one-process model over a few AdamW steps (loss curve, gradients, parameters after the expert
 * sync), and the refusal of placed ffn experts with own heads. Returns failed checks on this
 * rank. COLLECTIVE on comm. */
int tu_place_model_cases(ccoe_comm *comm, const ccoe_gemm *g);

/* A failing exchange on one process (form: a ccoe_form with experts): the first failure is
 * kept for ccoe_model_comm_status, later exchanges are skipped, abort is never called. Returns
 * failed checks. */
int tu_place_comm_failure(const ccoe_gemm *g, int form);

#endif
