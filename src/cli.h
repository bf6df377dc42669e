/* cli.h - the declared command line: one table entry per command (name, synopsis, options with
 * kind, range and default, collectivity under MPI, handler), and the parser, the checks and the
 * help text generated from it.
 *
 * What it is: argument parsing and usage text for src/main.c and the commands in src/cmd_*.c.
 * What it is not: a command's work (each handler calls its module: train.c, eval.c, ...) nor
 * the launch (MPI start and end, the abort policy: main.c).
 *
 * Adding a command: a file src/cmd_NAME.c defining `const ccoe_cli_cmd ccoe_cmd_NAME` and the
 * line CCOE_COMMAND(NAME) in src/commands.def (where `ccoe help` should list it). Its options are checked before the
 * handler runs (unknown flags, missing values, numbers out of range, required options); the
 * handler reads them with ccoe_cli_flag / _str / _int / _uint / _double / _all.
 */
#ifndef CCOE_CLI_H
#define CCOE_CLI_H

#include <stdint.h>

#include "comm.h"
#include "status.h"

/* Exit code of every usage error (a bad command line; config errors use it too). */
#define CCOE_EXIT_USAGE 2

typedef enum ccoe_opt_kind {
    CCOE_OPT_FLAG,   /* no value: given or not */
    CCOE_OPT_INT,    /* a whole number in [min, max] (strtol) */
    CCOE_OPT_UINT,   /* an unsigned 64-bit whole number in [min, max] (strtoull, no sign) */
    CCOE_OPT_DOUBLE, /* a finite number in [min, max] (strtod) */
    CCOE_OPT_STRING, /* text; with choices, one of them */
    CCOE_OPT_PATH    /* a file or directory name ("-": standard input where the help says so) */
} ccoe_opt_kind;

enum {
    CCOE_OPT_REQUIRED = 1, /* the command fails without it: "CMD needs --NAME METAVAR" */
    CCOE_OPT_REPEAT = 2    /* may be given several times: every value kept in order */
};

typedef struct ccoe_cli_opt {
    const char *name;    /* "--stop-at", "-o"; "--NAME=VALUE" is accepted for long names */
    ccoe_opt_kind kind;
    const char *metavar; /* the value's name in synopsis and help ("STEP"); NULL for flags */
    double min, max;     /* INT, UINT, DOUBLE: the allowed range, both ends included */
    const char *def;     /* the default, as text (help prints it, the accessors parse it);
                          * NULL: none (the accessors return 0 / NULL when not given) */
    const char *help;    /* one line */
    const char *takes;   /* what a bad value's error says the option takes ("a step number
                          * >= 1"); NULL: generated from the kind, range and choices */
    const char *choices; /* STRING: the allowed values, "a|b|c" (NULL: any text) */
    /* STRING: writes the allowed values ("a, b, c") into buf when they come from a registry
     * (the gates); NULL: none */
    void (*choices_fn)(char *buf, size_t cap);
    int (*check)(const char *value); /* STRING: 1 if value is allowed (NULL: any) */
    unsigned flags;                  /* CCOE_OPT_REQUIRED | CCOE_OPT_REPEAT */
} ccoe_cli_opt;

struct ccoe_cli_args;

typedef struct ccoe_cli_cmd {
    const char *name;     /* "train", or two words: "tokenizer encode" */
    const char *args;     /* the positional arguments in the synopsis: "CONFIG", "A B" */
    const char *summary;  /* one line for `ccoe help` */
    const char *details;  /* further lines for `ccoe help CMD` (NULL: none) */
    const ccoe_cli_opt *opts;
    int n_opts;
    int min_pos, max_pos; /* positional arguments allowed (max_pos -1: no limit) */
    const char *pos_error; /* the usage error when they are too few (NULL: generated) */
    int free_pos;         /* 1: a word "-x" that is no option is a positional (a prompt);
                           * 0: it is an unknown option */
    int collective;       /* 1: under MPI every rank runs the command; 0: rank 0 alone */
    int (*run)(const struct ccoe_cli_args *a); /* returns the exit code */
} ccoe_cli_cmd;

