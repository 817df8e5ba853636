/* A /proc-like show function. */
#include <tiny.h>

static unsigned long reads;

int proc_show(char *buf, unsigned long len)
{
	reads++;
	return scnprintf(buf, len, "uptime: up\n");
}
