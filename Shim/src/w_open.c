/*
 * open(2) and close(2) and their aliases. A fos path becomes one OPEN
 * message (permission checks, O_CREAT, O_EXCL, O_TRUNC, O_DIRECTORY,
 * O_NOFOLLOW done by the fs) and a placeholder descriptor; every other
 * path goes to libc after one inline test, with no syscall added.
 */
#include "shim.h"

#include <stdarg.h>

#include "fos_mountinfo.h"

void fos_shim_lock_release(const fos_shim_ofd *o);

/* O_TMPFILE includes O_DIRECTORY: only both bits together mean it. */
#define FOS_SHIM_NEEDS_MODE(flags) (((flags) & O_CREAT) || ((flags) & O_TMPFILE) == O_TMPFILE)

#define FOS_SHIM_MODE_ARG(flags, mode)                                                  \
    mode_t mode = 0;                                                                    \
    if (FOS_SHIM_NEEDS_MODE(flags)) {                                                   \
        va_list ap;                                                                     \
        va_start(ap, flags);                                                            \
        mode = (mode_t)va_arg(ap, int);                                                 \
        va_end(ap);                                                                     \
    }

/* The inode number this process's last new file got: the fs numbers a
 * directory's new files in turn, so the next one most likely gets the
 * next number. */
static uint64_t fos_shim_last_new_ino;

/* A placeholder made while the OPEN of a new file is in flight (`spare`),
 * for the inode number and mode it is expected to get. */
typedef struct {
    uint64_t ino;
    uint32_t mode;
    int oflags;
    int fd;
    fos_shim_ofd o;
} fos_shim_spare;

static void fos_shim_spare_make(void *arg) {
    fos_shim_spare *sp = arg;
    if (sp->fd < 0) sp->fd = fos_shim_fd_spare(sp->ino, sp->mode, sp->oflags, &sp->o);
}

/* OPEN of a new file (O_CREAT | O_EXCL), then its placeholder. Making a
 * placeholder takes five system calls (3-4 µs), which waited for the
 * answer: they are made while the member serves the request, for the
 * inode number the file most likely gets, and used if it does. (tar
 * writes a file right after creating it, and the member, having answered,
 * had nothing to do until then.) */
static int fos_shim_open_new(char *fspath, int flags, uint32_t sent, uint32_t perm) {
    fos_fs_stat st;
    /* In a directory this process just made, without waiting (lease.c). */
    int lr = fos_shim_fs_create_leased(fspath, sent, perm, &st);
    if (lr < 0) return lr;
    if (lr == 0) {
        __atomic_store_n(&fos_shim_last_new_ino, st.ino, __ATOMIC_RELAXED);
        return fos_shim_fd_create(&st, flags, fspath);
    }
    fos_shim_spare sp = {.fd = -1, .oflags = flags, .mode = S_IFREG | perm};
    uint64_t last = __atomic_load_n(&fos_shim_last_new_ino, __ATOMIC_RELAXED);
    sp.ino = last + 1;
    int r = fos_shim_op_open_meanwhile(fspath, sent, perm, &st, last ? fos_shim_spare_make : NULL, &sp);
    if (r == 0) __atomic_store_n(&fos_shim_last_new_ino, st.ino, __ATOMIC_RELAXED);
    if (sp.fd >= 0) {
        if (r == 0 && st.ino == sp.ino && st.mode == sp.mode) return fos_shim_fd_adopt(sp.fd, &sp.o, flags);
        fos_shim_sys_close(sp.fd);
    }
    return r ? r : fos_shim_fd_create(&st, flags, fspath);
}

/* A FIFO is a kernel object, of which the fs keeps only the inode: one in
 * /fos is opened through the node's FUSE mount, where every process on this
 * machine, under the shim or not, meets the same pipe. Without a mount
 * there is no pipe to meet: ENXIO, as for a device with no driver. */
static int fos_shim_open_fifo(const char *fspath, int flags, mode_t mode) {
    char mp[1024], full[FOS_SHIM_PATH_BUF];
    if (!fos_mountinfo_fos_mount(fos_shim_cfg.runtime, mp, sizeof mp)) return -ENXIO;
    int n = snprintf(full, sizeof full, "%s%s", mp, fspath);
    if (n < 0 || (size_t)n >= sizeof full) return -ENAMETOOLONG;
    int fd = FOS_REAL(openat)(AT_FDCWD, full, flags, mode);
    return fd < 0 ? -errno : fd;
}

