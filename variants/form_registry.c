/* form_registry.c - the CCoE forms of forms.def and their ops tables.
 * Adding a form: one file in variants/ exporting a const ccoe_form_ops, one line in forms.def
 * (variants/README). */
#include "form.h"

#include <stdio.h>
#include <string.h>

static const ccoe_form_ops *const forms[] = {
#define CCOE_FORM(name, ID) &ccoe_form_##name##_ops,
#include "forms.def"
#undef CCOE_FORM
};

#define N_FORMS ((int)(sizeof forms / sizeof forms[0]))

const ccoe_form_ops *ccoe_form_find(const char *name)
{
    for (int i = 0; i < N_FORMS; i++)
        if (name && strcmp(forms[i]->name, name) == 0)
            return forms[i];
    return NULL;
}

const ccoe_form_ops *ccoe_form_by_id(ccoe_form id)
{
    for (int i = 0; i < N_FORMS; i++)
        if (forms[i]->id == id)
            return forms[i];
    return NULL;
}

const ccoe_form_ops *ccoe_form_of(const ccoe_config *c)
{
    return c ? ccoe_form_by_id(c->ccoe.form) : NULL;
}

int ccoe_form_count(void) { return N_FORMS; }

const ccoe_form_ops *ccoe_form_at(int i) { return i >= 0 && i < N_FORMS ? forms[i] : NULL; }

const ccoe_form_ops *ccoe_form_for_file_kind(const char *file_kind)
{
    for (int i = 0; i < N_FORMS; i++)
        if (file_kind && strcmp(forms[i]->file_kind, file_kind) == 0)
            return forms[i];
    return NULL;
}

void ccoe_form_list_names(char *buf, size_t cap)
{
    if (cap == 0)
        return;
    buf[0] = '\0';
    size_t used = 0;
    for (int i = 0; i < N_FORMS && used < cap; i++) {
        int w = snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", forms[i]->name);
        if (w < 0)
            break;
        used += (size_t)w;
    }
}

void ccoe_form_blocks_path_name(char *buf, size_t cap, const char *name, int branch, int layers,
                                int L)
{
    (void)L;
    snprintf(buf, cap, "base[0:%d] -> %.32s (%d)", branch, name, layers);
}
