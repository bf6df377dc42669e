/* status.c - error messages and status names. */
#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

ccoe_status ccoe_error_set(ccoe_error *err, ccoe_status status, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = status;
        err->signal = 0;
    }
    return status;
}

ccoe_status ccoe_error_wrap(ccoe_error *err, const char *fmt, ...)
{
    if (!err)
        return CCOE_ERR_INTERNAL;
    char prefix[512], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* prefix + ": " + old message, truncated to the buffer */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3)
        n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t k = strnlen(old, room);
    memcpy(err->msg + n + 2, old, k);
    err->msg[n + 2 + k] = '\0';
    return err->status;
}

void ccoe_error_clear(ccoe_error *err)
{
    if (err) {
        err->status = CCOE_OK;
        err->signal = 0;
        err->msg[0] = '\0';
    }
}

const char *ccoe_status_name(ccoe_status status)
{
    switch (status) {
    case CCOE_OK: return "ok";
    case CCOE_ERR_ARG: return "usage error";
    case CCOE_ERR_CONFIG: return "config error";
    case CCOE_ERR_IO: return "I/O error";
    case CCOE_ERR_FORMAT: return "format error";
    case CCOE_ERR_NOMEM: return "out of memory";
    case CCOE_ERR_NUMERIC: return "numeric error";
    case CCOE_ERR_BACKEND: return "backend error";
    case CCOE_ERR_COMM: return "communication error";
    case CCOE_ERR_INTERNAL: return "internal error";
    case CCOE_ERR_STOPPED: return "stopped";
    }
    return "unknown error";
}

int ccoe_error_exit_code(const ccoe_error *err)
{
    if (err->status == CCOE_ERR_STOPPED && err->signal > 0 && err->signal < 64)
        return 128 + err->signal;
    return ccoe_status_exit_code(err->status);
}

int ccoe_status_exit_code(ccoe_status status)
{
    switch (status) {
    case CCOE_OK: return 0;
    case CCOE_ERR_ARG:
    case CCOE_ERR_CONFIG: return 2;
    default: return 1;
    }
}
