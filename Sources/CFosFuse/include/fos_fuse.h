/*
 * The FUSE daemon's edge to libfuse 3 (low level API), behind prefixed names
 * and plain C types: libfuse's headers stay in this target, because they and
 * liburing's clash (fd_set) when both are Clang modules of one Swift module.
 *
 * One session per process. The process's event loop reads the device
 * (fosfuse_poll), and libfuse calls the Swift entry points of `struct
 * fosfuse_ops` on that thread; an entry point must not block, must copy what
 * it needs out of its pointer arguments before it returns (they point into
 * the one receive buffer), and must answer each request exactly once, from
 * any thread, with one of the fosfuse_reply_* functions.
 */
#ifndef FOS_FUSE_H
#define FOS_FUSE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A request (libfuse's fuse_req_t). */
typedef struct fosfuse_req_opaque *fosfuse_req;

/* What the kernel caches about an inode. Times in ns since the epoch. */
struct fosfuse_attr {
    uint64_t ino;
    uint64_t size;
    uint64_t blocks;     /* 512-byte units */
    uint64_t rdev;
    uint32_t mode;
    uint32_t nlink;
    uint32_t uid;
    uint32_t gid;
    uint32_t blksize;
    uint32_t reserved;
    int64_t atime_ns;
    int64_t mtime_ns;
    int64_t ctime_ns;
};

/* A name's inode: ino 0 is a cached negative entry. */
struct fosfuse_entry {
    uint64_t ino;
    uint64_t generation;
    struct fosfuse_attr attr;
    double attr_timeout;
    double entry_timeout;
};

/* Who sent a request. */
struct fosfuse_ctx {
    uint32_t uid;
    uint32_t gid;
    int32_t pid;
    uint32_t umask;
};

#define FOSFUSE_SET_MODE 0x1u
#define FOSFUSE_SET_UID 0x2u
#define FOSFUSE_SET_GID 0x4u
#define FOSFUSE_SET_SIZE 0x8u
#define FOSFUSE_SET_ATIME 0x10u
#define FOSFUSE_SET_MTIME 0x20u
#define FOSFUSE_SET_ATIME_NOW 0x40u
#define FOSFUSE_SET_MTIME_NOW 0x80u
#define FOSFUSE_SET_HAS_FH 0x100u   /* through an open file (ftruncate, futimens...) */

struct fosfuse_setattr {
    uint32_t valid;      /* FOSFUSE_SET_* */
    uint32_t mode;
    uint32_t uid;
    uint32_t gid;
    uint64_t size;
    int64_t atime_ns;
    int64_t mtime_ns;
    uint64_t fh;
};

/* How an open is answered. */
struct fosfuse_open {
    uint64_t fh;
    uint8_t keep_cache;
    uint8_t direct_io;
    uint8_t nonseekable;
    uint8_t reserved;
};

/* A record lock as fcntl sees it (type F_RDLCK/F_WRLCK/F_UNLCK). */
struct fosfuse_lock {
    int32_t type;
    int32_t pid;
    int64_t start;
    int64_t len;         /* 0: to the end of file */
};

struct fosfuse_statfs {
    uint64_t bsize;
    uint64_t frsize;
    uint64_t blocks;
    uint64_t bfree;
    uint64_t bavail;
    uint64_t files;
    uint64_t ffree;
    uint64_t namemax;
};

/* What the kernel and libfuse settled on at INIT. */
struct fosfuse_conn {
    uint32_t proto_major;
    uint32_t proto_minor;
    uint32_t max_write;
    uint32_t max_read;
    uint32_t max_readahead;
    uint32_t max_background;
    uint32_t congestion_threshold;
    uint32_t time_gran;
    uint32_t capable;
    uint32_t want;
};

