/* Core services of the tiny kernel. */
#include <tiny.h>

static unsigned long ticks;

unsigned long jiffies_now(void)
{
	return ++ticks;
}

static int __init core_init(void)
{
	ticks = 1;
	return 0;
}

int scnprintf(char *buf, unsigned long size, const char *fmt, ...)
{
	unsigned long i = 0;

	while (fmt[i] && i + 1 < size) {
		buf[i] = fmt[i];
		i++;
	}
	if (size)
		buf[i] = 0;
	return (int)i;
}

int (*core_initcall)(void) = core_init;
