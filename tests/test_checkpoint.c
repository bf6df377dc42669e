/* test_checkpoint.c - what a checkpoint's reader refuses even when the file's checksum is right
 * (a hand-edited or foreign-written file): stored numbers out of range or inconsistent, a
 * stored config that describes a model the file cannot hold (refused before allocating it);
 * resealing a file without a whole-file checksum; the arena's check against available memory;
 * and the removal of stale temporary files when a run starts.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "testutil.h"

#include "arena.h"
#include "checkpoint.h"
#include "config.h"
#include "safetensors.h"
#include "session.h"
#include "train.h"

static char g_dir[64];
static char g_ck[300]; /* a checkpoint of a 3-step run */
static ccoe_config g_cfg;

static int setup(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/ccoe-test-ckpt-XXXXXX");
    if (!mkdtemp(g_dir))
        return -1;
    char out[128];
    snprintf(out, sizeof out, "%s/run", g_dir);
    tu_tiny_train_config(&g_cfg, out, 3);
    ccoe_error err = {0};
    if (ccoe_session_validate(&g_cfg, &err) != CCOE_OK)
        return -1;
    ccoe_train_opts o = {.progress = 0, .quiet = 1};
    if (ccoe_train_run(&g_cfg, &o, &err) != CCOE_OK) {
        fprintf(stderr, "%s\n", err.msg);
        return -1;
    }
    snprintf(g_ck, sizeof g_ck, "%s/checkpoint.safetensors", g_cfg.train.out_dir);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Copies g_ck to out with metadata key set to value (a fresh, valid checksum: the file is
 * intact, only its content is wrong). */
static void rewrite_meta(const char *out, const char *key, const char *value)
{
    ccoe_st_file *f = NULL;
    ccoe_error err;
    assert_int_equal(ccoe_st_open(g_ck, &f, &err), CCOE_OK);
    size_t n = ccoe_st_count(f), nm = ccoe_st_meta_count(f);
    ccoe_st_tensor *t = calloc(n, sizeof *t);
    const char **meta = calloc(2 * nm, sizeof *meta);
    assert_true(t && meta);
    for (size_t i = 0; i < n; i++) {
        t[i].name = ccoe_st_name(f, i);
        t[i].data = ccoe_st_find(f, t[i].name, &t[i].ndim, t[i].shape);
    }
    size_t k = 0;
    for (size_t i = 0; i < nm; i++) {
        const char *mk = ccoe_st_meta_key(f, i);
        if (ccoe_st_is_checksum_key(mk))
            continue;
        meta[2 * k] = mk;
        meta[2 * k + 1] = strcmp(mk, key) == 0 ? value : ccoe_st_meta(f, mk);
        k++;
    }
    assert_int_equal(ccoe_st_write(out, t, n, meta, k, &err), CCOE_OK);
    free(t);
    free(meta);
    ccoe_st_close(f);
}

/* Resumes from ck and expects CCOE_ERR_FORMAT with a message containing want. */
static void resume_fails(const char *ck, const char *want)
{
    ccoe_config cfg = g_cfg;
    cfg.train.steps = 5;
    snprintf(cfg.train.out_dir, sizeof cfg.train.out_dir, "%s/resumed", g_dir);
    ccoe_train_opts o = {.progress = 0, .quiet = 1, .resume = ck, .force = 1};
    ccoe_error err = {0};
    ccoe_status s = ccoe_train_run(&cfg, &o, &err);
    if (s != CCOE_ERR_FORMAT || !strstr(err.msg, want))
        fail_msg("resume from %s: status %d, message: %s (want '%s')", ck, s, err.msg, want);
}

static void test_stored_numbers_are_range_checked(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s/edited.safetensors", g_dir);
    static const char *const cases[][3] = {
        {"step", "-5", "step = '-5' is not a non-negative integer"},
        {"step", "3 ", "step = '3 ' is not"},
        {"step", "+3", "step = '+3' is not"},
        {"step", "99999999999999999999", "step = 99999999999999999999 is out of range"},
        {"step", "18446744073709551626", "step = 18446744073709551626 is out of range"}, /* 2^64+10 */
        {"optim.t", "-1", "optim.t = '-1' is not"},
        {"optim.t", "4", "optim.t = 4 is out of range (at most 3)"},
        {"optim.t", "0", "optim.t = 0 but the optimizer moments are not zero"},
        {"data_pos", "1e3", "data_pos = '1e3' is not"},
        {"data_pos", "", "lacks metadata 'data_pos'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite_meta(p, cases[i][0], cases[i][1]);
        resume_fails(p, cases[i][2]);
    }
    /* the unedited checkpoint resumes */
    ccoe_config cfg = g_cfg;
    cfg.train.steps = 4;
    snprintf(cfg.train.out_dir, sizeof cfg.train.out_dir, "%s/resumed-ok", g_dir);
    ccoe_train_opts o = {.progress = 0, .quiet = 1, .resume = g_ck};
    ccoe_error err = {0};
    assert_int_equal(ccoe_train_run(&cfg, &o, &err), CCOE_OK);
}

/* A stored config of a model far larger than the file is refused before the model is built:
 * the process never grows by the gigabytes such a model would take. */
static void test_config_checked_against_the_file_before_allocation(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s/huge.safetensors", g_dir);
    ccoe_config big = g_cfg;
    big.model.n_embd = 16384;
    big.model.n_head = 16;
    big.model.n_layer = 8;
    big.model.ffn_hidden = 0;
    ccoe_error err = {0};
    assert_int_equal(ccoe_session_validate(&big, &err), CCOE_OK);
    big.model.vocab_size = 320;
    char *ini = ccoe_config_to_ini(&big);
    assert_non_null(ini);
    rewrite_meta(p, "config", ini);
    free(ini);
    struct rusage before, after;
    getrusage(RUSAGE_SELF, &before);
    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    assert_int_equal(ccoe_checkpoint_open(p, &cfg, &f, &err), CCOE_ERR_FORMAT);
    assert_null(f);
    TU_ASSERT_MSG_HAS(err, "describes a model of at least");
    TU_ASSERT_MSG_HAS(err, "n_embd 16384");
    resume_fails(p, "describes a model of at least");
    getrusage(RUSAGE_SELF, &after);
    assert_true(after.ru_maxrss - before.ru_maxrss < 200 * 1024); /* KiB: far below 8 GiB */

    /* the arena refuses a request larger than the memory available instead of zeroing it */
    double avail = ccoe_memory_available();
    if (avail > 0) {
        ccoe_arena a = {0};
        size_t huge = (size_t)(avail * 4.0) + ((size_t)1 << 30);
        assert_int_equal(ccoe_arena_alloc(&a, huge, "parameters", &err), CCOE_ERR_NOMEM);
        TU_ASSERT_MSG_HAS(err, "MiB of memory is available");
        assert_null(a.base);
    }
}

/* A checkpoint without the whole-file checksum (an older ccoe wrote it) is refused until
 * resealed; reseal keeps every tensor and metadata value. */
static void test_reseal(void **state)
{
    (void)state;
    char old[256], sealed[256];
    snprintf(old, sizeof old, "%s/old.safetensors", g_dir);
    snprintf(sealed, sizeof sealed, "%s/sealed.safetensors", g_dir);
    /* drop the checksum by renaming its key (same length: the layout stays valid) */
    FILE *in = fopen(g_ck, "rb");
    assert_non_null(in);
    fseek(in, 0, SEEK_END);
    long size = ftell(in);
    rewind(in);
    char *buf = malloc((size_t)size);
    assert_int_equal(fread(buf, 1, (size_t)size, in), (size_t)size);
    fclose(in);
    char *key = memmem(buf, (size_t)size, "\"ccoe.file_crc32\"", 17);
    assert_non_null(key);
    memcpy(key, "\"ccoe.file_xxxxx\"", 17);
    FILE *o = fopen(old, "wb");
    assert_int_equal(fwrite(buf, 1, (size_t)size, o), (size_t)size);
    fclose(o);
    free(buf);

    ccoe_config cfg;
    ccoe_st_file *f = NULL;
    ccoe_error err = {0};
    assert_int_equal(ccoe_checkpoint_open(old, &cfg, &f, &err), CCOE_ERR_FORMAT);
    TU_ASSERT_MSG_HAS(err, "no whole-file checksum");
    TU_ASSERT_MSG_HAS(err, "ccoe reseal");
    char note[200] = "";
    assert_int_equal(ccoe_checkpoint_reseal(old, sealed, note, sizeof note, &err), CCOE_OK);
    assert_non_null(strstr(note, "no checksum"));
    assert_int_equal(ccoe_checkpoint_open(sealed, &cfg, &f, &err), CCOE_OK);
    ccoe_st_file *a = NULL;
    assert_int_equal(ccoe_st_open(g_ck, &a, &err), CCOE_OK);
    char out[8192];
    FILE *mem = fmemopen(out, sizeof out, "w");
    ccoe_compare_result r;
    /* identical to the original but for the renamed key, which is now plain metadata */
    assert_int_equal(ccoe_checkpoint_compare(a, f, CCOE_CMP_ALL, mem, &r), 0);
    fclose(mem);
    assert_int_equal(r.differ, 0);
    assert_int_equal(r.only_a + r.only_b, 0);
    assert_int_equal(r.meta_differ, 1);
    assert_non_null(strstr(out, "metadata only in B: ccoe.file_xxxxx"));
    assert_true(r.same == ccoe_st_count(a));
    ccoe_st_close(a);
    ccoe_st_close(f);
}

/* Compare: different tensor sets and metadata are differences; --params says what it skips. */
static void test_compare(void **state)
{
    (void)state;
    char p[256];
    snprintf(p, sizeof p, "%s/other.safetensors", g_dir);
    rewrite_meta(p, "data_pos", "0");
    ccoe_st_file *a = NULL, *b = NULL;
    ccoe_error err;
    assert_int_equal(ccoe_st_open(g_ck, &a, &err), CCOE_OK);
    assert_int_equal(ccoe_st_open(p, &b, &err), CCOE_OK);
    char out[8192];
    ccoe_compare_result r;
    FILE *mem = fmemopen(out, sizeof out, "w");
    assert_int_equal(ccoe_checkpoint_compare(a, a, CCOE_CMP_ALL, mem, &r), 1);
    assert_int_equal(ccoe_checkpoint_compare(a, b, CCOE_CMP_ALL, mem, &r), 0);
    fclose(mem);
    assert_int_equal(r.meta_differ, 1);
    assert_non_null(strstr(out, "metadata differs: data_pos"));
    mem = fmemopen(out, sizeof out, "w");
    assert_int_equal(ccoe_checkpoint_compare(a, b, CCOE_CMP_PARAMS, mem, &r), 1);
    fclose(mem);
    assert_true(r.skipped > 0);
    assert_non_null(strstr(out, "not compared"));
    assert_non_null(strstr(out, "optimizer state"));
    ccoe_st_close(a);
    ccoe_st_close(b);
}

/* Starting a run removes an old temporary checkpoint a killed writer left, not a fresh one. */
static void test_stale_temp_removed_on_start(void **state)
{
    (void)state;
    char stale[400], fresh[400];
    snprintf(stale, sizeof stale, "%s.tmp.999999999.00000000deadbeef", g_ck);
    snprintf(fresh, sizeof fresh, "%s.tmp.999999998.00000000deadbeef", g_ck);
    int fd = open(stale, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0 && write(fd, "partial", 7) == 7);
    close(fd);
    struct timespec old[2] = {{.tv_sec = time(NULL) - 7200}, {.tv_sec = time(NULL) - 7200}};
    assert_int_equal(utimensat(AT_FDCWD, stale, old, 0), 0);
    fd = open(fresh, O_WRONLY | O_CREAT | O_EXCL, 0644);
    assert_true(fd >= 0 && write(fd, "writing", 7) == 7);
    close(fd);
    ccoe_config cfg = g_cfg;
    cfg.train.steps = 4;
    ccoe_train_opts o = {.progress = 0, .quiet = 1, .resume = g_ck};
    ccoe_error err = {0};
    assert_int_equal(ccoe_train_run(&cfg, &o, &err), CCOE_OK);
    assert_int_equal(access(stale, F_OK), -1);
    assert_int_equal(access(fresh, F_OK), 0);
    unlink(fresh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stored_numbers_are_range_checked),
        cmocka_unit_test(test_config_checked_against_the_file_before_allocation),
        cmocka_unit_test(test_reseal),
        cmocka_unit_test(test_compare),
        cmocka_unit_test(test_stale_temp_removed_on_start),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