/* One option's values after parsing. */
typedef struct ccoe_cli_val {
    int count;         /* times given */
    int last;          /* argv index of the last time (-1: not given) */
    const char *str;   /* the last value (NULL: flag or not given) */
    const char **all;  /* CCOE_OPT_REPEAT: every value in order (count of them) */
    long long i;       /* INT: the last value, else the parsed default */
    uint64_t u;        /* UINT: likewise */
    double d;          /* DOUBLE: likewise */
} ccoe_cli_val;

/* A parsed command line: what a handler receives. */
typedef struct ccoe_cli_args {
    const ccoe_cli_cmd *cmd;
    ccoe_comm *comm;  /* the process's communicator (serial, or MPI under mpirun) */
    int n_pos;
    char **pos;       /* the positional arguments (n_pos) */
    ccoe_cli_val *vals; /* one per cmd->opts entry */
} ccoe_cli_args;

/* The command that argv names (argv[1], or argv[1] + argv[2] for a two-word command), or NULL
 * (help, --version, an unknown command). main asks it whether the command is collective. */
const ccoe_cli_cmd *ccoe_cli_lookup(int argc, char **argv);

/* Parses argv against the table and runs the command (or help, --version); returns the exit
 * code. Usage errors print on rank 0 (every rank sees the same command line) and return
 * CCOE_EXIT_USAGE. */
int ccoe_cli_main(int argc, char **argv, ccoe_comm *comm);

/* Accessors of a handler's options by name (a name the command does not declare is a bug:
 * reported and aborted). Not given: the declared default (0 / NULL without one). */
int ccoe_cli_flag(const ccoe_cli_args *a, const char *name);  /* times given */
const char *ccoe_cli_str(const ccoe_cli_args *a, const char *name);
long long ccoe_cli_int(const ccoe_cli_args *a, const char *name);
uint64_t ccoe_cli_uint(const ccoe_cli_args *a, const char *name);
double ccoe_cli_double(const ccoe_cli_args *a, const char *name);
/* The values of a repeatable option in order; *n receives how many. */
const char *const *ccoe_cli_all(const ccoe_cli_args *a, const char *name, int *n);
/* The option's entry (for its `last` index: which of two flags came last). */
const ccoe_cli_val *ccoe_cli_val_of(const ccoe_cli_args *a, const char *name);

/* A usage error a handler finds (options that exclude each other, ...): prints
 * "ccoe: usage error: WHAT: ARG" (": ARG" when arg is not empty) and where to read the
 * command's help, on rank 0 only (under MPI every rank fails the same way: comm->failed_rank =
 * 0, no abort needed). Returns CCOE_EXIT_USAGE. */
int ccoe_cli_usage_error(const ccoe_cli_args *a, const char *what, const char *arg);

/* Prints a failed status ("ccoe: STATUS: message"; under MPI "[rank r]", and a failure every
 * rank agreed on only by rank 0 and the failing rank) and returns its exit code. */
int ccoe_cli_fail(const ccoe_cli_args *a, const ccoe_error *err);

/* The commands (src/cmd_*.c), from commands.def. */
#define CCOE_COMMAND(name) extern const ccoe_cli_cmd ccoe_cmd_##name;
#include "commands.def"
#undef CCOE_COMMAND

/* Test hooks (src/cmd_testhook.c, built with the CMake option CCOE_TEST_HOOKS, on by default):
 * fills the train options' injected failure from CCOE_TEST_FAIL_MODE / _RANK / _STEP
 * (ccoe_train_opts in train.h). Without the option the production binary reads none of them. */
struct ccoe_train_opts;
#ifdef CCOE_TEST_HOOKS
void ccoe_cli_test_hooks_train(struct ccoe_train_opts *o);
#else
static inline void ccoe_cli_test_hooks_train(struct ccoe_train_opts *o)
{
    (void)o;
}
#endif

#endif
