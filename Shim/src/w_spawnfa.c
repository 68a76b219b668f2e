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
 * starts in that virtual cwd. A chdir to a host directory leaves the child
 * no virtual cwd (not the parent's). Relative paths of later chdir and open
 * actions, and the program's, go from where the chdir actions leave the
 * child (a relative host chdir or fchdir leaves them to the child's
 * kernel). Records are found by the object's address: a copy of it has
 * none.
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

/* Where chdir actions leave the child, per file-actions object (found by
 * its address: a copy of the object has no record). Paths take room of
 * their own, fewer: a host directory whose path finds none is kept as one
 * known only to the child's kernel. */
#define FOS_SHIM_FA_CWDS 1024
#define FOS_SHIM_FA_PATHS 64
typedef struct {
    const posix_spawn_file_actions_t *fa; /* NULL: free */
    int kind;                             /* FOS_SHIM_FA_CWD_* */
    int path;                             /* index in fos_shim_fa_paths, or -1 */
} fos_shim_fa_cwd_slot;
static fos_shim_fa_cwd_slot fos_shim_fa_cwds[FOS_SHIM_FA_CWDS];
/* FOS: host form "/fos/..."; HOST: absolute. Owned by the slot naming it. */
static char fos_shim_fa_paths[FOS_SHIM_FA_PATHS][FOS_SHIM_PATH_BUF];
static const posix_spawn_file_actions_t *fos_shim_fa_path_owner[FOS_SHIM_FA_PATHS];

static void fos_shim_fa_cwd_free(fos_shim_fa_cwd_slot *s) {
    if (s->path >= 0) fos_shim_fa_path_owner[s->path] = NULL;
    s->path = -1;
    s->fa = NULL;
}

/* Records (or replaces) where fa's chdir actions end. A host directory
 * must be recorded only when the child would otherwise get a virtual cwd
 * (ours, or one an earlier action of fa recorded): else ENOMEM is no
 * failure. */
static int fos_shim_fa_cwd_note(const posix_spawn_file_actions_t *fa, int kind, const char *path) {
    int ok = 0, had = 0;
    fos_shim_fa_acquire();
    fos_shim_fa_cwd_slot *free_slot = NULL, *mine = NULL;
    for (int i = 0; i < FOS_SHIM_FA_CWDS && mine == NULL; i++) {
        if (fos_shim_fa_cwds[i].fa == fa) mine = &fos_shim_fa_cwds[i];
        if (fos_shim_fa_cwds[i].fa == NULL && free_slot == NULL) free_slot = &fos_shim_fa_cwds[i];
    }
    had = mine != NULL;
    fos_shim_fa_cwd_slot *s = mine ? mine : free_slot;
    if (s) {
        int slot_path = s->fa ? s->path : -1;
        if (!s->fa) s->path = -1;
        if (path == NULL && slot_path >= 0) {
            fos_shim_fa_path_owner[slot_path] = NULL;
            slot_path = -1;
        }
        if (path != NULL && slot_path < 0) {
            for (int i = 0; i < FOS_SHIM_FA_PATHS && slot_path < 0; i++) {
                if (fos_shim_fa_path_owner[i] == NULL) slot_path = i;
            }
        }
        if (path != NULL && slot_path < 0) {
            /* No room for the path: a fos directory cannot be kept; a host one is left to the kernel. */
            if (kind == FOS_SHIM_FA_CWD_FOS) s = NULL;
            else kind = FOS_SHIM_FA_CWD_HOST_UNKNOWN;
        }
        if (s) {
            s->fa = fa;
            s->kind = kind;
            s->path = path != NULL ? slot_path : -1;
            if (s->path >= 0) {
                fos_shim_fa_path_owner[s->path] = fa;
                snprintf(fos_shim_fa_paths[s->path], FOS_SHIM_PATH_BUF, "%s", path);
            }
            ok = 1;
        }
    }
    fos_shim_fa_release();
    if (ok || (kind != FOS_SHIM_FA_CWD_FOS && !had && !fos_shim_vcwd_on())) return 0;
    return ENOMEM;
}

int fos_shim_fa_cwd(const posix_spawn_file_actions_t *fa, char out[FOS_SHIM_PATH_BUF]) {
    if (fa == NULL) return FOS_SHIM_FA_CWD_NONE;
    int k = FOS_SHIM_FA_CWD_NONE;
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_CWDS && k == FOS_SHIM_FA_CWD_NONE; i++) {
        fos_shim_fa_cwd_slot *s = &fos_shim_fa_cwds[i];
        if (s->fa != fa) continue;
        k = s->kind;
        if (s->path >= 0) memcpy(out, fos_shim_fa_paths[s->path], FOS_SHIM_PATH_BUF);
        else out[0] = 0;
    }
    fos_shim_fa_release();
    return k;
}

