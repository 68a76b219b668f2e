/*
 * Changes to the name space (mkdir, rmdir, unlink, rename, truncate by
 * path) and the cwd (chdir, fchdir, getcwd). A rename between the fos tree
 * and the host is EXDEV, as between two file systems (mv then copies).
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>

int fos_shim_truncate_ino(uint64_t ino, off_t len);
void __chk_fail(void) __attribute__((noreturn));

/* What the last component of a path is: 0 a name, 1 ".", 2 "..". The
 * kernel refuses to remove or rename those whatever they resolve to. */
static int fos_shim_last_dot(const char *path) {
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] == '/') n--;
    size_t s = n;
    while (s > 0 && path[s - 1] != '/') s--;
    if (n - s == 1 && path[s] == '.') return 1;
    if (n - s == 2 && path[s] == '.' && path[s + 1] == '.') return 2;
    return 0;
}

static int fos_shim_mkdir_slow(int dirfd, const char *path, mode_t mode) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(dirfd, path, p);
    if (k == FOS_SHIM_HOST) return FOS_REAL(mkdirat)(dirfd, path, mode);
    if (k == FOS_SHIM_REWRITTEN) return FOS_REAL(mkdirat)(AT_FDCWD, p, mode);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    if (fos_shim_last_dot(path)) return (int)fos_shim_ret(-EEXIST, saved);
    return (int)fos_shim_ret(fos_shim_op_mkdir(p, (uint32_t)(mode & ~fos_shim_umask() & 07777)), saved);
}

FOS_SHIM_EXPORT int mkdir(const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(mkdir)(path, mode);
    return fos_shim_mkdir_slow(AT_FDCWD, path, mode);
}

FOS_SHIM_EXPORT int mkdirat(int dirfd, const char *path, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(mkdirat)(dirfd, path, mode);
    return fos_shim_mkdir_slow(dirfd, path, mode);
}

static int fos_shim_remove_slow(int dirfd, const char *path, int flags) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(dirfd, path, p);
    if (k == FOS_SHIM_HOST) return FOS_REAL(unlinkat)(dirfd, path, flags);
    if (k == FOS_SHIM_REWRITTEN) return FOS_REAL(unlinkat)(AT_FDCWD, p, flags);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    if (flags & ~AT_REMOVEDIR) return (int)fos_shim_ret(-EINVAL, saved);
    int dir = (flags & AT_REMOVEDIR) != 0;
    int dot = fos_shim_last_dot(path);
    if (dot) return (int)fos_shim_ret(!dir ? -EISDIR : dot == 1 ? -EINVAL : -ENOTEMPTY, saved);
    return (int)fos_shim_ret(fos_shim_op_remove(p, dir), saved);
}

FOS_SHIM_EXPORT int rmdir(const char *path) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(rmdir)(path);
    return fos_shim_remove_slow(AT_FDCWD, path, AT_REMOVEDIR);
}

FOS_SHIM_EXPORT int unlink(const char *path) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(unlink)(path);
    return fos_shim_remove_slow(AT_FDCWD, path, 0);
}

FOS_SHIM_EXPORT int unlinkat(int dirfd, const char *path, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(dirfd, path))) return FOS_REAL(unlinkat)(dirfd, path, flags);
    return fos_shim_remove_slow(dirfd, path, flags);
}

static int fos_shim_rename_slow(int odir, const char *from, int ndir, const char *to, unsigned flags) {
    char a[FOS_SHIM_PATH_BUF], b[FOS_SHIM_PATH_BUF];
    int saved = errno;
    const char *f = from, *t = to;
    int k = fos_shim_classify2(&odir, &f, a, &ndir, &t, b);
    if (k == 0) return FOS_REAL(renameat2)(odir, f, ndir, t, flags);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    if (flags & ~(unsigned)(RENAME_NOREPLACE | RENAME_EXCHANGE)) return (int)fos_shim_ret(-EINVAL, saved);
    if (fos_shim_last_dot(from) || fos_shim_last_dot(to)) return (int)fos_shim_ret(-EBUSY, saved);
    return (int)fos_shim_ret(fos_shim_op_rename(a, b, flags), saved);
}

FOS_SHIM_EXPORT int rename(const char *from, const char *to) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, from) && !fos_shim_maybe_fos(AT_FDCWD, to))) {
        return FOS_REAL(rename)(from, to);
    }
    return fos_shim_rename_slow(AT_FDCWD, from, AT_FDCWD, to, 0);
}

FOS_SHIM_EXPORT int renameat(int odir, const char *from, int ndir, const char *to) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(odir, from) && !fos_shim_maybe_fos(ndir, to))) {
        return FOS_REAL(renameat)(odir, from, ndir, to);
    }
    return fos_shim_rename_slow(odir, from, ndir, to, 0);
}

