/*
 * Descriptor calls: dup and fcntl. The kernel duplicates the placeholder
 * (so numbering, close-on-exec and sharing are its own); the shim maps the
 * new number. F_GETFL and F_SETFL read and change the status flags in the
 * shared description; record locks go to the fs (w_lock.c); everything else
 * acts on the placeholder itself (F_GETFD, F_SETFD, F_SETOWN ...).
 */
#include "shim.h"

#include <stdarg.h>

int fos_shim_fcntl_lock(int fd, const fos_shim_ofd *o, int cmd, struct flock *fl);

/* The flag Linux reports in F_GETFL for every file on 64-bit systems. */
#define FOS_SHIM_O_LARGEFILE 0100000

/* After the kernel made `to` a copy of fos descriptor `from`. */
static int fos_shim_dup_done(int from, int to, int saved) {
    if (to < 0) return to;
    int r = fos_shim_fd_dup(from, to);
    if (r < 0) {
        FOS_REAL(close)(to);
        return (int)fos_shim_ret(r, saved);
    }
    if (to <= 2) fos_shim_std_rebind(to);
    errno = saved;
    return to;
}

FOS_SHIM_EXPORT int dup(int fd) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(dup)(fd);
    int saved = errno;
    int live = fos_shim_fd(fd) != NULL;
    int r = FOS_REAL(dup)(fd);
    return live ? fos_shim_dup_done(fd, r, saved) : r;
}

static int fos_shim_dup3_any(int from, int to, int flags, int is_dup2) {
    int saved = errno;
    int live = fos_shim_fd(from) != NULL;
    fos_shim_conn_owns(to);
    int r = is_dup2 ? FOS_REAL(dup2)(from, to) : FOS_REAL(dup3)(from, to, flags);
    if (r < 0 || from == to) return r;
    fos_shim_fd_forget(to);
    if (live) return fos_shim_dup_done(from, r, saved);
    if (to <= 2) fos_shim_std_rebind(to);
    return r;
}

FOS_SHIM_EXPORT int dup2(int from, int to) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(from) && !fos_shim_fd_marked(to))) {
        fos_shim_conn_owns(to);
        return FOS_REAL(dup2)(from, to);
    }
    return fos_shim_dup3_any(from, to, 0, 1);
}

FOS_SHIM_EXPORT int dup3(int from, int to, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(from) && !fos_shim_fd_marked(to))) {
        fos_shim_conn_owns(to);
        return FOS_REAL(dup3)(from, to, flags);
    }
    return fos_shim_dup3_any(from, to, flags, 0);
}

static int fos_shim_fcntl_fos(int fd, int cmd, void *arg) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(fcntl)(fd, cmd, arg);
    switch (cmd) {
    case F_DUPFD:
    case F_DUPFD_CLOEXEC:
        return fos_shim_dup_done(fd, FOS_REAL(fcntl)(fd, cmd, arg), saved);
    case F_GETFL:
        errno = saved;
        return (int)(fos_shim_fd_status(fd, o) | FOS_SHIM_O_LARGEFILE);
    case F_SETFL:
        return (int)fos_shim_ret(fos_shim_fd_set_status(fd, (uint32_t)(uintptr_t)arg), saved);
    case F_GETLK:
    case F_SETLK:
    case F_SETLKW:
    case F_OFD_GETLK:
    case F_OFD_SETLK:
    case F_OFD_SETLKW:
        return (int)fos_shim_ret(fos_shim_fcntl_lock(fd, o, cmd, arg), saved);
    default:
        return FOS_REAL(fcntl)(fd, cmd, arg);
    }
}

/* Every fcntl argument (int, long or pointer) travels in one register. */
FOS_SHIM_EXPORT int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fcntl)(fd, cmd, arg);
    return fos_shim_fcntl_fos(fd, cmd, arg);
}

int fcntl64(int fd, int cmd, ...);

FOS_SHIM_EXPORT int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fcntl64)(fd, cmd, arg);
    return fos_shim_fcntl_fos(fd, cmd, arg);
}
