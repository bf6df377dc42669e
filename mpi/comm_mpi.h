/* comm_mpi.h - the MPI communicator (src/comm.h's table over MPI_COMM_WORLD).
 *
 * The only header of the MPI layer; <mpi.h> itself stays inside the mpi/ sources. Every MPI call runs
 * with MPI_ERRORS_RETURN and its failure becomes a CCOE_ERR_COMM status whose message names the
 * rank and the operation. MPI is initialised with MPI_THREAD_FUNNELED: OpenMP threads compute,
 * only the thread that called ccoe_comm_mpi_init communicates.
 */
#ifndef CCOE_COMM_MPI_H
#define CCOE_COMM_MPI_H

#include "comm.h"
#include "status.h"

/* 1 if this process was started by an MPI launcher (mpirun/mpiexec of Open MPI or MPICH,
 * srun with PMI/PMIx): the environment carries a rank. ccoe then uses MPI; otherwise it runs
 * serially without initialising MPI (which keeps single-process runs free of MPI start-up). */
int ccoe_comm_mpi_launched(void);

/* Initialises MPI (once per process) and fills c with a communicator over a duplicate of
 * MPI_COMM_WORLD. COLLECTIVE over the launched processes. */
ccoe_status ccoe_comm_mpi_init(ccoe_comm *c, int *argc, char ***argv, ccoe_error *err);

/* Frees the communicator and finalises MPI. COLLECTIVE. */
void ccoe_comm_mpi_finalize(ccoe_comm *c);

#endif
