// libfuse 3 low-level glue for fos-fuse: translates between libfuse's types
// and the plain ones of fos_fuse.h, and owns the one session.
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include "fos_fuse.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

static struct fuse_session *session;
static struct fosfuse_ops ops;
static struct fosfuse_config config;
// Guards the session's end and the device: fosfuse_exit may come from any
// thread at any time, also while fosfuse_unmount closes the device.
static pthread_mutex_t life = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ended_cond = PTHREAD_COND_INITIALIZER;
static int ended, unmounted;

#define UD(req) fuse_req_userdata(req)
#define R(req) ((fosfuse_req)(req))

static int64_t ts_ns(struct timespec t) { return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec; }

static struct timespec ns_ts(int64_t ns) {
    struct timespec t;
    t.tv_sec = ns / 1000000000;
    t.tv_nsec = ns % 1000000000;
    if (t.tv_nsec < 0) {
        t.tv_nsec += 1000000000;
        t.tv_sec -= 1;
    }
    return t;
}

static void to_stat(const struct fosfuse_attr *a, struct stat *st) {
    memset(st, 0, sizeof *st);
    st->st_ino = a->ino;
    st->st_mode = a->mode;
    st->st_nlink = a->nlink;
    st->st_uid = a->uid;
    st->st_gid = a->gid;
    st->st_rdev = a->rdev;
    st->st_size = (off_t)a->size;
    st->st_blocks = (blkcnt_t)a->blocks;
    st->st_blksize = a->blksize;
    st->st_atim = ns_ts(a->atime_ns);
    st->st_mtim = ns_ts(a->mtime_ns);
    st->st_ctim = ns_ts(a->ctime_ns);
}

static void to_entry(const struct fosfuse_entry *e, struct fuse_entry_param *p) {
    memset(p, 0, sizeof *p);
    p->ino = e->ino;
    p->generation = e->generation;
    to_stat(&e->attr, &p->attr);
    p->attr_timeout = e->attr_timeout;
    p->entry_timeout = e->entry_timeout;
}

static void to_fi(const struct fosfuse_open *o, struct fuse_file_info *fi) {
    memset(fi, 0, sizeof *fi);
    fi->fh = o->fh;
    fi->keep_cache = o->keep_cache ? 1 : 0;
    fi->direct_io = o->direct_io ? 1 : 0;
    fi->nonseekable = o->nonseekable ? 1 : 0;
}

// MARK: requests

static void ll_init(void *ud, struct fuse_conn_info *conn) {
    // Everything the kernel offers that serves the file system's semantics
    // and speed; the write-back cache stays off (a write through the mount
    // must reach the fleet before write(2) returns: other clients see it).
    unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS | FUSE_CAP_ATOMIC_O_TRUNC |
                    FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO | FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ASYNC_DIO |
                    FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_EXPORT_SUPPORT;
    // Announced changes: neither of the kernel's two modes. With
    // EXPLICIT_INVAL_DATA it would keep a file's pages also when an
    // attribute answer brings a new size, and a page cached at the old end
    // would show zeros where another client had appended, until the
    // announcement came (a few ms). Without either mode it drops the
    // file's pages when the size changes that way, and otherwise keeps them
    // until told: its own writes' new mtimes drop nothing.
    if (!config.changes_announced) want |= FUSE_CAP_AUTO_INVAL_DATA;
    conn->want &= ~(unsigned)(FUSE_CAP_AUTO_INVAL_DATA | FUSE_CAP_EXPLICIT_INVAL_DATA);
    conn->want |= want & conn->capable;
    conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                              FUSE_CAP_SPLICE_MOVE | FUSE_CAP_HANDLE_KILLPRIV);
    // conn->max_write stays libfuse's: as large as its receive buffer
    // (256 pages, the kernel's default max_pages_limit), for which libfuse
    // asks the kernel for max_pages. A larger value would make the kernel
    // refuse that buffer.
    if (config.max_background) {
        conn->max_background = config.max_background;
        conn->congestion_threshold = config.max_background * 3 / 4;
    }
    conn->time_gran = 1;
    struct fosfuse_conn c = {
        .proto_major = conn->proto_major, .proto_minor = conn->proto_minor, .max_write = conn->max_write,
        .max_read = conn->max_read, .max_readahead = conn->max_readahead, .max_background = conn->max_background,
        .congestion_threshold = conn->congestion_threshold, .time_gran = conn->time_gran,
        .capable = conn->capable, .want = conn->want,
    };
    if (ops.init) ops.init(ud, &c);
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) { ops.lookup(UD(req), R(req), parent, name); }

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
    ops.forget(UD(req), ino, nlookup);
    fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
    for (size_t i = 0; i < count; i++) ops.forget(UD(req), forgets[i].ino, forgets[i].nlookup);
    fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    ops.getattr(UD(req), R(req), ino);
}

