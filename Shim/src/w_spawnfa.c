/*
 * posix_spawn file actions that open fos paths. glibc's spawned child runs
 * its file actions with internal calls that no wrapper sees, so a fos path
 * there would be looked up on the host (ENOENT). The shim makes such an
 * open at once, in the parent, as the program's own open would be made: its
 * placeholder (close-on-exec) becomes a dup2 action onto the wanted
 * number, and the placeholders are closed when the actions are destroyed.
 * An open that fails is remembered, and posix_spawn with those actions
 * reports its errno, as it reports an action that fails in the child. A
 * relative host path that a virtual cwd would resolve differently from the
 * child's kernel cwd is handed to libc made absolute.
 *
 * The open happens when the action is added, not when the child starts:
 * O_CREAT and O_TRUNC take effect earlier, which no caller can tell apart
 * from a child that started at once.
 *
 * A chdir action (addchdir_np, addfchdir_np) into a fos directory is
 * checked when added (a failure is reported by posix_spawn, as the child's
 * would be), and becomes a chdir to "/" plus the child's FOS_CWD: its shim
 * starts in that virtual cwd. A relative chdir after it continues from
 * there; a chdir to a host directory leaves the child no virtual cwd (not
 * the parent's). Opens added after a fos chdir are still made relative to
 * the parent's cwd.
 */
#include "shim.h"

#include <spawn.h>

/* Placeholders and failures per file-actions object: a small fixed table
 * (no allocation), guarded by a spin lock (held for a few loads). */
#define FOS_SHIM_FA_SLOTS 64
typedef struct {
    const posix_spawn_file_actions_t *fa; /* NULL: free */
    int fd;                               /* a placeholder to close, or -1 */
    int err;                              /* an open that failed, or 0 */
} fos_shim_fa_slot;
static fos_shim_fa_slot fos_shim_fa[FOS_SHIM_FA_SLOTS];
static int fos_shim_fa_lock;

static void fos_shim_fa_acquire(void) {
    while (__atomic_exchange_n(&fos_shim_fa_lock, 1, __ATOMIC_ACQUIRE)) {}
}
static void fos_shim_fa_release(void) { __atomic_store_n(&fos_shim_fa_lock, 0, __ATOMIC_RELEASE); }

/* In the child of fork: a thread of the parent that held the lock is not here. */
void fos_shim_fa_atfork_child(void) { __atomic_store_n(&fos_shim_fa_lock, 0, __ATOMIC_RELEASE); }

static int fos_shim_fa_note(const posix_spawn_file_actions_t *fa, int fd, int err) {
    int ok = 0;
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_SLOTS; i++) {
        if (fos_shim_fa[i].fa == NULL) {
            fos_shim_fa[i] = (fos_shim_fa_slot){fa, fd, err};
            ok = 1;
            break;
        }
    }
    fos_shim_fa_release();
    return ok ? 0 : ENOMEM;
}

/* Where chdir actions leave the child, per file-actions object. */
#define FOS_SHIM_FA_CWDS 8
typedef struct {
    const posix_spawn_file_actions_t *fa; /* NULL: free */
    int host;                             /* a host directory: no virtual cwd */
    char path[FOS_SHIM_PATH_BUF];         /* else the fos directory, host form */
} fos_shim_fa_cwd_slot;
static fos_shim_fa_cwd_slot fos_shim_fa_cwds[FOS_SHIM_FA_CWDS];

/* Records (or replaces) where fa's chdir actions end: path NULL for a host
 * directory. */
static int fos_shim_fa_cwd_note(const posix_spawn_file_actions_t *fa, const char *path) {
    int ok = 0;
    fos_shim_fa_acquire();
    fos_shim_fa_cwd_slot *free_slot = NULL, *mine = NULL;
    for (int i = 0; i < FOS_SHIM_FA_CWDS; i++) {
        if (fos_shim_fa_cwds[i].fa == fa) mine = &fos_shim_fa_cwds[i];
        if (fos_shim_fa_cwds[i].fa == NULL && free_slot == NULL) free_slot = &fos_shim_fa_cwds[i];
    }
    fos_shim_fa_cwd_slot *s = mine ? mine : free_slot;
    if (s) {
        s->fa = fa;
        s->host = path == NULL;
        snprintf(s->path, sizeof s->path, "%s", path ? path : "");
        ok = 1;
    }
    fos_shim_fa_release();
    return ok ? 0 : ENOMEM;
}

int fos_shim_fa_cwd(const posix_spawn_file_actions_t *fa, char out[FOS_SHIM_PATH_BUF]) {
    if (fa == NULL) return 0;
    int k = 0;
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_CWDS && k == 0; i++) {
        if (fos_shim_fa_cwds[i].fa != fa) continue;
        k = fos_shim_fa_cwds[i].host ? 2 : 1;
        memcpy(out, fos_shim_fa_cwds[i].path, sizeof fos_shim_fa_cwds[i].path);
    }
    fos_shim_fa_release();
    return k;
}

/* A chdir action into fs directory `fs`: checked now, recorded, and a chdir
 * to "/" for the kernel. */
