/* test_placement.c - the expert -> rank map (src/placement.h): every policy, P > E, P = 1,
 * list maps with bad entries or the wrong length, map syntax, the balanced policy's loads of
 * CCoE experts and the expert count known from a config. */
#include "testutil.h"

#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "config.h"
#include "data.h"
#include "taskmap.h"
#include "placement.h"


static void map_ok(ccoe_placement_kind k, const char *list, int E, int P, const double *load,
                   const int32_t *want)
{
    ccoe_mpi_config mpi = {.placement = k};
    snprintf(mpi.map, sizeof mpi.map, "%s", list ? list : "");
    int32_t owner[CCOE_PLACE_MAX];
    ccoe_error err;
    ccoe_error_clear(&err);
    ccoe_status st = ccoe_placement_map(&mpi, E, P, load, owner, &err);
    if (st != CCOE_OK)
        fprintf(stderr, "%s\n", err.msg);
    assert_int_equal(st, CCOE_OK);
    for (int e = 0; e < E; e++) {
        if (owner[e] != want[e])
            fprintf(stderr, "policy %s E=%d P=%d: expert %d on rank %d, want %d\n",
                    ccoe_placement_name(k), E, P, e, (int)owner[e], (int)want[e]);
        assert_int_equal(owner[e], want[e]);
    }
}

static void map_fails(ccoe_placement_kind k, const char *list, int E, int P, const char *msg)
{
    ccoe_mpi_config mpi = {.placement = k};
    snprintf(mpi.map, sizeof mpi.map, "%s", list);
    int32_t owner[CCOE_PLACE_MAX];
    ccoe_error err;
    ccoe_error_clear(&err);
    assert_int_equal(ccoe_placement_map(&mpi, E, P, NULL, owner, &err), CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, msg);
}

static void test_contiguous(void **state)
{
    (void)state;
    map_ok(CCOE_PLACE_CONTIGUOUS, NULL, 8, 3, NULL, (const int32_t[]){0, 0, 1, 1, 1, 2, 2, 2});
    map_ok(CCOE_PLACE_CONTIGUOUS, NULL, 4, 2, NULL, (const int32_t[]){0, 0, 1, 1});
    /* P > E: ranks 0 (and others) own nothing; every expert has one owner */
    map_ok(CCOE_PLACE_CONTIGUOUS, NULL, 3, 4, NULL, (const int32_t[]){1, 2, 3});
    map_ok(CCOE_PLACE_CONTIGUOUS, NULL, 2, 1, NULL, (const int32_t[]){0, 0});
    /* it agrees with the MoE layer's own default and with ccoe_comm_split's blocks */
    for (int P = 1; P <= 9; P++)
        for (int E = 1; E <= 12; E++) {
            ccoe_mpi_config mpi = {.placement = CCOE_PLACE_CONTIGUOUS};
            int32_t owner[16];
            ccoe_error err;
            assert_int_equal(ccoe_placement_map(&mpi, E, P, NULL, owner, &err), CCOE_OK);
            for (int q = 0; q < P; q++) {
                int e0, e1;
                ccoe_comm_split(E, P, q, &e0, &e1);
                for (int e = e0; e < e1; e++)
                    assert_int_equal(owner[e], q);
            }
        }
}

static void test_round_robin(void **state)
{
    (void)state;
    map_ok(CCOE_PLACE_ROUND_ROBIN, NULL, 5, 2, NULL, (const int32_t[]){0, 1, 0, 1, 0});
    map_ok(CCOE_PLACE_ROUND_ROBIN, NULL, 2, 4, NULL, (const int32_t[]){0, 1}); /* P > E */
    map_ok(CCOE_PLACE_ROUND_ROBIN, NULL, 3, 1, NULL, (const int32_t[]){0, 0, 0});
}