static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
    struct fosfuse_setattr s;
    memset(&s, 0, sizeof s);
    if (to_set & FUSE_SET_ATTR_MODE) { s.valid |= FOSFUSE_SET_MODE; s.mode = attr->st_mode; }
    if (to_set & FUSE_SET_ATTR_UID) { s.valid |= FOSFUSE_SET_UID; s.uid = attr->st_uid; }
    if (to_set & FUSE_SET_ATTR_GID) { s.valid |= FOSFUSE_SET_GID; s.gid = attr->st_gid; }
    if (to_set & FUSE_SET_ATTR_SIZE) { s.valid |= FOSFUSE_SET_SIZE; s.size = (uint64_t)attr->st_size; }
    if (to_set & FUSE_SET_ATTR_ATIME_NOW) s.valid |= FOSFUSE_SET_ATIME_NOW;
    else if (to_set & FUSE_SET_ATTR_ATIME) { s.valid |= FOSFUSE_SET_ATIME; s.atime_ns = ts_ns(attr->st_atim); }
    if (to_set & FUSE_SET_ATTR_MTIME_NOW) s.valid |= FOSFUSE_SET_MTIME_NOW;
    else if (to_set & FUSE_SET_ATTR_MTIME) { s.valid |= FOSFUSE_SET_MTIME; s.mtime_ns = ts_ns(attr->st_mtim); }
    if (fi) { s.valid |= FOSFUSE_SET_HAS_FH; s.fh = fi->fh; }
    ops.setattr(UD(req), R(req), ino, &s);
}

static void ll_readlink(fuse_req_t req, fuse_ino_t ino) { ops.readlink(UD(req), R(req), ino); }

static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
    ops.mknod(UD(req), R(req), parent, name, mode, rdev);
}

static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
    ops.mkdir(UD(req), R(req), parent, name, mode);
}

static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) { ops.unlink(UD(req), R(req), parent, name); }
static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) { ops.rmdir(UD(req), R(req), parent, name); }

static void ll_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
    ops.symlink(UD(req), R(req), link, parent, name);
}

static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname,
                      unsigned int flags) {
    ops.rename(UD(req), R(req), parent, name, newparent, newname, flags);
}

static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
    ops.link(UD(req), R(req), ino, newparent, newname);
}

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    ops.open(UD(req), R(req), ino, fi->flags);
}

static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
    ops.create(UD(req), R(req), parent, name, mode, fi->flags);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    ops.read(UD(req), R(req), ino, size, off, fi->fh);
}

static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                     struct fuse_file_info *fi) {
    ops.write(UD(req), R(req), ino, buf, size, off, fi->fh, fi->flags);
}

static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    ops.flush(UD(req), R(req), ino, fi->fh, fi->lock_owner);
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    ops.release(UD(req), R(req), ino, fi->fh, fi->flags, fi->lock_owner, fi->flock_release);
}

static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)fi;
    ops.fsync(UD(req), R(req), ino, datasync);
}

