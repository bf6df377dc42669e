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

/* Opens a user-named input file (config, study, manifest and the files it names, prompts,
 * checkpoints) for reading. Never blocks: the path is opened non-blocking and anything that is
 * not a regular file (a FIFO, directory, device, socket) is refused with "WHAT 'PATH' is not a
 * regular file (a FIFO): give a file" instead of being waited on or read. what names the file
 * in messages ("config file"; NULL: none). Returns a blocking O_CLOEXEC descriptor, or -1 with
 * err set (CCOE_ERR_IO). */
int ccoe_fs_open_input(const char *path, const char *what, ccoe_error *err);

/* ccoe_fs_open_input as a stdio stream ("rb"); NULL with err set. */
FILE *ccoe_fs_fopen_input(const char *path, const char *what, ccoe_error *err);

/* Opens an output file the run owns (metrics.jsonl) for writing: appended to (append) or
 * created/truncated, mode 0666 before umask. Never follows a symbolic link at path (a planted
 * link is refused, its target untouched) and refuses anything but a regular file. what names
 * the file in messages. Returns a stream (readable too: "a+"/"w+"), or NULL with err set
 * (CCOE_ERR_IO). */
FILE *ccoe_fs_open_output(const char *path, int append, const char *what, ccoe_error *err);

#endif
