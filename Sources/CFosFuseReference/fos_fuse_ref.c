// The FUSE reference of `fos-bench fuse`: a simple in-memory libfuse daemon.
// Every node lives in this process's memory (a name hash and file data in
// 1 MiB chunks); requests are answered on one thread straight from there.
// That thread reads the device as fos-fuse's loop does: for 200 µs after
// each request it spins on it, yielding the core to any other thread that
// wants it, before it sleeps in poll, so a request that comes within that
// time wakes no thread (libfuse's own loop sleeps in a blocking read: a
// wake-up per request, 30-40 µs of every round trip on this VM). It is FUSE
// at its fastest here, the ceiling any daemon can reach on this kernel. The
// mount options and what it asks for in INIT are fos-fuse's as the bench
// runs it, less locks and export support (default_permissions, no
// write-back cache, no splice, readdirplus, max_background 64, root's
// 10 s timeouts, pages kept across opens, a getxattr answered with
// ENODATA), so the kernel sends it the requests it sends fos-fuse.
// It is a measuring stick, not a file system: no hard links, no xattrs, no
// locks, and an unlinked file's data goes at once.
#define FUSE_USE_VERSION 314
#define _GNU_SOURCE
#include "fos_fuse_ref.h"

#include <errno.h>
#include <fcntl.h>
#include <fuse3/fuse_lowlevel.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#define CHUNK_SHIFT 20
#define CHUNK (1u << CHUNK_SHIFT)
#define BUCKETS (1u << 18)
// fos-fuse's entry and attribute timeout for root (it serves the bench as root).
#define TIMEOUT 10.0

struct node {
    uint64_t parent;
    char *name;           // NULL: a free slot (never reused: inode numbers only grow)
    struct stat st;
    unsigned char **chunks;
    size_t nchunks;
    uint64_t children;
    uint64_t next;        // the next node in this one's hash bucket
};

static struct node *nodes;
static uint64_t nnodes, capnodes;
static uint64_t buckets[BUCKETS];
static unsigned char zeros[CHUNK];

static uint64_t hash(uint64_t parent, const char *name) {
    uint64_t h = 1469598103934665603ull ^ parent;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) h = (h ^ *p) * 1099511628211ull;
    return h & (BUCKETS - 1);
}

static struct node *get(fuse_ino_t ino) { return ino > 0 && ino < nnodes && nodes[ino].name ? &nodes[ino] : NULL; }

static uint64_t find(uint64_t parent, const char *name) {
    for (uint64_t i = buckets[hash(parent, name)]; i; i = nodes[i].next)
        if (nodes[i].parent == parent && strcmp(nodes[i].name, name) == 0) return i;
    return 0;
}

static void now(struct timespec *t) { clock_gettime(CLOCK_REALTIME, t); }

static uint64_t add(fuse_req_t req, uint64_t parent, const char *name, mode_t mode) {
    if (nnodes == capnodes) {
        uint64_t cap = capnodes ? capnodes * 2 : 1024;
        struct node *n = realloc(nodes, cap * sizeof *n);
        if (!n) return 0;
        nodes = n;
        capnodes = cap;
    }
    char *copy = strdup(name);
    if (!copy) return 0;
    uint64_t ino = nnodes++;
    struct node *n = &nodes[ino];
    memset(n, 0, sizeof *n);
    n->parent = parent;
    n->name = copy;
    const struct fuse_ctx *c = req ? fuse_req_ctx(req) : NULL;
    n->st.st_ino = ino;
    n->st.st_mode = mode;
    n->st.st_nlink = S_ISDIR(mode) ? 2 : 1;
    n->st.st_uid = c ? c->uid : 0;
    n->st.st_gid = c ? c->gid : 0;
    n->st.st_blksize = 4096;
    now(&n->st.st_mtim);
    n->st.st_atim = n->st.st_ctim = n->st.st_mtim;
    if (parent) {
        uint64_t b = hash(parent, name);
        n->next = buckets[b];
        buckets[b] = ino;
        nodes[parent].children++;
        nodes[parent].st.st_mtim = nodes[parent].st.st_ctim = n->st.st_mtim;
    }
    return ino;
}

static void drop_data(struct node *n, off_t size) {
    size_t keep = (size_t)((size + CHUNK - 1) >> CHUNK_SHIFT);
    for (size_t i = keep; i < n->nchunks; i++) {
        free(n->chunks[i]);
        n->chunks[i] = NULL;
    }
    // The kept part of a partial last chunk past the new end reads as zeros.
    if (keep > 0 && keep <= n->nchunks && n->chunks[keep - 1] && (size & (CHUNK - 1)))
        memset(n->chunks[keep - 1] + (size & (CHUNK - 1)), 0, CHUNK - (size & (CHUNK - 1)));
}

