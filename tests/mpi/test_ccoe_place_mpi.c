/* test_ccoe_place_mpi.c - CCoE expert placement (ccoe_model_set_placement) over real MPI ranks
 * (ctest runs it with -np 2 and -np 4): the cases of tests/util/place_cases.c, which
 * tests/test_ccoe_place.c runs on fake in-process ranks. */
#include <stdio.h>
#include <stdlib.h>

#include "comm_mpi.h"
#include "gemm.h"
#include "place_cases.h"

int main(int argc, char **argv)
{
    ccoe_comm comm;
    ccoe_error err;
    ccoe_error_clear(&err);
    if (ccoe_comm_mpi_init(&comm, &argc, &argv, &err) != CCOE_OK) {
        fprintf(stderr, "MPI init: %s\n", err.msg);
        return 1;
    }
    ccoe_gemm g;
    if (ccoe_gemm_init(&g, CCOE_GEMM_AUTO, 1, &err) != CCOE_OK) {
        fprintf(stderr, "[rank %d] gemm: %s\n", comm.rank, err.msg);
        comm.ops->abort(&comm, 1);
    }
    int64_t f = tu_place_model_cases(&comm, &g);
    if (comm.ops->allreduce_i64(&comm, &f, 1, &err) != CCOE_OK) {
        fprintf(stderr, "[rank %d] %s\n", comm.rank, err.msg);
        comm.ops->abort(&comm, 1);
    }
    if (comm.rank == 0)
        printf("CCoE expert placement equivalence, %d ranks: %s (%lld failed checks)\n",
               comm.size, f ? "FAILED" : "ok", (long long)f);
    ccoe_comm_mpi_finalize(&comm);
    return f ? 1 : 0;
}
