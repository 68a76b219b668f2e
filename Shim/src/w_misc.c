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