static int fos_shim_fa_chdir_fos(posix_spawn_file_actions_t *fa, const char *fs) {
    fos_fs_stat st;
    int r = fos_shim_op_stat_path(fs, 1, &st);
    if (r == 0 && !S_ISDIR(st.mode)) r = -ENOTDIR;
    if (r == 0) r = fos_shim_permits(&st, X_OK, 1);
    if (r) return fos_shim_fa_note(fa, -1, -r);
    char host[FOS_SHIM_PATH_BUF];
    int n = fos_shim_host_path(fs, host, sizeof host);
    if (n < 0) return fos_shim_fa_note(fa, -1, -n);
    r = fos_shim_fa_cwd_note(fa, host);
    return r ? r : FOS_REAL(posix_spawn_file_actions_addchdir_np)(fa, "/");
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *fa, const char *path) {
    int saved = errno;
    char base[FOS_SHIM_PATH_BUF], joined[FOS_SHIM_PATH_BUF], fs[FOS_SHIM_PATH_BUF];
    const char *p = path;
    /* Relative to an earlier fos chdir of these actions. */
    if (path[0] != '/' && fos_shim_fa_cwd(fa, base) == 1) {
        int n = snprintf(joined, sizeof joined, "%s/%s", base, path);
        if (n < 0 || (size_t)n >= sizeof joined) {
            errno = saved;
            return fos_shim_fa_note(fa, -1, ENAMETOOLONG);
        }
        p = joined;
    }
    int k = fos_shim_maybe_fos(AT_FDCWD, p) ? fos_shim_classify(AT_FDCWD, p, fs) : FOS_SHIM_HOST;
    int r;
    if (k < 0) {
        r = fos_shim_fa_note(fa, -1, -k);
    } else if (k == FOS_SHIM_FOS) {
        r = fos_shim_fa_chdir_fos(fa, fs);
    } else {
        r = FOS_REAL(posix_spawn_file_actions_addchdir_np)(fa, k == FOS_SHIM_HOST ? p : fs);
        if (r == 0) r = fos_shim_fa_cwd_note(fa, NULL);
    }
    errno = saved;
    return r;
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_addfchdir_np(posix_spawn_file_actions_t *fa, int fd) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    int r;
    if (o == NULL) {
        r = FOS_REAL(posix_spawn_file_actions_addfchdir_np)(fa, fd);
        if (r == 0) r = fos_shim_fa_cwd_note(fa, NULL);
    } else {
        char fs[FOS_SHIM_PATH_BUF];
        int n = fos_shim_fd_path(fd, o, fs);
        r = n < 0 ? fos_shim_fa_note(fa, -1, -n) : fos_shim_fa_chdir_fos(fa, fs);
    }
    errno = saved;
    return r;
}

int fos_shim_fa_error(const posix_spawn_file_actions_t *fa) {
    if (fa == NULL) return 0;
    int err = 0;
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_SLOTS && err == 0; i++) {
        if (fos_shim_fa[i].fa == fa) err = fos_shim_fa[i].err;
    }
    fos_shim_fa_release();
    return err;
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_addopen(posix_spawn_file_actions_t *fa, int fd, const char *path,
                                                     int oflag, mode_t mode) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path)) || fd < 0) {
        return FOS_REAL(posix_spawn_file_actions_addopen)(fa, fd, path, oflag, mode);
    }
    int saved = errno;
    char buf[FOS_SHIM_PATH_BUF];
    int k = fos_shim_classify(AT_FDCWD, path, buf);
    int r;
    if (k == FOS_SHIM_HOST) {
        r = FOS_REAL(posix_spawn_file_actions_addopen)(fa, fd, path, oflag, mode);
    } else if (k == FOS_SHIM_REWRITTEN) {
        r = FOS_REAL(posix_spawn_file_actions_addopen)(fa, fd, buf, oflag, mode);
    } else {
        /* Through the program's own open (the wrapper), close-on-exec. */
        int ph = openat(AT_FDCWD, path, oflag | O_CLOEXEC, mode);
        if (ph < 0) {
            r = fos_shim_fa_note(fa, -1, k < 0 ? -k : errno);
        } else if ((r = FOS_REAL(posix_spawn_file_actions_adddup2)(fa, ph, fd)) != 0 ||
                   (r = fos_shim_fa_note(fa, ph, 0)) != 0) {
            close(ph);
        }
    }
    errno = saved;
    return r;
}

/* Forgets what a previous object at the same address left (one never destroyed). */
static void fos_shim_fa_forget(const posix_spawn_file_actions_t *fa, int *fds, int *n) {
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_SLOTS; i++) {
        if (fos_shim_fa[i].fa == fa) {
            if (fos_shim_fa[i].fd >= 0) fds[(*n)++] = fos_shim_fa[i].fd;
            fos_shim_fa[i].fa = NULL;
        }
    }
    for (int i = 0; i < FOS_SHIM_FA_CWDS; i++) {
        if (fos_shim_fa_cwds[i].fa == fa) fos_shim_fa_cwds[i].fa = NULL;
    }
    fos_shim_fa_release();
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_init(posix_spawn_file_actions_t *fa) {
    int saved = errno;
    int fds[FOS_SHIM_FA_SLOTS], n = 0;
    fos_shim_fa_forget(fa, fds, &n);
    for (int i = 0; i < n; i++) close(fds[i]);
    errno = saved;
    return FOS_REAL(posix_spawn_file_actions_init)(fa);
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa) {
    int saved = errno;
    int fds[FOS_SHIM_FA_SLOTS], n = 0;
    fos_shim_fa_forget(fa, fds, &n);
    for (int i = 0; i < n; i++) close(fds[i]);
    errno = saved;
    return FOS_REAL(posix_spawn_file_actions_destroy)(fa);
}
