/* fs.h - small filesystem helpers shared by the trainer and the study runner. */
#ifndef CCOE_FS_H
#define CCOE_FS_H

#include <stddef.h>
#include <stdio.h>

#include "status.h"

/* mkdir -p: creates path and its missing parents (mode 0777 before umask). */
ccoe_status ccoe_fs_mkdirs(const char *path, ccoe_error *err);

/* Reads f to its end into a NUL-terminated malloc'd *buf (*len bytes, a NUL byte inside
 * possible). Returns 0, or EFBIG when f holds more than max bytes, ENOMEM, or the read error's
 * errno; *buf is NULL unless 0 is returned. Does not close f. */
int ccoe_fs_read_stream(FILE *f, size_t max, char **buf, size_t *len);

#endif
