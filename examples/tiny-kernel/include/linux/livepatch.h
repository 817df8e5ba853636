/* The livepatch types and shadow-variable calls of Linux 6.1's linux/livepatch.h. */
struct klp_object;
typedef int (*klp_shadow_ctor_t)(void *obj, void *shadow_data, void *ctor_data);
typedef void (*klp_shadow_dtor_t)(void *obj, void *shadow_data);
void *klp_shadow_get(void *obj, unsigned long id);
void *klp_shadow_get_or_alloc(void *obj, unsigned long id, unsigned long size,
			      unsigned int gfp_flags, klp_shadow_ctor_t ctor, void *ctor_data);
void klp_shadow_free_all(unsigned long id, klp_shadow_dtor_t dtor);
