/*
 * stat(2) in all its generations (stat, the *at and 64 forms, statx, and
 * the __xstat entry points of binaries built before glibc 2.33), and
 * access(2). A fos path is one OPEN-for-attributes message (see
 * fos_shim_op_stat_path); a fos descriptor one GETATTR.
 */
#include "shim.h"

#include <string.h>
#include <sys/sysmacros.h>

/* Nanoseconds since the epoch as seconds and a non-negative remainder. */
static void fos_shim_split_ns(int64_t t, int64_t *sec, int64_t *nsec) {
    *sec = t / 1000000000;
    *nsec = t % 1000000000;
    if (*nsec < 0) {
        *sec -= 1;
        *nsec += 1000000000;
    }
}

void fos_shim_fill_stat(struct stat *out, const fos_fs_stat *st) {
    memset(out, 0, sizeof *out);
    out->st_dev = makedev(FOS_SHIM_DEV_MAJOR, FOS_SHIM_DEV_MINOR);
    out->st_ino = st->ino;
    out->st_mode = st->mode;
    out->st_nlink = st->nlink;
    out->st_uid = st->uid;
    out->st_gid = st->gid;
    out->st_rdev = st->rdev;
    out->st_size = (off_t)st->size;
    out->st_blksize = st->blksize;
    out->st_blocks = (blkcnt_t)st->blocks;
    int64_t t[3] = {st->atime_ns, st->mtime_ns, st->ctime_ns};
    struct timespec *ts[3] = {&out->st_atim, &out->st_mtim, &out->st_ctim};
    for (int i = 0; i < 3; i++) {
        int64_t s, ns;
        fos_shim_split_ns(t[i], &s, &ns);
        ts[i]->tv_sec = s;
        ts[i]->tv_nsec = ns;
    }
}

static void fos_shim_fill_statx_time(struct statx_timestamp *out, int64_t t) {
    int64_t s, ns;
    fos_shim_split_ns(t, &s, &ns);
    out->tv_sec = s;
    out->tv_nsec = (uint32_t)ns;
}

static void fos_shim_fill_statx(struct statx *out, const fos_fs_stat *st) {
    memset(out, 0, sizeof *out);
    out->stx_mask = STATX_BASIC_STATS | STATX_BTIME;
    out->stx_blksize = st->blksize;
    out->stx_nlink = st->nlink;
    out->stx_uid = st->uid;
    out->stx_gid = st->gid;
    out->stx_mode = (uint16_t)st->mode;
    out->stx_ino = st->ino;
    out->stx_size = st->size;
    out->stx_blocks = st->blocks;
    fos_shim_fill_statx_time(&out->stx_atime, st->atime_ns);
    fos_shim_fill_statx_time(&out->stx_btime, st->btime_ns);
    fos_shim_fill_statx_time(&out->stx_ctime, st->ctime_ns);
    fos_shim_fill_statx_time(&out->stx_mtime, st->mtime_ns);
    out->stx_rdev_major = major(st->rdev);
    out->stx_rdev_minor = minor(st->rdev);
    out->stx_dev_major = FOS_SHIM_DEV_MAJOR;
    out->stx_dev_minor = FOS_SHIM_DEV_MINOR;
}

/* Attributes of what (dirfd, path, flags) names, if it is fos: 1 with *st
 * filled, 0 for a host path (*host then names it: path or rewritten into
 * buf), or -errno. */
static int fos_shim_stat_target(int dirfd, const char *path, int flags, fos_fs_stat *st, char *buf,
                                const char **host) {
    *host = path;
    if ((flags & AT_EMPTY_PATH) && path && path[0] == 0) {
        fos_shim_ofd *o = fos_shim_fd(dirfd);
        if (!o) return 0;
        int r = fos_shim_op_getattr(o->ino, st);
        return r ? r : 1;
    }
    int k = fos_shim_classify(dirfd, path, buf);
    if (k < 0) return k;
    if (k == FOS_SHIM_REWRITTEN) *host = buf;
    if (k != FOS_SHIM_FOS) return 0;
    int r = fos_shim_op_stat_path(buf, !(flags & AT_SYMLINK_NOFOLLOW), st);
    return r ? r : 1;
}

static int fos_shim_fstatat_slow(int dirfd, const char *path, struct stat *out, int flags) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *host;
    fos_fs_stat st;
    int saved = errno;
    int k = fos_shim_stat_target(dirfd, path, flags, &st, buf, &host);
    if (k == 0) return FOS_REAL(fstatat)(host == path ? dirfd : AT_FDCWD, host, out, flags);
    if (k > 0) fos_shim_fill_stat(out, &st);
    return (int)fos_shim_ret(k < 0 ? k : 0, saved);
}

