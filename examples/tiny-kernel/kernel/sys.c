/* System calls of the tiny kernel. */
#include <tiny.h>

static const char sysname[] = "Tiny";

long sys_uname(char *buf, unsigned long len)
{
	return scnprintf(buf, len, sysname);
}
