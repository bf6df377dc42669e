/* checkpoint.h - model checkpoints as safetensors files.
 *
 * One file holds the parameters under their model names ("wte", "blocks.0.attn.qkv.weight",
 * ...), optionally the AdamW moments ("optim.m.<name>", "optim.v.<name>"), and metadata:
 *   ccoe.format = "ccoe-checkpoint", ccoe.version, config (the resolved INI text),
 *   config_hash (hex), step, data_pos, rng (hex words), optim.t, ccoe.domains (the data's
 *   domain names in id order, for routing without the data), and the tokenizer record
 *   ccoe.tokenizer.* (checkpoint_tokenizer.h: kind, path, hash and the files themselves).
 * Opening a checkpoint resolves its tokenizer (a missing directory is replaced by the embedded
 * copy, unpacked into the cache; the stored config's data.tokenizer then names that copy).
 * Files are written atomically (safetensors.h); a crash never leaves a half-written checkpoint.
 */
#ifndef CCOE_CHECKPOINT_H
#define CCOE_CHECKPOINT_H

#include <stdint.h>
#include <stdio.h>

#include "config.h"
#include "model.h"
#include "optim.h"
#include "rng.h"
#include "safetensors.h"
#include "status.h"

typedef struct ccoe_train_state {
    long step;         /* optimizer steps completed */
    uint64_t data_pos; /* training sequences consumed */
    ccoe_rng rng;      /* run RNG state */
} ccoe_train_state;

/* Writes params (+ optimizer state if opt != NULL) and metadata to path atomically. */
ccoe_status ccoe_checkpoint_save(const char *path, const ccoe_config *cfg, const ccoe_model *m,
                                 const ccoe_adamw *opt, const ccoe_train_state *st,
                                 ccoe_error *err);

/* Opens and validates a checkpoint and parses its stored config into cfg (defaults first).
 * The caller closes *out with ccoe_st_close. A note goes to stderr when the checkpoint's
 * tokenizer is unpacked from its embedded copy (ccoe_ckpt_tok_resolve). */
ccoe_status ccoe_checkpoint_open(const char *path, ccoe_config *cfg, ccoe_st_file **out,
                                 ccoe_error *err);
/* The same, with that note on log (NULL: none; under MPI ranks other than 0 pass NULL so that
 * the note is printed once). */
ccoe_status ccoe_checkpoint_open_log(const char *path, ccoe_config *cfg, ccoe_st_file **out,
                                     FILE *log, ccoe_error *err);

/* Copies every parameter of m from f (shapes must match), the optimizer state if opt != NULL
 * (an error if the file has none), and the train state if st != NULL. */
ccoe_status ccoe_checkpoint_load(const ccoe_st_file *f, const char *path, ccoe_model *m,
                                 ccoe_adamw *opt, ccoe_train_state *st, ccoe_error *err);

/* The data domains of a stored model (metadata ccoe.domains; for files without it, the
 * domains its routes name): fills names and returns how many. */
int ccoe_checkpoint_domains(const ccoe_st_file *f, const ccoe_config *cfg,
                            char (*names)[CCOE_NAME_LEN]);

/* Loads parameters for a fresh run from another model's checkpoint: every base tensor must be
 * present with the same shape; an expert whose tensors are all absent is reported in
 * missing[e] = 1 (the caller initialises it), a partly present expert is an error. */
ccoe_status ccoe_checkpoint_load_init(const ccoe_st_file *f, const char *path, ccoe_model *m,
                                      int *missing, ccoe_error *err);

/* What ccoe_checkpoint_compare compares: everything (0), or only the parameters (tensors that
 * are not optimizer state; tensors in one file only are listed but not counted; metadata is
 * not compared), optionally without the experts' tensors (experts.*). */
enum { CCOE_CMP_ALL = 0, CCOE_CMP_PARAMS = 1, CCOE_CMP_BASE = 3 };

typedef struct ccoe_compare_result {
    size_t same, differ, only_a, only_b; /* tensors */
    size_t meta_same, meta_differ;       /* metadata keys (the checksum keys are not compared) */
    size_t skipped;                      /* tensors the mode left out */
} ccoe_compare_result;

/* Compares two open safetensors files bit for bit and prints one line per difference
 * ("differs: NAME (max |a-b| X)", "only in A: NAME", "metadata differs: KEY", ...) and a
 * summary that names what was skipped. Returns 1 if everything compared is identical (and at
 * least one tensor was compared), else 0. */
int ccoe_checkpoint_compare(const ccoe_st_file *a, const ccoe_st_file *b, int mode, FILE *out,
                            ccoe_compare_result *res);

/* ccoe_checkpoint_compare of the safetensors files at path_a and path_b (opened and checked
 * as ccoe_st_open does): *same = its result. Fails only when a file cannot be opened. */
ccoe_status ccoe_checkpoint_compare_files(const char *path_a, const char *path_b, int mode,
                                          FILE *out, int *same, ccoe_error *err);

/* Prints what a checkpoint holds to out (`ccoe info`): its checksum, version, config hash,
 * step, data position and optimizer state, every tensor with its shape, the parameter count
 * (optimizer state excluded), the task-expert matrix of a CCoE model (or why it cannot be
 * built) and the stored config as INI text. Fails when the file cannot be opened as a
 * checkpoint (ccoe_checkpoint_open). */
ccoe_status ccoe_checkpoint_print_info(FILE *out, const char *path, ccoe_error *err);

/* Rewrites the ccoe checkpoint `in` (a file without the whole-file checksum: an older ccoe
 * wrote it) to `out` (may equal in) with the checksum, after every check a load makes: the data
 * checksum if it has one, the stored config, shapes and finite values. `note` receives what
 * could be verified. */
ccoe_status ccoe_checkpoint_reseal(const char *in, const char *out, char *note, size_t note_cap,
                                   ccoe_error *err);

#endif
