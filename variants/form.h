/* form.h - the CCoE formulations (paper Section 4; papers/ccoe.md): one ops table per form,
 * and the registry.
 *
 * A form says what a CCoE expert is and where its rows leave the shared base: the tensors an
 * expert owns, its branch point and layer limits, its validation rules, which FFN a row of its
 * domains uses, and where expert placement (src/placement.h) exchanges rows between ranks.
 * Each form lives in one file of variants/ (form_tail.c, ...) and exports one const
 * ccoe_form_ops; forms.def lists them, and form_registry.c builds the registry from that list.
 * The model (src/model.c), the task-expert matrix (src/taskmap.c), expert files
 * (src/expert_file.c) and placement read the table, never the form's enum value.
 *
 * The stored id is ccoe_config.ccoe.form (config.h's CCOE_FORM_* values; 0 = none, no form).
 */
#ifndef CCOE_FORM_H
#define CCOE_FORM_H

#include <stddef.h>

#include "config.h"
#include "status.h"

/* ccoe_form_ops.flags (CCOE_FF_: form flag) */
/* An expert is the FFN sublayers (mlp.* tensors) of the base blocks it covers, not blocks of
 * its own: its rows run every base block, attention and norms shared, and use the expert's FFN
 * in the covered blocks (Eqs. 6-7). Without it an expert is whole blocks (attention, norms,
 * FFN) that its rows run after the branch point in place of the rest of the base (Eqs. 4-5). */
#define CCOE_FF_EXPERT_FFN 1u
/* The branch point is ccoe.prefix_layers, the same for every expert (Eq. 5). */
#define CCOE_FF_PREFIX_LAYERS 2u

/* Where CCoE expert placement sends a row of an expert's domain to the expert's owner. */
typedef enum ccoe_form_exchange {
    CCOE_EXCHANGE_BRANCH = 0, /* once, after the base blocks before the branch point; the
                                    * owner runs the expert's blocks and head (Eqs. 4-5) */
    CCOE_EXCHANGE_FFN = 1     /* at every covered block's FFN, and back (Eqs. 6-7) */
} ccoe_form_exchange;

typedef struct ccoe_form_ops {
    const char *name;  /* the ccoe.form value: "tail", ... */
    const char *title; /* for the task-expert matrix and study labels: "tail (Eq. 4)" */
    const char *help;  /* one line for messages and --help */
    ccoe_form id;      /* the stored ccoe.form value */
    unsigned flags;    /* CCOE_FORM_* */
    /* expert.form of an expert file (src/expert_file.c): "blocks" or "ffn". Experts move between
     * models whose forms have the same file kind. */
    const char *file_kind;
    ccoe_form_exchange exchange;

    /* Form-wide rules of cfg (cfg->ccoe.form is this form), checked before the experts are
     * read: a clear message naming the key and the fix. */
    ccoe_status (*validate)(const ccoe_config *cfg, ccoe_error *err);
    /* The largest l_i an expert may have when ccoe.max_expert_layers = 0, for L base blocks. */
    int (*default_cap)(int L);
    /* A hard limit on l_i for L base blocks (checked before the cap; its message names it), or
     * -1 for none. */
    int (*layer_limit)(int L);
    /* The CoE layer where an expert with l_i = layers branches off: the base blocks before it
     * run first (tail, ffn: L - l_i; prefix: ccoe.prefix_layers). */
    int (*branch)(const ccoe_ccoe_config *c, int L, int layers);
    /* The path of a domain routed to expert NAME (branch, l_i) into buf, e.g. "base[0:3] ->
     * arith (1)" or "base[0:4] + arith FFN[2:4]". */
    void (*path_name)(char *buf, size_t cap, const char *name, int branch, int layers, int L);
    /* Rules of CCoE expert placement for this form (own_head: ccoe.own_head); NULL = none. */
    ccoe_status (*validate_placement)(int own_head, ccoe_error *err);
} ccoe_form_ops;

/* The forms (one file each), from forms.def. */
#define CCOE_FORM(name, ID) extern const ccoe_form_ops ccoe_form_##name##_ops;
#include "forms.def"
#undef CCOE_FORM

/* Registry: the table named `name` ("none" and unknown names: NULL). */
const ccoe_form_ops *ccoe_form_find(const char *name);
/* The table of a stored id, or NULL (CCOE_FORM_NONE, or an id no form has). */
const ccoe_form_ops *ccoe_form_by_id(ccoe_form id);
/* The form of a config, or NULL when ccoe.form = none. */
const ccoe_form_ops *ccoe_form_of(const ccoe_config *c);
/* Number of registered forms and the i-th table (forms.def order). */
int ccoe_form_count(void);
const ccoe_form_ops *ccoe_form_at(int i);
/* The first form (forms.def order) whose experts are stored as file_kind, or NULL: the form a
 * model without experts adopts for a pushed expert file. */
const ccoe_form_ops *ccoe_form_for_file_kind(const char *file_kind);
/* Writes "tail, prefix, ffn" into buf (always NUL-terminated). */
void ccoe_form_list_names(char *buf, size_t cap);

/* ---- helpers shared by the forms (form_registry.c) ---- */

/* path_name of forms whose experts are whole blocks: "base[0:BRANCH] -> NAME (LAYERS)". */
void ccoe_form_blocks_path_name(char *buf, size_t cap, const char *name, int branch, int layers,
                                int L);

/* Whether a form's experts are FFNs of base blocks (CCOE_FF_EXPERT_FFN); 0 for NULL. */
static inline int ccoe_form_expert_ffn(const ccoe_form_ops *f)
{
    return f && (f->flags & CCOE_FF_EXPERT_FFN);
}

#endif