// Directories keep no open state: readdir continues from the fleet's cookies.
static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    fi->fh = 0;
    fuse_reply_open(req, fi);
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void ll_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)fi;
    ops.fsync(UD(req), R(req), ino, datasync);
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    ops.readdir(UD(req), R(req), ino, size, off, 0);
}

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    ops.readdir(UD(req), R(req), ino, size, off, 1);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) { ops.statfs(UD(req), R(req), ino); }

static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
    ops.setxattr(UD(req), R(req), ino, name, value, size, flags);
}

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
    ops.getxattr(UD(req), R(req), ino, name, size);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) { ops.listxattr(UD(req), R(req), ino, size); }

static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) {
    ops.removexattr(UD(req), R(req), ino, name);
}

static void to_lock(const struct flock *f, struct fosfuse_lock *l) {
    l->type = f->l_type;
    l->pid = f->l_pid;
    l->start = f->l_start;
    l->len = f->l_len;
}

static void ll_getlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock) {
    struct fosfuse_lock l;
    to_lock(lock, &l);
    ops.getlk(UD(req), R(req), ino, fi->lock_owner, &l);
}

static void ll_setlk(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, struct flock *lock, int sleep) {
    struct fosfuse_lock l;
    to_lock(lock, &l);
    ops.setlk(UD(req), R(req), ino, fi->lock_owner, &l, sleep);
}

static void ll_flock(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi, int op) {
    ops.flock(UD(req), R(req), ino, fi->lock_owner, op);
}

static const struct fuse_lowlevel_ops ll_ops = {
    .init = ll_init,
    .lookup = ll_lookup,
    .forget = ll_forget,
    .forget_multi = ll_forget_multi,
    .getattr = ll_getattr,
    .setattr = ll_setattr,
    .readlink = ll_readlink,
    .mknod = ll_mknod,
    .mkdir = ll_mkdir,
    .unlink = ll_unlink,
    .rmdir = ll_rmdir,
    .symlink = ll_symlink,
    .rename = ll_rename,
    .link = ll_link,
    .open = ll_open,
    .create = ll_create,
    .read = ll_read,
    .write = ll_write,
    .flush = ll_flush,
    .release = ll_release,
    .fsync = ll_fsync,
    .opendir = ll_opendir,
    .readdir = ll_readdir,
    .readdirplus = ll_readdirplus,
    .releasedir = ll_releasedir,
    .fsyncdir = ll_fsyncdir,
    .statfs = ll_statfs,
    .setxattr = ll_setxattr,
    .getxattr = ll_getxattr,
    .listxattr = ll_listxattr,
    .removexattr = ll_removexattr,
    .getlk = ll_getlk,
    .setlk = ll_setlk,
    .flock = ll_flock,
};

// MARK: the session

int fosfuse_session(const struct fosfuse_config *cfg, const struct fosfuse_ops *o, void *ud, char *err,
                    size_t errlen) {
    if (session) {
        snprintf(err, errlen, "a session exists already");
        return -1;
    }
    ops = *o;
    config = *cfg;
    char opts[1024];
    int n = snprintf(opts, sizeof opts, "fsname=%s,subtype=fos,default_permissions%s%s", cfg->fsname,
                     cfg->allow_other ? ",allow_other" : "", cfg->read_only ? ",ro" : "");
    if (n < 0 || (size_t)n >= sizeof opts || strchr(cfg->fsname, ',') || strchr(cfg->fsname, '\\')) {
        snprintf(err, errlen, "bad file system name");
        return -1;
    }
    char *argv[] = {"fos-fuse", "-o", opts, cfg->debug ? "-d" : NULL, NULL};
    struct fuse_args args = FUSE_ARGS_INIT(cfg->debug ? 4 : 3, argv);
    session = fuse_session_new(&args, &ll_ops, sizeof ll_ops, ud);
    fuse_opt_free_args(&args);
    if (!session) {
        snprintf(err, errlen, "cannot create the FUSE session (bad options?)");
        return -1;
    }
    if (fuse_session_mount(session, cfg->mountpoint) != 0) {
        // libfuse printed the reason to stderr; the caller adds context.
        snprintf(err, errlen, "cannot mount on %s", cfg->mountpoint);
        fuse_session_destroy(session);
        session = NULL;
        return -1;
    }
    return 0;
}

