/* gate_registry.c - the names of the routing variants and their ops tables.
 *
 * The table is built from the X-macro list gates.def, so adding a gate is one new file
 * variants/gate_x.c exporting `const ccoe_gate_ops ccoe_gate_x_ops` and one line CCOE_GATE(x)
 * in gates.def (the steps are in gate.h); this file never changes for a new gate. It also owns
 * the spelling of "none", the moe.gate value of the dense model.
 */
#include "gate.h"

#include <stdio.h>
#include <string.h>

static const ccoe_gate_ops *const gates[] = {
#define CCOE_GATE(x) &ccoe_gate_##x##_ops,
#include "gates.def"
#undef CCOE_GATE
};

#define N_GATES ((int)(sizeof gates / sizeof gates[0]))

const ccoe_gate_ops *ccoe_gate_find(const char *name)
{
    for (int i = 0; i < N_GATES; i++)
        if (name && strcmp(gates[i]->name, name) == 0)
            return gates[i];
    return NULL;
}

int ccoe_gate_is_none(const char *name) { return name && strcmp(name, CCOE_GATE_NONE) == 0; }

int ccoe_gate_count(void) { return N_GATES; }

const ccoe_gate_ops *ccoe_gate_at(int i) { return i >= 0 && i < N_GATES ? gates[i] : NULL; }

void ccoe_gate_list_names(char *buf, size_t cap, int with_none)
{
    if (cap == 0)
        return;
    buf[0] = '\0';
    size_t used = 0;
    if (with_none) {
        int w = snprintf(buf, cap, "%s", CCOE_GATE_NONE);
        used = w < 0 ? 0 : (size_t)w;
    }
    for (int i = 0; i < N_GATES && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", used ? ", " : "", gates[i]->name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}
