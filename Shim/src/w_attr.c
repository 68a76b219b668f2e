/*
 * Attribute changes: mode, owner and times, by path, by *at and by
 * descriptor. Each is a SETATTR of the inode; the fs checks the caller
 * (owner or root) with the credentials fosd attested. glibc implements the
 * older time calls (utime, utimes, futimes, lutimes, futimesat) through a
 * hidden utimensat, so each public name is wrapped.
 */
#include "shim.h"

#include <sys/time.h>
#include <utime.h>

/* The inode (dirfd, path, flags) names: 1 and *ino for a fos target (2
 * for a directory this process leases), 0 for a host one (*host, *hostdir
 * name it), or -errno. path NULL names dirfd itself (futimens). */
static int fos_shim_attr_target(int dirfd, const char *path, int flags, uint64_t *ino, char *buf, int *hostdir,
                                const char **host) {
    *host = path;
    *hostdir = dirfd;
    if (path == NULL || ((flags & AT_EMPTY_PATH) && path[0] == 0)) {
        fos_shim_ofd *o = fos_shim_fd(dirfd);
        if (o == NULL) return 0;
        *ino = o->ino;
        return 1;
    }
    int k = fos_shim_classify(dirfd, path, buf);
    if (k < 0) return k;
    if (k == FOS_SHIM_REWRITTEN) {
        *host = buf;
        *hostdir = AT_FDCWD;
    }
    if (k != FOS_SHIM_FOS) return 0;
    int leased;
    int r = fos_shim_op_resolve_leased(buf, !(flags & AT_SYMLINK_NOFOLLOW), ino, &leased);
    return r ? r : leased ? 2 : 1;
}

static inline int fos_shim_attr_maybe(int dirfd, const char *path, int flags) {
    if (path == NULL || ((flags & AT_EMPTY_PATH) && path[0] == 0)) return fos_shim_fd_marked(dirfd);
    return fos_shim_maybe_fos(dirfd, path);
}

/* One change of attributes, as the caller asked for it. */
typedef struct fos_shim_change {
    enum { FOS_SHIM_MODE, FOS_SHIM_OWNER, FOS_SHIM_TIMES } kind;
    mode_t mode;
    uid_t uid;
    gid_t gid;
    const struct timespec *times; /* utimensat's pair; NULL: both now */
} fos_shim_change;

static int fos_shim_change_host(int dirfd, const char *path, int hdir, const char *host, int flags,
                                const fos_shim_change *c) {
    switch (c->kind) {
    case FOS_SHIM_MODE:
        return path ? FOS_REAL(fchmodat)(hdir, host, c->mode, flags) : FOS_REAL(fchmod)(dirfd, c->mode);
    case FOS_SHIM_OWNER:
        return path ? FOS_REAL(fchownat)(hdir, host, c->uid, c->gid, flags) : FOS_REAL(fchown)(dirfd, c->uid, c->gid);
    default:
        return FOS_REAL(utimensat)(hdir, host, c->times, flags);
    }
}

static int fos_shim_times(fos_fs_setattr *sa, const struct timespec *t);

static int fos_shim_change_slow(int dirfd, const char *path, int flags, const fos_shim_change *c) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *host;
    int hdir;
    uint64_t ino;
    int saved = errno;
    int k = fos_shim_attr_target(dirfd, path, flags, &ino, buf, &hdir, &host);
    if (k == 0) return fos_shim_change_host(dirfd, path, hdir, host, flags, c);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    fos_fs_setattr sa = {.ino = ino};
    int r = 0;
    if (c->kind == FOS_SHIM_MODE) {
        sa.valid = FOS_FS_SET_MODE;
        sa.mode = c->mode & 07777;
    } else if (c->kind == FOS_SHIM_OWNER) {
        sa.uid = c->uid;
        sa.gid = c->gid;
        if (c->uid != (uid_t)-1) sa.valid |= FOS_FS_SET_UID;
        if (c->gid != (gid_t)-1) sa.valid |= FOS_FS_SET_GID;
    } else {
        r = fos_shim_times(&sa, c->times);
    }
    /* By descriptor, the file is one this process has open (its change
     * may go ahead); by path, it may be gone by the time it is made, but
     * for a directory this process leases. */
    int by_fd = path == NULL || ((flags & AT_EMPTY_PATH) && path[0] == 0) || k == 2;
    if (r == 0 && sa.valid) r = by_fd ? fos_shim_op_setattr_open(&sa) : fos_shim_op_setattr(&sa, NULL);
    return (int)fos_shim_ret(r, saved);
}

static int fos_shim_chmod_slow(int dirfd, const char *path, mode_t mode, int flags) {
    fos_shim_change c = {.kind = FOS_SHIM_MODE, .mode = mode};
    return fos_shim_change_slow(dirfd, path, flags, &c);
}

static int fos_shim_chown_slow(int dirfd, const char *path, uid_t uid, gid_t gid, int flags) {
    fos_shim_change c = {.kind = FOS_SHIM_OWNER, .uid = uid, .gid = gid};
    return fos_shim_change_slow(dirfd, path, flags, &c);
}

static int fos_shim_utimens_slow(int dirfd, const char *path, const struct timespec *t, int flags) {
    fos_shim_change c = {.kind = FOS_SHIM_TIMES, .times = t};
    return fos_shim_change_slow(dirfd, path, flags, &c);
}

/* ---- mode ---- */

