/* fakecomm.h - P "ranks" as threads of one test process, joined by an in-process communicator
 * (src/comm.h's table over shared memory and a barrier).
 *
 * What it is: a test double for code written against the comm table (the expert-parallel MoE
 * dispatch), so its logic is checked for 1..TU_FAKE_MAX_RANKS ranks without mpirun; collectives
 * follow the MPI semantics the table documents (sums in rank order 0..P-1). What it is not: not
 * MPI, no overlap or non-blocking progress (iallreduce completes at once). The real MPI path is
 * tested by tests/mpi/.
 *
 * Threads: each rank's function runs in its own thread; CMocka assertions must stay in the
 * main thread (record results in the shared context and check them after tu_fake_run).
 */
#ifndef CCOE_FAKECOMM_H
#define CCOE_FAKECOMM_H

#include "comm.h"

#define TU_FAKE_MAX_RANKS 16

/* Runs fn(comm, rank_arg) on P threads, one per rank (comm->rank = 0..P-1, comm->size = P),
 * and joins them. Returns the number of collective misuses detected (mismatched counts, a
 * rank calling abort): 0 when all went well. */
int tu_fake_run(int P, void (*fn)(ccoe_comm *comm, void *arg), void *arg);

#endif
