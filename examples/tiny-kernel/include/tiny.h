/* Kernel-like declarations shared by the tiny kernel and its module. */
#ifndef TINY_H
#define TINY_H

#define __init __attribute__((section(".init.text")))
#define notrace __attribute__((no_instrument_function))
#define noinline __attribute__((noinline))

int printk(const char *fmt, ...);
long sys_uname(char *buf, unsigned long len);
int proc_show(char *buf, unsigned long len);
int scnprintf(char *buf, unsigned long size, const char *fmt, ...);
unsigned long jiffies_now(void);

#endif
