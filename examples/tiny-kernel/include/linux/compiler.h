/* The attributes and unique names of Linux's compiler_types.h and compiler.h that
 * git-ksplice's ksplice-patch.h uses. */
#define __used __attribute__((__used__))
#define ___PASTE(a, b) a##b
#define __PASTE(a, b) ___PASTE(a, b)
#define __UNIQUE_ID(prefix) __PASTE(__PASTE(__UNIQUE_ID_, prefix), __COUNTER__)
