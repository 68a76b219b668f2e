/*
 * The vector forms of read and write (readv, writev, preadv, pwritev and
 * their 64 and 2 variants) on fos descriptors: one piece after another,
 * each split into messages as needed; a short piece ends the call, as a
 * short read of a regular file would. Not atomic as a whole against other
 * writers (each piece is), unlike Linux's writev on a local file system.
 */
#include "shim.h"

#include <limits.h>
#include <sys/uio.h>

/* at < 0: at the shared offset. */
static ssize_t fos_shim_vector(int fd, const fos_shim_ofd *o, const struct iovec *iov, int cnt, int wr, int64_t at) {
    if (cnt < 0 || cnt > IOV_MAX) return -EINVAL;
    size_t total = 0;
    for (int i = 0; i < cnt; i++) {
        if (iov[i].iov_len > SSIZE_MAX - total) return -EINVAL;
        total += iov[i].iov_len;
    }
    int r = fos_shim_access(o, wr);
    if (r) return r;
    ssize_t done = 0;
    for (int i = 0; i < cnt; i++) {
        if (iov[i].iov_len == 0) continue;
        int64_t pos = at < 0 ? -1 : at + done;
        int64_t n = wr ? fos_shim_pwrite_fos(fd, o, iov[i].iov_base, iov[i].iov_len, pos)
                       : fos_shim_pread_fos(fd, o, iov[i].iov_base, iov[i].iov_len, pos);
        if (n < 0) return done ? done : n;
        done += n;
        if ((size_t)n < iov[i].iov_len) break;
    }
    return done;
}

/* The slow path of every vector call; real is called for a host fd. */
static ssize_t fos_shim_vector_any(int fd, const struct iovec *iov, int cnt, int wr, int64_t at, int positional) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) {
        if (!positional) return wr ? FOS_REAL(writev)(fd, iov, cnt) : FOS_REAL(readv)(fd, iov, cnt);
        return wr ? FOS_REAL(pwritev64)(fd, iov, cnt, at) : FOS_REAL(preadv64)(fd, iov, cnt, at);
    }
    if (positional && at < 0) return fos_shim_ret(-EINVAL, saved);
    return fos_shim_ret(fos_shim_vector(fd, o, iov, cnt, wr, positional ? at : -1), saved);
}

FOS_SHIM_EXPORT ssize_t readv(int fd, const struct iovec *iov, int cnt) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) {
        FOS_SHIM_FLUSH_HELD_BEFORE_READ(fd); /* it may wait (w_tell.c) */
        return FOS_REAL(readv)(fd, iov, cnt);
    }
    return fos_shim_vector_any(fd, iov, cnt, 0, -1, 0);
}

FOS_SHIM_EXPORT ssize_t writev(int fd, const struct iovec *iov, int cnt) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) {
        FOS_SHIM_FLUSH_HELD(); /* it may tell another process (w_tell.c) */
        return FOS_REAL(writev)(fd, iov, cnt);
    }
    return fos_shim_vector_any(fd, iov, cnt, 1, -1, 0);
}

FOS_SHIM_EXPORT ssize_t preadv(int fd, const struct iovec *iov, int cnt, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(preadv)(fd, iov, cnt, at);
    return fos_shim_vector_any(fd, iov, cnt, 0, at, 1);
}

FOS_SHIM_EXPORT ssize_t preadv64(int fd, const struct iovec *iov, int cnt, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(preadv64)(fd, iov, cnt, at);
    return fos_shim_vector_any(fd, iov, cnt, 0, at, 1);
}

FOS_SHIM_EXPORT ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pwritev)(fd, iov, cnt, at);
    return fos_shim_vector_any(fd, iov, cnt, 1, at, 1);
}

FOS_SHIM_EXPORT ssize_t pwritev64(int fd, const struct iovec *iov, int cnt, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pwritev64)(fd, iov, cnt, at);
    return fos_shim_vector_any(fd, iov, cnt, 1, at, 1);
}

/* The 2 forms: offset -1 means the shared offset; of the RWF_ flags only
 * RWF_DSYNC and RWF_SYNC change anything here: a write with one is
 * flushed before it returns, as through O_DSYNC or O_SYNC. */
FOS_SHIM_EXPORT ssize_t preadv2(int fd, const struct iovec *iov, int cnt, off_t at, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(preadv2)(fd, iov, cnt, at, flags);
    return at == -1 ? fos_shim_vector_any(fd, iov, cnt, 0, -1, 0) : fos_shim_vector_any(fd, iov, cnt, 0, at, 1);
}

FOS_SHIM_EXPORT ssize_t pwritev2(int fd, const struct iovec *iov, int cnt, off_t at, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pwritev2)(fd, iov, cnt, at, flags);
    ssize_t r = at == -1 ? fos_shim_vector_any(fd, iov, cnt, 1, -1, 0) : fos_shim_vector_any(fd, iov, cnt, 1, at, 1);
    if (r <= 0 || !(flags & (RWF_DSYNC | RWF_SYNC))) return r;
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    int e = o ? fos_shim_op_fsync(o->ino, !(flags & RWF_SYNC)) : 0;
    return e ? fos_shim_ret(e, saved) : r;
}
