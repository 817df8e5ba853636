/* SPDX-License-Identifier: GPL-2.0-only */
/* kpatch's header name, for patches written for kpatch: git-ksplice's ksplice-patch.h
 * provides every KPATCH_* macro, and kpatch-syscall.h's. */
#include "ksplice-patch.h"
#include "kpatch-syscall.h"
