/* optim.h - AdamW with decoupled weight decay, global-norm clipping, warm-up + cosine schedule.
 *
 * The optimizer state (m, v) has the parameter block's layout. Weight decay applies only to
 * tensors marked `decay` (matrices). Everything is deterministic and the same for every
 * thread count.
 */
#ifndef CCOE_OPTIM_H
#define CCOE_OPTIM_H

#include <stddef.h>

#include "arena.h"
#include "config.h"
#include "model.h"
#include "status.h"

typedef struct ccoe_adamw {
    ccoe_arena mem;
    float *m; /* (num_params) first moment */
    float *v; /* (num_params) second moment */
    size_t n;
    long t;   /* steps taken */
} ccoe_adamw;

ccoe_status ccoe_adamw_init(ccoe_adamw *o, size_t num_params, ccoe_error *err);
void ccoe_adamw_free(ccoe_adamw *o);

/* Learning rate at optimizer step `step` (0-based): linear warm-up to lr over `warmup` steps,
 * then cosine decay to lr * min_lr_frac at `steps`. */
double ccoe_lr_at(const ccoe_train_config *tc, long step);

/* L2 norm of the gradient block (accumulated in double). Restricted to [begin, end) floats. */
double ccoe_grad_norm(const float *grads, size_t begin, size_t end);

/* Scales grads in [begin, end) by s. */
void ccoe_grad_scale(float *grads, size_t begin, size_t end, float s);

/* One AdamW update of every parameter tensor of m whose `block` passes the filter
 * (filter == NULL: all) with learning rate lr. Increments o->t once. */
void ccoe_adamw_step(ccoe_adamw *o, ccoe_model *m, const ccoe_train_config *tc, double lr,
                     int (*filter)(const ccoe_param *p, void *ctx), void *ctx);

/* The same update with every gradient multiplied by gscale first (global-norm clipping fused
 * into the update: one pass over memory instead of two; the gradient block is not modified).
 * Bitwise equal to ccoe_grad_scale(.., gscale) followed by ccoe_adamw_step. */
void ccoe_adamw_step_scaled(ccoe_adamw *o, ccoe_model *m, const ccoe_train_config *tc, double lr,
                            float gscale, int (*filter)(const ccoe_param *p, void *ctx),
                            void *ctx);

#endif
