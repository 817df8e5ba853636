/* The tiny kernel's entry point and the ftrace hook every traced function calls. */
#include <tiny.h>

void notrace __fentry__(void)
{
}

void notrace kernel_start(void)
{
	char buf[64];

	printk("tiny kernel booting\n");
	proc_show(buf, sizeof(buf));
	sys_uname(buf, sizeof(buf));
	for (;;)
		;
}
