/*
 * Links and special files (readlink, symlink, link, mknod, mkfifo) and
 * remove(3).
 *
 * The fs resolves a symlink inside its own tree: an absolute target is a
 * path from the fs root. So a target under the prefix is stored without it
 * ("/fos/a/b" as "/a/b") and readlink puts the prefix back on every
 * absolute target: what readlink shows is what the fs follows. A target
 * elsewhere on the host cannot be followed by the fs (readlink shows it
 * under the prefix, where the fs looks for it). readlink of
 * /proc/self/fd/N for a fos directory descriptor names the directory, as
 * the kernel would name a host one.
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>

void __chk_fail(void) __attribute__((noreturn));

static const char fos_shim_self_fd[] = "/proc/self/fd/";

/* readlink("/proc/self/fd/N") of a fos descriptor: its fos path. */
static ssize_t fos_shim_fd_link(const char *path, char *buf, size_t size, int *handled) {
    *handled = 0;
    if (strncmp(path, fos_shim_self_fd, sizeof fos_shim_self_fd - 1) != 0) return 0;
    const char *c = path + sizeof fos_shim_self_fd - 1;
    int fd = 0;
    for (; *c >= '0' && *c <= '9' && fd < (1 << 24); c++) fd = fd * 10 + (*c - '0');
    if (*c != 0 || !fos_shim_fd_marked(fd)) return 0;
    fos_shim_ofd *o = fos_shim_fd(fd);
    char fs[FOS_SHIM_PATH_BUF], host[FOS_SHIM_PATH_BUF];
    /* Only a directory's placeholder knows its path: a file's names itself. */
    if (o == NULL || fos_shim_fd_path(fd, o, fs) < 0) return 0;
    int n = fos_shim_host_path(fs, host, sizeof host);
    if (n < 0) return 0;
    *handled = 1;
    size_t k = (size_t)n < size ? (size_t)n : size;
    memcpy(buf, host, k);
    return (ssize_t)k;
}

static ssize_t fos_shim_readlink_slow(int dirfd, const char *path, char *buf, size_t size) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(dirfd, path, p);
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) {
        int handled;
        ssize_t r = fos_shim_fd_link(k == FOS_SHIM_HOST ? path : p, buf, size, &handled);
        if (handled) return r;
        return FOS_REAL(readlinkat)(k == FOS_SHIM_HOST ? dirfd : AT_FDCWD, k == FOS_SHIM_HOST ? path : p, buf, size);
    }
    if (k < 0) return fos_shim_ret(k, saved);
    if ((ssize_t)size <= 0) return fos_shim_ret(-EINVAL, saved);
    uint64_t ino;
    int r = fos_shim_op_resolve(p, 0, &ino);
    if (r) return fos_shim_ret(r, saved);
    char target[FOS_FS_PATH_MAX + 1], host[FOS_FS_PATH_MAX + 256];
    int64_t n = fos_shim_op_readlink(ino, target, sizeof target - 1);
    if (n < 0) return fos_shim_ret(n, saved);
    const char *shown = target;
    target[n] = 0;
    if (n > 0 && target[0] == '/') {
        int h = fos_shim_host_path(target, host, sizeof host);
        if (h < 0) return fos_shim_ret(h, saved);
        shown = host;
        n = h;
    }
    size_t c = (size_t)n < size ? (size_t)n : size;
    memcpy(buf, shown, c);
    return fos_shim_ret((long)c, saved);
}

/* Host paths reach readlink's slow path too, for /proc/self/fd. */
static inline int fos_shim_readlink_maybe(int dirfd, const char *path) {
    return fos_shim_maybe_fos(dirfd, path) || (path && path[0] == '/' && path[1] == 'p' && fos_shim_fdtab != NULL);
}

FOS_SHIM_EXPORT ssize_t readlink(const char *path, char *buf, size_t size) {
    if (FOS_SHIM_LIKELY(!fos_shim_readlink_maybe(AT_FDCWD, path))) return FOS_REAL(readlink)(path, buf, size);
    return fos_shim_readlink_slow(AT_FDCWD, path, buf, size);
}

FOS_SHIM_EXPORT ssize_t readlinkat(int dirfd, const char *path, char *buf, size_t size) {
    if (FOS_SHIM_LIKELY(!fos_shim_readlink_maybe(dirfd, path))) return FOS_REAL(readlinkat)(dirfd, path, buf, size);
    return fos_shim_readlink_slow(dirfd, path, buf, size);
}

ssize_t __readlink_chk(const char *path, char *buf, size_t size, size_t buflen);
ssize_t __readlinkat_chk(int dirfd, const char *path, char *buf, size_t size, size_t buflen);