static void remove_node(uint64_t ino) {
    struct node *n = &nodes[ino];
    uint64_t *p = &buckets[hash(n->parent, n->name)];
    while (*p != ino) p = &nodes[*p].next;
    *p = n->next;
    nodes[n->parent].children--;
    now(&nodes[n->parent].st.st_mtim);
    nodes[n->parent].st.st_ctim = nodes[n->parent].st.st_mtim;
    drop_data(n, 0);
    free(n->chunks);
    free(n->name);
    n->name = NULL;
}

static void reply_entry(fuse_req_t req, uint64_t ino) {
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr = nodes[ino].st;
    e.attr_timeout = e.entry_timeout = TIMEOUT;
    fuse_reply_entry(req, &e);
}

static void ref_init(void *ud, struct fuse_conn_info *conn) {
    (void)ud;
    // fos-fuse's, less locks and export support, which this daemon does not
    // serve (the kernel then keeps locks itself; the bench takes none).
    unsigned want = FUSE_CAP_ASYNC_READ | FUSE_CAP_ATOMIC_O_TRUNC | FUSE_CAP_READDIRPLUS | FUSE_CAP_READDIRPLUS_AUTO |
                    FUSE_CAP_PARALLEL_DIROPS | FUSE_CAP_ASYNC_DIO | FUSE_CAP_CACHE_SYMLINKS | FUSE_CAP_EXPLICIT_INVAL_DATA;
    conn->want &= ~(unsigned)FUSE_CAP_AUTO_INVAL_DATA;
    conn->want |= want & conn->capable;
    conn->want &= ~(unsigned)(FUSE_CAP_WRITEBACK_CACHE | FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE |
                              FUSE_CAP_SPLICE_MOVE | FUSE_CAP_HANDLE_KILLPRIV);
    conn->max_background = 64;
    conn->congestion_threshold = 48;
    conn->time_gran = 1;
}

static void ref_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
    uint64_t ino = find(parent, name);
    if (ino) {
        reply_entry(req, ino);
        return;
    }
    // A negative entry the kernel keeps as long as a positive one (as fos-fuse).
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.entry_timeout = TIMEOUT;
    fuse_reply_entry(req, &e);
}

static void ref_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)fi;
    struct node *n = get(ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    fuse_reply_attr(req, &n->st, TIMEOUT);
}

static void ref_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *a, int set, struct fuse_file_info *fi) {
    (void)fi;
    struct node *n = get(ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct timespec t;
    now(&t);
    if (set & FUSE_SET_ATTR_MODE) n->st.st_mode = (n->st.st_mode & S_IFMT) | (a->st_mode & 07777);
    if (set & FUSE_SET_ATTR_UID) n->st.st_uid = a->st_uid;
    if (set & FUSE_SET_ATTR_GID) n->st.st_gid = a->st_gid;
    if (set & FUSE_SET_ATTR_SIZE) {
        if (a->st_size < n->st.st_size) drop_data(n, a->st_size);
        n->st.st_size = a->st_size;
        n->st.st_blocks = (a->st_size + 511) / 512;
        n->st.st_mtim = t;
    }
    if (set & FUSE_SET_ATTR_ATIME) n->st.st_atim = a->st_atim;
    if (set & FUSE_SET_ATTR_ATIME_NOW) n->st.st_atim = t;
    if (set & FUSE_SET_ATTR_MTIME) n->st.st_mtim = a->st_mtim;
    if (set & FUSE_SET_ATTR_MTIME_NOW) n->st.st_mtim = t;
    n->st.st_ctim = t;
    fuse_reply_attr(req, &n->st, TIMEOUT);
}

static void make(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
    struct node *p = get(parent);
    if (!p || !S_ISDIR(p->st.st_mode)) {
        fuse_reply_err(req, p ? ENOTDIR : ENOENT);
        return;
    }
    if (find(parent, name)) {
        fuse_reply_err(req, EEXIST);
        return;
    }
    uint64_t ino = add(req, parent, name, mode);
    if (!ino) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    if (!fi) {
        reply_entry(req, ino);
        return;
    }
    struct fuse_entry_param e;
    memset(&e, 0, sizeof e);
    e.ino = ino;
    e.attr = nodes[ino].st;
    e.attr_timeout = e.entry_timeout = TIMEOUT;
    fi->keep_cache = 1;
    fuse_reply_create(req, &e, fi);
}

static void ref_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
    make(req, parent, name, S_IFDIR | (mode & 07777), NULL);
}

