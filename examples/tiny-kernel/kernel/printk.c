/* Where the tiny kernel's messages go. */
#include <tiny.h>

static char log_buf[1024];
static unsigned long log_len;

int printk(const char *fmt, ...)
{
	while (*fmt && log_len < sizeof(log_buf) - 1)
		log_buf[log_len++] = *fmt++;
	return 0;
}
