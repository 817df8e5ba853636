/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * kpatch's KPATCH_SYSCALL_DEFINEn, for patches written for kpatch. kpatch needs its own
 * definition because it cannot patch a syscall's wrappers; git-ksplice replaces the callers
 * of an untraceable syscall body instead, so the kernel's SYSCALL_DEFINEn is all it takes.
 */
#ifndef _GIT_KSPLICE_KPATCH_SYSCALL_H
#define _GIT_KSPLICE_KPATCH_SYSCALL_H

#include <linux/syscalls.h>

#define KPATCH_SYSCALL_DEFINE0(name) SYSCALL_DEFINE0(name)
#define KPATCH_SYSCALL_DEFINE1(name, ...) SYSCALL_DEFINE1(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE2(name, ...) SYSCALL_DEFINE2(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE3(name, ...) SYSCALL_DEFINE3(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE4(name, ...) SYSCALL_DEFINE4(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE5(name, ...) SYSCALL_DEFINE5(name, __VA_ARGS__)
#define KPATCH_SYSCALL_DEFINE6(name, ...) SYSCALL_DEFINE6(name, __VA_ARGS__)

#endif