static void test_balanced(void **state)
{
    (void)state;
    /* largest first onto the least loaded rank: 50 -> 0, 40 -> 1, 30 -> 1 (40 < 50), 20 -> 0,
     * 10 -> 0 (70 = 70 with two experts each: the lower rank) */
    const double load[5] = {10, 50, 30, 40, 20};
    map_ok(CCOE_PLACE_BALANCED, NULL, 5, 2, load, (const int32_t[]){0, 0, 1, 1, 0});
    /* ranks end with 80 and 70 rows, contiguous would give 60 / 90 */
    /* one heavy expert alone on its rank */
    const double skew[4] = {100, 1, 1, 1};
    map_ok(CCOE_PLACE_BALANCED, NULL, 4, 2, skew, (const int32_t[]){0, 1, 1, 1});
    /* equal loads: spread one per rank, P > E leaves ranks empty */
    const double flat[3] = {5, 5, 5};
    map_ok(CCOE_PLACE_BALANCED, NULL, 3, 4, flat, (const int32_t[]){0, 1, 2});
    map_ok(CCOE_PLACE_BALANCED, NULL, 3, 1, flat, (const int32_t[]){0, 0, 0});
    /* no a-priori load (MoE experts): contiguous */
    map_ok(CCOE_PLACE_BALANCED, NULL, 4, 2, NULL, (const int32_t[]){0, 0, 1, 1});
}

static void test_list(void **state)
{
    (void)state;
    map_ok(CCOE_PLACE_LIST, "1,0,1,0", 4, 2, NULL, (const int32_t[]){1, 0, 1, 0});
    map_ok(CCOE_PLACE_LIST, " 3, 3 ,0", 3, 4, NULL, (const int32_t[]){3, 3, 0}); /* P > E */
    map_ok(CCOE_PLACE_LIST, "0,0", 2, 1, NULL, (const int32_t[]){0, 0});          /* P = 1 */
    /* a rank outside the job: the entry, the rank, P and the fix */
    map_fails(CCOE_PLACE_LIST, "0,1,2,3", 4, 2,
              "mpi.map entry 2 names rank 2 but the job has 2 ranks; pass --set mpi.map=... "
              "with ranks 0..1 or --set mpi.placement=contiguous");
    map_fails(CCOE_PLACE_LIST, "0,1", 2, 1,
              "mpi.map entry 1 names rank 1 but the job has 1 rank;");
    /* wrong length, missing map, bad syntax */
    map_fails(CCOE_PLACE_LIST, "0,1,0", 4, 2, "has 3 entries but the model has 4 experts");
    map_fails(CCOE_PLACE_LIST, "0,1,0,1,0", 4, 2, "has 5 entries but the model has 4 experts");
    map_fails(CCOE_PLACE_LIST, "", 4, 2, "mpi.placement = list needs mpi.map");
    map_fails(CCOE_PLACE_LIST, "0,,1,0", 4, 2, "entry 1 ('') is not a rank number");
    map_fails(CCOE_PLACE_LIST, "0,-1,1,0", 4, 2, "entry 1 ('-1') is not a rank number");
    map_fails(CCOE_PLACE_LIST, "0,1,x,0", 4, 2, "entry 2 ('x') is not a rank number");
    map_fails(CCOE_PLACE_LIST, "0,1 2,1,0", 4, 2, "entry 1 ('1 2') is not a rank number");
    map_fails(CCOE_PLACE_LIST, "0,1,1,", 4, 2, "entry 3 ('') is not a rank number");
    /* the other policies ignore mpi.map */
    map_ok(CCOE_PLACE_ROUND_ROBIN, "7,7", 2, 2, NULL, (const int32_t[]){0, 1});
}

