/* watchdog.h - the arithmetic of the collective watchdog (mpi/comm_mpi.c): the poll-and-sleep
 * schedule of a wait that must neither hang nor spin, its deadline, the monitor thread's period
 * and the rank list of the message it prints.
 *
 * What it is: pure functions of the clock values passed in (no MPI, no threads, no clock reads),
 * so tests/test_watchdog.c checks them exactly. What it is not: the watchdog itself, which lives
 * in the MPI layer (mpi/comm_mpi.c) and is configured by mpi.timeout.
 */
#ifndef CCOE_WATCHDOG_H
#define CCOE_WATCHDOG_H

#include <stddef.h>

/* Exit code of every rank when the watchdog ends a job (a rank waited in one collective or
 * point-to-point exchange longer than mpi.timeout). */
#define CCOE_EXIT_WATCHDOG 3

/* mpi.timeout's default, seconds (also the timeout before the config is known). */
#define CCOE_WD_DEFAULT_TIMEOUT 300.0

#define CCOE_WD_SPIN_S 50e-6      /* poll without sleeping for this long (typical rank skew) */
#define CCOE_WD_SLEEP_MIN_S 10e-6 /* then sleep this long, doubling each time ... */
#define CCOE_WD_SLEEP_MAX_S 1e-3  /* ... up to this */

/* One wait: seconds on a monotonic clock. */
typedef struct ccoe_wd_wait {
    double t0;      /* when the wait began */
    double timeout; /* seconds; <= 0: never expires */
    double sleep;   /* the sleep after the next unfinished poll once the spin phase is over */
} ccoe_wd_wait;

/* Starts a wait at time now. */
void ccoe_wd_wait_begin(ccoe_wd_wait *w, double now, double timeout);

/* After a poll that found the operation unfinished at time now: 0 = poll again at once (spin
 * phase), > 0 = sleep that many seconds, then poll (never past the deadline), < 0 = the timeout
 * has passed. */
double ccoe_wd_wait_next(ccoe_wd_wait *w, double now);

/* 1 if a blocking call entered at `since` (> 0; 0 = none in progress) has lasted the timeout
 * (> 0; <= 0: never) at time now. */
int ccoe_wd_expired(double since, double now, double timeout);

/* How long the monitor thread sleeps between checks: a quarter of the timeout, within
 * [10 ms, 1 s] (1 s when the watchdog is off), so it fires at most 25% late. */
double ccoe_wd_monitor_period(double timeout);

/* "rank 1", "ranks 1 and 3", "ranks 0, 2 and 5", beyond 8 ranks "ranks 0, 1, ..., 7 and 9
 * more" into buf (always NUL-terminated); n = 0: "no rank". Returns buf. */
char *ccoe_wd_format_ranks(char *buf, size_t cap, const int *ranks, int n);

#endif
