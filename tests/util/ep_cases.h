/* ep_cases.h - the expert-parallel MoE checks, written per rank so that the same code runs on
 * the fake ranks of tests/test_moe_ep.c (threads, fakecomm.c) and under mpirun in
 * tests/mpi/test_moe_mpi.c.
 *
 * Every rank computes the serial reference of the whole batch itself (deterministic inputs, the
 * same on every rank), runs the distributed layer or model on its own slice, and compares its
 * part: its output and input-gradient rows, the experts it owns, the router gradients summed
 * over ranks, the global aux loss and statistics. Each function is COLLECTIVE on comm and
 * returns the number of failed checks on this rank (details on stderr, prefixed with the rank);
 * callers sum it over ranks. No CMocka inside (it is not thread-safe).
 */
#ifndef CCOE_EP_CASES_H
#define CCOE_EP_CASES_H

#include "comm.h"
#include "gemm.h"

/* Dispatch -> identity experts -> combine for several capacity/placement cases. */
int tu_ep_round_trips(ccoe_comm *comm, const ccoe_gemm *g);
/* Layer equivalence for every gate (P = comm->size; uneven slices, one rank without tokens
 * when P > 2, contiguous and interleaved placements). */
int tu_ep_layer_cases(ccoe_comm *comm, const ccoe_gemm *g);
/* Model equivalence (ccoe_model_set_comm, src/moe_ep_train.h) for every gate, with the default
 * (contiguous) placement and with round_robin and list maps from ccoe_placement_map. */
int tu_ep_model_cases(ccoe_comm *comm, const ccoe_gemm *g);
/* Incremental decoding (ccoe_model_decode_prefill / _step) with every rank decoding the same
 * prompts: logits equal the serial full forward's, for dropless gates. */
int tu_ep_decode_cases(ccoe_comm *comm, const ccoe_gemm *g);
/* Data-parallel evaluation (ccoe_eval_domains over comm) on the builtin data: a dense model, an
 * MoE model with every expert on every rank (batches and task chunks split, MoE totals summed)
 * and an expert-parallel one (every rank runs every round): task counts, token counts and MoE
 * totals equal one process's, losses to 1e-12. g is unused (the sessions make their own). */
int tu_ep_eval_cases(ccoe_comm *comm, const ccoe_gemm *g);

#endif
