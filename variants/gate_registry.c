/* gate_registry.c - the names of the routing variants and their ops tables.
 * Adding a gate: one file in variants/ exporting a const ccoe_gate_ops, one line here. */
#include "gate.h"

#include <stdio.h>
#include <string.h>

static const ccoe_gate_ops *const gates[] = {
    &ccoe_gate_softmax_ops,
    &ccoe_gate_topk_ops,
    &ccoe_gate_noisy_topk_ops,
    &ccoe_gate_domain_ops,
};

#define N_GATES ((int)(sizeof gates / sizeof gates[0]))

const ccoe_gate_ops *ccoe_gate_find(const char *name)
{
    for (int i = 0; i < N_GATES; i++)
        if (name && strcmp(gates[i]->name, name) == 0)
            return gates[i];
    return NULL;
}

int ccoe_gate_count(void) { return N_GATES; }

const ccoe_gate_ops *ccoe_gate_at(int i) { return i >= 0 && i < N_GATES ? gates[i] : NULL; }

void ccoe_gate_list_names(char *buf, size_t cap)
{
    if (cap == 0)
        return;
    buf[0] = '\0';
    size_t used = 0;
    for (int i = 0; i < N_GATES && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", gates[i]->name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}