static int fos_shim_open_fos(char *fspath, int flags, mode_t mode) {
    if ((flags & O_TMPFILE) == O_TMPFILE) return -EOPNOTSUPP;
    fos_fs_stat st;
    int r;
    if (flags & O_PATH) {
        /* No access to the file itself is checked for O_PATH, as on Linux. */
        r = fos_shim_op_stat_path(fspath, !(flags & O_NOFOLLOW), &st);
        if (r == 0 && (flags & O_DIRECTORY) && !S_ISDIR(st.mode)) r = -ENOTDIR;
    } else {
        uint32_t sent = (uint32_t)(flags & (O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_DIRECTORY | O_NOFOLLOW));
        uint32_t perm = (uint32_t)(mode & ~fos_shim_umask() & 07777);
        __atomic_add_fetch(&fos_shim_opens_pending, 1, __ATOMIC_ACQ_REL);
        if ((flags & (O_CREAT | O_EXCL | O_DIRECTORY)) == (O_CREAT | O_EXCL)) {
            r = fos_shim_open_new(fspath, flags, sent, perm);
        } else {
            r = fos_shim_op_open(fspath, sent, perm, &st);
            if (r == 0) {
                r = S_ISFIFO(st.mode) ? fos_shim_open_fifo(fspath, flags, mode) : fos_shim_fd_create(&st, flags, fspath);
            }
        }
        __atomic_sub_fetch(&fos_shim_opens_pending, 1, __ATOMIC_ACQ_REL);
        return r;
    }
    if (r) return r;
    return fos_shim_fd_create(&st, flags, fspath);
}

/* The slow path of every open: classify, then the fs or libc. */
static int fos_shim_open_slow(int dirfd, const char *path, int flags, mode_t mode) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(dirfd, path, p);
    if (k == FOS_SHIM_HOST) return FOS_REAL(openat)(dirfd, path, flags, mode);
    if (k == FOS_SHIM_REWRITTEN) return FOS_REAL(openat)(AT_FDCWD, p, flags, mode);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    return (int)fos_shim_ret(fos_shim_open_fos(p, flags, mode), saved);
}

FOS_SHIM_EXPORT int open(const char *path, int flags, ...) {
    FOS_SHIM_MODE_ARG(flags, mode);
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(open)(path, flags, mode);
    return fos_shim_open_slow(AT_FDCWD, path, flags, mode);
}

FOS_SHIM_EXPORT int open64(const char *path, int flags, ...) {
    FOS_SHIM_MODE_ARG(flags, mode);
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(open64)(path, flags, mode);
    return fos_shim_open_slow(AT_FDCWD, path, flags, mode);
}

FOS_SHIM_EXPORT int openat(int dirfd, const char *path, int flags, ...) {
    FOS_SHIM_MODE_ARG(flags, mode);
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(openat)(dirfd, path, flags, mode);
    return fos_shim_open_slow(dirfd, path, flags, mode);
}

FOS_SHIM_EXPORT int openat64(int dirfd, const char *path, int flags, ...) {
    FOS_SHIM_MODE_ARG(flags, mode);
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(openat64)(dirfd, path, flags, mode);
    return fos_shim_open_slow(dirfd, path, flags, mode);
}

FOS_SHIM_EXPORT int creat(const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(creat)(path, mode);
    return fos_shim_open_slow(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

FOS_SHIM_EXPORT int creat64(const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(creat64)(path, mode);
    return fos_shim_open_slow(AT_FDCWD, path, O_CREAT | O_WRONLY | O_TRUNC, mode);
}

/* Fortified opens (_FORTIFY_SOURCE): no mode argument; with O_CREAT the
 * real one reports the bug and aborts, so it gets those calls. */
int __open_2(const char *path, int flags);
int __open64_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);
int __openat64_2(int dirfd, const char *path, int flags);

FOS_SHIM_EXPORT int __open_2(const char *path, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || FOS_SHIM_NEEDS_MODE(flags)) {
        return FOS_REAL(__open_2)(path, flags);
    }
    return fos_shim_open_slow(AT_FDCWD, path, flags, 0);
}

FOS_SHIM_EXPORT int __open64_2(const char *path, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || FOS_SHIM_NEEDS_MODE(flags)) {
        return FOS_REAL(__open64_2)(path, flags);
    }
    return fos_shim_open_slow(AT_FDCWD, path, flags, 0);
}

FOS_SHIM_EXPORT int __openat_2(int dirfd, const char *path, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path)) || FOS_SHIM_NEEDS_MODE(flags)) {
        return FOS_REAL(__openat_2)(dirfd, path, flags);
    }
    return fos_shim_open_slow(dirfd, path, flags, 0);
}

FOS_SHIM_EXPORT int __openat64_2(int dirfd, const char *path, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path)) || FOS_SHIM_NEEDS_MODE(flags)) {
        return FOS_REAL(__openat64_2)(dirfd, path, flags);
    }
    return fos_shim_open_slow(dirfd, path, flags, 0);
}

FOS_SHIM_EXPORT int close(int fd) {
    /* A pipe's end closing tells its reader (w_tell.c); a fos file's
     * close sends it in fos_shim_fs_late anyway. */
    FOS_SHIM_FLUSH_HELD();
    int late = 0;
    if (FOS_SHIM_UNLIKELY(fos_shim_fd_marked(fd))) {
        int saved = errno;
        fos_shim_ofd *o = fos_shim_fd(fd);
        /* Requests sent ahead (ahead.c) are not waited for, as Linux's
         * close does not wait for write-back: an error one of them met is
         * this close's if its answer is here, else the file's next
         * write's, fsync's or close's in this process. */
        if (o) late = fos_shim_fs_late(o->ino);
        if (o) fos_shim_lock_release(o);
        fos_shim_fd_forget(fd);
        errno = saved;
    }
    fos_shim_conn_owns(fd);
    int r = FOS_REAL(close)(fd);
    if (r == 0 && late != 0) {
        errno = late;
        return -1;
    }
    return r;
}
