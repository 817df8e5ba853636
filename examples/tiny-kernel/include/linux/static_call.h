/* KPATCH_STATIC_CALL's pieces (include/linux/static_call_types.h). */
#define STATIC_CALL_KEY(name) __SCK__##name
#define STATIC_CALL_TRAMP(name) __SCT__##name
