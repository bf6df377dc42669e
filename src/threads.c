/* threads.c - the policy of `run.threads = auto` (threads.h). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_COUNT */
#include "threads.h"

#include <sched.h>
#include <string.h>
#include <unistd.h>

static double median3(const double *x)
{
    double a = x[0], b = x[1], c = x[2];
    if (a > b) {
        double t = a;
        a = b;
        b = t;
    }
    /* a <= b: the median is b clipped to [a, c] */
    return c < a ? a : c > b ? b : c;
}

/* with_current = 0 only for the first probe: it times every candidate, each after
 * CCOE_THREADS_WARM_STEPS untimed steps (the first steps of a count pay one-time costs: JIT code
 * generation of its GEMM shapes, first touches of memory, the start of the thread team). */
static void start_probe(ccoe_threads_auto *a, int with_current)
{
    a->probing = 1;
    a->before = a->cur;
    a->warm = with_current ? 0 : CCOE_THREADS_WARM_STEPS;
    for (int i = 0; i < a->n_cand; i++)
        a->mean[i] = 0.0;
    a->pi = -1;
    if (with_current) { /* the current count's time: its recent steps */
        for (int i = 0; i < a->n_cand; i++)
            if (a->cand[i] == a->cur)
                a->mean[i] = median3(a->recent);
    }
    /* the first candidate not yet timed */
    for (int i = 0; i < a->n_cand && a->pi < 0; i++)
        if (a->mean[i] == 0.0)
            a->pi = i;
    a->taken = -a->warm;
    a->cur = a->cand[a->pi];
}

static void finish_probe(ccoe_threads_auto *a)
{
    /* candidates descend: a smaller count must beat the best larger one by the margin */
    int best = 0;
    for (int i = 1; i < a->n_cand; i++)
        if (a->mean[i] < a->mean[best] * (1.0 - CCOE_THREADS_MARGIN))
            best = i;
    const int chosen = a->cand[best];
    if (chosen < a->max) /* a smaller count again: look less often while it keeps winning */
        a->interval = !a->small ? CCOE_THREADS_INTERVAL_S
                      : a->interval * 2.0 < CCOE_THREADS_INTERVAL_MAX_S ? a->interval * 2.0
                                                                        : CCOE_THREADS_INTERVAL_MAX_S;
    else
        a->interval = 0.0; /* on max: probe again only when the step time jumps */
    a->small = chosen < a->max;
    a->probes++;
    a->probing = 0;
    if (chosen != a->before)
        a->switches++;
    a->cur = chosen;
    a->ref = a->mean[best];
    a->n_recent = 0;
    a->recent[0] = a->recent[1] = a->recent[2] = 0.0;
    a->since = 0.0;
}

void ccoe_threads_auto_init(ccoe_threads_auto *a, int max)
{
    memset(a, 0, sizeof *a);
    a->max = max > 1 ? max : 1;
    a->cand[a->n_cand++] = a->max;
    if (a->max > 2)
        a->cand[a->n_cand++] = a->max - 1;
    if (a->max > 1)
        a->cand[a->n_cand++] = 1;
    a->cur = a->max;
    if (a->n_cand > 1)
        start_probe(a, 0);
}

int ccoe_threads_auto_step(ccoe_threads_auto *a, double seconds)
{
    if (a->n_cand < 2)
        return a->cur;
    if (!(seconds > 0.0))
        seconds = 1e-9; /* a clock that did not advance: still a (very fast) step */
    if (a->probing) {
        if (a->taken < 0) { /* an untimed warm-up step of this candidate */
            a->taken++;
            return a->cur;
        }
        a->mean[a->pi] += seconds / CCOE_THREADS_PROBE_STEPS;
        if (++a->taken < CCOE_THREADS_PROBE_STEPS)
            return a->cur;
        int next = -1;
        for (int i = a->pi + 1; i < a->n_cand && next < 0; i++)
            if (a->mean[i] == 0.0)
                next = i;
        if (next >= 0) {
            a->pi = next;
            a->taken = -a->warm;
            a->cur = a->cand[next];
            return a->cur;
        }
        finish_probe(a);
        return a->cur;
    }
    a->recent[a->n_recent % 3] = seconds;
    a->n_recent++;
    a->since += seconds;
    if (a->n_recent < 3)
        return a->cur;
    double med = median3(a->recent);
    if (med < a->ref)
        a->ref = med; /* the count's best recent speed */
    if (a->cur == a->max) {
        if (med > CCOE_THREADS_JUMP * a->ref)
            start_probe(a, 1);
    } else if (a->since >= a->interval || med > CCOE_THREADS_JUMP * a->ref) {
        start_probe(a, 1);
    }
    return a->cur;
}

int ccoe_threads_available(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}
