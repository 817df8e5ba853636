/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * ksplice-patch.h - what a git-ksplice patch can say about itself.
 *
 * git-ksplice puts this header's directory on the include path of every kernel build it
 * makes, so a patch only writes
 *
 *	#include "ksplice-patch.h"
 *
 * (kpatch's "kpatch-macros.h" and "kpatch-syscall.h" work too: they include this file).
 * Each macro leaves a small record in a section of its own. `git ksplice create` reads the
 * records when it compares the objects and never copies them into the update: callbacks
 * become the update's struct klp_callbacks, on the klp_object of the file that registers
 * them (vmlinux, or the module the file is built into: a module's callbacks run when that
 * module loads). `git ksplice view` and the update's manifest list them.
 *
 * Callbacks, with livepatch's signatures (kpatch's names):
 *
 *	KPATCH_PRE_PATCH_CALLBACK(fn)	 int fn(struct klp_object *obj): before the switch; an
 *					 error fails the load and nothing stays patched
 *	KPATCH_POST_PATCH_CALLBACK(fn)	 void fn(struct klp_object *obj): once every task runs
 *					 the new code
 *	KPATCH_PRE_UNPATCH_CALLBACK(fn)	 void fn(struct klp_object *obj): before the undo
 *	KPATCH_POST_UNPATCH_CALLBACK(fn) void fn(struct klp_object *obj): once no task runs the
 *					 new code any more
 *
 * Ksplice's hooks, without arguments: ksplice_pre_apply(fn) and ksplice_check_apply(fn)
 * (int fn(void), may fail the load), ksplice_apply(fn) and ksplice_post_apply(fn) (void
 * fn(void), after the switch), ksplice_fail_apply(fn) (runs when a pre-apply or check-apply
 * hook fails), ksplice_pre_reverse(fn) and ksplice_check_reverse(fn) (int fn(void), before
 * the undo: livepatch cannot refuse an undo, so an error is only logged), ksplice_reverse(fn)
 * and ksplice_post_reverse(fn) (after the undo). ksplice_fail_reverse(fn) is accepted and
 * never runs: an undo cannot fail. Several hooks of one kind run in the order written.
 *
 * Telling the differ that a change is intended:
 *
 *	KPATCH_IGNORE_FUNCTION(fn)	leave this changed function out of the update
 *	KPATCH_IGNORE_SECTION("sec")	leave every change in section "sec" out
 *	KSPLICE_APPLY_DATA_CHANGE(var)	var's initialiser changed on purpose: the update
 *					writes the new value over the running kernel's var
 *					once the switch is done and puts the old value back
 *					before it is undone (plain values only, no pointers)
 *	KSPLICE_ACCEPT_DATA_CHANGE(var)	var's initialiser changed on purpose and the patch's
 *					own post-patch callback sets it (under the lock that
 *					guards it, say)
 *
 * New state beside an existing structure: a struct whose layout changes is refused, since
 * the running kernel's objects keep the old layout. Attach the new member to each object
 * as a shadow variable instead, with the kernel's klp_shadow_get(), klp_shadow_alloc(),
 * klp_shadow_get_or_alloc(), klp_shadow_free() and klp_shadow_free_all() (linux/livepatch.h,
 * included here), keyed by the object's address and an id of the patch's choosing; free
 * them all in a post-unpatch callback.
 */
#ifndef _GIT_KSPLICE_PATCH_H
#define _GIT_KSPLICE_PATCH_H

#include <linux/compiler.h>
#include <linux/livepatch.h>
#include <linux/printk.h>
#include <linux/static_call.h>

struct klp_object;

#define __KSPLICE_RECORD(section) __used __attribute__((__section__(section)))

