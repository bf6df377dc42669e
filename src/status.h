/* status.h - error reporting for ccoe.
 *
 * Library functions that can fail on user input, I/O, configuration or communication return a
 * ccoe_status and fill a caller-owned ccoe_error with a message that names the bad value and the
 * fix. Library code never exits or aborts; only main() turns a status into an exit code.
 * Internal invariants use assert(), never user input.
 */
#ifndef CCOE_STATUS_H
#define CCOE_STATUS_H

typedef enum ccoe_status {
    CCOE_OK = 0,
    CCOE_ERR_ARG,      /* bad argument or command line */
    CCOE_ERR_CONFIG,   /* bad configuration key or value */
    CCOE_ERR_IO,       /* file missing, unreadable or unwritable */
    CCOE_ERR_FORMAT,   /* corrupt or incompatible file contents */
    CCOE_ERR_NOMEM,    /* allocation failed */
    CCOE_ERR_NUMERIC,  /* NaN/Inf in loss or gradients */
    CCOE_ERR_BACKEND,  /* GEMM backend unavailable */
    CCOE_ERR_COMM,     /* communication (MPI) failure */
    CCOE_ERR_INTERNAL, /* should not happen: a bug */
    CCOE_ERR_STOPPED   /* stopped by a signal (after saving what can be resumed) */
} ccoe_status;

typedef struct ccoe_error {
    ccoe_status status;
    int signal; /* CCOE_ERR_STOPPED: the signal; ccoe_error_set clears it */
    char msg[1024];
} ccoe_error;

/* Records status and a printf-style message in err (if err is non-NULL); returns status. */
ccoe_status ccoe_error_set(ccoe_error *err, ccoe_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Prefixes an existing message with context ("loading foo: <old message>"); returns its status. */
ccoe_status ccoe_error_wrap(ccoe_error *err, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Clears err to CCOE_OK and an empty message. */
void ccoe_error_clear(ccoe_error *err);

/* Short constant name of a status ("config error", ...). */
const char *ccoe_status_name(ccoe_status status);

/* Process exit code for a status (0 for CCOE_OK, 2 for usage/config, 1 otherwise). */
int ccoe_status_exit_code(ccoe_status status);

/* Exit code of an error: ccoe_status_exit_code, except 128 + the signal for CCOE_ERR_STOPPED
 * (130 for SIGINT, 143 for SIGTERM: what shells and batch systems report for a signal). */
int ccoe_error_exit_code(const ccoe_error *err);

/* Evaluates expr (a ccoe_status); returns it from the enclosing function if it is not CCOE_OK. */
#define CCOE_TRY(expr)                          \
    do {                                        \
        ccoe_status ccoe_try_s_ = (expr);       \
        if (ccoe_try_s_ != CCOE_OK)             \
            return ccoe_try_s_;                 \
    } while (0)

#endif
