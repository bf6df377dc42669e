/* fs.h - small filesystem helpers shared by the trainer and the study runner. */
#ifndef CCOE_FS_H
#define CCOE_FS_H

#include "status.h"

/* mkdir -p: creates path and its missing parents (mode 0777 before umask). */
ccoe_status ccoe_fs_mkdirs(const char *path, ccoe_error *err);

#endif