// The session is served by the caller's event loop, not libfuse's worker
// threads: every request is handled on that loop anyway, and a hand-off from
// a worker cost each request a thread wake-up (on a VM, tens of µs), the
// larger part of a FUSE round trip. The loop polls the device between its
// other work while it spins and sleeps on it in epoll.
static struct fuse_buf rxbuf;

static void end_locked(void) {
    ended = 1;
    pthread_cond_broadcast(&ended_cond);
}

int fosfuse_device_fd(void) {
    if (!session) return -1;
    int fd = fuse_session_fd(session);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    return fd;
}

int fosfuse_poll(int max) {
    int served = 0;
    // `life` keeps fosfuse_unmount from closing the device under the read.
    pthread_mutex_lock(&life);
    while (served < max) {
        if (!session || unmounted || ended || fuse_session_exited(session)) {
            if (session && !ended) end_locked();
            served = -1;
            break;
        }
        int r = fuse_session_receive_buf(session, &rxbuf);
        if (r == -EAGAIN || r == -EINTR) break;
        if (r <= 0) {
            // 0: unmounted (libfuse saw ENODEV); below 0: the device failed,
            // which ends libfuse's own loops too.
            fuse_session_exit(session);
            end_locked();
            served = -1;
            break;
        }
        fuse_session_process_buf(session, &rxbuf);
        served++;
    }
    pthread_mutex_unlock(&life);
    return served;
}

int fosfuse_loop(void) {
    if (!session) return -1;
    pthread_mutex_lock(&life);
    while (!ended) pthread_cond_wait(&ended_cond, &life);
    pthread_mutex_unlock(&life);
    return 0;
}

// Any thread, any time: also before fosfuse_loop waits, or after it returned.
void fosfuse_exit(void) {
    pthread_mutex_lock(&life);
    if (session && !unmounted) {
        fuse_session_exit(session);
        end_locked();
    }
    pthread_mutex_unlock(&life);
}

// The session itself stays until the process exits: a notification may
// still be on its way on another thread (unmounting closes the device, so
// that one fails instead of waiting).
void fosfuse_unmount(void) {
    pthread_mutex_lock(&life);
    if (session && !unmounted) {
        fuse_session_unmount(session);
        unmounted = 1;
    }
    pthread_mutex_unlock(&life);
}

// MARK: request context

void fosfuse_req_ctx(fosfuse_req r, struct fosfuse_ctx *c) {
    const struct fuse_ctx *x = fuse_req_ctx((fuse_req_t)r);
    c->uid = x->uid;
    c->gid = x->gid;
    c->pid = x->pid;
    c->umask = x->umask;
}

int fosfuse_req_groups(fosfuse_req r, uint32_t *groups, int max) {
    if (max <= 0) return 0;
    gid_t list[max];
    int n = fuse_req_getgroups((fuse_req_t)r, max, list);
    if (n < 0) return n;
    if (n > max) n = max;
    for (int i = 0; i < n; i++) groups[i] = list[i];
    return n;
}

static void interrupt_trampoline(fuse_req_t req, void *data) {
    ops.interrupted(fuse_req_userdata(req), (uint64_t)(uintptr_t)data);
}

void fosfuse_on_interrupt(fosfuse_req r, uint64_t token) {
    fuse_req_interrupt_func((fuse_req_t)r, interrupt_trampoline, (void *)(uintptr_t)token);
}

// MARK: replies

int fosfuse_reply_err(fosfuse_req r, int err) { return fuse_reply_err((fuse_req_t)r, err); }

int fosfuse_reply_entry(fosfuse_req r, const struct fosfuse_entry *e) {
    struct fuse_entry_param p;
    to_entry(e, &p);
    return fuse_reply_entry((fuse_req_t)r, &p);
}

