/*
 * Calls that would otherwise reach a placeholder through the kernel and
 * act on the memfd instead of the fos file: ioctl, the in-kernel copies
 * (copy_file_range, sendfile) and space reservation (mmap: w_mmap.c). The
 * copies run as read and write through the shim; the rest fail the way a
 * file system without the feature would.
 */
#include "shim.h"

#include <stdarg.h>
#include <sys/sendfile.h>

#define FOS_SHIM_COPY_CHUNK 16384

FOS_SHIM_EXPORT int ioctl(int fd, unsigned long req, ...) {
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) return FOS_REAL(ioctl)(fd, req, arg);
    errno = ENOTTY; /* clones, FIONREAD and the like are the memfd's, not the file's */
    return -1;
}

/* A copy through the shim's own read and write. off pointers: read or
 * write there and advance them instead of the descriptor's offset. */
static ssize_t fos_shim_copy(int in, off_t *in_off, int out, off_t *out_off, size_t len) {
    char buf[FOS_SHIM_COPY_CHUNK];
    size_t done = 0;
    while (done < len) {
        size_t want = len - done < sizeof buf ? len - done : sizeof buf;
        ssize_t n = in_off ? pread(in, buf, want, *in_off) : read(in, buf, want);
        if (n <= 0) {
            if (n < 0 && done == 0) return -1;
            break;
        }
        ssize_t put = 0;
        while (put < n) {
            ssize_t w = out_off ? pwrite(out, buf + put, (size_t)(n - put), *out_off + put)
                                : write(out, buf + put, (size_t)(n - put));
            if (w <= 0) {
                if (done + (size_t)put == 0) return -1;
                break;
            }
            put += w;
        }
        if (in_off) *in_off += put;
        if (out_off) *out_off += put;
        done += (size_t)put;
        if (put < n || (size_t)n < want) break;
    }
    return (ssize_t)done;
}

FOS_SHIM_EXPORT ssize_t copy_file_range(int in, off_t *in_off, int out, off_t *out_off, size_t len, unsigned flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(in) && !fos_shim_fd_marked(out))) {
        return FOS_REAL(copy_file_range)(in, in_off, out, out_off, len, flags);
    }
    if (flags != 0) {
        errno = EINVAL;
        return -1;
    }
    return fos_shim_copy(in, in_off, out, out_off, len);
}

FOS_SHIM_EXPORT ssize_t sendfile(int out, int in, off_t *off, size_t count) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(in) && !fos_shim_fd_marked(out))) {
        return FOS_REAL(sendfile)(out, in, off, count);
    }
    return fos_shim_copy(in, off, out, NULL, count);
}

FOS_SHIM_EXPORT ssize_t sendfile64(int out, int in, off_t *off, size_t count) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(in) && !fos_shim_fd_marked(out))) {
        return FOS_REAL(sendfile64)(out, in, off, count);
    }
    return fos_shim_copy(in, off, out, NULL, count);
}

/* Advice changes nothing on a file whose cache lives in the fs fleet. */
FOS_SHIM_EXPORT int posix_fadvise(int fd, off_t off, off_t len, int advice) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) {
        return FOS_REAL(posix_fadvise)(fd, off, len, advice);
    }
    return off < 0 || len < 0 || advice < 0 || advice > 5 ? EINVAL : 0;
}

FOS_SHIM_EXPORT int posix_fadvise64(int fd, off_t off, off_t len, int advice) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) {
        return FOS_REAL(posix_fadvise64)(fd, off, len, advice);
    }
    return off < 0 || len < 0 || advice < 0 || advice > 5 ? EINVAL : 0;
}

int fos_shim_truncate_ino(uint64_t ino, off_t len);

/* posix_fallocate(3): glibc's makes the fallocate system call itself, which
 * the placeholder (a sealed memfd) refuses with EPERM. A fos file has no
 * space to reserve: the size grows to cover the range, as after glibc's own
 * fallback for file systems without fallocate (which writes zeros), and
 * within the file nothing changes. Returns an error number, as it must. */
static int fos_shim_posix_fallocate(int fd, off_t off, off_t len) {
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (off < 0 || len <= 0) return EINVAL;
    if (off > INT64_MAX - len) return EFBIG;
    if ((o->flags & O_PATH) || (o->flags & O_ACCMODE) == O_RDONLY) return EBADF;
    if (!S_ISREG(o->mode)) return ENODEV;
    fos_fs_stat st;
    int r = fos_shim_op_getattr(o->ino, &st);
    if (r != 0) return -r;
    if ((uint64_t)(off + len) <= st.size) return 0;
    r = fos_shim_truncate_ino(o->ino, off + len);
    return r < 0 ? -r : 0;
}

FOS_SHIM_EXPORT int posix_fallocate(int fd, off_t off, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) {
        return FOS_REAL(posix_fallocate)(fd, off, len);
    }
    int saved = errno, r = fos_shim_posix_fallocate(fd, off, len);
    errno = saved;
    return r;
}

FOS_SHIM_EXPORT int posix_fallocate64(int fd, off_t off, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) {
        return FOS_REAL(posix_fallocate64)(fd, off, len);
    }
    int saved = errno, r = fos_shim_posix_fallocate(fd, off, len);
    errno = saved;
    return r;
}

FOS_SHIM_EXPORT int fallocate(int fd, int mode, off_t off, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) {
        return FOS_REAL(fallocate)(fd, mode, off, len);
    }
    errno = EOPNOTSUPP;
    return -1;
}

FOS_SHIM_EXPORT int fallocate64(int fd, int mode, off_t off, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) {
        return FOS_REAL(fallocate64)(fd, mode, off, len);
    }
    errno = EOPNOTSUPP;
    return -1;
}