FOS_SHIM_EXPORT int chmod(const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(chmod)(path, mode);
    return fos_shim_chmod_slow(AT_FDCWD, path, mode, 0);
}

FOS_SHIM_EXPORT int lchmod(const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(lchmod)(path, mode);
    return fos_shim_chmod_slow(AT_FDCWD, path, mode, AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int fchmodat(int dirfd, const char *path, mode_t mode, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_attr_maybe(dirfd, path, flags))) return FOS_REAL(fchmodat)(dirfd, path, mode, flags);
    return fos_shim_chmod_slow(dirfd, path, mode, flags);
}

FOS_SHIM_EXPORT int fchmod(int fd, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fchmod)(fd, mode);
    return fos_shim_chmod_slow(fd, NULL, mode, 0);
}

/* ---- owner ---- */

FOS_SHIM_EXPORT int chown(const char *path, uid_t uid, gid_t gid) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(chown)(path, uid, gid);
    return fos_shim_chown_slow(AT_FDCWD, path, uid, gid, 0);
}

FOS_SHIM_EXPORT int lchown(const char *path, uid_t uid, gid_t gid) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(lchown)(path, uid, gid);
    return fos_shim_chown_slow(AT_FDCWD, path, uid, gid, AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int fchownat(int dirfd, const char *path, uid_t uid, gid_t gid, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_attr_maybe(dirfd, path, flags))) return FOS_REAL(fchownat)(dirfd, path, uid, gid, flags);
    return fos_shim_chown_slow(dirfd, path, uid, gid, flags);
}

FOS_SHIM_EXPORT int fchown(int fd, uid_t uid, gid_t gid) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fchown)(fd, uid, gid);
    return fos_shim_chown_slow(fd, NULL, uid, gid, 0);
}

/* ---- times ---- */

/* times[2] as utimensat takes them (NULL: both now). */
static int fos_shim_times(fos_fs_setattr *sa, const struct timespec *t) {
    for (int i = 0; i < 2; i++) {
        uint32_t set = i == 0 ? FOS_FS_SET_ATIME : FOS_FS_SET_MTIME;
        uint32_t now = i == 0 ? FOS_FS_SET_ATIME_NOW : FOS_FS_SET_MTIME_NOW;
        if (t == NULL || t[i].tv_nsec == UTIME_NOW) {
            sa->valid |= now;
            continue;
        }
        if (t[i].tv_nsec == UTIME_OMIT) continue;
        if (t[i].tv_nsec < 0 || t[i].tv_nsec >= 1000000000) return -EINVAL;
        int64_t ns = (int64_t)t[i].tv_sec * 1000000000 + t[i].tv_nsec;
        if (i == 0) sa->atime_ns = ns;
        else sa->mtime_ns = ns;
        sa->valid |= set;
    }
    return 0;
}

FOS_SHIM_EXPORT int utimensat(int dirfd, const char *path, const struct timespec t[2], int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_attr_maybe(dirfd, path, flags))) return FOS_REAL(utimensat)(dirfd, path, t, flags);
    return fos_shim_utimens_slow(dirfd, path, t, flags);
}

FOS_SHIM_EXPORT int futimens(int fd, const struct timespec t[2]) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(futimens)(fd, t);
    return fos_shim_utimens_slow(fd, NULL, t, 0);
}

/* timeval pairs (NULL: now) as timespec pairs. */
static const struct timespec *fos_shim_tv(const struct timeval *tv, struct timespec ts[2]) {
    if (tv == NULL) return NULL;
    for (int i = 0; i < 2; i++) {
        ts[i].tv_sec = tv[i].tv_sec;
        ts[i].tv_nsec = tv[i].tv_usec * 1000;
    }
    return ts;
}

FOS_SHIM_EXPORT int utimes(const char *path, const struct timeval tv[2]) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(utimes)(path, tv);
    struct timespec ts[2];
    return fos_shim_utimens_slow(AT_FDCWD, path, fos_shim_tv(tv, ts), 0);
}

FOS_SHIM_EXPORT int lutimes(const char *path, const struct timeval tv[2]) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(lutimes)(path, tv);
    struct timespec ts[2];
    return fos_shim_utimens_slow(AT_FDCWD, path, fos_shim_tv(tv, ts), AT_SYMLINK_NOFOLLOW);
}

FOS_SHIM_EXPORT int futimes(int fd, const struct timeval tv[2]) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(futimes)(fd, tv);
    struct timespec ts[2];
    return fos_shim_utimens_slow(fd, NULL, fos_shim_tv(tv, ts), 0);
}

FOS_SHIM_EXPORT int futimesat(int dirfd, const char *path, const struct timeval tv[2]) {
    if (FOS_SHIM_LIKELY(!fos_shim_attr_maybe(dirfd, path, 0))) return FOS_REAL(futimesat)(dirfd, path, tv);
    struct timespec ts[2];
    return fos_shim_utimens_slow(dirfd, path, fos_shim_tv(tv, ts), 0);
}

FOS_SHIM_EXPORT int utime(const char *path, const struct utimbuf *u) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(utime)(path, u);
    struct timespec ts[2];
    if (u) {
        ts[0] = (struct timespec){.tv_sec = u->actime};
        ts[1] = (struct timespec){.tv_sec = u->modtime};
    }
    return fos_shim_utimens_slow(AT_FDCWD, path, u ? ts : NULL, 0);
}
