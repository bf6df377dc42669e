/* main.c - the ccoe command line (placeholder while the core is written). */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "ccoe: not built yet\n");
    return 1;
}
