/* threads.h - `run.threads = auto`: the thread count chosen, and chosen again, from the measured
 * time of training steps.
 *
 * Why: with every core of the machine in use, one busy process beside a run makes each thread
 * wait for a descheduled peer at every barrier, and fewer threads are faster than all of them
 * (papers/threads.md). No count is best everywhere, so the run measures.
 *
 * What: a policy of pure arithmetic on the step times it is given (no clock, no threads, no
 * allocation), so that tests can feed it any sequence. The caller times each step, passes the
 * time to ccoe_threads_auto_step and runs the next step with the count it returns (buffers are
 * sized for `max` threads once). The candidates are max, max - 1 (when max > 2) and 1.
 *   1. At the start every candidate runs CCOE_THREADS_WARM_STEPS untimed steps and then
 *      CCOE_THREADS_PROBE_STEPS timed ones; the fastest mean wins
 *      (a smaller count must be CCOE_THREADS_MARGIN faster than a larger one).
 *   2. While on max threads: the median of the last 3 steps above CCOE_THREADS_JUMP times the
 *      count's reference time (its best such median) means the machine got busier: probe again.
 *   3. While on fewer: every `interval` seconds of steps, probe the other candidates (the current
 *      count's time is the median of its last steps). The interval starts at
 *      CCOE_THREADS_INTERVAL_S and doubles after every probe that confirms the smaller count, up
 *      to CCOE_THREADS_INTERVAL_MAX_S, so that a lasting neighbour costs little.
 * Results do not depend on the count (papers/threads.md), so switching never changes a run's
 * losses or weights.
 */
#ifndef CCOE_THREADS_H
#define CCOE_THREADS_H

#define CCOE_THREADS_PROBE_STEPS 2
#define CCOE_THREADS_WARM_STEPS 1
#define CCOE_THREADS_MARGIN 0.05
#define CCOE_THREADS_JUMP 1.3
#define CCOE_THREADS_INTERVAL_S 10.0
#define CCOE_THREADS_INTERVAL_MAX_S 160.0
#define CCOE_THREADS_MAX_CAND 3

typedef struct ccoe_threads_auto {
    int max;                          /* the most threads (what buffers are sized for) */
    int cand[CCOE_THREADS_MAX_CAND];  /* candidate counts, descending; cand[0] = max */
    int n_cand;
    int cur;                          /* the count of the next step */
    /* probing */
    int probing;                      /* 1 while candidates are being timed */
    int pi;                           /* the candidate being timed */
    int taken;                        /* its steps timed so far (negative: warm-up steps left) */
    int warm;                         /* untimed steps before each candidate's timing */
    int before;                       /* the count when the probe started */
    double mean[CCOE_THREADS_MAX_CAND]; /* mean step time of each candidate in this probe; 0 =
                                         * not timed */
    /* steady */
    double ref;                       /* reference step time of cur (best median of 3) */
    double recent[3];                 /* the last step times on cur (ring) */
    int n_recent;
    double since;                     /* seconds of steps since the last probe */
    double interval;                  /* seconds between probes while on fewer than max */
    int small;                        /* the last probe chose fewer than max */
    /* what happened, for the logs */
    long probes;                      /* probes finished */
    long switches;                    /* changes of the count */
} ccoe_threads_auto;

/* Starts the policy for up to max threads (max < 1 means 1: nothing to decide). */
void ccoe_threads_auto_init(ccoe_threads_auto *a, int max);

/* Records the time of one step that ran with a->cur threads; returns the count for the next
 * step (also left in a->cur). */
int ccoe_threads_auto_step(ccoe_threads_auto *a, double seconds);

/* The CPUs this process may run on (its affinity mask; at least 1): the `max` of auto. */
int ccoe_threads_available(void);

#endif
