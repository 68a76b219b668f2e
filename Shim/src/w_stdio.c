/*
 * stdio on fos files. glibc's FILE reaches the kernel through hidden
 * names (__read, __write, __lseek64), which would act on the placeholder,
 * so fopen and fdopen of a fos file return a fopencookie stream whose
 * functions call the shim's read, write and lseek on the fos descriptor.
 * fileno of such a stream (which glibc answers with -1) gives that
 * descriptor, from a small table of the process's fos streams.
 *
 * The standard streams follow their descriptors: when 0, 1 or 2 is a fos
 * file (a shell's redirection, inherited across exec, or a dup2 onto it),
 * stdin, stdout or stderr is pointed at a cookie stream over it, and back
 * at the original FILE when the descriptor is a host file again. (Making
 * that stream allocates, in the constructor too: only when a standard
 * descriptor is a fos file.)
 *
 * Not yet: freopen onto a fos file (the FILE must stay the same object,
 * stdin for one, and it cannot become a cookie stream).
 */
#include "shim.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FOS_SHIM_FILES 1024

typedef struct fos_shim_file {
    int fd;
    FILE *f;
} fos_shim_file;

static struct {
    FILE *f;
    int fd;
} fos_shim_files[FOS_SHIM_FILES];
static int fos_shim_nfiles;
static pthread_mutex_t fos_shim_files_mu = PTHREAD_MUTEX_INITIALIZER;

static void fos_shim_files_put(FILE *f, int fd) {
    pthread_mutex_lock(&fos_shim_files_mu);
    for (int i = 0; i < FOS_SHIM_FILES; i++) {
        if (fos_shim_files[i].f == NULL) {
            fos_shim_files[i].f = f;
            fos_shim_files[i].fd = fd;
            __atomic_add_fetch(&fos_shim_nfiles, 1, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&fos_shim_files_mu);
}

static void fos_shim_files_drop(FILE *f) {
    pthread_mutex_lock(&fos_shim_files_mu);
    for (int i = 0; i < FOS_SHIM_FILES; i++) {
        if (fos_shim_files[i].f == f) {
            fos_shim_files[i].f = NULL;
            __atomic_sub_fetch(&fos_shim_nfiles, 1, __ATOMIC_RELEASE);
            break;
        }
    }
    pthread_mutex_unlock(&fos_shim_files_mu);
}

void fos_shim_files_atfork_child(void) { pthread_mutex_init(&fos_shim_files_mu, NULL); }

static ssize_t fos_shim_cookie_read(void *c, char *buf, size_t n) { return read(((fos_shim_file *)c)->fd, buf, n); }

static ssize_t fos_shim_cookie_write(void *c, const char *buf, size_t n) {
    ssize_t r = write(((fos_shim_file *)c)->fd, buf, n);
    return r < 0 ? 0 : r; /* a cookie write reports failure as 0 bytes */
}

static int fos_shim_cookie_seek(void *c, off64_t *pos, int whence) {
    off_t r = lseek(((fos_shim_file *)c)->fd, *pos, whence);
    if (r < 0) return -1;
    *pos = r;
    return 0;
}

static int fos_shim_cookie_close(void *c) {
    int fd = ((fos_shim_file *)c)->fd;
    fos_shim_files_drop(((fos_shim_file *)c)->f);
    free(c);
    return close(fd);
}

/* A stream over fos descriptor fd, which it owns from now on. */
static FILE *fos_shim_stream(int fd, const char *mode) {
    fos_shim_file *c = malloc(sizeof *c);
    if (c == NULL) return NULL;
    c->fd = fd;
    cookie_io_functions_t io = {fos_shim_cookie_read, fos_shim_cookie_write, fos_shim_cookie_seek,
                                fos_shim_cookie_close};
    FILE *f = fopencookie(c, mode, io);
    if (f == NULL) {
        free(c);
        return NULL;
    }
    c->f = f;
    fos_shim_files_put(f, fd);
    return f;
}

/* fopen's mode string as open(2) flags; -1 if it is not one. */
static int fos_shim_mode_flags(const char *mode) {
    int flags;
    switch (mode[0]) {
    case 'r': flags = O_RDONLY; break;
    case 'w': flags = O_WRONLY | O_CREAT | O_TRUNC; break;
    case 'a': flags = O_WRONLY | O_CREAT | O_APPEND; break;
    default: return -1;
    }
    for (const char *m = mode + 1; *m && *m != ','; m++) {
        if (*m == '+') flags = (flags & ~O_ACCMODE) | O_RDWR;
        else if (*m == 'x') flags |= O_EXCL;
        else if (*m == 'e') flags |= O_CLOEXEC;
    }
    return flags;
}

static FILE *fos_shim_fopen_slow(const char *path, const char *mode, FILE *(*real)(const char *, const char *)) {
    char p[FOS_SHIM_PATH_BUF];
    int k = fos_shim_classify(AT_FDCWD, path, p);
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) return real(k == FOS_SHIM_HOST ? path : p, mode);
    if (k < 0) {
        errno = -k;
        return NULL;
    }
    int flags = fos_shim_mode_flags(mode);
    if (flags < 0) {
        errno = EINVAL;
        return NULL;
    }
    int fd = open(path, flags, 0666);
    if (fd < 0) return NULL;
    int saved = errno;
    FILE *f = fos_shim_stream(fd, mode);
    if (f == NULL) {
        saved = errno;
        close(fd);
    }
    errno = saved;
    return f;
}

FOS_SHIM_EXPORT FILE *fopen(const char *path, const char *mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(fopen)(path, mode);
    return fos_shim_fopen_slow(path, mode, FOS_REAL(fopen));
}

FOS_SHIM_EXPORT FILE *fopen64(const char *path, const char *mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(fopen64)(path, mode);
    return fos_shim_fopen_slow(path, mode, FOS_REAL(fopen64));
}

FOS_SHIM_EXPORT FILE *fdopen(int fd, const char *mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd)) || fos_shim_fd(fd) == NULL) return FOS_REAL(fdopen)(fd, mode);
    if (fos_shim_mode_flags(mode) < 0) {
        errno = EINVAL;
        return NULL;
    }
    return fos_shim_stream(fd, mode);
}

