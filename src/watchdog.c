/* watchdog.c - the watchdog's schedule and message arithmetic (src/watchdog.h). */
#include "watchdog.h"

#include <stdio.h>

void ccoe_wd_wait_begin(ccoe_wd_wait *w, double now, double timeout)
{
    w->t0 = now;
    w->timeout = timeout;
    w->sleep = CCOE_WD_SLEEP_MIN_S;
}

double ccoe_wd_wait_next(ccoe_wd_wait *w, double now)
{
    const double elapsed = now - w->t0;
    if (w->timeout > 0 && elapsed >= w->timeout)
        return -1.0;
    if (elapsed < CCOE_WD_SPIN_S)
        return 0.0;
    double d = w->sleep;
    w->sleep = d * 2 < CCOE_WD_SLEEP_MAX_S ? d * 2 : CCOE_WD_SLEEP_MAX_S;
    if (w->timeout > 0 && elapsed + d > w->timeout)
        d = w->timeout - elapsed;
    return d > 0 ? d : 0.0;
}

int ccoe_wd_expired(double since, double now, double timeout)
{
    return timeout > 0 && since > 0 && now - since >= timeout;
}

double ccoe_wd_monitor_period(double timeout)
{
    if (timeout <= 0)
        return 1.0;
    double p = timeout / 4;
    return p < 0.01 ? 0.01 : p > 1.0 ? 1.0 : p;
}

char *ccoe_wd_format_ranks(char *buf, size_t cap, const int *ranks, int n)
{
    enum { SHOWN = 8 };
    if (!cap)
        return buf;
    buf[0] = '\0';
    if (n <= 0) {
        snprintf(buf, cap, "no rank");
        return buf;
    }
    size_t used = 0;
    const int shown = n > SHOWN ? SHOWN : n;
    for (int i = 0; i < shown && used < cap; i++) {
        const char *sep = i == 0 ? (n == 1 ? "rank " : "ranks ")
                          : (i == n - 1) ? " and "
                                         : ", ";
        int w = snprintf(buf + used, cap - used, "%s%d", sep, ranks[i]);
        if (w < 0)
            break;
        used += (size_t)w;
    }
    if (n > SHOWN && used < cap)
        snprintf(buf + used, cap - used, " and %d more", n - SHOWN);
    return buf;
}
