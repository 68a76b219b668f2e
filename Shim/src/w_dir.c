/*
 * Directory streams and getdents64 on fos directories. glibc's opendir and
 * readdir reach the kernel through hidden names, so the public ones are
 * wrapped: a fos directory gets a stream of the shim's own (fos_shim_dir),
 * told from glibc's by its first word (glibc's DIR starts with its
 * descriptor, never negative; ours with a magic whose top bit is set). The
 * position is the directory's readdir cookie, kept in the description so
 * that getdents64, lseek and the stream agree, as in the kernel.
 */
#include "shim.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#define FOS_SHIM_DIR_MAGIC 0xf05d1e00u
#define FOS_SHIM_DIR_BUF 32768

typedef struct fos_shim_dir {
    uint32_t magic;
    int fd;
    size_t pos, len;
    uint64_t tell;
    _Alignas(8) char buf[FOS_SHIM_DIR_BUF];
} fos_shim_dir;

static fos_shim_dir *fos_shim_dir_of(DIR *d) {
    fos_shim_dir *s = (fos_shim_dir *)d;
    return d && s->magic == FOS_SHIM_DIR_MAGIC ? s : NULL;
}

/* getdents64 on a fos directory: from the description's cookie on. */
static int64_t fos_shim_getdents_fos(int fd, const fos_shim_ofd *o, void *buf, size_t n) {
    if (!S_ISDIR(o->mode)) return -ENOTDIR;
    if (o->flags & O_PATH) return -EBADF;
    uint64_t cookie;
    int64_t r = fos_shim_fd_cookie(fd, &cookie);
    if (r == 0) r = fos_shim_op_getdents(o->ino, &cookie, buf, n);
    if (r > 0) fos_shim_fd_set_cookie(fd, cookie);
    return r;
}

ssize_t getdents64(int fd, void *buf, size_t n);

FOS_SHIM_EXPORT ssize_t getdents64(int fd, void *buf, size_t n) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(getdents64)(fd, buf, n);
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(getdents64)(fd, buf, n);
    return fos_shim_ret(fos_shim_getdents_fos(fd, o, buf, n), saved);
}

/* A stream over fos descriptor fd (which it then owns). */
static DIR *fos_shim_dir_new(int fd) {
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!S_ISDIR(o->mode)) {
        errno = ENOTDIR;
        return NULL;
    }
    fos_shim_dir *s = malloc(sizeof *s);
    if (s == NULL) return NULL;
    s->magic = FOS_SHIM_DIR_MAGIC;
    s->fd = fd;
    s->pos = s->len = 0;
    s->tell = 0;
    (void)fos_shim_fd_cookie(fd, &s->tell);
    return (DIR *)s;
}

FOS_SHIM_EXPORT DIR *opendir(const char *path) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(opendir)(path);
    char p[FOS_SHIM_PATH_BUF];
    int k = fos_shim_classify(AT_FDCWD, path, p);
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) return FOS_REAL(opendir)(k == FOS_SHIM_HOST ? path : p);
    if (k < 0) {
        errno = -k;
        return NULL;
    }
    int fd = openat(AT_FDCWD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return NULL;
    int saved = errno;
    DIR *d = fos_shim_dir_new(fd);
    if (d == NULL) {
        saved = errno;
        close(fd);
    }
    errno = saved;
    return d;
}

FOS_SHIM_EXPORT DIR *fdopendir(int fd) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) return FOS_REAL(fdopendir)(fd);
    fos_shim_ofd *o = fos_shim_fd(fd);
    int acc = (int)(o->flags & (O_ACCMODE | O_PATH));
    if (acc != O_RDONLY && acc != O_RDWR) {
        errno = EBADF;
        return NULL;
    }
    return fos_shim_dir_new(fd);
}

static struct dirent64 *fos_shim_readdir_fos(fos_shim_dir *s) {
    if (s->pos >= s->len) {
        fos_shim_ofd *o = fos_shim_fd(s->fd);
        if (o == NULL) {
            errno = EBADF;
            return NULL;
        }
        int saved = errno;
        int64_t n = fos_shim_getdents_fos(s->fd, o, s->buf, sizeof s->buf);
        if (n <= 0) {
            errno = n < 0 ? (int)-n : saved; /* end of directory: NULL, errno untouched */
            return NULL;
        }
        errno = saved;
        s->pos = 0;
        s->len = (size_t)n;
    }
    struct dirent64 *e = (struct dirent64 *)(s->buf + s->pos);
    s->pos += e->d_reclen;
    s->tell = (uint64_t)e->d_off;
    return e;
}

FOS_SHIM_EXPORT struct dirent *readdir(DIR *d) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) return FOS_REAL(readdir)(d);
    /* struct dirent and struct dirent64 are one layout on 64-bit Linux. */
    return (struct dirent *)fos_shim_readdir_fos(s);
}

FOS_SHIM_EXPORT struct dirent64 *readdir64(DIR *d) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) return FOS_REAL(readdir64)(d);
    return fos_shim_readdir_fos(s);
}

FOS_SHIM_EXPORT int closedir(DIR *d) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) return FOS_REAL(closedir)(d);
    int fd = s->fd;
    s->magic = 0;
    free(s);
    return close(fd);
}

FOS_SHIM_EXPORT int dirfd(DIR *d) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) return FOS_REAL(dirfd)(d);
    return s->fd;
}

static void fos_shim_dir_seek(fos_shim_dir *s, uint64_t cookie) {
    if (fos_shim_fd(s->fd)) fos_shim_fd_set_cookie(s->fd, cookie);
    s->pos = s->len = 0;
    s->tell = cookie;
}

FOS_SHIM_EXPORT void rewinddir(DIR *d) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) {
        FOS_REAL(rewinddir)(d);
        return;
    }
    fos_shim_dir_seek(s, 0);
}

FOS_SHIM_EXPORT void seekdir(DIR *d, long loc) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) {
        FOS_REAL(seekdir)(d, loc);
        return;
    }
    fos_shim_dir_seek(s, (uint64_t)loc);
}

FOS_SHIM_EXPORT long telldir(DIR *d) {
    fos_shim_dir *s = fos_shim_dir_of(d);
    if (FOS_SHIM_LIKELY(!s)) return FOS_REAL(telldir)(d);
    return (long)s->tell;
}