static int fos_shim_file_fd(FILE *f) {
    if (FOS_SHIM_LIKELY(__atomic_load_n(&fos_shim_nfiles, __ATOMIC_ACQUIRE) == 0)) return -1;
    int fd = -1;
    pthread_mutex_lock(&fos_shim_files_mu);
    for (int i = 0; i < FOS_SHIM_FILES; i++) {
        if (fos_shim_files[i].f == f) {
            fd = fos_shim_files[i].fd;
            break;
        }
    }
    pthread_mutex_unlock(&fos_shim_files_mu);
    return fd;
}

FOS_SHIM_EXPORT int fileno(FILE *f) {
    int fd = fos_shim_file_fd(f);
    return fd >= 0 ? fd : FOS_REAL(fileno)(f);
}

FOS_SHIM_EXPORT int fileno_unlocked(FILE *f) {
    int fd = fos_shim_file_fd(f);
    return fd >= 0 ? fd : FOS_REAL(fileno_unlocked)(f);
}

static FILE *fos_shim_std_orig[3];
static FILE *fos_shim_std_cookie[3];

void fos_shim_std_rebind(int fd) {
    if (fd < 0 || fd > 2) return;
    int saved = errno;
    FILE **slot = fd == 0 ? &stdin : fd == 1 ? &stdout : &stderr;
    int fos = fos_shim_fd_marked(fd) && fos_shim_fd(fd);
    FILE *mine = fos_shim_std_cookie[fd];
    if (fos && (mine == NULL || *slot != mine)) {
        FILE *c = fos_shim_stream(fd, fd == 0 ? "r" : "w");
        if (c != NULL) {
            if (fd == 2) setvbuf(c, NULL, _IONBF, 0);
            if (fos_shim_std_orig[fd] == NULL) fos_shim_std_orig[fd] = *slot;
            fflush(*slot);
            fos_shim_std_cookie[fd] = c;
            *slot = c;
        }
    } else if (!fos && mine != NULL && *slot == mine) {
        /* The descriptor is a host file again: the stream left behind is
         * flushed and forgotten, never closed (that would close fd). */
        fflush(mine);
        fos_shim_files_drop(mine);
        *slot = fos_shim_std_orig[fd];
        fos_shim_std_cookie[fd] = NULL;
    }
    errno = saved;
}
