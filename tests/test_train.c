/* test_train.c - the trainer's failure paths: a checkpoint holding a non-finite weight is
 * refused at load naming the tensor; a non-finite loss stops training with CCOE_ERR_NUMERIC and
 * a message naming the step and the fix, and writes no checkpoint. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testutil.h"

#include "checkpoint.h"
#include "config.h"
#include "session.h"
#include "train.h"

static void test_nan_loss_stops_cleanly(void **state)
{
    (void)state;
    char dir[] = "/tmp/ccoe-train-XXXXXX";
    assert_non_null(mkdtemp(dir));
    ccoe_config cfg;
    ccoe_config_defaults(&cfg);
    cfg.model.n_layer = 1;
    cfg.model.n_embd = 16;
    cfg.model.n_head = 2;
    cfg.model.seq_len = 16;
    cfg.train.batch_size = 2;
    cfg.train.steps = 5;
    ccoe_error err = {0};
    assert_int_equal(ccoe_session_validate(&cfg, &err), CCOE_OK);

    /* a checkpoint whose final-norm weight holds a NaN is refused at load, naming it */
    ccoe_session s;
    assert_int_equal(ccoe_session_open(&s, &cfg, 1, &err), CCOE_OK);
    ccoe_model_init_weights(&s.model, 1, CCOE_INIT_COPY);
    const ccoe_param *p = ccoe_model_find_param(&s.model, "lnf.weight");
    assert_non_null(p);
    s.model.param_block[p->offset + 3] = NAN;
    char bad[256];
    snprintf(bad, sizeof bad, "%s/nan.safetensors", dir);
    ccoe_train_state st = {0};
    assert_int_equal(ccoe_checkpoint_save(bad, &s.cfg, &s.model, NULL, &st, &err), CCOE_OK);
    ccoe_session_close(&s);
    snprintf(cfg.train.out_dir, sizeof cfg.train.out_dir, "%s/run", dir);
    ccoe_train_opts o = {.init_from = bad, .progress = 0, .quiet = 1};
    assert_int_equal(ccoe_train_run(&cfg, &o, &err), CCOE_ERR_FORMAT);
    if (!strstr(err.msg, "lnf.weight") || !strstr(err.msg, "non-finite") ||
        !strstr(err.msg, "index 3"))
        fail_msg("unexpected message: %s", err.msg);

    /* a loss that turns non-finite during training (the trainer's test hook injects it at
     * step 2) stops the run with CCOE_ERR_NUMERIC and writes no checkpoint */
    ccoe_train_opts o2 = {.progress = 0, .quiet = 1, .force = 1, .test_fail_mode = "nan",
                          .test_fail_rank = 0, .test_fail_step = 2};
    ccoe_status status = ccoe_train_run(&cfg, &o2, &err);
    assert_int_equal(status, CCOE_ERR_NUMERIC);
    if (!strstr(err.msg, "non-finite loss at step 2") || !strstr(err.msg, "train.lr"))
        fail_msg("unexpected message: %s", err.msg);
    char ck[300];
    snprintf(ck, sizeof ck, "%s/checkpoint.safetensors", cfg.train.out_dir);
    assert_int_not_equal(access(ck, F_OK), 0); /* nothing written */

    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_nan_loss_stops_cleanly),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
