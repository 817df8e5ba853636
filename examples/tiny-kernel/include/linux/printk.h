/* The tiny kernel's printk, and the deferred one kpatch's KPATCH_PRINTK_DEFERRED calls. */
#include <tiny.h>

int printk_deferred(const char *fmt, ...);