static int fos_shim_fstat_fos(int fd, struct stat *out) {
    return fos_shim_fstatat_slow(fd, "", out, AT_EMPTY_PATH);
}

FOS_SHIM_EXPORT int stat(const char *path, struct stat *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(stat)(path, out);
    return fos_shim_fstatat_slow(AT_FDCWD, path, out, 0);
}

FOS_SHIM_EXPORT int stat64(const char *path, struct stat64 *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(stat64)(path, out);
    return fos_shim_fstatat_slow(AT_FDCWD, path, (struct stat *)out, 0);
}

FOS_SHIM_EXPORT int lstat(const char *path, struct stat *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(lstat)(path, out);
    return fos_shim_fstatat_slow(AT_FDCWD, path, out, AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int lstat64(const char *path, struct stat64 *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(lstat64)(path, out);
    return fos_shim_fstatat_slow(AT_FDCWD, path, (struct stat *)out, AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int fstat(int fd, struct stat *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fstat)(fd, out);
    return fos_shim_fstat_fos(fd, out);
}

FOS_SHIM_EXPORT int fstat64(int fd, struct stat64 *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fstat64)(fd, out);
    return fos_shim_fstat_fos(fd, (struct stat *)out);
}

static inline int fos_shim_at_maybe(int dirfd, const char *path, int flags) {
    if ((flags & AT_EMPTY_PATH) && path && path[0] == 0) return fos_shim_fd_marked(dirfd);
    return fos_shim_maybe_fos(dirfd, path);
}

FOS_SHIM_EXPORT int fstatat(int dirfd, const char *path, struct stat *out, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_at_maybe(dirfd, path, flags))) return FOS_REAL(fstatat)(dirfd, path, out, flags);
    return fos_shim_fstatat_slow(dirfd, path, out, flags);
}

FOS_SHIM_EXPORT int fstatat64(int dirfd, const char *path, struct stat64 *out, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_at_maybe(dirfd, path, flags))) return FOS_REAL(fstatat64)(dirfd, path, out, flags);
    return fos_shim_fstatat_slow(dirfd, path, (struct stat *)out, flags);
}

static int fos_shim_statx_slow(int dirfd, const char *path, int flags, unsigned mask, struct statx *out) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *host;
    fos_fs_stat st;
    int saved = errno;
    int k = fos_shim_stat_target(dirfd, path, flags, &st, buf, &host);
    if (k == 0) return FOS_REAL(statx)(host == path ? dirfd : AT_FDCWD, host, flags, mask, out);
    if (k > 0) fos_shim_fill_statx(out, &st);
    return (int)fos_shim_ret(k < 0 ? k : 0, saved);
}

FOS_SHIM_EXPORT int statx(int dirfd, const char *path, int flags, unsigned mask, struct statx *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_at_maybe(dirfd, path, flags))) return FOS_REAL(statx)(dirfd, path, flags, mask, out);
    return fos_shim_statx_slow(dirfd, path, flags, mask, out);
}

#if defined(__x86_64__)
/* The stat entry points of binaries built before glibc 2.33; on x86_64
 * `ver` is 1 and the structures are struct stat. */
int __xstat(int ver, const char *path, struct stat *out);
int __xstat64(int ver, const char *path, struct stat64 *out);
int __lxstat(int ver, const char *path, struct stat *out);
int __lxstat64(int ver, const char *path, struct stat64 *out);
int __fxstat(int ver, int fd, struct stat *out);
int __fxstat64(int ver, int fd, struct stat64 *out);
int __fxstatat(int ver, int dirfd, const char *path, struct stat *out, int flags);
int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *out, int flags);

#define FOS_SHIM_XSTAT_VER 1

FOS_SHIM_EXPORT int __xstat(int ver, const char *path, struct stat *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || ver != FOS_SHIM_XSTAT_VER) {
        return FOS_REAL(__xstat)(ver, path, out);
    }
    return fos_shim_fstatat_slow(AT_FDCWD, path, out, 0);
}

FOS_SHIM_EXPORT int __xstat64(int ver, const char *path, struct stat64 *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || ver != FOS_SHIM_XSTAT_VER) {
        return FOS_REAL(__xstat64)(ver, path, out);
    }
    return fos_shim_fstatat_slow(AT_FDCWD, path, (struct stat *)out, 0);
}

