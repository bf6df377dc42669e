/* fs.c - small filesystem helpers. */
#include "fs.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

ccoe_status ccoe_fs_mkdirs(const char *path, ccoe_error *err)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return ccoe_error_set(err, CCOE_ERR_ARG, "directory path too long: %.64s...", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0777) != 0 && errno != EEXIST)
                return ccoe_error_set(err, CCOE_ERR_IO, "cannot create directory %s: %s", buf,
                                      strerror(errno));
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    return CCOE_OK;
}

int ccoe_fs_read_stream(FILE *f, size_t max, char **buf, size_t *len)
{
    size_t cap = 0, n = 0, first = 16384;
    char *p = NULL;
    *buf = NULL;
    *len = 0;
    /* A regular file's size is a good first guess (one allocation, no copies); the loop still
     * reads to the end, so a file that grows or shrinks meanwhile is read as it is. */
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= 0 &&
        (unsigned long long)st.st_size < max)
        first = (size_t)st.st_size + 2;
    for (;;) {
        if (n + 1 >= cap) {
            if (cap > max) {
                free(p);
                return EFBIG;
            }
            size_t nc = cap ? 2 * cap : first;
            char *q = realloc(p, nc);
            if (!q) {
                free(p);
                return ENOMEM;
            }
            p = q;
            cap = nc;
        }
        size_t got = fread(p + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                int e = errno ? errno : EIO;
                free(p);
                return e;
            }
            break;
        }
    }
    if (n > max) {
        free(p);
        return EFBIG;
    }
    p[n] = '\0';
    *buf = p;
    *len = n;
    return 0;
}

static const char *file_kind(mode_t m)
{
    return S_ISDIR(m)    ? "a directory"
           : S_ISFIFO(m) ? "a FIFO"
           : S_ISCHR(m)  ? "a character device"
           : S_ISBLK(m)  ? "a block device"
           : S_ISSOCK(m) ? "a socket"
                         : "not a file";
}

int ccoe_fs_open_input(const char *path, const char *what, ccoe_error *err)
{
    const char *w = what ? what : "", *sp = what ? " " : "";
    /* O_NONBLOCK: opening a FIFO without a writer returns at once instead of waiting */
    int fd;
    do
        fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int e = errno;
        if (e == ENXIO) /* a socket (open(2) cannot open one) */
            ccoe_error_set(err, CCOE_ERR_IO, "%s%s'%s' is not a regular file (a socket): give a "
                           "file", w, sp, path);
        else
            ccoe_error_set(err, CCOE_ERR_IO, "cannot open %s%s'%s': %s; check the path", w, sp,
                           path, strerror(e));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        ccoe_error_set(err, CCOE_ERR_IO, "cannot read %s%s'%s': %s", w, sp, path, strerror(e));
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        ccoe_error_set(err, CCOE_ERR_IO, "%s%s'%s' is not a regular file (%s): give a file", w,
                       sp, path, file_kind(st.st_mode));
        return -1;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0) {
        int e = errno;
        close(fd);
        ccoe_error_set(err, CCOE_ERR_IO, "cannot read %s%s'%s': %s", w, sp, path, strerror(e));
        return -1;
    }
    return fd;
}

FILE *ccoe_fs_fopen_input(const char *path, const char *what, ccoe_error *err)
{
    int fd = ccoe_fs_open_input(path, what, err);
    if (fd < 0)
        return NULL;
    FILE *f = fdopen(fd, "rb");
    if (!f) {
        int e = errno;
        close(fd);
        ccoe_error_set(err, e == ENOMEM ? CCOE_ERR_NOMEM : CCOE_ERR_IO, "cannot read %s%s'%s': %s",
                       what ? what : "", what ? " " : "", path, strerror(e));
    }
    return f;
}

FILE *ccoe_fs_open_output(const char *path, int append, const char *what, ccoe_error *err)
{
    /* O_NONBLOCK: a FIFO without a reader fails at once (ENXIO) instead of waiting; O_TRUNC is
     * applied only once the path is known to be a regular file */
    int fd;
    do
        fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY |
                            (append ? O_APPEND : 0),
                  0666);
    while (fd < 0 && errno == EINTR);
    if (fd < 0) {
        int e = errno;
        if (e == ELOOP)
            ccoe_error_set(err, CCOE_ERR_IO,
                           "%s '%s' is a symbolic link: refusing to write through it; remove it "
                           "or choose another train.out_dir",
                           what, path);
        else if (e == ENXIO)
            ccoe_error_set(err, CCOE_ERR_IO, "%s '%s' is not a regular file (a FIFO or socket): "
                           "remove it", what, path);
        else
            ccoe_error_set(err, CCOE_ERR_IO, "cannot open %s '%s' for writing: %s", what, path,
                           strerror(e));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) == 0 && !S_ISREG(st.st_mode)) {
        close(fd);
        ccoe_error_set(err, CCOE_ERR_IO, "%s '%s' is not a regular file (%s): remove it", what,
                       path, file_kind(st.st_mode));
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) != 0 || (!append && ftruncate(fd, 0) != 0)) {
        int e = errno;
        close(fd);
        ccoe_error_set(err, CCOE_ERR_IO, "cannot open %s '%s' for writing: %s", what, path,
                       strerror(e));
        return NULL;
    }
    FILE *f = fdopen(fd, append ? "a+b" : "w+b");
    if (!f) {
        int e = errno;
        close(fd);
        ccoe_error_set(err, CCOE_ERR_IO, "cannot open %s '%s' for writing: %s", what, path,
                       strerror(e));
    }
    return f;
}
