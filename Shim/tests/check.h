/*
 * Assertions for the shim's C tests. Each test is a plain program run
 * under fos-run with a fresh fos directory as its first argument; it
 * prints "ok" and exits 0, or names the failed check and exits 1.
 */
#ifndef FOS_SHIM_CHECK_H
#define FOS_SHIM_CHECK_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <unistd.h>

#define CHECK(cond)                                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: CHECK(%s) failed (errno %d: %s)\n", __FILE__, __LINE__,    \
                    #cond, errno, strerror(errno));                                            \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* expr fails with -1 and errno e. */
#define CHECK_ERRNO(expr, e)                                                                   \
    do {                                                                                       \
        errno = 0;                                                                             \
        long r_ = (long)(expr);                                                                \
        if (r_ != -1 || errno != (e)) {                                                        \
            fprintf(stderr, "%s:%d: %s: want errno %d (%s), got %ld with errno %d (%s)\n",     \
                    __FILE__, __LINE__, #expr, (e), strerror(e), r_, errno, strerror(errno));  \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

/* base + "/" + name, in a static buffer per call site's slot. */
static inline const char *path_in(const char *base, const char *name) {
    static char bufs[8][4096];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, 4096, "%s/%s", base, name);
    return b;
}

static inline void write_all(int fd, const void *p, size_t n) {
    CHECK(write(fd, p, n) == (ssize_t)n);
}

/* The device number the shim gives every fos file. */
static inline int is_fos_dev(dev_t d) { return major(d) == 0 && minor(d) == 0xf05f5; }

#endif