/* A callback record: the function, and a field for the object name kpatch fills in. */
#define __KSPLICE_CALLBACK(kind, type, fn)						\
	static struct { __typeof__(type) call; const char *objname; }				\
	__UNIQUE_ID(ksplice_##kind##_) __KSPLICE_RECORD(".kpatch.callbacks." #kind) =	\
		{ .call = (fn), .objname = (const char *)0 }

#define KPATCH_PRE_PATCH_CALLBACK(fn) \
	__KSPLICE_CALLBACK(pre_patch, int (*)(struct klp_object *), fn);
#define KPATCH_POST_PATCH_CALLBACK(fn) \
	__KSPLICE_CALLBACK(post_patch, void (*)(struct klp_object *), fn);
#define KPATCH_PRE_UNPATCH_CALLBACK(fn) \
	__KSPLICE_CALLBACK(pre_unpatch, void (*)(struct klp_object *), fn);
#define KPATCH_POST_UNPATCH_CALLBACK(fn) \
	__KSPLICE_CALLBACK(post_unpatch, void (*)(struct klp_object *), fn);

/* kpatch's first hooks, before livepatch had callbacks: void fn(void). */
#define __KSPLICE_HOOK(kind, fn)							\
	static struct { void (*call)(void); const char *objname; }			\
	__UNIQUE_ID(ksplice_hook_) __KSPLICE_RECORD(".kpatch.hooks." #kind) =		\
		{ .call = (fn), .objname = (const char *)0 }
#define KPATCH_LOAD_HOOK(fn) __KSPLICE_HOOK(load, fn);
#define KPATCH_UNLOAD_HOOK(fn) __KSPLICE_HOOK(unload, fn);

/* Ksplice's hooks: one pointer per record. */
#define __KSPLICE_CALL(kind, type, fn)							\
	static __typeof__(type) __UNIQUE_ID(ksplice_call_) __KSPLICE_RECORD(".ksplice_call_" #kind) = (fn)

#define ksplice_pre_apply(fn) __KSPLICE_CALL(pre_apply, int (*)(void), fn)
#define ksplice_check_apply(fn) __KSPLICE_CALL(check_apply, int (*)(void), fn)
#define ksplice_apply(fn) __KSPLICE_CALL(apply, void (*)(void), fn)
#define ksplice_post_apply(fn) __KSPLICE_CALL(post_apply, void (*)(void), fn)
#define ksplice_fail_apply(fn) __KSPLICE_CALL(fail_apply, void (*)(void), fn)
#define ksplice_pre_reverse(fn) __KSPLICE_CALL(pre_reverse, int (*)(void), fn)
#define ksplice_check_reverse(fn) __KSPLICE_CALL(check_reverse, int (*)(void), fn)
#define ksplice_reverse(fn) __KSPLICE_CALL(reverse, void (*)(void), fn)
#define ksplice_post_reverse(fn) __KSPLICE_CALL(post_reverse, void (*)(void), fn)
#define ksplice_fail_reverse(fn) __KSPLICE_CALL(fail_reverse, void (*)(void), fn)

/* Marks for the differ: one address (or section name) per record. */
#define KPATCH_IGNORE_FUNCTION(fn)							\
	static void *__UNIQUE_ID(ksplice_ignore_function_)				\
	__KSPLICE_RECORD(".kpatch.ignore.functions") = (void *)(fn);
#define KPATCH_IGNORE_SECTION(sec)							\
	static const char *__UNIQUE_ID(ksplice_ignore_section_)				\
	__KSPLICE_RECORD(".kpatch.ignore.sections") = (sec);
#define KSPLICE_APPLY_DATA_CHANGE(var)							\
	static void *__UNIQUE_ID(ksplice_apply_data_)					\
	__KSPLICE_RECORD(".ksplice.data_change.apply") = (void *)&(var)
#define KSPLICE_ACCEPT_DATA_CHANGE(var)							\
	static void *__UNIQUE_ID(ksplice_accept_data_)					\
	__KSPLICE_RECORD(".ksplice.data_change.accept") = (void *)&(var)

/* Refused with a reason by `git ksplice create`: livepatch cannot skip its safety check. */
#define KPATCH_FORCE_UNSAFE(fn)								\
	static void *__UNIQUE_ID(ksplice_force_)					\
	__KSPLICE_RECORD(".kpatch.force") = (void *)(fn);

/* kpatch's helpers that need no record. */
#define KPATCH_PRINTK(fmt, ...) printk(fmt, ##__VA_ARGS__)
#define KPATCH_PRINTK_DEFERRED(fmt, ...) printk_deferred(fmt, ##__VA_ARGS__)
/* The function a static call goes to now, called through its key (a livepatch module may
 * not use a static call site of its own). */
#define KPATCH_STATIC_CALL(name) \
	((typeof(STATIC_CALL_TRAMP(name)) *)(STATIC_CALL_KEY(name).func))

#endif /* _GIT_KSPLICE_PATCH_H */