FOS_SHIM_EXPORT int __lxstat(int ver, const char *path, struct stat *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || ver != FOS_SHIM_XSTAT_VER) {
        return FOS_REAL(__lxstat)(ver, path, out);
    }
    return fos_shim_fstatat_slow(AT_FDCWD, path, out, AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int __lxstat64(int ver, const char *path, struct stat64 *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || ver != FOS_SHIM_XSTAT_VER) {
        return FOS_REAL(__lxstat64)(ver, path, out);
    }
    return fos_shim_fstatat_slow(AT_FDCWD, path, (struct stat *)out, AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int __fxstat(int ver, int fd, struct stat *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || ver != FOS_SHIM_XSTAT_VER) return FOS_REAL(__fxstat)(ver, fd, out);
    return fos_shim_fstat_fos(fd, out);
}

FOS_SHIM_EXPORT int __fxstat64(int ver, int fd, struct stat64 *out) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || ver != FOS_SHIM_XSTAT_VER) return FOS_REAL(__fxstat64)(ver, fd, out);
    return fos_shim_fstat_fos(fd, (struct stat *)out);
}

FOS_SHIM_EXPORT int __fxstatat(int ver, int dirfd, const char *path, struct stat *out, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_at_maybe(dirfd, path, flags)) || ver != FOS_SHIM_XSTAT_VER) {
        return FOS_REAL(__fxstatat)(ver, dirfd, path, out, flags);
    }
    return fos_shim_fstatat_slow(dirfd, path, out, flags);
}

FOS_SHIM_EXPORT int __fxstatat64(int ver, int dirfd, const char *path, struct stat64 *out, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_at_maybe(dirfd, path, flags)) || ver != FOS_SHIM_XSTAT_VER) {
        return FOS_REAL(__fxstatat64)(ver, dirfd, path, out, flags);
    }
    return fos_shim_fstatat_slow(dirfd, path, (struct stat *)out, flags);
}
#endif

static int fos_shim_in_groups(gid_t g) {
    gid_t groups[FOS_FS_MAX_GROUPS];
    int n = getgroups(FOS_FS_MAX_GROUPS, groups);
    for (int i = 0; i < n; i++) {
        if (groups[i] == g) return 1;
    }
    return 0;
}

int fos_shim_permits(const fos_fs_stat *st, int mask, int effective) {
    uid_t uid = effective ? geteuid() : getuid();
    gid_t gid = effective ? getegid() : getgid();
    mask &= R_OK | W_OK | X_OK;
    if (mask == 0) return 0;
    if (uid == 0) {
        /* Root may read and write anything, and execute what anyone may. */
        if ((mask & X_OK) && !S_ISDIR(st->mode) && !(st->mode & 0111)) return -EACCES;
        return 0;
    }
    unsigned bits;
    if (uid == st->uid) bits = (st->mode >> 6) & 7;
    else if (gid == st->gid || fos_shim_in_groups(st->gid)) bits = (st->mode >> 3) & 7;
    else bits = st->mode & 7;
    return ((unsigned)mask & bits) == (unsigned)mask ? 0 : -EACCES;
}

static int fos_shim_access_slow(int dirfd, const char *path, int mode, int flags) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *host;
    fos_fs_stat st;
    int saved = errno;
    if (mode & ~(R_OK | W_OK | X_OK)) return (int)fos_shim_ret(-EINVAL, saved);
    int k = fos_shim_stat_target(dirfd, path, flags, &st, buf, &host);
    if (k == 0) return FOS_REAL(faccessat)(host == path ? dirfd : AT_FDCWD, host, mode, flags);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    return (int)fos_shim_ret(fos_shim_permits(&st, mode, (flags & AT_EACCESS) != 0), saved);
}

FOS_SHIM_EXPORT int access(const char *path, int mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(access)(path, mode);
    return fos_shim_access_slow(AT_FDCWD, path, mode, 0);
}

FOS_SHIM_EXPORT int faccessat(int dirfd, const char *path, int mode, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_at_maybe(dirfd, path, flags))) return FOS_REAL(faccessat)(dirfd, path, mode, flags);
    return fos_shim_access_slow(dirfd, path, mode, flags);
}

FOS_SHIM_EXPORT int euidaccess(const char *path, int mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(euidaccess)(path, mode);
    return fos_shim_access_slow(AT_FDCWD, path, mode, AT_EACCESS);
}

FOS_SHIM_EXPORT int eaccess(const char *path, int mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(eaccess)(path, mode);
    return fos_shim_access_slow(AT_FDCWD, path, mode, AT_EACCESS);
}
