/* fs.c - small filesystem helpers. */
#include "fs.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

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
