/* main.c - the launch of ccoe: the communicator (serial, or MPI under mpirun), the command's
 * dispatch (src/cli.c: the command table, its parser and help) and the abort policy. The
 * commands live in src/cmd_*.c; only here does a process end with an MPI abort. */
#include <stdio.h>

#include "cli.h"
#include "comm.h"
#include "comm_mpi.h"
#include "status.h"

/* Under an MPI launcher (mpirun -np P ccoe train ...) every rank runs a collective command
 * (train, train-expert, study, eval: their table entries say so); the other commands run on
 * rank 0 alone. An error on one rank that the others have not agreed on (they may be waiting
 * in a collective) ends the whole job through the communicator's abort. */
int main(int argc, char **argv)
{
    static ccoe_comm comm;
    ccoe_comm_serial(&comm);
    int mpi = 0;
    if (ccoe_comm_mpi_launched()) {
        ccoe_error err = {0};
        if (ccoe_comm_mpi_init(&comm, &argc, &argv, &err) != CCOE_OK) {
            fprintf(stderr, "ccoe: %s: %s\n", ccoe_status_name(err.status), err.msg);
            return 1;
        }
        mpi = 1;
    }
    const ccoe_cli_cmd *cmd = ccoe_cli_lookup(argc, argv);
    const int collective = cmd && cmd->collective;
    int rc = 0;
    if (collective || comm.rank == 0)
        rc = ccoe_cli_main(argc, argv, &comm);
    if (rc != 0 && comm.size > 1 && collective && comm.failed_rank < 0) {
        fflush(stdout);
        fflush(stderr);
        comm.ops->abort(&comm, rc); /* does not return */
    }
    if (mpi)
        ccoe_comm_mpi_finalize(&comm);
    return rc;
}