FOS_SHIM_EXPORT ssize_t __readlink_chk(const char *path, char *buf, size_t size, size_t buflen) {
    if (size > buflen) __chk_fail();
    return readlink(path, buf, size);
}

FOS_SHIM_EXPORT ssize_t __readlinkat_chk(int dirfd, const char *path, char *buf, size_t size, size_t buflen) {
    if (size > buflen) __chk_fail();
    return readlinkat(dirfd, path, buf, size);
}

static int fos_shim_symlink_slow(const char *target, int dirfd, const char *path) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(dirfd, path, p);
    if (k == FOS_SHIM_HOST) return FOS_REAL(symlinkat)(target, dirfd, path);
    if (k == FOS_SHIM_REWRITTEN) return FOS_REAL(symlinkat)(target, AT_FDCWD, p);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    char t[FOS_SHIM_PATH_BUF];
    if (target && target[0] == '/' && fos_shim_classify(AT_FDCWD, target, t) == FOS_SHIM_FOS) target = t;
    return (int)fos_shim_ret(fos_shim_op_symlink(target, p), saved);
}

FOS_SHIM_EXPORT int symlink(const char *target, const char *path) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(symlink)(target, path);
    return fos_shim_symlink_slow(target, AT_FDCWD, path);
}

FOS_SHIM_EXPORT int symlinkat(const char *target, int dirfd, const char *path) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(symlinkat)(target, dirfd, path);
    return fos_shim_symlink_slow(target, dirfd, path);
}

static int fos_shim_link_slow(int odir, const char *from, int ndir, const char *to, int flags) {
    char a[FOS_SHIM_PATH_BUF], b[FOS_SHIM_PATH_BUF];
    int saved = errno;
    const char *f = from, *t = to;
    int k = fos_shim_classify2(&odir, &f, a, &ndir, &t, b);
    if (k == 0) return FOS_REAL(linkat)(odir, f, ndir, t, flags);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    if (flags & ~AT_SYMLINK_FOLLOW) return (int)fos_shim_ret(-EINVAL, saved);
    uint64_t ino;
    int r = fos_shim_op_resolve(a, (flags & AT_SYMLINK_FOLLOW) != 0, &ino);
    if (r == 0) r = fos_shim_op_link(ino, b);
    return (int)fos_shim_ret(r, saved);
}

FOS_SHIM_EXPORT int link(const char *from, const char *to) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, from) && !fos_shim_maybe_fos(AT_FDCWD, to))) {
        return FOS_REAL(link)(from, to);
    }
    return fos_shim_link_slow(AT_FDCWD, from, AT_FDCWD, to, 0);
}

FOS_SHIM_EXPORT int linkat(int odir, const char *from, int ndir, const char *to, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(odir, from) && !fos_shim_maybe_fos(ndir, to))) {
        return FOS_REAL(linkat)(odir, from, ndir, to, flags);
    }
    return fos_shim_link_slow(odir, from, ndir, to, flags);
}

static int fos_shim_mknod_slow(int dirfd, const char *path, mode_t mode, dev_t dev) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(dirfd, path, p);
    if (k == FOS_SHIM_HOST) return FOS_REAL(mknodat)(dirfd, path, mode, dev);
    if (k == FOS_SHIM_REWRITTEN) return FOS_REAL(mknodat)(AT_FDCWD, p, mode, dev);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    uint32_t m = (uint32_t)((mode & S_IFMT) | (mode & ~fos_shim_umask() & 07777));
    return (int)fos_shim_ret(fos_shim_op_mknod(p, m, (uint64_t)dev), saved);
}

FOS_SHIM_EXPORT int mknod(const char *path, mode_t mode, dev_t dev) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(mknod)(path, mode, dev);
    return fos_shim_mknod_slow(AT_FDCWD, path, mode, dev);
}

FOS_SHIM_EXPORT int mknodat(int dirfd, const char *path, mode_t mode, dev_t dev) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(mknodat)(dirfd, path, mode, dev);
    return fos_shim_mknod_slow(dirfd, path, mode, dev);
}

FOS_SHIM_EXPORT int mkfifo(const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(mkfifo)(path, mode);
    return fos_shim_mknod_slow(AT_FDCWD, path, S_IFIFO | (mode & 07777), 0);
}

FOS_SHIM_EXPORT int mkfifoat(int dirfd, const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(mkfifoat)(dirfd, path, mode);
    return fos_shim_mknod_slow(dirfd, path, S_IFIFO | (mode & 07777), 0);
}

/* remove(3): unlink, or rmdir for a directory, through the wrappers. */
FOS_SHIM_EXPORT int remove(const char *path) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(remove)(path);
    int saved = errno;
    int r = unlink(path);
    if (r != 0 && errno == EISDIR) {
        errno = saved;
        r = rmdir(path);
    }
    return r;
}