static void ref_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
    make(req, parent, name, S_IFREG | (mode & 07777), fi);
}

static void unlink_any(fuse_req_t req, fuse_ino_t parent, const char *name, int dir) {
    uint64_t ino = find(parent, name);
    if (!ino) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct node *n = &nodes[ino];
    if (dir && !S_ISDIR(n->st.st_mode)) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    if (!dir && S_ISDIR(n->st.st_mode)) {
        fuse_reply_err(req, EISDIR);
        return;
    }
    if (dir && n->children) {
        fuse_reply_err(req, ENOTEMPTY);
        return;
    }
    remove_node(ino);
    fuse_reply_err(req, 0);
}

static void ref_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) { unlink_any(req, parent, name, 0); }
static void ref_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) { unlink_any(req, parent, name, 1); }

static void ref_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct node *n = get(ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (fi->flags & O_TRUNC) {
        drop_data(n, 0);
        n->st.st_size = n->st.st_blocks = 0;
    }
    fi->keep_cache = 1;
    fuse_reply_open(req, fi);
}

static void ref_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    struct node *n = get(ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (off >= n->st.st_size) size = 0;
    else if ((off_t)size > n->st.st_size - off) size = (size_t)(n->st.st_size - off);
    struct iovec iov[64];
    int count = 0;
    while (size > 0 && count < 64) {
        size_t c = (size_t)(off >> CHUNK_SHIFT), at = (size_t)(off & (CHUNK - 1));
        size_t len = CHUNK - at < size ? CHUNK - at : size;
        iov[count].iov_base = c < n->nchunks && n->chunks[c] ? n->chunks[c] + at : zeros;
        iov[count++].iov_len = len;
        size -= len;
        off += (off_t)len;
    }
    fuse_reply_iov(req, iov, count);
}

static void ref_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
                      struct fuse_file_info *fi) {
    (void)fi;
    struct node *n = get(ino);
    if (!n) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    if (off < 0 || (uint64_t)off > (uint64_t)INT64_MAX - size - CHUNK) {
        fuse_reply_err(req, EFBIG);
        return;
    }
    size_t last = (size_t)((off + (off_t)size + CHUNK - 1) >> CHUNK_SHIFT);
    if (last > n->nchunks) {
        unsigned char **c = realloc(n->chunks, last * sizeof *c);
        if (!c) {
            fuse_reply_err(req, ENOSPC);
            return;
        }
        memset(c + n->nchunks, 0, (last - n->nchunks) * sizeof *c);
        n->chunks = c;
        n->nchunks = last;
    }
    size_t done = 0;
    while (done < size) {
        off_t at = off + (off_t)done;
        size_t c = (size_t)(at >> CHUNK_SHIFT), in = (size_t)(at & (CHUNK - 1));
        size_t len = CHUNK - in < size - done ? CHUNK - in : size - done;
        if (!n->chunks[c] && !(n->chunks[c] = calloc(1, CHUNK))) break;
        memcpy(n->chunks[c] + in, buf + done, len);
        done += len;
    }
    if (done == 0 && size > 0) {
        fuse_reply_err(req, ENOSPC);
        return;
    }
    if (off + (off_t)done > n->st.st_size) n->st.st_size = off + (off_t)done;
    now(&n->st.st_mtim);
    n->st.st_ctim = n->st.st_mtim;
    n->st.st_blocks = (n->st.st_size + 511) / 512;
    fuse_reply_write(req, done);
}

static void ref_ok(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    (void)ino;
    (void)fi;
    fuse_reply_err(req, 0);
}

static void ref_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
    (void)datasync;
    ref_ok(req, ino, fi);
}

static void ref_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
    struct node *n = get(ino);
    if (!n || !S_ISDIR(n->st.st_mode)) {
        fuse_reply_err(req, n ? ENOTDIR : ENOENT);
        return;
    }
    fuse_reply_open(req, fi);
}

// Entries in inode order, the offset of each being the next inode to look at
// (a scan of every node: the bench lists no directory).
static void list(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, int plus) {
    char *buf = malloc(size);
    if (!buf) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    for (uint64_t i = off > 0 ? (uint64_t)off : 1; i < nnodes; i++) {
        if (!nodes[i].name || nodes[i].parent != ino || i == ino) continue;
        struct fuse_entry_param e;
        memset(&e, 0, sizeof e);
        e.ino = i;
        e.attr = nodes[i].st;
        e.attr_timeout = e.entry_timeout = TIMEOUT;
        size_t need = plus ? fuse_add_direntry_plus(req, buf + used, size - used, nodes[i].name, &e, (off_t)(i + 1))
                           : fuse_add_direntry(req, buf + used, size - used, nodes[i].name, &e.attr, (off_t)(i + 1));
        if (need > size - used) break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void ref_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    list(req, ino, size, off, 0);
}

static void ref_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
    (void)fi;
    list(req, ino, size, off, 1);
}

