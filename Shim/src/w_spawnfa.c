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

FOS_SHIM_EXPORT int posix_spawn_file_actions_destroy(posix_spawn_file_actions_t *fa) {
    int saved = errno;
    int fds[FOS_SHIM_FA_SLOTS], n = 0;
    fos_shim_fa_acquire();
    for (int i = 0; i < FOS_SHIM_FA_SLOTS; i++) {
        if (fos_shim_fa[i].fa == fa) {
            if (fos_shim_fa[i].fd >= 0) fds[n++] = fos_shim_fa[i].fd;
            fos_shim_fa[i].fa = NULL;
        }
    }
    fos_shim_fa_release();
    for (int i = 0; i < n; i++) close(fds[i]);
    errno = saved;
    return FOS_REAL(posix_spawn_file_actions_destroy)(fa);
}