/* Capability bits of fosfuse_conn.want, named as in fuse_common.h. */
#define FOSFUSE_CAP_READDIRPLUS (1u << 13)
#define FOSFUSE_CAP_READDIRPLUS_AUTO (1u << 14)
#define FOSFUSE_CAP_PARALLEL_DIROPS (1u << 18)
#define FOSFUSE_CAP_POSIX_LOCKS (1u << 1)
#define FOSFUSE_CAP_FLOCK_LOCKS (1u << 10)
#define FOSFUSE_CAP_ATOMIC_O_TRUNC (1u << 3)
#define FOSFUSE_CAP_AUTO_INVAL_DATA (1u << 12)

/* The Swift side. `ud` is the userdata given to fosfuse_session. */
struct fosfuse_ops {
    void (*init)(void *ud, const struct fosfuse_conn *conn);
    void (*lookup)(void *ud, fosfuse_req r, uint64_t parent, const char *name);
    /* No reply: forget (and each of a batch). */
    void (*forget)(void *ud, uint64_t ino, uint64_t nlookup);
    void (*getattr)(void *ud, fosfuse_req r, uint64_t ino);
    void (*setattr)(void *ud, fosfuse_req r, uint64_t ino, const struct fosfuse_setattr *s);
    void (*readlink)(void *ud, fosfuse_req r, uint64_t ino);
    void (*mknod)(void *ud, fosfuse_req r, uint64_t parent, const char *name, uint32_t mode, uint64_t rdev);
    void (*mkdir)(void *ud, fosfuse_req r, uint64_t parent, const char *name, uint32_t mode);
    void (*unlink)(void *ud, fosfuse_req r, uint64_t parent, const char *name);
    void (*rmdir)(void *ud, fosfuse_req r, uint64_t parent, const char *name);
    void (*symlink)(void *ud, fosfuse_req r, const char *target, uint64_t parent, const char *name);
    void (*rename)(void *ud, fosfuse_req r, uint64_t parent, const char *name, uint64_t newparent,
                   const char *newname, uint32_t flags);
    void (*link)(void *ud, fosfuse_req r, uint64_t ino, uint64_t newparent, const char *newname);
    void (*open)(void *ud, fosfuse_req r, uint64_t ino, int32_t flags);
    void (*create)(void *ud, fosfuse_req r, uint64_t parent, const char *name, uint32_t mode, int32_t flags);
    void (*read)(void *ud, fosfuse_req r, uint64_t ino, size_t size, int64_t off, uint64_t fh);
    void (*write)(void *ud, fosfuse_req r, uint64_t ino, const void *buf, size_t size, int64_t off,
                  uint64_t fh, int32_t flags);
    void (*flush)(void *ud, fosfuse_req r, uint64_t ino, uint64_t fh, uint64_t lock_owner);
    void (*release)(void *ud, fosfuse_req r, uint64_t ino, uint64_t fh, int32_t flags, uint64_t lock_owner,
                    int flock_release);
    void (*fsync)(void *ud, fosfuse_req r, uint64_t ino, int datasync);
    /* plus: readdirplus. */
    void (*readdir)(void *ud, fosfuse_req r, uint64_t ino, size_t size, int64_t off, int plus);
    void (*statfs)(void *ud, fosfuse_req r, uint64_t ino);
    void (*setxattr)(void *ud, fosfuse_req r, uint64_t ino, const char *name, const void *value, size_t size,
                     int32_t flags);
    void (*getxattr)(void *ud, fosfuse_req r, uint64_t ino, const char *name, size_t size);
    void (*listxattr)(void *ud, fosfuse_req r, uint64_t ino, size_t size);
    void (*removexattr)(void *ud, fosfuse_req r, uint64_t ino, const char *name);
    void (*getlk)(void *ud, fosfuse_req r, uint64_t ino, uint64_t owner, const struct fosfuse_lock *l);
    void (*setlk)(void *ud, fosfuse_req r, uint64_t ino, uint64_t owner, const struct fosfuse_lock *l, int sleep);
    /* op: LOCK_SH, LOCK_EX or LOCK_UN, possibly with LOCK_NB. */
    void (*flock)(void *ud, fosfuse_req r, uint64_t ino, uint64_t owner, int32_t op);
    /* No reply: see fosfuse_on_interrupt. */
    void (*interrupted)(void *ud, uint64_t token);
};

