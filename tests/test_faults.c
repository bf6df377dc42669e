/* test_faults.c - a run killed (SIGKILL) at each point of its checkpoint write: in the middle
 * of the data, at fsync, just before and just after the rename. Each time the checkpoint on
 * disk is a complete, loadable file (the old one, or after the rename the new one), and
 * resuming from it gives exactly the checkpoint of an uninterrupted run.
 *
 * The writer's write, fsync and rename are wrapped at link time (-Wl,--wrap, CMakeLists.txt),
 * so the faults need no hook in ccoe itself. Training runs only in forked children: the parent
 * never starts OpenMP threads, which do not survive a fork.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include "checkpoint.h"
#include "config.h"
#include "safetensors.h"
#include "session.h"
#include "train.h"

enum fault { FAULT_NONE, FAULT_WRITE, FAULT_FSYNC, FAULT_BEFORE_RENAME, FAULT_AFTER_RENAME };
static enum fault g_fault;
static int g_writes;

ssize_t __real_write(int fd, const void *buf, size_t n);
int __real_fsync(int fd);
int __real_rename(const char *from, const char *to);
ssize_t __wrap_write(int fd, const void *buf, size_t n);
int __wrap_fsync(int fd);
int __wrap_rename(const char *from, const char *to);

static void die(void)
{
    raise(SIGKILL);
}

ssize_t __wrap_write(int fd, const void *buf, size_t n)
{
    /* the third write is the first tensor's data: the header is already on disk */
    if (g_fault == FAULT_WRITE && ++g_writes == 3) {
        __real_write(fd, buf, n / 2);
        die();
    }
    return __real_write(fd, buf, n);
}

int __wrap_fsync(int fd)
{
    if (g_fault == FAULT_FSYNC)
        die();
    return __real_fsync(fd);
}

int __wrap_rename(const char *from, const char *to)
{
    if (g_fault == FAULT_BEFORE_RENAME)
        die();
    int r = __real_rename(from, to);
    if (g_fault == FAULT_AFTER_RENAME)
        die();
    return r;
}

static char g_dir[64];

/* Runs training in a child: to `steps` in folder `out`, resuming from `resume` if non-NULL,
 * with `fault` armed. Returns the wait status. */
static int run_child(const char *out, long steps, const char *resume, enum fault fault)
{
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        g_fault = fault;
        ccoe_config cfg;
        char dir[160];
        snprintf(dir, sizeof dir, "%s/%s", g_dir, out);
        tu_tiny_train_config(&cfg, dir, steps);
        ccoe_error err = {0};
        if (ccoe_session_validate(&cfg, &err) != CCOE_OK)
            _exit(10);
        ccoe_train_opts o = {.progress = 0, .quiet = 1, .resume = resume, .force = !resume};
        ccoe_status s = ccoe_train_run(&cfg, &o, &err);
        if (s != CCOE_OK)
            fprintf(stderr, "child: %s\n", err.msg);
        _exit(s == CCOE_OK ? 0 : 11);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return status;
}

static long step_of(const char *path)
{
    ccoe_st_file *f = NULL;
    ccoe_error err;
    ccoe_status s = ccoe_st_open(path, &f, &err);
    if (s != CCOE_OK)
        fail_msg("%s does not load after the kill: %s", path, err.msg);
    long step = atol(ccoe_st_meta(f, "step"));
    ccoe_st_close(f);
    return step;
}

static void test_kill_during_checkpoint_write(void **state)
{
    (void)state;
    snprintf(g_dir, sizeof g_dir, "/tmp/ccoe-test-faults-XXXXXX");
    assert_non_null(mkdtemp(g_dir));
    /* the uninterrupted run, kept: 3 steps, then resumed to 6. Every run uses the folder
     * "run", so the stored configs and therefore the files are byte for byte comparable. */
    char ck[300], cmd[400];
    snprintf(ck, sizeof ck, "%s/run/checkpoint.safetensors", g_dir);
    assert_int_equal(run_child("run", 3, NULL, FAULT_NONE), 0);
    size_t n3, n6;
    unsigned char *b3 = tu_slurp(ck, &n3);
    assert_int_equal(run_child("run", 6, ck, FAULT_NONE), 0);
    unsigned char *b6 = tu_slurp(ck, &n6);
    assert_true(n6 > 0 && (n3 != n6 || memcmp(b3, b6, n6) != 0));

    static const struct {
        enum fault fault;
        const char *name;
        long step_after; /* the checkpoint on disk after the kill */
    } cases[] = {
        {FAULT_WRITE, "write", 3},
        {FAULT_FSYNC, "fsync", 3},
        {FAULT_BEFORE_RENAME, "before rename", 3},
        {FAULT_AFTER_RENAME, "after rename", 6},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s/run'", g_dir);
        assert_int_equal(system(cmd), 0);
        assert_int_equal(run_child("run", 3, NULL, FAULT_NONE), 0);
        /* the run to 6 steps is killed while it writes its final checkpoint */
        int status = run_child("run", 6, ck, cases[i].fault);
        if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
            fail_msg("%s: the child was not killed at the fault (status %d)", cases[i].name,
                     status);
        long step = step_of(ck);
        if (step != cases[i].step_after)
            fail_msg("%s: the checkpoint holds step %ld, expected %ld", cases[i].name, step,
                     cases[i].step_after);
        size_t n;
        unsigned char *b = tu_slurp(ck, &n);
        /* byte for byte the 3-step checkpoint, or the complete 6-step one */
        if (cases[i].step_after == 3)
            assert_true(n == n3 && memcmp(b, b3, n) == 0);
        else
            assert_true(n == n6 && memcmp(b, b6, n) == 0);
        free(b);
        /* resuming gives the uninterrupted run's checkpoint exactly */
        assert_int_equal(run_child("run", 6, ck, FAULT_NONE), 0);
        b = tu_slurp(ck, &n);
        if (!(n == n6 && memcmp(b, b6, n) == 0))
            fail_msg("%s: the resumed run's checkpoint differs from the uninterrupted one",
                     cases[i].name);
        free(b);
    }
    free(b3);
    free(b6);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kill_during_checkpoint_write),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
