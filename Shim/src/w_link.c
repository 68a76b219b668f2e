/*
 * Links and special files (readlink, symlink, link, mknod, mkfifo),
 * remove(3), and statfs/statvfs of the fos file system.
 *
 * A symlink's target is stored as written and resolved by the fs inside
 * its own tree: an absolute target names a path from the fs root, not
 * from the host's (so "/fos/a" stored in a link means "/fos/a" below the
 * fs root). readlink of /proc/self/fd/N for a fos descriptor names the
 * fos file, as the kernel would name a host one.
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>

void __chk_fail(void) __attribute__((noreturn));

/* "FOS!" as the file system type statfs reports. */
#define FOS_SHIM_FS_MAGIC 0x464f5321

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
    char target[FOS_FS_PATH_MAX];
    int64_t n = fos_shim_op_readlink(ino, target, sizeof target);
    if (n < 0) return fos_shim_ret(n, saved);
    size_t c = (size_t)n < size ? (size_t)n : size;
    memcpy(buf, target, c);
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

/* ---- statfs ---- */

/* The fleet's figures, after checking that the target exists. */
static int fos_shim_statfs_fos(const char *fspath, fos_shim_ofd *o, fos_fs_statfs *s) {
    fos_fs_stat st;
    int r = o ? fos_shim_op_getattr(o->ino, &st) : fos_shim_op_stat_path(fspath, 1, &st);
    return r ? r : fos_shim_op_statfs(s);
}

static void fos_shim_fill_statfs(void *dst, const fos_fs_statfs *s) {
    struct statfs *out = dst;
    memset(out, 0, sizeof *out);
    out->f_type = FOS_SHIM_FS_MAGIC;
    out->f_bsize = s->block_size;
    out->f_frsize = s->block_size;
    out->f_blocks = s->total_blocks;
    out->f_bfree = s->free_blocks;
    out->f_bavail = s->avail_blocks;
    out->f_files = s->total_inodes;
    out->f_ffree = s->free_inodes;
    out->f_namelen = s->name_max;
    out->f_fsid.__val[0] = (int)makedev(FOS_SHIM_DEV_MAJOR, FOS_SHIM_DEV_MINOR);
}

static void fos_shim_fill_statvfs(void *dst, const fos_fs_statfs *s) {
    struct statvfs *out = dst;
    memset(out, 0, sizeof *out);
    out->f_bsize = s->block_size;
    out->f_frsize = s->block_size;
    out->f_blocks = s->total_blocks;
    out->f_bfree = s->free_blocks;
    out->f_bavail = s->avail_blocks;
    out->f_files = s->total_inodes;
    out->f_ffree = s->free_inodes;
    out->f_favail = s->free_inodes;
    out->f_fsid = makedev(FOS_SHIM_DEV_MAJOR, FOS_SHIM_DEV_MINOR);
    out->f_namemax = s->name_max;
}

typedef void (*fos_shim_fill_fn)(void *out, const fos_fs_statfs *s);
typedef int (*fos_shim_statfs_path_fn)(const char *path, void *out);
typedef int (*fos_shim_statfs_fd_fn)(int fd, void *out);

/* The 64 forms share the layout of the plain ones on 64-bit Linux. */
static int fos_shim_statfs_path(const char *path, void *out, fos_shim_fill_fn fill, fos_shim_statfs_path_fn real) {
    char buf[FOS_SHIM_PATH_BUF];
    fos_fs_statfs s;
    int saved = errno;
    int k = fos_shim_classify(AT_FDCWD, path, buf);
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) return real(k == FOS_SHIM_HOST ? path : buf, out);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    int r = fos_shim_statfs_fos(buf, NULL, &s);
    if (r == 0) fill(out, &s);
    return (int)fos_shim_ret(r, saved);
}

static int fos_shim_statfs_fd(int fd, void *out, fos_shim_fill_fn fill, fos_shim_statfs_fd_fn real) {
    fos_fs_statfs s;
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (o == NULL) return real(fd, out);
    int r = fos_shim_statfs_fos(NULL, o, &s);
    if (r == 0) fill(out, &s);
    return (int)fos_shim_ret(r, saved);
}

#define FOS_SHIM_STATFS_PATH(name, type, fill)                                                 \
    FOS_SHIM_EXPORT int name(const char *path, struct type *out) {                              \
        if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(name)(path, out); \
        return fos_shim_statfs_path(path, out, fill, (fos_shim_statfs_path_fn)FOS_REAL(name));     \
    }

#define FOS_SHIM_STATFS_FD(name, type, fill)                                                   \
    FOS_SHIM_EXPORT int name(int fd, struct type *out) {                                        \
        if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(name)(fd, out);            \
        return fos_shim_statfs_fd(fd, out, fill, (fos_shim_statfs_fd_fn)FOS_REAL(name));          \
    }

FOS_SHIM_STATFS_PATH(statfs, statfs, fos_shim_fill_statfs)
FOS_SHIM_STATFS_PATH(statfs64, statfs64, fos_shim_fill_statfs)
FOS_SHIM_STATFS_PATH(statvfs, statvfs, fos_shim_fill_statvfs)
FOS_SHIM_STATFS_PATH(statvfs64, statvfs64, fos_shim_fill_statvfs)
FOS_SHIM_STATFS_FD(fstatfs, statfs, fos_shim_fill_statfs)
FOS_SHIM_STATFS_FD(fstatfs64, statfs64, fos_shim_fill_statfs)
FOS_SHIM_STATFS_FD(fstatvfs, statvfs, fos_shim_fill_statvfs)
FOS_SHIM_STATFS_FD(fstatvfs64, statvfs64, fos_shim_fill_statvfs)