static void ref_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
    (void)ino;
    (void)name;
    (void)size;
    fuse_reply_err(req, ENODATA);
}

static void ref_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
    (void)ino;
    if (size == 0) fuse_reply_xattr(req, 0);
    else fuse_reply_buf(req, NULL, 0);
}

static void ref_statfs(fuse_req_t req, fuse_ino_t ino) {
    (void)ino;
    struct statvfs s;
    memset(&s, 0, sizeof s);
    s.f_bsize = s.f_frsize = 4096;
    s.f_blocks = s.f_bfree = s.f_bavail = 1ull << 30;
    s.f_files = s.f_ffree = s.f_favail = 1ull << 30;
    s.f_namemax = 255;
    fuse_reply_statfs(req, &s);
}

static const struct fuse_lowlevel_ops ref_ops = {
    .init = ref_init,
    .lookup = ref_lookup,
    .getattr = ref_getattr,
    .setattr = ref_setattr,
    .mkdir = ref_mkdir,
    .unlink = ref_unlink,
    .rmdir = ref_rmdir,
    .open = ref_open,
    .read = ref_read,
    .write = ref_write,
    .flush = ref_ok,
    .release = ref_ok,
    .fsync = ref_fsync,
    .opendir = ref_opendir,
    .readdir = ref_readdir,
    .readdirplus = ref_readdirplus,
    .releasedir = ref_ok,
    .statfs = ref_statfs,
    .getxattr = ref_getxattr,
    .listxattr = ref_listxattr,
    .create = ref_create,
};

static uint64_t mono_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

#define SPIN_NS 200000u

// libfuse's loop, reading the device without blocking: spins SPIN_NS on an
// empty device (yielding, as the caller may be waiting for this core), then
// sleeps in poll. SIGTERM (libfuse's handler) ends it; the poll wakes every
// 100 ms, as the signal may come between the check and the poll.
static int serve_spinning(struct fuse_session *se) {
    int fd = fuse_session_fd(se);
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0) return -1;
    struct fuse_buf buf;
    memset(&buf, 0, sizeof buf);
    uint64_t idle_since = mono_ns();
    int rc = 0;
    while (!fuse_session_exited(se)) {
        int r = fuse_session_receive_buf(se, &buf);
        if (r == -EAGAIN || r == -EINTR) {
            if (mono_ns() - idle_since < SPIN_NS) {
                sched_yield();
                continue;
            }
            struct pollfd p = {.fd = fd, .events = POLLIN};
            if (poll(&p, 1, 100) < 0 && errno != EINTR) {
                rc = -1;
                break;
            }
            continue;
        }
        if (r == 0) break;  // unmounted
        if (r < 0) {
            rc = -1;
            break;
        }
        fuse_session_process_buf(se, &buf);
        idle_since = mono_ns();
    }
    free(buf.mem);
    return rc;
}

int fosref_fuse_serve(const char *mountpoint, int ready_fd) {
    // Inode 0 is no inode; 1 is the root (FUSE_ROOT_ID). Neither has a
    // parent, so neither is in the name hash.
    if (add(NULL, 0, "", 0) != 0 || add(NULL, 0, "/", S_IFDIR | 0755) != FUSE_ROOT_ID) {
        fprintf(stderr, "fos-bench: out of memory\n");
        return -1;
    }
    char *argv[] = {"fos-bench", "-o", "fsname=fosref,subtype=fosref,default_permissions", NULL};
    struct fuse_args args = FUSE_ARGS_INIT(3, argv);
    struct fuse_session *se = fuse_session_new(&args, &ref_ops, sizeof ref_ops, NULL);
    fuse_opt_free_args(&args);
    if (!se) return -1;
    if (fuse_set_signal_handlers(se) != 0 || fuse_session_mount(se, mountpoint) != 0) {
        fuse_session_destroy(se);
        return -1;
    }
    if (ready_fd >= 0) {
        char c = 1;
        ssize_t w;
        do w = write(ready_fd, &c, 1);
        while (w < 0 && errno == EINTR);
        close(ready_fd);
    }
    int rc = serve_spinning(se);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return rc < 0 ? -1 : 0;
}
