/*
 * The next definition of a wrapped symbol (libc's), found on first use.
 *
 * Lazily, because other libraries' constructors may call a wrapper before
 * ours ran. dlsym itself may call back into a wrapper (glibc's dlsym can
 * allocate, and a malloc replacement may open files); that inner call gets
 * a stub that fails with ENOSYS instead of recursing forever. The stub
 * returns -1, which a function returning a pointer would pass on as
 * (void *)-1: only a malloc replacement that opens files while glibc's
 * dlsym resolves opendir or fopen could see that.
 */
#include "shim.h"

#include <dlfcn.h>

static FOS_SHIM_TLS int fos_shim_resolving;

static long fos_shim_enosys(void) {
    errno = ENOSYS;
    return -1;
}

void *fos_shim_real(void **slot, const char *name, const char *version) {
    if (fos_shim_resolving) return (void *)fos_shim_enosys;
    fos_shim_resolving = 1;
    int saved = errno;
    /* A symbol with two versions: dlsym would give the default one, which
     * need not be the one named (and other architectures name others). */
    void *p = version ? dlvsym(RTLD_NEXT, name, version) : NULL;
    if (p == NULL) p = dlsym(RTLD_NEXT, name);
    errno = saved;
    fos_shim_resolving = 0;
    if (!p) return (void *)fos_shim_enosys;
    __atomic_store_n(slot, p, __ATOMIC_RELEASE);
    return p;
}
