/*
 * Data calls on descriptors: read, write and their positional and
 * fortified forms, lseek, fsync, ftruncate (the vector forms: w_vec.c). A fos descriptor's offset and
 * status flags live in its description (shared by dup, fork and exec); the
 * fs has no open-file state and checks access on every READ and WRITE, so
 * the access mode of the descriptor is enforced here, as the kernel would.
 */
#include "shim.h"

#include <limits.h>

/* Linux's cap on one read or write (MAX_RW_COUNT). */
#define FOS_SHIM_MAX_RW 0x7ffff000u

void __chk_fail(void) __attribute__((noreturn));

int fos_shim_access(const fos_shim_ofd *o, int want_write) {
    int acc = (int)(o->flags & O_ACCMODE);
    if (o->flags & O_PATH) return -EBADF;
    if (want_write) return acc == O_WRONLY || acc == O_RDWR ? 0 : -EBADF;
    if (acc != O_RDONLY && acc != O_RDWR) return -EBADF;
    return S_ISDIR(o->mode) ? -EISDIR : 0;
}

int64_t fos_shim_pread_fos(int fd, const fos_shim_ofd *o, void *buf, size_t n, int64_t at) {
    int r = fos_shim_access(o, 0);
    if (r) return r;
    if (n > FOS_SHIM_MAX_RW) n = FOS_SHIM_MAX_RW;
    int64_t off = at < 0 ? fos_shim_fd_offset(fd) : at;
    if (off < 0 || n == 0) return off < 0 ? off : 0;
    int64_t got = fos_shim_op_read(o->ino, (uint64_t)off, buf, n);
    if (got > 0 && at < 0) fos_shim_fd_seek(fd, (uint64_t)off + (uint64_t)got);
    return got;
}

int64_t fos_shim_pwrite_fos(int fd, const fos_shim_ofd *o, const void *buf, size_t n, int64_t at) {
    int r = fos_shim_access(o, 1);
    if (r) return r;
    if (n > FOS_SHIM_MAX_RW) n = FOS_SHIM_MAX_RW;
    /* O_APPEND appends even for pwrite, as Linux does. */
    uint32_t status = fos_shim_fd_status(fd, o);
    int append = (status & O_APPEND) != 0;
    int64_t off = at < 0 && !append ? fos_shim_fd_offset(fd) : at;
    if (off < 0 && !append) return off;
    if (n == 0) return 0;
    uint64_t where = (uint64_t)off;
    int64_t put = fos_shim_op_write(o->ino, (uint64_t)off, buf, n, append, &where);
    if (put > 0 && at < 0) fos_shim_fd_seek(fd, where + (uint64_t)put);
    /* O_SYNC, O_DSYNC: durable when write returns (the FSYNC also takes
     * the answer of a write sent ahead, and reports its error). */
    if (put > 0 && (status & O_DSYNC)) {
        int r = fos_shim_op_fsync(o->ino, (status & O_SYNC) != O_SYNC);
        if (r) return r;
    }
    return put;
}

FOS_SHIM_EXPORT ssize_t read(int fd, void *buf, size_t n) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) {
        FOS_SHIM_FLUSH_HELD_BEFORE_READ(fd); /* it may wait (w_tell.c) */
        return FOS_REAL(read)(fd, buf, n);
    }
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(read)(fd, buf, n);
    return fos_shim_ret(fos_shim_pread_fos(fd, o, buf, n, -1), saved);
}

FOS_SHIM_EXPORT ssize_t write(int fd, const void *buf, size_t n) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) {
        FOS_SHIM_FLUSH_HELD(); /* it may tell another process (w_tell.c) */
        return FOS_REAL(write)(fd, buf, n);
    }
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) {
        FOS_SHIM_FLUSH_HELD();
        return FOS_REAL(write)(fd, buf, n);
    }
    return fos_shim_ret(fos_shim_pwrite_fos(fd, o, buf, n, -1), saved);
}

static ssize_t fos_shim_pread_any(int fd, void *buf, size_t n, off_t at) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(pread64)(fd, buf, n, at);
    if (at < 0) return fos_shim_ret(-EINVAL, saved);
    return fos_shim_ret(fos_shim_pread_fos(fd, o, buf, n, at), saved);
}

static ssize_t fos_shim_pwrite_any(int fd, const void *buf, size_t n, off_t at) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(pwrite64)(fd, buf, n, at);
    if (at < 0) return fos_shim_ret(-EINVAL, saved);
    return fos_shim_ret(fos_shim_pwrite_fos(fd, o, buf, n, at), saved);
}

FOS_SHIM_EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pread)(fd, buf, n, at);
    return fos_shim_pread_any(fd, buf, n, at);
}

FOS_SHIM_EXPORT ssize_t pread64(int fd, void *buf, size_t n, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pread64)(fd, buf, n, at);
    return fos_shim_pread_any(fd, buf, n, at);
}

FOS_SHIM_EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pwrite)(fd, buf, n, at);
    return fos_shim_pwrite_any(fd, buf, n, at);
}

