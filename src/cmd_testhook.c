/* cmd_testhook.c - the test-only environment hooks of the command line, built only with the
 * CMake option CCOE_TEST_HOOKS (on by default; configure with -DCCOE_TEST_HOOKS=OFF for a
 * binary that reads none of these variables). tests/cli/mpi_train.sh and resume_metrics.sh
 * use them to inject failures into training. */
#include <stdlib.h>

#include "cli.h"
#include "train.h"

/* CCOE_TEST_FAIL_MODE (error, nan, abort, kill, file), _RANK (default 0), _STEP (default 1):
 * see ccoe_train_opts.test_fail_mode. */
void ccoe_cli_test_hooks_train(ccoe_train_opts *o)
{
    /* CCOE_TEST_THREADS_SLOW=F: see ccoe_train_opts.test_threads_slow */
    if (getenv("CCOE_TEST_THREADS_SLOW"))
        o->test_threads_slow = atof(getenv("CCOE_TEST_THREADS_SLOW"));
    const char *mode = getenv("CCOE_TEST_FAIL_MODE");
    if (!mode)
        return;
    o->test_fail_mode = mode;
    o->test_fail_rank = getenv("CCOE_TEST_FAIL_RANK") ? atoi(getenv("CCOE_TEST_FAIL_RANK")) : 0;
    o->test_fail_step = getenv("CCOE_TEST_FAIL_STEP") ? atol(getenv("CCOE_TEST_FAIL_STEP")) : 1;
}