FOS_SHIM_EXPORT int renameat2(int odir, const char *from, int ndir, const char *to, unsigned flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(odir, from) && !fos_shim_maybe_fos(ndir, to))) {
        return FOS_REAL(renameat2)(odir, from, ndir, to, flags);
    }
    return fos_shim_rename_slow(odir, from, ndir, to, flags);
}

static int fos_shim_truncate_slow(const char *path, off_t len) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_classify(AT_FDCWD, path, p);
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) return FOS_REAL(truncate64)(k == FOS_SHIM_HOST ? path : p, len);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    fos_fs_stat st;
    int r = fos_shim_op_stat_path(p, 1, &st);
    if (r == 0 && S_ISDIR(st.mode)) r = -EISDIR;
    if (r == 0) r = fos_shim_truncate_ino(st.ino, len);
    return (int)fos_shim_ret(r, saved);
}

FOS_SHIM_EXPORT int truncate(const char *path, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(truncate)(path, len);
    return fos_shim_truncate_slow(path, len);
}

FOS_SHIM_EXPORT int truncate64(const char *path, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(truncate64)(path, len);
    return fos_shim_truncate_slow(path, len);
}

/* Into a fos directory: it must be one, and searchable. */
static int fos_shim_enter(const char *fspath, const fos_fs_stat *st) {
    if (!S_ISDIR(st->mode)) return -ENOTDIR;
    int r = fos_shim_permits(st, X_OK, 1);
    if (r == 0) fos_shim_vcwd_change(fspath);
    return r;
}

FOS_SHIM_EXPORT int chdir(const char *path) {
    char p[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int k = fos_shim_maybe_fos(AT_FDCWD, path) ? fos_shim_classify(AT_FDCWD, path, p) : FOS_SHIM_HOST;
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) {
        int r = FOS_REAL(chdir)(k == FOS_SHIM_HOST ? path : p);
        if (r == 0) {
            if (fos_shim_vcwd_on()) fos_shim_vcwd_change(NULL);
            fos_shim_rcwd_refresh();
            errno = saved;
        }
        return r;
    }
    if (k < 0) return (int)fos_shim_ret(k, saved);
    fos_fs_stat st;
    int r = fos_shim_op_stat_path(p, 1, &st);
    if (r == 0) r = fos_shim_enter(p, &st);
    return (int)fos_shim_ret(r, saved);
}

FOS_SHIM_EXPORT int fchdir(int fd) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) {
        int r = FOS_REAL(fchdir)(fd);
        if (r == 0) {
            if (fos_shim_vcwd_on()) fos_shim_vcwd_change(NULL);
            fos_shim_rcwd_refresh();
            errno = saved;
        }
        return r;
    }
    fos_fs_stat st;
    char fs[FOS_SHIM_PATH_BUF];
    int r = fos_shim_fd_path(fd, o, fs);
    if (r >= 0) r = fos_shim_op_getattr(o->ino, &st);
    if (r == 0) r = fos_shim_enter(fs, &st);
    return (int)fos_shim_ret(r, saved);
}

FOS_SHIM_EXPORT char *getcwd(char *buf, size_t size) {
    char v[FOS_SHIM_PATH_BUF];
    int saved = errno;
    int n = fos_shim_vcwd_get(v);
    if (n == 0) return FOS_REAL(getcwd)(buf, size);
    if (buf == NULL) {
        /* glibc's extension: a buffer of the size asked for, or just enough. */
        size_t want = size ? size : (size_t)n + 1;
        if (want < (size_t)n + 1) {
            errno = ERANGE;
            return NULL;
        }
        buf = malloc(want);
        if (buf == NULL) return NULL;
    } else if (size == 0) {
        errno = EINVAL;
        return NULL;
    } else if (size < (size_t)n + 1) {
        errno = ERANGE;
        return NULL;
    }
    memcpy(buf, v, (size_t)n + 1);
    errno = saved;
    return buf;
}

char *__getcwd_chk(char *buf, size_t size, size_t buflen);

FOS_SHIM_EXPORT char *__getcwd_chk(char *buf, size_t size, size_t buflen) {
    if (size > buflen) __chk_fail();
    return getcwd(buf, size);
}

FOS_SHIM_EXPORT char *get_current_dir_name(void) {
    char v[FOS_SHIM_PATH_BUF];
    if (fos_shim_vcwd_get(v) == 0) return FOS_REAL(get_current_dir_name)();
    return strdup(v);
}

char *getwd(char *buf);

FOS_SHIM_EXPORT char *getwd(char *buf) {
    char v[FOS_SHIM_PATH_BUF];
    if (fos_shim_vcwd_get(v) == 0) return FOS_REAL(getwd)(buf);
    memcpy(buf, v, strlen(v) + 1);
    return buf;
}
