/* test_watchdog.c - the collective watchdog's arithmetic (src/watchdog.h): the spin-then-sleep
 * schedule of a watched wait, its deadline, the monitor thread's period and the rank list of
 * the message. The watchdog itself (mpi/comm_mpi.c) is tested end to end by
 * tests/cli/mpi_watchdog.sh (SIGSTOP of a rank under mpirun). */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "watchdog.h"

/* this cmocka (1.1) has no assert_double_equal */
#define assert_near(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol))

static void test_wait_schedule(void **state)
{
    (void)state;
    ccoe_wd_wait w;
    ccoe_wd_wait_begin(&w, 100.0, 3.0);
    /* spin phase: poll again at once */
    assert_true(ccoe_wd_wait_next(&w, 100.0) == 0.0);
    assert_true(ccoe_wd_wait_next(&w, 100.0 + CCOE_WD_SPIN_S / 2) == 0.0);
    /* then sleeps from the minimum, doubling, capped at the maximum */
    double now = 100.0 + CCOE_WD_SPIN_S, expect = CCOE_WD_SLEEP_MIN_S;
    int sleeps = 0;
    for (; sleeps < 40; sleeps++) {
        double d = ccoe_wd_wait_next(&w, now);
        assert_true(d > 0);
        assert_near(d, expect, 1e-15);
        assert_true(d <= CCOE_WD_SLEEP_MAX_S);
        now += d;
        expect = expect * 2 < CCOE_WD_SLEEP_MAX_S ? expect * 2 : CCOE_WD_SLEEP_MAX_S;
    }
    assert_near(expect, CCOE_WD_SLEEP_MAX_S, 0);
    /* never sleeps past the deadline, and expires exactly at it */
    double d = ccoe_wd_wait_next(&w, 103.0 - 0.0002);
    assert_near(d, 0.0002, 1e-9);
    assert_true(ccoe_wd_wait_next(&w, 103.0) < 0);
    assert_true(ccoe_wd_wait_next(&w, 150.0) < 0);
}

static void test_wait_without_timeout(void **state)
{
    (void)state;
    ccoe_wd_wait w;
    ccoe_wd_wait_begin(&w, 5.0, 0.0);
    for (double now = 5.0; now < 1e6; now *= 3) {
        double d = ccoe_wd_wait_next(&w, now);
        assert_true(d >= 0 && d <= CCOE_WD_SLEEP_MAX_S); /* off: never expires */
    }
}

static void test_expired_and_period(void **state)
{
    (void)state;
    assert_false(ccoe_wd_expired(0.0, 1e9, 3.0));   /* no blocking call in progress */
    assert_false(ccoe_wd_expired(10.0, 12.9, 3.0));
    assert_true(ccoe_wd_expired(10.0, 13.0, 3.0));
    assert_false(ccoe_wd_expired(10.0, 1e9, 0.0));  /* off */
    assert_near(ccoe_wd_monitor_period(300.0), 1.0, 0);
    assert_near(ccoe_wd_monitor_period(2.0), 0.5, 0);
    assert_near(ccoe_wd_monitor_period(0.001), 0.01, 0);
    assert_near(ccoe_wd_monitor_period(0.0), 1.0, 0);
}

static void test_format_ranks(void **state)
{
    (void)state;
    char buf[160];
    const int r[] = {0, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13};
    assert_string_equal(ccoe_wd_format_ranks(buf, sizeof buf, r, 0), "no rank");
    assert_string_equal(ccoe_wd_format_ranks(buf, sizeof buf, r + 1, 1), "rank 2");
    assert_string_equal(ccoe_wd_format_ranks(buf, sizeof buf, r, 2), "ranks 0 and 2");
    assert_string_equal(ccoe_wd_format_ranks(buf, sizeof buf, r, 3), "ranks 0, 2 and 5");
    assert_string_equal(ccoe_wd_format_ranks(buf, sizeof buf, r, 8),
                        "ranks 0, 2, 5, 6, 7, 8, 9 and 10");
    assert_string_equal(ccoe_wd_format_ranks(buf, sizeof buf, r, 11),
                        "ranks 0, 2, 5, 6, 7, 8, 9, 10 and 3 more");
    char tiny[8];
    ccoe_wd_format_ranks(tiny, sizeof tiny, r, 11); /* truncated, still a string */
    assert_true(strlen(tiny) < sizeof tiny);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_schedule),
        cmocka_unit_test(test_wait_without_timeout),
        cmocka_unit_test(test_expired_and_period),
        cmocka_unit_test(test_format_ranks),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