int fos_shim_fa_path(const posix_spawn_file_actions_t *fa, const char *path, char out[FOS_SHIM_PATH_BUF]) {
    if (path[0] == '/') return 0;
    char base[FOS_SHIM_PATH_BUF];
    int k = fos_shim_fa_cwd(fa, base);
    if (k != FOS_SHIM_FA_CWD_FOS && k != FOS_SHIM_FA_CWD_HOST) return k == FOS_SHIM_FA_CWD_HOST_UNKNOWN ? 2 : 0;
    int n = snprintf(out, FOS_SHIM_PATH_BUF, "%s/%s", base, path);
    return n < 0 || n >= FOS_SHIM_PATH_BUF ? -ENAMETOOLONG : 1;
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
    r = fos_shim_fa_cwd_note(fa, FOS_SHIM_FA_CWD_FOS, host);
    return r ? r : FOS_REAL(posix_spawn_file_actions_addchdir_np)(fa, "/");
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_addchdir_np(posix_spawn_file_actions_t *fa, const char *path) {
    int saved = errno;
    char joined[FOS_SHIM_PATH_BUF], fs[FOS_SHIM_PATH_BUF];
    int j = fos_shim_fa_path(fa, path, joined);
    int r;
    if (j < 0) {
        r = fos_shim_fa_note(fa, -1, -j);
    } else if (j == 2) {
        /* Relative to a host directory we do not know by name: the child's kernel resolves it. */
        r = FOS_REAL(posix_spawn_file_actions_addchdir_np)(fa, path);
        if (r == 0) r = fos_shim_fa_cwd_note(fa, FOS_SHIM_FA_CWD_HOST_UNKNOWN, NULL);
    } else {
        const char *p = j == 1 ? joined : path;
        int k = fos_shim_maybe_fos(AT_FDCWD, p) ? fos_shim_classify(AT_FDCWD, p, fs) : FOS_SHIM_HOST;
        if (k < 0) {
            r = fos_shim_fa_note(fa, -1, -k);
        } else if (k == FOS_SHIM_FOS) {
            r = fos_shim_fa_chdir_fos(fa, fs);
        } else {
            const char *h = k == FOS_SHIM_HOST ? p : fs;
            r = FOS_REAL(posix_spawn_file_actions_addchdir_np)(fa, h);
            if (r == 0) r = fos_shim_fa_cwd_note(fa, h[0] == '/' ? FOS_SHIM_FA_CWD_HOST : FOS_SHIM_FA_CWD_HOST_UNKNOWN, h);
        }
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
        if (r == 0) r = fos_shim_fa_cwd_note(fa, FOS_SHIM_FA_CWD_HOST_UNKNOWN, NULL);
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
    /* A relative path after a chdir action: from where that leaves the child. */
    char joined[FOS_SHIM_PATH_BUF];
    if (FOS_SHIM_UNLIKELY(path[0] != '/')) {
        int j = fos_shim_fa_path(fa, path, joined);
        if (j < 0) return fos_shim_fa_note(fa, -1, -j);
        if (j == 2) return FOS_REAL(posix_spawn_file_actions_addopen)(fa, fd, path, oflag, mode);
        if (j == 1) path = joined;
    }
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
static void fos_shim_fa_forget(const posix_spawn_file_actions_t *fa) {
    int fds[FOS_SHIM_FA_SLOTS], n = 0;
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_SLOTS; i++) {
        if (fos_shim_fa[i].fa == fa) {
            if (fos_shim_fa[i].fd >= 0) fds[n++] = fos_shim_fa[i].fd;
            fos_shim_fa[i].fa = NULL;
        }
    }
    for (int i = 0; i < FOS_SHIM_FA_CWDS; i++) {
        if (fos_shim_fa_cwds[i].fa == fa) fos_shim_fa_cwd_free(&fos_shim_fa_cwds[i]);
    }
    fos_shim_fa_release();
    /* Its placeholders, closed outside the lock. */
    for (int i = 0; i < n; i++) close(fds[i]);
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_init(posix_spawn_file_actions_t *fa) {
    int saved = errno;
    fos_shim_fa_forget(fa);
    errno = saved;
    return FOS_REAL(posix_spawn_file_actions_init)(fa);
}

FOS_SHIM_EXPORT int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa) {
    int saved = errno;
    fos_shim_fa_forget(fa);
    errno = saved;
    return FOS_REAL(posix_spawn_file_actions_destroy)(fa);
}