int fosfuse_reply_create(fosfuse_req r, const struct fosfuse_entry *e, const struct fosfuse_open *o) {
    struct fuse_entry_param p;
    struct fuse_file_info fi;
    to_entry(e, &p);
    to_fi(o, &fi);
    return fuse_reply_create((fuse_req_t)r, &p, &fi);
}

int fosfuse_reply_attr(fosfuse_req r, const struct fosfuse_attr *a, double timeout) {
    struct stat st;
    to_stat(a, &st);
    return fuse_reply_attr((fuse_req_t)r, &st, timeout);
}

int fosfuse_reply_readlink(fosfuse_req r, const char *target) { return fuse_reply_readlink((fuse_req_t)r, target); }

int fosfuse_reply_open(fosfuse_req r, const struct fosfuse_open *o) {
    struct fuse_file_info fi;
    to_fi(o, &fi);
    return fuse_reply_open((fuse_req_t)r, &fi);
}

int fosfuse_reply_write(fosfuse_req r, size_t count) { return fuse_reply_write((fuse_req_t)r, count); }

int fosfuse_reply_buf(fosfuse_req r, const void *buf, size_t size) {
    return fuse_reply_buf((fuse_req_t)r, buf, size);
}

int fosfuse_reply_iov(fosfuse_req r, const struct iovec *iov, int count) {
    return fuse_reply_iov((fuse_req_t)r, iov, count);
}

int fosfuse_reply_statfs(fosfuse_req r, const struct fosfuse_statfs *s) {
    struct statvfs v;
    memset(&v, 0, sizeof v);
    v.f_bsize = s->bsize;
    v.f_frsize = s->frsize;
    v.f_blocks = s->blocks;
    v.f_bfree = s->bfree;
    v.f_bavail = s->bavail;
    v.f_files = s->files;
    v.f_ffree = s->ffree;
    v.f_favail = s->ffree;
    v.f_namemax = s->namemax;
    return fuse_reply_statfs((fuse_req_t)r, &v);
}

int fosfuse_reply_xattr(fosfuse_req r, size_t size) { return fuse_reply_xattr((fuse_req_t)r, size); }

int fosfuse_reply_lock(fosfuse_req r, const struct fosfuse_lock *l) {
    struct flock f;
    memset(&f, 0, sizeof f);
    f.l_type = (short)l->type;
    f.l_whence = SEEK_SET;
    f.l_start = l->start;
    f.l_len = l->len;
    f.l_pid = l->pid;
    return fuse_reply_lock((fuse_req_t)r, &f);
}

size_t fosfuse_add_direntry(fosfuse_req r, char *buf, size_t size, const char *name, uint64_t ino, uint32_t mode,
                            int64_t off) {
    struct stat st;
    memset(&st, 0, sizeof st);
    st.st_ino = ino;
    st.st_mode = mode;
    return fuse_add_direntry((fuse_req_t)r, buf, size, name, &st, off);
}

size_t fosfuse_add_direntry_plus(fosfuse_req r, char *buf, size_t size, const char *name,
                                 const struct fosfuse_entry *e, int64_t off) {
    struct fuse_entry_param p;
    to_entry(e, &p);
    return fuse_add_direntry_plus((fuse_req_t)r, buf, size, name, &p, off);
}

// MARK: notifications

int fosfuse_notify_inval_inode(uint64_t ino, int64_t off, int64_t len) {
    if (!session) return -ENOTCONN;
    return fuse_lowlevel_notify_inval_inode(session, ino, off, len);
}

int fosfuse_notify_inval_entry(uint64_t parent, const char *name, size_t namelen) {
    if (!session) return -ENOTCONN;
    return fuse_lowlevel_notify_inval_entry(session, parent, name, namelen);
}

int fosfuse_notify_delete(uint64_t parent, uint64_t child, const char *name, size_t namelen) {
    if (!session) return -ENOTCONN;
    return fuse_lowlevel_notify_delete(session, parent, child, name, namelen);
}