FOS_SHIM_EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off_t at) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(pwrite64)(fd, buf, n, at);
    return fos_shim_pwrite_any(fd, buf, n, at);
}

/* Fortified reads: the size check glibc would make, then the read. */
ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen);
ssize_t __pread_chk(int fd, void *buf, size_t n, off_t at, size_t buflen);
ssize_t __pread64_chk(int fd, void *buf, size_t n, off_t at, size_t buflen);

FOS_SHIM_EXPORT ssize_t __read_chk(int fd, void *buf, size_t n, size_t buflen) {
    if (n > buflen) __chk_fail();
    return read(fd, buf, n);
}

FOS_SHIM_EXPORT ssize_t __pread_chk(int fd, void *buf, size_t n, off_t at, size_t buflen) {
    if (n > buflen) __chk_fail();
    return pread(fd, buf, n, at);
}

FOS_SHIM_EXPORT ssize_t __pread64_chk(int fd, void *buf, size_t n, off_t at, size_t buflen) {
    if (n > buflen) __chk_fail();
    return pread64(fd, buf, n, at);
}

static off_t fos_shim_seek(int fd, const fos_shim_ofd *o, off_t off, int whence) {
    if (o->flags & O_PATH) return -EBADF;
    int dir = S_ISDIR(o->mode);
    int64_t base;
    uint64_t cookie;
    fos_fs_stat st;
    int r;
    switch (whence) {
    case SEEK_SET:
        base = 0;
        break;
    case SEEK_CUR:
        if (dir) {
            r = fos_shim_fd_cookie(fd, &cookie);
            base = (int64_t)cookie;
        } else {
            base = fos_shim_fd_offset(fd);
            r = base < 0 ? (int)base : 0;
        }
        if (r) return r;
        break;
    case SEEK_END:
    case SEEK_DATA:
    case SEEK_HOLE:
        if (dir) return -EINVAL;
        r = fos_shim_op_getattr(o->ino, &st);
        if (r) return r;
        if (whence == SEEK_END) {
            base = (int64_t)st.size;
            break;
        }
        /* No holes are reported: data everywhere up to the size. */
        if (off < 0 || (uint64_t)off >= st.size) return -ENXIO;
        base = 0;
        if (whence == SEEK_HOLE) off = (off_t)st.size;
        break;
    default:
        return -EINVAL;
    }
    if ((off > 0 && base > INT64_MAX - off) || base + off < 0) return -EINVAL;
    /* A directory's position is its readdir cookie (telldir, seekdir). */
    r = dir ? fos_shim_fd_set_cookie(fd, (uint64_t)(base + off)) : fos_shim_fd_seek(fd, (uint64_t)(base + off));
    return r ? r : base + off;
}

FOS_SHIM_EXPORT off_t lseek(int fd, off_t off, int whence) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(lseek)(fd, off, whence);
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(lseek)(fd, off, whence);
    return fos_shim_ret(fos_shim_seek(fd, o, off, whence), saved);
}

FOS_SHIM_EXPORT off_t lseek64(int fd, off_t off, int whence) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(lseek64)(fd, off, whence);
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(lseek64)(fd, off, whence);
    return fos_shim_ret(fos_shim_seek(fd, o, off, whence), saved);
}

static int fos_shim_sync(int fd, int datasync) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return datasync ? FOS_REAL(fdatasync)(fd) : FOS_REAL(fsync)(fd);
    if (o->flags & O_PATH) return (int)fos_shim_ret(-EBADF, saved);
    return (int)fos_shim_ret(fos_shim_op_fsync(o->ino, datasync), saved);
}

FOS_SHIM_EXPORT int fsync(int fd) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fsync)(fd);
    return fos_shim_sync(fd, 0);
}

FOS_SHIM_EXPORT int fdatasync(int fd) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fdatasync)(fd);
    return fos_shim_sync(fd, 1);
}

int fos_shim_truncate_ino(uint64_t ino, off_t len) {
    if (len < 0) return -EINVAL;
    fos_fs_setattr sa = {.ino = ino, .valid = FOS_FS_SET_SIZE, .size = (uint64_t)len};
    return fos_shim_op_setattr(&sa, NULL);
}

static int fos_shim_ftruncate_any(int fd, off_t len) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(ftruncate64)(fd, len);
    if (o->flags & O_PATH) return (int)fos_shim_ret(-EBADF, saved);
    if ((o->flags & O_ACCMODE) == O_RDONLY || S_ISDIR(o->mode)) return (int)fos_shim_ret(-EINVAL, saved);
    return (int)fos_shim_ret(fos_shim_truncate_ino(o->ino, len), saved);
}

FOS_SHIM_EXPORT int ftruncate(int fd, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(ftruncate)(fd, len);
    return fos_shim_ftruncate_any(fd, len);
}

FOS_SHIM_EXPORT int ftruncate64(int fd, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(ftruncate64)(fd, len);
    return fos_shim_ftruncate_any(fd, len);
}
