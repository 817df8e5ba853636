/*
 * A miniature of fs/proc/meminfo.c: what a kernel source file looks like to the differ.
 * patched.c is the same file after a fix; demo.sh builds both and compares them.
 */
extern int seq_printf(void *m, const char *fmt, ...);
extern void __warn_printk(const char *fmt, ...);
extern unsigned long totalram_pages(void);

static unsigned long reads;

static void show_val_kb(void *m, const char *s, unsigned long num)
{
	seq_printf(m, "%s%8lu kB\n", s, num << 2);
}

/* The fix: report the page count too, through a new helper. */
static void __attribute__((noinline)) show_pages(void *m, unsigned long pages)
{
	seq_printf(m, "MemPages:       %8lu\n", pages);
}

int meminfo_proc_show(void *m, void *v)
{
	reads++;
	show_val_kb(m, "MemTotal:       ", totalram_pages());
	show_pages(m, totalram_pages());
	return 0;
}

int meminfo_reads(void)
{
	if (reads > 1000000)
		__warn_printk("meminfo read %lu times at line %d\n", reads, __LINE__);
	return (int)reads;
}
