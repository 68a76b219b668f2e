/*
 * Temporary files and directories from templates under the fos tree
 * (mkstemp and its kin, mkdtemp): glibc makes them with hidden calls, so a
 * fos template gets the same loop here, through the shim's own open and
 * mkdir: six random letters, O_EXCL, again on EEXIST.
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

static const char fos_shim_letters[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/* The six X's before `suffix` bytes, or NULL (EINVAL) if tmpl has none. */
static char *fos_shim_xs(char *tmpl, int suffix) {
    size_t n = strlen(tmpl);
    if (suffix < 0 || n < (size_t)suffix + 6) return NULL;
    char *x = tmpl + n - suffix - 6;
    return strncmp(x, "XXXXXX", 6) == 0 ? x : NULL;
}

static void fos_shim_fill(char *x) {
    unsigned char r[6];
    if (getrandom(r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r) {
        uint64_t t = (uint64_t)(uintptr_t)x ^ (uint64_t)getpid() << 32 ^ (uint64_t)rand();
        memcpy(r, &t, sizeof r);
    }
    for (int i = 0; i < 6; i++) x[i] = fos_shim_letters[r[i] % (sizeof fos_shim_letters - 1)];
}

/* One of open and mkdir made with fresh names until one is new. */
static int fos_shim_make_temp(char *tmpl, int suffix, int flags, int dir) {
    char *x = fos_shim_xs(tmpl, suffix);
    if (x == NULL) {
        errno = EINVAL;
        return -1;
    }
    for (int tries = 0; tries < 1000; tries++) {
        fos_shim_fill(x);
        int saved = errno;
        int r = dir ? mkdir(tmpl, 0700) : open(tmpl, (flags & ~O_ACCMODE) | O_RDWR | O_CREAT | O_EXCL, 0600);
        if (r >= 0 || errno != EEXIST) return r;
        errno = saved;
    }
    errno = EEXIST;
    return -1;
}

FOS_SHIM_EXPORT int mkostemps(char *tmpl, int suffix, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, tmpl))) return FOS_REAL(mkostemps)(tmpl, suffix, flags);
    return fos_shim_make_temp(tmpl, suffix, flags, 0);
}

FOS_SHIM_EXPORT int mkostemps64(char *tmpl, int suffix, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, tmpl))) return FOS_REAL(mkostemps64)(tmpl, suffix, flags);
    return fos_shim_make_temp(tmpl, suffix, flags, 0);
}

FOS_SHIM_EXPORT int mkstemp(char *tmpl) { return mkostemps(tmpl, 0, 0); }
FOS_SHIM_EXPORT int mkstemp64(char *tmpl) { return mkostemps64(tmpl, 0, 0); }
FOS_SHIM_EXPORT int mkostemp(char *tmpl, int flags) { return mkostemps(tmpl, 0, flags); }
FOS_SHIM_EXPORT int mkostemp64(char *tmpl, int flags) { return mkostemps64(tmpl, 0, flags); }
FOS_SHIM_EXPORT int mkstemps(char *tmpl, int suffix) { return mkostemps(tmpl, suffix, 0); }
FOS_SHIM_EXPORT int mkstemps64(char *tmpl, int suffix) { return mkostemps64(tmpl, suffix, 0); }

FOS_SHIM_EXPORT char *mkdtemp(char *tmpl) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, tmpl))) return FOS_REAL(mkdtemp)(tmpl);
    return fos_shim_make_temp(tmpl, 0, 0, 1) == 0 ? tmpl : NULL;
}
