/*
 * Internal interface of the fos shim (libfosshim.so), shared by its files.
 *
 * Everything here is hidden (-fvisibility=hidden); only the libc wrappers
 * are exported, with FOS_SHIM_EXPORT. The shim runs inside unmodified
 * programs, possibly before main, in signal handlers and in children of
 * fork: no malloc on those paths (static buffers and mmap), errno saved on
 * entry and set only to the real result.
 */
#ifndef FOS_SHIM_H
#define FOS_SHIM_H

#undef _FORTIFY_SOURCE
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <spawn.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include "fos_ring.h"
#include "fos_wire.h"
#include "fos_elf.h"

#define FOS_SHIM_EXPORT __attribute__((visibility("default")))
#define FOS_SHIM_TLS __thread __attribute__((tls_model("initial-exec")))
#define FOS_SHIM_LIKELY(x) __builtin_expect(!!(x), 1)
#define FOS_SHIM_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* A host path or an fs path, with its NUL. */
#define FOS_SHIM_PATH_BUF 4096

/* The device number every fos file reports (st_dev): fixed, so that tools
 * comparing devices (cp, du -x, find -xdev) see one file system. */
#define FOS_SHIM_DEV_MAJOR 0u
#define FOS_SHIM_DEV_MINOR 0xf05f5u

/* ------------------------------------------------------------------ */
/* init.c: configuration read once by the constructor                  */
/* ------------------------------------------------------------------ */

typedef struct fos_shim_config {
    char prefix[256];          /* "/fos": absolute, normalised, no trailing '/' */
    size_t prefix_len;
    char runtime[FOS_SHIM_PATH_BUF]; /* the node's runtime directory */
    uint64_t spin_ns;          /* how long a waiting call spins before it yields */
    uint64_t yield_ns;         /* how long it then yields the core before it sleeps */
    uint64_t hold_ns;          /* how long after its create a file's requests may be held (ahead.c) */
    int leave_core;            /* a thread may move off its server's core (chan.c); FOS_LEAVE_CORE=0: never */
} fos_shim_config;

extern fos_shim_config fos_shim_cfg;

/* umask of the process, kept by the umask wrapper: the fs applies none. */
mode_t fos_shim_umask(void);

/* ------------------------------------------------------------------ */
/* real.c: the next definition of each wrapped symbol                  */
/* ------------------------------------------------------------------ */

/* The real function `name` (dlsym RTLD_NEXT, or dlvsym for `version`,
 * resolved once). While this thread is already resolving (dlsym re-entered
 * us), or if libc lacks it, a stub that fails with ENOSYS (returning -1,
 * or MAP_FAILED as a pointer). */