struct fosfuse_config {
    const char *mountpoint;
    const char *fsname;          /* the source `mount` shows */
    int allow_other;
    int read_only;
    int debug;
    uint32_t max_background;     /* asynchronous requests (readahead) in flight */
    /* The daemon announces every change by others (fosfuse_notify_*): the
     * kernel then keeps pages until told (or until it sees a new size),
     * instead of dropping them whenever it sees a new mtime (which its own
     * writes make). */
    int changes_announced;
};

/* Creates the session and mounts it. On failure returns -1 with a message in err. */
int fosfuse_session(const struct fosfuse_config *cfg, const struct fosfuse_ops *ops, void *ud,
                    char *err, size_t errlen);
/* The session's device, made non-blocking: readable when requests wait. */
int fosfuse_device_fd(void);
/* Reads and serves up to `max` waiting requests on the calling thread (one
 * thread only: the receive buffer is shared). Returns how many, or -1 once
 * the session has ended (fosfuse_exit, umount, a device error). */
int fosfuse_poll(int max);
/* Waits until the session ends (fosfuse_exit, or fosfuse_poll saw the end). */
int fosfuse_loop(void);
/* Ends the session from any thread. */
void fosfuse_exit(void);
/* Unmounts (lazily). */
void fosfuse_unmount(void);

/* The sender of a request; its supplementary groups (at most max; -errno on failure). */
void fosfuse_req_ctx(fosfuse_req r, struct fosfuse_ctx *ctx);
int fosfuse_req_groups(fosfuse_req r, uint32_t *groups, int max);
/* Calls ops.interrupted(ud, token) if the kernel interrupts the request (a
 * signal to the caller), at once if that already happened. It may come even
 * after the request was answered: the token must name, not own, its task. */
void fosfuse_on_interrupt(fosfuse_req r, uint64_t token);

int fosfuse_reply_err(fosfuse_req r, int err);
int fosfuse_reply_entry(fosfuse_req r, const struct fosfuse_entry *e);
int fosfuse_reply_create(fosfuse_req r, const struct fosfuse_entry *e, const struct fosfuse_open *o);
int fosfuse_reply_attr(fosfuse_req r, const struct fosfuse_attr *a, double timeout);
int fosfuse_reply_readlink(fosfuse_req r, const char *target);
int fosfuse_reply_open(fosfuse_req r, const struct fosfuse_open *o);
int fosfuse_reply_write(fosfuse_req r, size_t count);
int fosfuse_reply_buf(fosfuse_req r, const void *buf, size_t size);
int fosfuse_reply_iov(fosfuse_req r, const struct iovec *iov, int count);
int fosfuse_reply_statfs(fosfuse_req r, const struct fosfuse_statfs *s);
int fosfuse_reply_xattr(fosfuse_req r, size_t size);
int fosfuse_reply_lock(fosfuse_req r, const struct fosfuse_lock *l);

/* Appends a directory entry to buf (size bytes free); returns the bytes it
 * needs: if more than size, nothing was added. `off` is the cookie that
 * continues after this entry. */
size_t fosfuse_add_direntry(fosfuse_req r, char *buf, size_t size, const char *name, uint64_t ino, uint32_t mode,
                            int64_t off);
size_t fosfuse_add_direntry_plus(fosfuse_req r, char *buf, size_t size, const char *name,
                                 const struct fosfuse_entry *e, int64_t off);

/* Cache invalidation (another client changed the file system). They may
 * block on kernel inode locks: never call them on a thread that answers
 * requests. 0 or -errno (-ENOENT: the kernel does not know the inode). */
int fosfuse_notify_inval_inode(uint64_t ino, int64_t off, int64_t len);
int fosfuse_notify_inval_entry(uint64_t parent, const char *name, size_t namelen);
int fosfuse_notify_delete(uint64_t parent, uint64_t child, const char *name, size_t namelen);

#ifdef __cplusplus
}
#endif
#endif
