/* expert_file.h - the CCoE expert lifecycle on checkpoint files (paper Section 4.3): pop (deep-copy
 * an expert out, or remove it) and push (add a new expert at the last position of its CoE
 * layer, or replace an existing expert's weights).
 *
 * An expert file is a safetensors file with the expert's tensors under its own relative names
 * ("blocks.0.attn.qkv.weight", ..., "lnf.weight", "lm_head.weight" with an own head) and
 * metadata ccoe.format = "ccoe-expert", expert.name, expert.layers, expert.own_head,
 * expert.domains (the domains routed to it), expert.form ("blocks" for Eqs. 4-5, "ffn" for
 * Eqs. 6-7, whose files hold "blocks.<j>.mlp.*" only) and the model shape it fits (model.*).
 * Every operation reads everything first and writes its output atomically at the end, so a
 * failure leaves every file untouched. Optimizer state is not carried into a pushed/popped model
 * (continue training it with `ccoe train --init-from`).
 */
#ifndef CCOE_EXPERT_FILE_H
#define CCOE_EXPERT_FILE_H

#include "comm.h"
#include "status.h"

/* Writes expert `name` of the model at model_path to out_path. */
ccoe_status ccoe_expert_pop(const char *model_path, const char *name, const char *out_path,
                            ccoe_error *err);

/* Writes the model at model_path without expert `name` (its domains fall back to the base) to
 * out_path (which may equal model_path). */
ccoe_status ccoe_expert_remove(const char *model_path, const char *name, const char *out_path,
                               ccoe_error *err);

/* Pushes the expert file into the model and writes the result to out_path. A new expert is
 * appended (form none becomes the file's form: tail or ffn) and routed from `domains` (n of them; n == 0: the domains
 * stored in the expert file). An expert of the same name is replaced in place (same layers and
 * head required); with n > 0 its routes are replaced too. */
ccoe_status ccoe_expert_push(const char *model_path, const char *expert_path,
                             const char *const *domains, int n, const char *out_path,
                             ccoe_error *err);

/* `ccoe train-expert`: trains one expert of the model at `model` in isolation (everything else
 * frozen, only on its domains' data) and optionally pushes it into a copy of the model.
 * An expert the model lacks is new: it is added with `layers` blocks (or FFNs under form = ffn;
 * a model without experts takes form `form`) routed from `domains`, and starts as a copy of the
 * base blocks it replaces (ccoe.init). An existing expert is trained further from its current
 * weights (continual training); with domains given, its routes change to them. */
typedef struct ccoe_expert_train_opts {
    const char *model;          /* the model checkpoint (base or base + experts) */
    const char *name;           /* the expert */
    int layers;                 /* l_i of a new expert (0: 1) */
    const char *form;           /* form of a model without experts: "tail", "prefix", "ffn" */
    const char *const *domains; /* routes of a new expert (required), or new routes */
    int n_domains;
    const char *const *sets;    /* extra section.key=value overrides, applied last */
    int n_sets;
    const char *out_dir;        /* training output (default runs/expert-NAME) */
    const char *push_to;        /* NULL, or write MODEL + the trained expert here */
    int force, quiet, progress;
    ccoe_comm *comm;            /* NULL: one process; else COLLECTIVE: the expert trains data
                                 * parallel over comm (ccoe_train_run) and rank 0 pops + pushes */
} ccoe_expert_train_opts;

ccoe_status ccoe_expert_train(const ccoe_expert_train_opts *o, ccoe_error *err);

#endif