void *fos_shim_real(void **slot, const char *name, const char *version);
#define FOS_REAL_V(fn, version)                                                       \
    ({                                                                                \
        static void *fos_shim_slot_;                                                  \
        void *p_ = __atomic_load_n(&fos_shim_slot_, __ATOMIC_ACQUIRE);                \
        if (FOS_SHIM_UNLIKELY(!p_)) p_ = fos_shim_real(&fos_shim_slot_, #fn, version); \
        (__typeof__(&fn))p_;                                                          \
    })
#define FOS_REAL(fn) FOS_REAL_V(fn, NULL)

/* The versions of the symbols glibc exports twice (SHIM-CHECKLIST.md) that
 * today's programs link against; dlvsym falls back to dlsym elsewhere. */
#define FOS_SHIM_V_REALPATH "GLIBC_2.3"
#define FOS_SHIM_V_POSIX_SPAWN "GLIBC_2.15"

/* ------------------------------------------------------------------ */
/* path.c: which paths are fos paths                                   */
/* ------------------------------------------------------------------ */

enum {
    FOS_SHIM_HOST = 0,    /* not fos: hand the caller's path to libc unchanged */
    FOS_SHIM_REWRITTEN,   /* a host path, rewritten absolute into out (left the fos tree by "..",
                             or relative to a virtual cwd) */
    FOS_SHIM_FOS,         /* a fos path: out holds the fs path ("/" = the fs root) */
};

extern int fos_shim_vcwd_set;  /* a virtual cwd inside the fos tree is in effect */
extern int fos_shim_rcwd_near; /* the kernel's cwd is an ancestor of the prefix ("/" for "/fos") */
/* A child of vfork that changed directory keeps its cwds here (path.c). */
typedef struct fos_shim_child_cwds fos_shim_child_cwds;
extern FOS_SHIM_TLS fos_shim_child_cwds *fos_shim_ccwd;
/* Those two flags as they are for this process (a vfork child's own). */
int fos_shim_vcwd_on(void);
int fos_shim_rcwd_is_near(void);

/* Cheap test, no syscall: could (dirfd, path) be a fos path? */
static inline int fos_shim_maybe_fos(int dirfd, const char *path);

/* Classifies (dirfd, path) and builds out. Returns FOS_SHIM_* or -errno. */
int fos_shim_classify(int dirfd, const char *path, char out[FOS_SHIM_PATH_BUF]);
/* Both paths of a rename or a link: 1 both fos (a and b hold the fs
 * paths), 0 both host (the four in/out arguments then name them for
 * libc), -EXDEV one of each, or another -errno. */
int fos_shim_classify2(int *odir, const char **from, char *a, int *ndir, const char **to, char *b);
/* Splits an fs path, in place, into its parent and its last name (both
 * then point into fspath, or parent to "/"). Returns 1 for the fs root,
 * which has no parent, else 0. */
int fos_shim_split(char *fspath, const char **parent, const char **name);
/* The virtual cwd (host form, "/fos/..."), or 0 if none: copied into out. */
int fos_shim_vcwd_get(char out[FOS_SHIM_PATH_BUF]);
/* Sets (fspath != NULL, an fs path) or clears the virtual cwd. */
void fos_shim_vcwd_change(const char *fspath);
/* Reads the kernel's cwd again (after a chdir to a host directory). */
void fos_shim_rcwd_refresh(void);
/* Writes prefix + fspath into out ("/fos" for "/"); -ENAMETOOLONG. */
int fos_shim_host_path(const char *fspath, char *out, size_t cap);

/* ------------------------------------------------------------------ */
/* fdtable.c: fos descriptors are real kernel descriptors              */
/* ------------------------------------------------------------------ */

/* What a fos descriptor's placeholder says about its file, copied into the
 * process's table (fdtable.c has the whole design). */
typedef struct fos_shim_ofd {
    uint64_t ino;
    uint64_t memfd_ino;    /* st_ino of the placeholder; 0: no entry */
    uint32_t flags;        /* access mode and O_PATH, fixed at open */
    uint32_t mode;         /* S_IFMT and permissions at open */
} fos_shim_ofd;

/* The placeholder's file position is this plus the fos file's offset. */
#define FOS_SHIM_POS_BASE (1ull << 20)

/* The description of fd if it is a live fos descriptor, else NULL. The
 * first call that sees an entry checks it against the kernel (a close that
 * bypassed the shim leaves a stale one). */
fos_shim_ofd *fos_shim_fd(int fd);
/* No syscall: does the table hold an entry for fd (maybe stale)? */
static inline int fos_shim_fd_marked(int fd);
/* A new placeholder for an opened fs inode. Returns the fd or -errno. */
int fos_shim_fd_create(const fos_fs_stat *st, int oflags, const char *fspath);
/* A placeholder for a regular file expected to be inode `ino` with `mode`,
 * made while the OPEN that creates it is in flight, close-on-exec and not
 * in the table (*o: its entry): the fd or -errno. */
int fos_shim_fd_spare(uint64_t ino, uint32_t mode, int oflags, fos_shim_ofd *o);
/* Enters spare fd (entry o) for an open with oflags once the OPEN said it
 * is that inode: the fd or -errno (the spare closed). */
int fos_shim_fd_adopt(int fd, const fos_shim_ofd *o, int oflags);
/* After the kernel duplicated live fos descriptor `from` into `to`. */
int fos_shim_fd_dup(int from, int to);
/* The shared offset (or -errno), and setting it. */
int64_t fos_shim_fd_offset(int fd);
int fos_shim_fd_seek(int fd, uint64_t off);
/* Status flags as F_GETFL shows them; F_SETFL. */
uint32_t fos_shim_fd_status(int fd, const fos_shim_ofd *o);
int fos_shim_fd_set_status(int fd, uint32_t flags);
/* A directory's readdir cookie, shared like the offset. */
int fos_shim_fd_cookie(int fd, uint64_t *cookie);
int fos_shim_fd_set_cookie(int fd, uint64_t cookie);
/* A directory's fs path into out: its length or -errno (-ENOTDIR for a file). */
int fos_shim_fd_path(int fd, const fos_shim_ofd *o, char out[FOS_SHIM_PATH_BUF]);
/* Forget fd (before the real close). */
void fos_shim_fd_forget(int fd);
/* Rebuild the table from inherited placeholders (after exec). */
void fos_shim_fd_rediscover(void);
/* Would an exec now pass a fos descriptor on (one without close-on-exec)? */
int fos_shim_fd_inherited(void);
/* A child is being made that may get our open fos files (fork, spawn, exec
 * in a child of vfork: async-signal-safe). */
void fos_shim_fd_note_child(void);
/* What an UNLINK says about this process's own open files:
 * FOS_FS_UNLINK_HOLDS_NONE, FOS_FS_UNLINK_HOLDS_LISTED (the inodes into
 * list, their number into count), FOS_FS_UNLINK_SHARED_NONE, or 0. */
uint32_t fos_shim_fd_unlink_flags(uint64_t list[FOS_FS_UNLINK_LIST_MAX], uint32_t *count);
/* Opens of this process between their OPEN request and their descriptor. */
extern int fos_shim_opens_pending;

/* ------------------------------------------------------------------ */
/* conn.c and chan.c: the connection to the node and its channels      */
/* ------------------------------------------------------------------ */

typedef struct fos_shim_conn fos_shim_conn;

typedef struct fos_shim_chan {
    uint8_t *base;
    size_t size;
    int memfd, wait_fd, wake_fd;
    uint64_t id;
    int closed;            /* fosd said the other side closed */
    int peer_core;         /* the core the server is pinned to, -1 if unknown */
    fos_shim_conn *conn;   /* whose control socket says when the peer is gone */
    uint32_t reply_flags;  /* fos_msg_hdr flags of the last reply taken */
    fos_ring tx, rx;
} fos_shim_chan;

/* Maps a channel fosd handed us (fds: memfd, server eventfd, client
 * eventfd); takes the descriptors. 0 or a positive errno. */
int fos_shim_chan_map(fos_shim_chan *c, const fos_ctl_channel *info, int fds[3]);
void fos_shim_chan_unmap(fos_shim_chan *c);
/* One request and its reply on c. The request is msg[0..mlen) then
 * bulk; msg starts with room for the fos_msg_hdr, which this fills in. The
 * reply's payload lands in out (at most outcap bytes: a longer one is EIO).
 * Returns 0 and the reply status in *status, or a transport errno (EPIPE:
 * the server side is gone). */
int fos_shim_chan_call(fos_shim_chan *c, uint16_t op, uint64_t id, uint8_t *msg, uint32_t mlen,
                       const void *bulk, uint32_t blen, void *out, uint32_t outcap, uint32_t *outlen,
                       int32_t *status);
/* The two halves of a call: the request (with header flags), and waiting
 * for the reply to (op, id). */
int fos_shim_chan_post(fos_shim_chan *c, uint16_t op, uint64_t id, uint32_t flags, uint8_t *msg, uint32_t mlen,
                       const void *bulk, uint32_t blen);
/* Whether this thread runs on c's server's core. */
int fos_shim_chan_on_peer_core(const fos_shim_chan *c);
int fos_shim_chan_wait(fos_shim_chan *c, uint16_t op, uint64_t id, void *out, uint32_t outcap, uint32_t *outlen,
                       int32_t *status);

/* ------------------------------------------------------------------ */
/* ahead.c: WRITEs and SETATTRs that do not wait for their answer        */
/* (FOS_MSG_AHEAD)                                                      */
/* ------------------------------------------------------------------ */

typedef struct fos_shim_ahead_w {
    uint64_t id, ino, off;
    uint32_t len, at; /* at: where a WRITE's data, a SETATTR's request is kept */
    uint16_t op;
    uint16_t held; /* a SETATTR or WRITE not sent yet (the last one only: ahead.c) */
} fos_shim_ahead_w;

typedef struct fos_shim_ahead_q {
    fos_shim_ahead_w w[FOS_FS_AHEAD_MAX];
    unsigned n;       /* sent, oldest first */
    unsigned done;    /* of which answered (in order) */
    uint32_t used;    /* bytes of kept */
    uint8_t *kept;    /* their data (FOS_FS_AHEAD_BYTES), mapped at the first */
    int ok;           /* the member's last reply said AHEAD_OK */
    int orphaned;     /* the channel they went on is gone: replay them */
    struct {
        uint64_t ino; /* 0: free */
        int err;
    } late[8];        /* errors of answered ones, for the file's next write, fsync or close */
    uint64_t dead[8]; /* inode numbers whose create under a lease failed (ring) */
    unsigned ndead;
    struct {
        uint64_t ino, at_ns;
    } fresh[8];       /* the last files created under a lease, and when (ring): ahead.c */
    unsigned nfresh;
} fos_shim_ahead_q;

/* Sends a WRITE (fixed: its fos_fs_io, data), a SETATTR (fixed: its
 * fos_fs_setattr) or a CREATE under a lease (fixed: its fos_fs_create,
 * data: the name) ahead on fs as request id if it may go so: 0, or -1
 * (send it as an ordinary request; nothing was sent). Never from a child
 * of vfork (its connection is gone at its exec): the caller checks. */
int fos_shim_ahead_post(fos_shim_ahead_q *q, fos_shim_chan *fs, uint64_t id, uint16_t op, const void *fixed,
                        const void *data);
/* Sends the request held back (ahead.c), if any: 0, or the channel's
 * errno (it then stays for fos_shim_ahead_replay). */
int fos_shim_ahead_flush(fos_shim_ahead_q *q, fos_shim_chan *fs);
/* Set while a request is held back: the calls that may tell another
 * process something (write to a pipe, kill, fork ...) send it first
 * (fos_shim_fs_flush). */
extern int fos_shim_ahead_held;
/* The request held back: the last one, not answered (none: NULL). */
static inline fos_shim_ahead_w *fos_shim_ahead_held_w(fos_shim_ahead_q *q) {
    return q->n > q->done && q->w[q->n - 1].held ? &q->w[q->n - 1] : NULL;
}
/* Takes the answers of requests sent ahead: all of them (wait: the one
 * held back is sent first), or those already there. 0, or the channel's
 * errno (EPIPE: the member is gone); those without an answer stay for
 * fos_shim_ahead_replay. */
int fos_shim_ahead_collect(fos_shim_ahead_q *q, fos_shim_chan *fs, int wait);
/* Sends the unanswered ones again, in order, as ordinary requests on a
 * new channel (a member that died before answering may or may not have
 * served them: a WRITE at an offset or a SETATTR may be served twice).
 * 0 or errno. */
int fos_shim_ahead_replay(fos_shim_ahead_q *q, fos_shim_chan *fs, uint64_t *msg_id);
/* The unanswered ones could not be sent again (no node, no fs member):
 * each one's file is told EIO. */
void fos_shim_ahead_lost(fos_shim_ahead_q *q);
/* Forgets everything (the child of fork: they are the parent's). */
void fos_shim_ahead_forget(fos_shim_ahead_q *q);
/* Whether a request naming ino first (fixed's first uint64) must not go:
 * ino's create under a lease failed, and the number may be another's. */
int fos_shim_ahead_dead(const fos_shim_ahead_q *q, uint16_t op, const void *fixed, uint32_t flen);
/* An error to report at the next write, fsync or close of ino; taking it. */
void fos_shim_ahead_late(fos_shim_ahead_q *q, uint64_t ino, int err);
int fos_shim_ahead_take_late(fos_shim_ahead_q *q, uint64_t ino);

/* ------------------------------------------------------------------ */
/* lease.c: directory leases (fos_wire.h): creates that do not wait      */
/* ------------------------------------------------------------------ */

#define FOS_SHIM_LEASES 8
#define FOS_SHIM_LEASE_PATH 256
#define FOS_SHIM_LEASE_NAMES 64

typedef struct fos_shim_lease {
    uint64_t dir; /* 0: a free slot */
    uint64_t expires_ns;
    uint64_t inos[FOS_FS_LEASE_MAX_INOS];
    uint32_t ninos, next;
    uint32_t names[FOS_SHIM_LEASE_NAMES]; /* hashes of the names this process may have made in it */
    uint32_t nnames;
    uint32_t plen;
    char path[FOS_SHIM_LEASE_PATH];
} fos_shim_lease;

typedef struct fos_shim_lease_tab {
    fos_shim_lease l[FOS_SHIM_LEASES];
    int any; /* one was granted since the last clear (read without the lock) */
} fos_shim_lease_tab;

static inline int fos_shim_lease_any(const fos_shim_lease_tab *t) { return __atomic_load_n(&t->any, __ATOMIC_RELAXED); }

/* A reply to a MKDIR that asked for a lease (fos_shim_op_mkdir): the
 * directory's path, while the call runs. */
extern FOS_SHIM_TLS const char *fos_shim_lease_mkdir_path;

void fos_shim_lease_clear(fos_shim_lease_tab *t);
/* A MKDIR's reply (stat, maybe a fos_fs_lease and its inode numbers);
 * sent: when the MKDIR went (fos_shim_now_ns), whence the lease counts. */
void fos_shim_lease_granted(fos_shim_lease_tab *t, const char *path, const void *reply, uint32_t len,
                            uint64_t sent);
/* Whether the process's connection (not a vfork child's) carries the
 * credentials of the host's root, which alone the fs takes for root: set
 * when it connects, as fosd reads them from the socket. */
extern int fos_shim_conn_root;
/* An inode number no file has (invalid: the fs says ESTALE), for the
 * descriptors of a file whose create under a lease failed. */
#define FOS_SHIM_DEAD_INO (UINT64_MAX - 1)
/* Every descriptor of ino now names no file (fos_shim_fd_poison). */
void fos_shim_fd_poison(uint64_t ino);
/* Before a request goes: what it may change in leased directories (a
 * name made: remembered; a rename, rmdir or, for all but root, a change of
 * mode or owner: every lease dropped). */
void fos_shim_lease_before(fos_shim_lease_tab *t, uint16_t op, const void *fixed, uint32_t flen, const void *tail,
                           uint32_t tlen);
/* The lease on fspath's parent under which its last name can be created
 * without waiting, now: NULL if none (the name is one this process may
 * have made there, or not a plain one, or no inode number is left). */
fos_shim_lease *fos_shim_lease_for(fos_shim_lease_tab *t, const char *fspath, const char **name, uint32_t *nlen,
                                   uint64_t now);
/* The lease on the directory fspath itself, if it lasts: while it does,
 * the path names that directory (no one else may rename or remove it). */
const fos_shim_lease *fos_shim_lease_at(fos_shim_lease_tab *t, const char *fspath, uint64_t now);
/* The name was sent under it with its next inode number. */
void fos_shim_lease_used(fos_shim_lease *l, const char *name, uint32_t nlen);
/* CLOCK_MONOTONIC in ns (chan.c). */
uint64_t fos_shim_now_ns(void);
/* How long before a lease expires it is no longer used (fos_wire.h: what
 * goes after the expiry waits for its answer; this keeps that rare). */
#define FOS_SHIM_LEASE_MARGIN_NS 100000u

/* 0 and *st (the new file's inode number and mode, all a placeholder
 * needs): fspath was created under a lease, without waiting; 1: no lease applies (ask the usual way);
 * a negative errno. sent: the open flags the fs gets; perm: the mode. */
int fos_shim_fs_create_leased(const char *fspath, uint32_t sent, uint32_t perm, fos_fs_stat *st);
/* 1 and *ino: fspath is a directory this process holds a lease on (no
 * RESOLVE needed); 0: ask. */
int fos_shim_fs_leased_dir(const char *fspath, uint64_t *ino);

/* Control socket (ctl.c). Notifications read on the way go to conn. */
int fos_shim_ctl_open(const char *runtime);
int fos_shim_ctl_request(fos_shim_conn *conn, int fd, uint16_t op, uint64_t id, const void *payload, uint32_t len,
                         void *reply, uint32_t cap, uint32_t *rlen, int *fds, int maxfds, int *nfds);
void fos_shim_ctl_notify_close(int fd, uint64_t channel);
/* Reads what fosd sent meanwhile. -1: fosd closed the connection. */
int fos_shim_ctl_drain(fos_shim_conn *conn, int fd);
void fos_shim_conn_notified(fos_shim_conn *c, uint16_t op, const void *payload, uint32_t len);

/* Called while a channel waits: reads fosd's notifications, and reports
 * whether c has been closed or the node is gone. */
int fos_shim_conn_peer_gone(fos_shim_chan *c);
/* The control socket of c's connection, -1 if none. */
int fos_shim_conn_ctl_fd(const fos_shim_chan *c);

/*
 * One fs request: [fixed][tail] in a message, then [bulk] (the write data).
 * Connects lazily (and again after fork or a change of credentials),
 * serialises callers, and retries once on another member if the member
 * died. Returns 0 or a positive errno: the fs's answer, EHOSTDOWN (no node
 * or no fs fleet), EIO (a reply that breaks the protocol), EINTR (entered
 * from a signal handler while this thread was inside a call).
 */
/* meanwhile (if not NULL) runs with arg once the request is sent, while
 * the member serves it. */
int fos_shim_fs_call(uint16_t op, const void *fixed, uint32_t flen, const void *tail, uint32_t tlen,
                     const void *bulk, uint32_t blen, void *out, uint32_t outcap, uint32_t *outlen,
                     void (*meanwhile)(void *), void *arg);
/* Waits for the answers of this process's writes sent ahead (sending
 * them again to a new member if theirs died); the error one of them met
 * for ino (ino 0: none is taken), else 0. Returns at once when there is
 * nothing to wait for or to tell. */
int fos_shim_fs_settle(uint64_t ino);
/* Sends the request held back (ahead.c), if any, without waiting: before
 * anything that may tell another process what this one did. A no-op in
 * a vfork child or a signal handler that interrupted a call. */
void fos_shim_fs_flush(void);
/* Before a read of fd (w_tell.c): if it may wait. */
void fos_shim_flush_before_read(int fd);
/* Resolves the wrapped waits a signal handler may make (w_tell.c). */
void fos_shim_tell_init(void);
#define FOS_SHIM_FLUSH_HELD()                                                          \
    do {                                                                               \
        if (FOS_SHIM_UNLIKELY(__atomic_load_n(&fos_shim_ahead_held, __ATOMIC_RELAXED))) \
            fos_shim_fs_flush();                                                       \
    } while (0)
#define FOS_SHIM_FLUSH_HELD_BEFORE_READ(fd)                                            \
    do {                                                                               \
        if (FOS_SHIM_UNLIKELY(__atomic_load_n(&fos_shim_ahead_held, __ATOMIC_RELAXED))) \
            fos_shim_flush_before_read(fd);                                            \
    } while (0)
/* The error a request sent ahead met for ino, of those answered by now
 * (taking it), else 0: close does not wait for the others. */
int fos_shim_fs_late(uint64_t ino);
/* One request to the spawn service (/sys/spawn), never retried (a SPAWN
 * may have started its program). Errors as fos_shim_fs_call. */
int fos_shim_spawn_call(uint16_t op, const void *payload, uint32_t len, void *out, uint32_t outcap, uint32_t *outlen);

/* Takes the descriptor a fleet member deposited with fosd for this process
 * under `tag` (FOS_CTL_FETCH, FOS_KEY_BYTES bytes) into *fd. 0 or a
 * positive errno (ENOENT: no such deposit for us, EHOSTDOWN: no node). */
int fos_shim_fetch(const uint8_t *tag, int *fd);
/* The node this process's connection reached (0 before the first). */
extern uint64_t fos_shim_node;

/* The credentials changed (setuid and friends): reconnect before the next call. */
void fos_shim_creds_changed(void);
/* The program is about to close or overwrite fd: if it is one of the
 * connection's, the next call reconnects. No syscall unless it is ours. */
int fos_shim_conn_owns(int fd);
/* In a child of vfork, about to exec: unmap the child's own connection
 * (its descriptors close with the exec). Nothing elsewhere. */
void fos_shim_conn_child_release(void);

/* The process the shim's state belongs to: set at start and by fork. A
 * child of vfork (or of clone or _Fork) has another pid but shares, or
 * copied, that state without a fork handler running. */
extern pid_t fos_shim_proc_pid;
/* Set by the first vfork, clone or _Fork (w_fork.c): before it, no such
 * child exists, and the check costs no system call. */
extern int fos_shim_raw_children;
static inline int fos_shim_in_vfork_child(void) {
    if (FOS_SHIM_LIKELY(!__atomic_load_n(&fos_shim_raw_children, __ATOMIC_RELAXED))) return 0;
    return (pid_t)syscall(SYS_getpid) != __atomic_load_n(&fos_shim_proc_pid, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------------ */
/* fsops.c: typed fs requests. Each returns 0 or a negative errno.      */
/* ------------------------------------------------------------------ */

int fos_shim_op_open(const char *fspath, uint32_t flags, uint32_t mode, fos_fs_stat *st);
/* The same, running meanwhile(arg) while the member serves it. */
int fos_shim_op_open_meanwhile(const char *fspath, uint32_t flags, uint32_t mode, fos_fs_stat *st,
                               void (*meanwhile)(void *), void *arg);
int fos_shim_op_resolve(const char *fspath, int follow, uint64_t *ino);
/* The same; *leased: the answer came from this process's lease on the
 * directory (lease.c), which stays there meanwhile. */
int fos_shim_op_resolve_leased(const char *fspath, int follow, uint64_t *ino, int *leased);
int fos_shim_op_getattr(uint64_t ino, fos_fs_stat *st);
/* stat(2)/lstat(2) of an fs path: one message for anything but a final symlink. */
int fos_shim_op_stat_path(const char *fspath, int follow, fos_fs_stat *st);
int fos_shim_op_setattr(const fos_fs_setattr *sa, fos_fs_stat *st);
/* The same of a file this process has open, the answer unread: it may
 * go ahead (ahead.c). */
int fos_shim_op_setattr_open(const fos_fs_setattr *sa);
int64_t fos_shim_op_read(uint64_t ino, uint64_t off, void *buf, size_t n);
/* Writes n bytes at off (or at the end with append); *where = where the
 * first byte went. Returns bytes written or -errno. */
int64_t fos_shim_op_write(uint64_t ino, uint64_t off, const void *buf, size_t n, int append, uint64_t *where);
int fos_shim_op_fsync(uint64_t ino, int datasync);
/* The memfd every shared mapping of `ino` on this machine shares (MAP, then
 * FETCH): *fd read-write with `writable`, and the file's size. 0 or -errno. */
int fos_shim_op_map(uint64_t ino, int writable, int *fd, uint64_t *size);
/* What shared mappings of `ino` wrote, to the file; `durable`: and flushed.
 * `memfd_ino`: the memfd's inode as mapped (EIO if the member has another). */
int fos_shim_op_msync(uint64_t ino, uint64_t memfd_ino, int durable);
/* These take the caller's fs path buffers and split them in place. */
int fos_shim_op_mkdir(char *fspath, uint32_t mode);
int fos_shim_op_remove(char *fspath, int dir);
int fos_shim_op_rename(char *from, char *to, uint32_t flags);
/* Fills a linux_dirent64 buffer from the directory's cookie onwards;
 * returns bytes used (0 at the end) and advances *cookie. */
int64_t fos_shim_op_getdents(uint64_t ino, uint64_t *cookie, void *buf, size_t cap);
int fos_shim_op_lock(const fos_fs_lock *l, fos_fs_lock_reply *r);
int64_t fos_shim_op_readlink(uint64_t ino, char *buf, size_t cap);
int fos_shim_op_symlink(const char *target, char *fspath);
int fos_shim_op_mknod(char *fspath, uint32_t mode, uint64_t rdev);
int fos_shim_op_link(uint64_t ino, char *fspath);
int fos_shim_op_statfs(fos_fs_statfs *s);

/* ------------------------------------------------------------------ */
/* exec_prog.c, exec_env.c, standin.c: exec of programs under the prefix */
/* ------------------------------------------------------------------ */

#define FOS_SHIM_BINPRM 256    /* the "#!" line the kernel reads (BINPRM_BUF_SIZE) */
#define FOS_SHIM_MAX_INTERP 4  /* interpreters of interpreters, as binfmt_script allows */

/* What an exec of a path would run. */
typedef struct fos_shim_prog {
    int depth;                                   /* "#!" levels */
    char line[FOS_SHIM_MAX_INTERP][FOS_SHIM_BINPRM];
    const char *interp[FOS_SHIM_MAX_INTERP];     /* level d's interpreter (into line[d]) */
    const char *arg[FOS_SHIM_MAX_INTERP];        /* and its argument, or NULL */
    const char *final;                           /* the binary, as the chain names it */
    int kind;                                    /* FOS_ELF_* of the binary */
    int on_fos;                                  /* a file of the chain is under the prefix */
    int final_fos;                               /* the binary is: */
    uint64_t ino, size;                          /* its inode and size */
} fos_shim_prog;

/* Follows path and its interpreters; -errno as exec would fail (ENOEXEC
 * for a fos file that is neither "#!" nor ELF). */
int fos_shim_prog_resolve(const char *path, fos_shim_prog *p);
/* Entries of the binary's argv, with its NULL. */
int fos_shim_prog_argc(const fos_shim_prog *p, char *const argv[]);
/* The binary's argv (out has fos_shim_prog_argc entries). */
void fos_shim_prog_argv(const fos_shim_prog *p, const char *path, char *const argv[], char **out);
/* The rule for programs the shim cannot reach (static, Go, foreign): with
 * fos in view (cwd, an argument of argv, an inherited fos descriptor) and
 * no FOS_ALLOW_UNREACHABLE=1 in envp, one line on stderr and -EPERM. */
int fos_shim_prog_reachable(const fos_shim_prog *p, char *const argv[], char *const envp[]);
/* The fos binary copied into a sealed, close-on-exec memfd: fd or -errno. */
int fos_shim_prog_materialise(const fos_shim_prog *p);

/* Room envp needs for fos_shim_env_fix: its entries plus these. */
#define FOS_SHIM_ENV_EXTRA 6
typedef struct fos_shim_envbuf {
    char cwd[FOS_SHIM_PATH_BUF + 16];
    char preload[2 * FOS_SHIM_PATH_BUF];
    char prefix[300];
    char runtime[FOS_SHIM_PATH_BUF + 16];
} fos_shim_envbuf;
/* envp for a new image: the shim's variables put back, FOS_CWD as the
 * virtual cwd is now, no stand-in marker (standin adds it: fos-exec). */
char **fos_shim_env_fix(char *const *envp, char **out, fos_shim_envbuf *b, int standin);
/* The same with the child's cwd given: `cwd` a host-form fos path for
 * FOS_CWD, "" for none (a host directory), NULL for the virtual cwd now. */
char **fos_shim_env_fix_cwd(char *const *envp, char **out, fos_shim_envbuf *b, int standin, const char *cwd);
size_t fos_shim_env_len(char *const *envp);
/* fos-exec beside this library, or NULL. */
const char *fos_shim_exec_helper(void);
/* Whether host file `path` is the fos-run beside the shim (exec_env.c). */
int fos_shim_is_runner(const char *path);
/* This library's file. */
const char *fos_shim_self(void);
/* This process is fos-exec standing in (it was started with the marker). */
extern int fos_shim_standin_mode;
void fos_shim_exec_init(void);

/* The descriptors an exec keeps (no close-on-exec) into out: how many, or
 * -EMFILE if they are more than max or one is FOS_SPAWN_FD_LIMIT or above. */
int fos_shim_exec_fds(fos_spawn_fd *out, int max);
/* standin.c: in fos-exec, start path through the spawn service and stand
 * in for it until it ends; returns only if it could not start (-errno). */
int fos_shim_standin(const char *path, char *const argv[], char *const envp[]);

/* w_spawnfa.c: the errno of a fos open among posix_spawn file actions
 * `fa` (opened when added) that failed, or 0. */
int fos_shim_fa_error(const posix_spawn_file_actions_t *fa);
/* Where chdir actions of `fa` leave the child: FOS_SHIM_FA_CWD_FOS and a
 * host-form fos path in out, _HOST and an absolute host path, _HOST_UNKNOWN
 * (a host directory known by descriptor or relative path), or _NONE. */
enum { FOS_SHIM_FA_CWD_NONE = 0, FOS_SHIM_FA_CWD_FOS, FOS_SHIM_FA_CWD_HOST, FOS_SHIM_FA_CWD_HOST_UNKNOWN };
int fos_shim_fa_cwd(const posix_spawn_file_actions_t *fa, char out[FOS_SHIM_PATH_BUF]);
/* A relative `path` as the child will resolve it after fa's chdir actions:
 * 1 and the joined path in out; 0 unchanged (absolute, or no chdir action);
 * 2 unchanged, for the child's kernel (from a host directory not known by
 * name); -ENAMETOOLONG. */
int fos_shim_fa_path(const posix_spawn_file_actions_t *fa, const char *path, char out[FOS_SHIM_PATH_BUF]);

/* w_io.c: access checks and I/O on a live fos descriptor fd (entry o). at
 * < 0: at the shared offset, which then advances. Bytes or -errno. */
int fos_shim_access(const fos_shim_ofd *o, int want_write);
int64_t fos_shim_pread_fos(int fd, const fos_shim_ofd *o, void *buf, size_t n, int64_t at);
int64_t fos_shim_pwrite_fos(int fd, const fos_shim_ofd *o, const void *buf, size_t n, int64_t at);

/* w_stdio.c: point stdin, stdout or stderr (fd 0, 1, 2) at a stream over
 * the fos file fd now is, or back at the original one. */
void fos_shim_std_rebind(int fd);

/* stat.c helpers shared by the wrappers. */
void fos_shim_fill_stat(struct stat *out, const fos_fs_stat *st);
/* Does st grant `mask` (R_OK 4, W_OK 2, X_OK 1) to uid/gid (and groups)? */
int fos_shim_permits(const fos_fs_stat *st, int mask, int effective);

/* ------------------------------------------------------------------ */
/* Inline fast paths                                                   */
/* ------------------------------------------------------------------ */

extern fos_shim_ofd *fos_shim_fdtab;
extern size_t fos_shim_fdtab_len;

static inline int fos_shim_fd_marked(int fd) {
    if (fd < 0) return 0;
    fos_shim_ofd *t = __atomic_load_n(&fos_shim_fdtab, __ATOMIC_ACQUIRE);
    if (FOS_SHIM_LIKELY(t == NULL) || (size_t)fd >= __atomic_load_n(&fos_shim_fdtab_len, __ATOMIC_ACQUIRE)) return 0;
    return __atomic_load_n(&t[fd].memfd_ino, __ATOMIC_ACQUIRE) != 0;
}

int fos_shim_abs_maybe(const char *path);

static inline int fos_shim_maybe_fos(int dirfd, const char *path) {
    if (FOS_SHIM_UNLIKELY(path == NULL)) return 0;
    if (path[0] == '/') return fos_shim_abs_maybe(path);
    if (dirfd == AT_FDCWD) {
        return __atomic_load_n(&fos_shim_vcwd_set, __ATOMIC_ACQUIRE) ||
               __atomic_load_n(&fos_shim_rcwd_near, __ATOMIC_ACQUIRE) || fos_shim_ccwd != NULL ||
               strstr(path, "..") != NULL;
    }
    return fos_shim_fd_marked(dirfd);
}

/* The shim's own descriptors are closed, read and written with raw
 * syscalls: the libc names would reach the shim's own wrappers. */
#define fos_shim_sys_close(fd) ((int)syscall(SYS_close, (fd)))
/* The shim's own waits and socket calls go to the kernel, not through its
 * exported wrappers of them (w_tell.c). */
int fos_shim_sys_poll(struct pollfd *p, unsigned long n, int ms);
#define fos_shim_sys_connect(fd, a, len) ((int)syscall(SYS_connect, (fd), (a), (len)))
#define fos_shim_sys_sendmsg(fd, m, fl) ((ssize_t)syscall(SYS_sendmsg, (fd), (m), (fl)))
#define fos_shim_sys_recvmsg(fd, m, fl) ((ssize_t)syscall(SYS_recvmsg, (fd), (m), (fl)))
#define fos_shim_sys_nanosleep(t, left) ((int)syscall(SYS_nanosleep, (t), (left)))
#define fos_shim_sys_munmap(p, n) ((int)syscall(SYS_munmap, (p), (n)))

/* errno discipline: a result r >= 0 restores the caller's errno; r < 0
 * is -errno, set and -1 returned. */
static inline long fos_shim_ret(long r, int saved) {
    if (r < 0) {
        errno = (int)-r;
        return -1;
    }
    errno = saved;
    return r;
}

#endif
