/*
 * Advisory locks on fos files, kept by the fs fleet (FOS_OP_FS_LOCK): POSIX
 * record locks (owned by the process: owner = pid), OFD locks and flock
 * (owned by the open file description: owner = the placeholder's inode
 * number, which every copy of the description shares).
 *
 * The fs drops a channel's locks when the channel closes, so a process's
 * locks go when it exits, as on Linux; POSIX locks also go, as Linux
 * wants, when the process closes any descriptor of the file. A reconnect
 * (after a change of credentials) loses the locks held on the old channel.
 */
#include "shim.h"

#include <sys/file.h>

static int fos_shim_posix_locks; /* this process took a POSIX lock on a fos file */

/* The files this process may hold POSIX locks on, so that a close of
 * another file sends no release (sqlite closes its journal once per
 * transaction while it holds locks on the database). A file goes in after
 * its lock is granted and out before its release is sent: a lock granted
 * to another thread meanwhile keeps its file in, or was released. When the
 * table is full, every close sends a release, as without it. */
#define FOS_SHIM_LOCKED_SLOTS 16
static uint64_t fos_shim_locked[FOS_SHIM_LOCKED_SLOTS];
static int fos_shim_locked_full;

static void fos_shim_locked_add(uint64_t ino) {
    for (int i = 0; i < FOS_SHIM_LOCKED_SLOTS; i++) {
        if (__atomic_load_n(&fos_shim_locked[i], __ATOMIC_ACQUIRE) == ino) return;
    }
    for (int i = 0; i < FOS_SHIM_LOCKED_SLOTS; i++) {
        uint64_t none = 0;
        if (__atomic_compare_exchange_n(&fos_shim_locked[i], &none, ino, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) return;
    }
    __atomic_store_n(&fos_shim_locked_full, 1, __ATOMIC_RELEASE);
}

/* Takes ino out; says whether the process may hold locks on it. */
static int fos_shim_locked_take(uint64_t ino) {
    int found = __atomic_load_n(&fos_shim_locked_full, __ATOMIC_ACQUIRE);
    for (int i = 0; i < FOS_SHIM_LOCKED_SLOTS; i++) {
        uint64_t want = ino;
        if (__atomic_compare_exchange_n(&fos_shim_locked[i], &want, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) found = 1;
    }
    return found;
}

static int fos_shim_lock_wait(fos_fs_lock *l, fos_fs_lock_reply *rep) {
    for (;;) {
        int r = fos_shim_op_lock(l, rep);
        /* The fs waits at most FOS_FS_LOCK_MAX_WAIT_MS; asking again is harmless. */
        if (r != -ETIMEDOUT || l->command != FOS_FS_LOCK_SETWAIT) return r;
    }
}

int fos_shim_fcntl_lock(int fd, const fos_shim_ofd *o, int cmd, struct flock *fl) {
    if (fl == NULL) return -EFAULT;
    int ofd = cmd == F_OFD_GETLK || cmd == F_OFD_SETLK || cmd == F_OFD_SETLKW;
    fos_fs_lock l = {.ino = o->ino, .len = fl->l_len};
    switch (fl->l_type) {
    case F_RDLCK: l.type = FOS_FS_LOCK_READ; break;
    case F_WRLCK: l.type = FOS_FS_LOCK_WRITE; break;
    case F_UNLCK: l.type = FOS_FS_LOCK_UNLOCK; break;
    default: return -EINVAL;
    }
    if (ofd && fl->l_pid != 0) return -EINVAL;
    int acc = (int)(o->flags & O_ACCMODE);
    if (o->flags & O_PATH) return -EBADF;
    int getlk = cmd == F_GETLK || cmd == F_OFD_GETLK;
    if (!getlk && l.type == FOS_FS_LOCK_READ && acc != O_RDONLY && acc != O_RDWR) return -EBADF;
    if (!getlk && l.type == FOS_FS_LOCK_WRITE && acc != O_WRONLY && acc != O_RDWR) return -EBADF;
    if (getlk && l.type == FOS_FS_LOCK_UNLOCK) return -EINVAL;
    int64_t base = 0;
    fos_fs_stat st;
    switch (fl->l_whence) {
    case SEEK_SET: break;
    case SEEK_CUR:
        base = fos_shim_fd_offset(fd);
        if (base < 0) return (int)base;
        break;
    case SEEK_END: {
        int r = fos_shim_op_getattr(o->ino, &st);
        if (r) return r;
        base = (int64_t)st.size;
        break;
    }
    default: return -EINVAL;
    }
    if (fl->l_start > 0 && base > INT64_MAX - fl->l_start) return -EOVERFLOW;
    l.start = base + fl->l_start;
    l.kind = ofd ? FOS_FS_LOCK_OFD : FOS_FS_LOCK_POSIX;
    l.owner = ofd ? o->memfd_ino : (uint64_t)getpid();
    l.pid = ofd ? 0 : getpid();
    l.command = getlk ? FOS_FS_LOCK_GET : (cmd == F_SETLKW || cmd == F_OFD_SETLKW) ? FOS_FS_LOCK_SETWAIT : FOS_FS_LOCK_SET;
    if (l.command == FOS_FS_LOCK_SETWAIT) l.wait_ms = FOS_FS_LOCK_MAX_WAIT_MS;
    fos_fs_lock_reply rep;
    int r = fos_shim_lock_wait(&l, &rep);
    if (r) return r;
    if (getlk) {
        if (rep.type == FOS_FS_LOCK_UNLOCK) {
            fl->l_type = F_UNLCK;
        } else {
            fl->l_type = rep.type == FOS_FS_LOCK_READ ? F_RDLCK : F_WRLCK;
            fl->l_whence = SEEK_SET;
            fl->l_start = rep.start;
            fl->l_len = rep.len;
            fl->l_pid = rep.pid;
        }
    } else if (!ofd && l.type != FOS_FS_LOCK_UNLOCK) {
        if (!fos_shim_in_vfork_child()) fos_shim_locked_add(o->ino);
        __atomic_store_n(&fos_shim_posix_locks, 1, __ATOMIC_RELEASE);
    }
    return 0;
}

/* On close: Linux drops the process's POSIX locks on the file. */
void fos_shim_lock_release(const fos_shim_ofd *o) {
    if (!__atomic_load_n(&fos_shim_posix_locks, __ATOMIC_ACQUIRE)) return;
    /* A vfork child shares the table with its parent, not the locks: it
     * releases its own (none) and leaves the parent's entries alone. */
    if (!fos_shim_in_vfork_child() && !fos_shim_locked_take(o->ino)) return;
    fos_fs_lock l = {.ino = o->ino, .owner = (uint64_t)getpid(), .pid = getpid(), .type = FOS_FS_LOCK_UNLOCK,
                     .kind = FOS_FS_LOCK_POSIX, .command = FOS_FS_LOCK_SET};
    fos_fs_lock_reply rep;
    (void)fos_shim_op_lock(&l, &rep);
}

FOS_SHIM_EXPORT int flock(int fd, int op) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(flock)(fd, op);
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(flock)(fd, op);
    fos_fs_lock l = {.ino = o->ino, .owner = o->memfd_ino, .kind = FOS_FS_LOCK_FLOCK};
    switch (op & ~LOCK_NB) {
    case LOCK_SH: l.type = FOS_FS_LOCK_READ; break;
    case LOCK_EX: l.type = FOS_FS_LOCK_WRITE; break;
    case LOCK_UN: l.type = FOS_FS_LOCK_UNLOCK; break;
    default: return (int)fos_shim_ret(-EINVAL, saved);
    }
    int wait = !(op & LOCK_NB) && l.type != FOS_FS_LOCK_UNLOCK;
    l.command = wait ? FOS_FS_LOCK_SETWAIT : FOS_FS_LOCK_SET;
    if (wait) l.wait_ms = FOS_FS_LOCK_MAX_WAIT_MS;
    fos_fs_lock_reply rep;
    int r = fos_shim_lock_wait(&l, &rep);
    return (int)fos_shim_ret(r == -EAGAIN ? -EWOULDBLOCK : r, saved);
}

/* lockf reaches fcntl through glibc's hidden alias: the public name is
 * wrapped instead, with lockf's meaning (from the current offset). */
static int fos_shim_lockf_fos(int fd, const fos_shim_ofd *o, int cmd, off_t len) {
    struct flock fl = {.l_whence = SEEK_CUR, .l_start = 0, .l_len = len};
    switch (cmd) {
    case F_TEST: {
        fl.l_type = F_RDLCK;
        int r = fos_shim_fcntl_lock(fd, o, F_GETLK, &fl);
        if (r) return r;
        return fl.l_type == F_UNLCK || fl.l_pid == getpid() ? 0 : -EACCES;
    }
    case F_ULOCK:
        fl.l_type = F_UNLCK;
        return fos_shim_fcntl_lock(fd, o, F_SETLK, &fl);
    case F_LOCK:
    case F_TLOCK:
        fl.l_type = F_WRLCK;
        return fos_shim_fcntl_lock(fd, o, cmd == F_LOCK ? F_SETLKW : F_SETLK, &fl);
    default:
        return -EINVAL;
    }
}

FOS_SHIM_EXPORT int lockf(int fd, int cmd, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(lockf)(fd, cmd, len);
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(lockf)(fd, cmd, len);
    return (int)fos_shim_ret(fos_shim_lockf_fos(fd, o, cmd, len), saved);
}

FOS_SHIM_EXPORT int lockf64(int fd, int cmd, off_t len) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(lockf64)(fd, cmd, len);
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (!o) return FOS_REAL(lockf64)(fd, cmd, len);
    return (int)fos_shim_ret(fos_shim_lockf_fos(fd, o, cmd, len), saved);
}
