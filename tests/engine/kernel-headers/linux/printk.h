int printk(const char *fmt, ...);
int printk_deferred(const char *fmt, ...);