static void test_expert_count_and_validate(void **state)
{
    (void)state;
    ccoe_config c;
    ccoe_config_defaults(&c);
    assert_int_equal(ccoe_placement_expert_count(&c), 0);
    c.ccoe.form = CCOE_FORM_TAIL;
    snprintf(c.ccoe.experts, sizeof c.ccoe.experts, " a:1  b:2 c:1 ");
    assert_int_equal(ccoe_placement_expert_count(&c), 3);
    snprintf(c.moe.gate, sizeof c.moe.gate, "topk");
    c.moe.n_experts = 6;
    assert_int_equal(ccoe_placement_expert_count(&c), 6); /* the MoE layers take the map */
    ccoe_mpi_config mpi = {.placement = CCOE_PLACE_LIST};
    ccoe_error err;
    snprintf(mpi.map, sizeof mpi.map, "0,1,2");
    assert_int_equal(ccoe_placement_validate(&mpi, 3, &err), CCOE_OK); /* ranks checked later */
    assert_int_equal(ccoe_placement_validate(&mpi, 0, &err), CCOE_OK); /* nothing to place */
    assert_int_equal(ccoe_placement_validate(&mpi, 2, &err), CCOE_ERR_CONFIG);
    TU_ASSERT_MSG_HAS(err, "has 3 entries but the model has 2 experts");
    mpi.placement = CCOE_PLACE_CONTIGUOUS;
    assert_int_equal(ccoe_placement_validate(&mpi, 2, &err), CCOE_OK); /* ignored */
    snprintf(mpi.map, sizeof mpi.map, "0;1");
    assert_int_equal(ccoe_placement_validate(&mpi, 2, &err), CCOE_ERR_CONFIG); /* syntax */
    TU_ASSERT_MSG_HAS(err, "mpi.map");
}

static void test_ccoe_load(void **state)
{
    (void)state;
    static const char names[4][CCOE_NAME_LEN] = {"arith", "code", "prose", "sql"};
    ccoe_config c;
    ccoe_config_defaults(&c);
    c.model.n_layer = 4;
    c.ccoe.form = CCOE_FORM_TAIL;
    snprintf(c.ccoe.experts, sizeof c.ccoe.experts, "a:1 b:1 c:1");
    snprintf(c.ccoe.routes, sizeof c.ccoe.routes, "arith:a code:b sql:a");
    ccoe_taskmap gt;
    ccoe_error err;
    assert_int_equal(ccoe_taskmap_build(&gt, &c, names, 4, &err), CCOE_OK);
    static ccoe_dataset ds; /* only the per-domain counts matter */
    memset(&ds, 0, sizeof ds);
    ds.n_domains = 4;
    ds.domains[0].n_train = 30;
    ds.domains[1].n_train = 50;
    ds.domains[2].n_train = 70; /* prose: base path */
    ds.domains[3].n_train = 25;
    double load[3];
    ccoe_placement_ccoe_load(&gt, &ds, load);
    assert_true(load[0] == 55 && load[1] == 50 && load[2] == 0);
    /* balanced on 2 ranks: a (55) and b (50) apart, c (no rows) with b */
    map_ok(CCOE_PLACE_BALANCED, NULL, 3, 2, load, (const int32_t[]){0, 1, 1});
}

static void test_format(void **state)
{
    (void)state;
    char buf[64];
    ccoe_placement_format((const int32_t[]){1, 0, 1}, 3, NULL, buf, sizeof buf);
    assert_string_equal(buf, "0->1 1->0 2->1");
    const char *names[2] = {"arith", "code"};
    ccoe_placement_format((const int32_t[]){0, 1}, 2, names, buf, sizeof buf);
    assert_string_equal(buf, "arith->0 code->1");
    ccoe_placement_format((const int32_t[]){0, 1, 0, 1}, 4, NULL, buf, 8); /* truncated */
    assert_true(strlen(buf) < 8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contiguous),
        cmocka_unit_test(test_round_robin),
        cmocka_unit_test(test_balanced),
        cmocka_unit_test(test_list),
        cmocka_unit_test(test_expert_count_and_validate),
        cmocka_unit_test(test_ccoe_load),
        cmocka_unit_test(test_format),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
