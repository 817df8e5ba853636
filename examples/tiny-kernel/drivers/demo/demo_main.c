/* A loadable module of the tiny kernel. */
#include <tiny.h>

int demo_value(void);

int demo_read(char *buf, unsigned long len)
{
	return scnprintf(buf, len, demo_value() > 0 ? "demo: on\n" : "demo: off\n");
}
