/*
 * The process's connection to its node, made on the first fos call: the
 * control socket to fosd (HELLO), the name service (NAME_SERVICE, CONNECT,
 * LOOKUP of /sys/fs), then a channel to one fs member, as libfos does
 * (FosCore/Runtime.swift, Names.swift, FosFSClient/FSClient.swift). A
 * channel to the spawn service (/sys/spawn) is added on the first exec of
 * a fos program (spawn.c).
 *
 * One connection per process, one call in flight, behind a mutex. A wrapper
 * entered again on the same thread while it is inside a call (a signal
 * handler that touches fos) fails with EINTR at once instead of
 * deadlocking; pthread cancellation is held off during a call.
 *
 * fosd attests the process's pid and credentials once, when the control
 * socket connects, and the fs fleet checks permissions with those (its
 * supplementary groups when the channel's first request arrives); the
 * spawn service copies descriptors from the attested pid. So a forked
 * child drops its inherited copy (its own descriptors only: the parent's
 * connection lives on) and connects anew, and a process whose credentials
 * changed (setuid and friends, see creds.c) reconnects before its next
 * call. A descriptor of ours that the program closes or overwrites (a
 * daemon closing every descriptor) makes the next call reconnect too.
 *
 * A child of vfork shares the parent's memory but not its descriptors, and
 * no fork handler runs in it: it must not touch the parent's connection
 * (its descriptors are not the child's, and whatever the child stored
 * there would be stale in the parent after the exec). It gets one of its
 * own, in pages it maps itself, found through a thread-local pointer (its
 * thread's, which is the suspended parent thread's), and unmapped before
 * it execs (fos_shim_conn_child_release).
 */
#include "shim.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#define FOS_SHIM_FS_NAME "/sys/fs"
#define FOS_SHIM_SPAWN_NAME "/sys/spawn"
/* ctl, and three descriptors for each of the name, fs and spawn channels. */
#define FOS_SHIM_OWNED 10

struct fos_shim_conn {
    pthread_mutex_t mu;
    int up;
    int ctl;
    uint64_t ctl_ino; /* the control socket's inode: is ctl still ours? */
    pid_t pid;        /* the process this connection belongs to */
    uint64_t ctl_id;
    uint64_t msg_id;
    unsigned cred_gen;
    int lost;
    int owned[FOS_SHIM_OWNED]; /* fd + 1 of each descriptor we hold; 0 = free */
    fos_mailbox_addr fs_addr;
    fos_mailbox_addr ns_addr;
    fos_shim_chan fs;
    fos_shim_chan name;  /* open only while looking a name up */
    fos_shim_chan spawn; /* open from the first spawn request on */
    fos_shim_ahead_q ahead; /* fs WRITEs sent ahead (ahead.c) */
    fos_shim_lease_tab leases; /* directory leases of this channel (lease.c) */
    /* Requests are assembled here under the lock: [hdr][fixed][tail]. */
    _Alignas(8) uint8_t msg[sizeof(fos_msg_hdr) + 64 + FOS_SHIM_PATH_BUF + 2 * FOS_FS_NAME_MAX];
};

static fos_shim_conn C = {.mu = PTHREAD_MUTEX_INITIALIZER, .ctl = -1};
static unsigned fos_shim_cred_gen;
static FOS_SHIM_TLS int fos_shim_in_call;
/* A child of vfork: its own connection (see above). */
static FOS_SHIM_TLS fos_shim_conn *fos_shim_vconn;

pid_t fos_shim_proc_pid;

static void fos_shim_own(fos_shim_conn *c, int fd) {
    for (int i = 0; i < FOS_SHIM_OWNED; i++) {
        int z = 0;
        if (__atomic_compare_exchange_n(&c->owned[i], &z, fd + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    }
}

int fos_shim_conn_owns(int fd) {
    int hit = 0;
    for (int i = 0; i < FOS_SHIM_OWNED; i++) {
        int v = fd + 1;
        if (FOS_SHIM_LIKELY(__atomic_load_n(&C.owned[i], __ATOMIC_RELAXED) != v)) continue;
        /* A vfork child closing its copy leaves the parent's alone. */
        if (fos_shim_in_vfork_child()) return 0;
        if (__atomic_compare_exchange_n(&C.owned[i], &v, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) hit = 1;
    }
    if (hit) __atomic_store_n(&C.lost, 1, __ATOMIC_RELEASE);
    return hit;
}

static int fos_shim_still_owned(fos_shim_conn *c, int fd) {
    for (int i = 0; i < FOS_SHIM_OWNED; i++) {
        if (fd >= 0 && __atomic_load_n(&c->owned[i], __ATOMIC_ACQUIRE) == fd + 1) return 1;
    }
    return 0;
}

/* Moves a descriptor of ours out of the way of the program's own numbering. */
static int fos_shim_high(int fd) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur < 64) return fd;
    long min = rl.rlim_cur == RLIM_INFINITY ? 1024 : (long)(rl.rlim_cur / 2);
    int nfd = (int)syscall(SYS_fcntl, fd, F_DUPFD_CLOEXEC, min);
    if (nfd < 0) return fd;
    fos_shim_sys_close(fd);
    return nfd;
}

/* Closes a channel's descriptors that are still ours (the program may have
 * closed one and reused its number) and unmaps it. */
static void fos_shim_chan_release(fos_shim_conn *c, fos_shim_chan *ch) {
    int *fds[3] = {&ch->memfd, &ch->wait_fd, &ch->wake_fd};
    for (int i = 0; i < 3; i++) {
        if (!fos_shim_still_owned(c, *fds[i])) *fds[i] = -1;
    }
    fos_shim_chan_unmap(ch);
}

static void fos_shim_drop(fos_shim_conn *c) {
    /* Writes sent ahead on it and not answered go again on the next one. */
    if (c->ahead.done < c->ahead.n) c->ahead.orphaned = 1;
    fos_shim_lease_clear(&c->leases); /* the channel's: it goes */
    fos_shim_chan_release(c, &c->fs);
    fos_shim_chan_release(c, &c->name);
    fos_shim_chan_release(c, &c->spawn);
    if (c->ctl >= 0 && fos_shim_still_owned(c, c->ctl)) fos_shim_sys_close(c->ctl);
    c->ctl = -1;
    for (int i = 0; i < FOS_SHIM_OWNED; i++) __atomic_store_n(&c->owned[i], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&c->lost, 0, __ATOMIC_RELEASE);
    c->up = 0;
}

void fos_shim_conn_notified(fos_shim_conn *c, uint16_t op, const void *payload, uint32_t len) {
    if (op == FOS_CTL_SHUTDOWN) {
        c->fs.closed = c->name.closed = c->spawn.closed = 1;
        return;
    }
    fos_ctl_channel_close cc;
    if (op != FOS_CTL_CHANNEL_CLOSE || len < sizeof cc) return;
    memcpy(&cc, payload, sizeof cc);
    fos_shim_chan *all[3] = {&c->fs, &c->name, &c->spawn};
    for (int i = 0; i < 3; i++) {
        if (all[i]->base && cc.channel == all[i]->id) all[i]->closed = 1;
    }
}

int fos_shim_conn_peer_gone(fos_shim_chan *ch) {
    fos_shim_conn *c = ch->conn;
    if (c && c->ctl >= 0 && fos_shim_ctl_drain(c, c->ctl) < 0) c->fs.closed = c->name.closed = c->spawn.closed = 1;
    return ch->closed;
}

int fos_shim_conn_ctl_fd(const fos_shim_chan *ch) { return ch->conn ? ch->conn->ctl : -1; }

static void fos_shim_nap_ms(long ms) {
    struct timespec ts = {0, ms * 1000000L};
    while (fos_shim_sys_nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int fos_shim_ctl(fos_shim_conn *c, uint16_t op, const void *payload, uint32_t len, void *reply, uint32_t cap,
                        uint32_t *rlen, int *fds, int maxfds, int *nfds) {
    return fos_shim_ctl_request(c, c->ctl, op, ++c->ctl_id, payload, len, reply, cap, rlen, fds, maxfds, nfds);
}

static int fos_shim_open_chan(fos_shim_conn *c, fos_shim_chan *ch, const fos_mailbox_addr *a, const uint8_t *key) {
    fos_ctl_connect req;
    memset(&req, 0, sizeof req);
    req.addr = *a;
    if (key) memcpy(req.key, key, FOS_KEY_BYTES);
    _Alignas(8) uint8_t rep[512];
    uint32_t rl = 0;
    int fds[8], nf = 0;
    int err = fos_shim_ctl(c, FOS_CTL_CONNECT, &req, sizeof req, rep, sizeof rep, &rl, fds, 3, &nf);
    if (err) return err;
    if (nf != 3 || rl < sizeof(fos_ctl_channel)) {
        for (int i = 0; i < nf; i++) fos_shim_sys_close(fds[i]);
        return EIO;
    }
    for (int i = 0; i < 3; i++) {
        fds[i] = fos_shim_high(fds[i]);
        fos_shim_own(c, fds[i]);
    }
    fos_ctl_channel info;
    memcpy(&info, rep, sizeof info);
    int r = fos_shim_chan_map(ch, &info, fds);
    if (r == 0) ch->conn = c;
    return r;
}

/* One member of `name`, not one of `dead`; waits while the fleet is not
 * registered yet (the fs fleet mounts the disk first). */
static int fos_shim_lookup(fos_shim_conn *c, const char *name, fos_name_entry *e, const fos_mailbox_addr *dead,
                           int ndead) {
    _Alignas(8) uint8_t msg[sizeof(fos_msg_hdr) + sizeof(fos_name_lookup) + 6 * sizeof(fos_mailbox_addr) + 16];
    _Alignas(8) uint8_t rep[sizeof(fos_name_entry) + FOS_MAX_NAME + 8];
    size_t nlen = strlen(name);
    fos_name_lookup l;
    memset(&l, 0, sizeof l);
    l.client_key = (uint64_t)c->pid;
    l.client_core = sched_getcpu();
    l.exclude_count = (uint32_t)ndead;
    l.name_len = (uint16_t)nlen;
    size_t at = sizeof(fos_msg_hdr);
    memcpy(msg + at, &l, sizeof l);
    at += sizeof l;
    memcpy(msg + at, dead, sizeof *dead * (size_t)ndead);
    at += sizeof *dead * (size_t)ndead;
    memcpy(msg + at, name, nlen);
    at += nlen;
    for (int tries = 0;; tries++) {
        uint32_t rl = 0;
        int32_t st = 0;
        int err = fos_shim_chan_call(&c->name, FOS_OP_NAME_LOOKUP, ++c->msg_id, msg, (uint32_t)at, NULL, 0, rep,
                                     sizeof rep, &rl, &st);
        if (err) return err;
        if (st == ENOENT && tries < 250) {
            fos_shim_nap_ms(20);
            continue;
        }
        if (st == ENOENT) return EHOSTDOWN;
        if (st) return st;
        if (rl < sizeof *e) return EIO;
        memcpy(e, rep, sizeof *e);
        if (rl < sizeof *e + e->name_len || e->addr.node == 0 || e->addr.mailbox == 0) return EIO;
        return 0;
    }
}

/* A channel to a member of `name` in *ch, through the name service (a
 * channel to it open only meanwhile). Members found dead on the way are
 * skipped. */
static int fos_shim_open_service(fos_shim_conn *c, const char *name, fos_shim_chan *ch, fos_name_entry *e,
                                 const fos_mailbox_addr *dead, int ndead) {
    int err = fos_shim_open_chan(c, &c->name, &c->ns_addr, NULL);
    fos_mailbox_addr gone[6];
    int ngone = ndead > 2 ? 2 : ndead;
    memcpy(gone, dead, sizeof *dead * (size_t)ngone);
    for (int tries = 0; err == 0; tries++) {
        err = fos_shim_lookup(c, name, e, gone, ngone);
        if (err == 0) err = fos_shim_open_chan(c, ch, &e->addr, e->key);
        /* Registered but already gone: ask for another member. */
        if ((err == ENOENT || err == ECONNREFUSED) && tries < 4) {
            gone[ngone++] = e->addr;
            err = 0;
            continue;
        }
        break;
    }
    if (c->name.base) fos_shim_ctl_notify_close(c->ctl, c->name.id);
    fos_shim_chan_release(c, &c->name);
    return err;
}

/* Whether this process's uid 0 is the host's: in a user namespace fosd
 * attests the uid ours maps to, which the member does not take for root.
 * (Read once; raw syscalls and no stdio: it may run in a signal handler.) */
static int fos_shim_host_root(void) {
    static int known; /* 0: not read yet, 1: the host's root, 2: not */
    int k = __atomic_load_n(&known, __ATOMIC_RELAXED);
    if (k != 0) return k == 1;
    k = 2;
    char b[80];
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/uid_map", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        long n = syscall(SYS_read, fd, b, sizeof b - 1);
        fos_shim_sys_close(fd);
        /* Every uid maps to itself: "0 0 4294967295" (the initial one). */
        unsigned long v[3] = {0, 0, 0};
        int f = 0;
        long i = 0;
        while (f < 3) {
            while (i < n && (b[i] == ' ' || b[i] == '\t')) i++;
            if (i >= n || b[i] < '0' || b[i] > '9') break;
            while (i < n && b[i] >= '0' && b[i] <= '9') v[f] = v[f] * 10 + (unsigned long)(b[i++] - '0');
            f++;
        }
        if (f == 3 && v[0] == 0 && v[1] == 0 && v[2] == 4294967295ul) k = 1;
    }
    __atomic_store_n(&known, k, __ATOMIC_RELAXED);
    return k == 1;
}

int fos_shim_conn_root;

static int fos_shim_connect(fos_shim_conn *c, const fos_mailbox_addr *dead, int ndead) {
    c->pid = (pid_t)syscall(SYS_getpid);
    if (c == &C) fos_shim_conn_root = syscall(SYS_geteuid) == 0 && fos_shim_host_root();
    int fd = fos_shim_ctl_open(fos_shim_cfg.runtime);
    if (fd < 0) return -fd;
    c->ctl = fos_shim_high(fd);
    fos_shim_own(c, c->ctl);
    struct stat st;
    c->ctl_ino = syscall(SYS_fstat, c->ctl, &st) == 0 ? (uint64_t)st.st_ino : 0;
    c->fs.memfd = c->fs.wait_fd = c->fs.wake_fd = -1;
    c->name.memfd = c->name.wait_fd = c->name.wake_fd = -1;
    c->spawn.memfd = c->spawn.wait_fd = c->spawn.wake_fd = -1;
    _Alignas(8) uint8_t rep[512];
    uint32_t rl = 0;
    int fds[8], nf = 0;
    int err = fos_shim_ctl(c, FOS_CTL_HELLO, NULL, 0, rep, sizeof rep, &rl, fds, 1, &nf);
    for (int i = 0; i < nf; i++) fos_shim_sys_close(fds[i]); /* the stats page: a client has none to show */
    if (err == 0 && rl < sizeof(fos_ctl_hello_reply)) err = EIO;
    if (err == 0) {
        fos_ctl_hello_reply hr;
        memcpy(&hr, rep, sizeof hr);
        __atomic_store_n(&fos_shim_node, hr.node, __ATOMIC_RELAXED);
    }
    for (int tries = 0; err == 0; tries++) {
        err = fos_shim_ctl(c, FOS_CTL_NAME_SERVICE, NULL, 0, rep, sizeof rep, &rl, fds, 0, &nf);
        if (err == EAGAIN && tries < 200) {
            err = 0;
            fos_shim_nap_ms(10);
            continue;
        }
        if (err == 0 && rl != sizeof c->ns_addr) err = EIO;
        if (err == 0) memcpy(&c->ns_addr, rep, sizeof c->ns_addr);
        break;
    }
    fos_name_entry e;
    if (err == 0) err = fos_shim_open_service(c, FOS_SHIM_FS_NAME, &c->fs, &e, dead, ndead);
    if (err) {
        fos_shim_drop(c);
        /* A node that answers but fails the handshake is as unusable as none. */
        return err == ETIMEDOUT || err == EIO || err == ENOENT ? EHOSTDOWN : err;
    }
    c->fs_addr = e.addr;
    c->fs.peer_core = e.core;
    c->up = 1;
    return 0;
}

/* A vfork child's connection left behind (it _exited without exec):
 * its descriptors were its own, its pages are ours to unmap. */
static void fos_shim_vconn_forget(fos_shim_conn *v) {
    fos_shim_chan *all[3] = {&v->fs, &v->name, &v->spawn};
    for (int i = 0; i < 3; i++) {
        if (all[i]->base) fos_shim_sys_munmap(all[i]->base, all[i]->size);
    }
    fos_shim_sys_munmap(v, sizeof *v);
}

/* The connection this thread's calls use; NULL if none can be had. */
static fos_shim_conn *fos_shim_conn_here(void) {
    fos_shim_conn *v = fos_shim_vconn;
    if (FOS_SHIM_LIKELY(!fos_shim_in_vfork_child())) {
        if (FOS_SHIM_UNLIKELY(v != NULL)) {
            fos_shim_vconn = NULL;
            fos_shim_vconn_forget(v);
        }
        return &C;
    }
    if (v && v->pid == (pid_t)syscall(SYS_getpid)) {
        /* Children of vfork close every descriptor before exec, often with
         * close_range, which no wrapper sees: if ours went, start again
         * (closing nothing: the numbers may be someone else's now). */
        struct stat st;
        if (!v->up || (syscall(SYS_fstat, v->ctl, &st) == 0 && (uint64_t)st.st_ino == v->ctl_ino)) return v;
    }
    if (v) fos_shim_vconn_forget(v); /* gone, or an earlier child's */
    void *p = mmap(NULL, sizeof *v, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return NULL;
    v = p;
    v->ctl = -1;
    pthread_mutex_init(&v->mu, NULL);
    v->pid = (pid_t)syscall(SYS_getpid);
    fos_shim_vconn = v;
    return v;
}

void fos_shim_conn_child_release(void) {
    fos_shim_conn *v = fos_shim_vconn;
    if (v == NULL || !fos_shim_in_vfork_child()) return;
    fos_shim_vconn = NULL;
    if (v->pid == (pid_t)syscall(SYS_getpid)) fos_shim_drop(v);
    fos_shim_sys_munmap(v, sizeof *v);
}

/* Enters a call on this thread's connection (locked, cancellation held
 * off; *err EINTR when re-entered from a signal handler). */
static fos_shim_conn *fos_shim_enter(int *cancel, int *err) {
    *err = EINTR;
    if (fos_shim_in_call) return NULL;
    fos_shim_conn *c = fos_shim_conn_here();
    *err = ENOMEM;
    if (c == NULL) return NULL;
    fos_shim_in_call = 1;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, cancel);
    pthread_mutex_lock(&c->mu);
    return c;
}

static void fos_shim_leave(fos_shim_conn *c, int cancel) {
    pthread_mutex_unlock(&c->mu);
    pthread_setcancelstate(cancel, NULL);
    fos_shim_in_call = 0;
}

/* One request on the service's channel: svc_fs, or the spawn service.
 * The request is c->msg[0..mlen) then bulk. `meanwhile` (if not NULL)
 * runs once, when an fs request is first sent, while the member serves it. */
static int fos_shim_call(int spawn, uint16_t op, const void *fixed, uint32_t flen, const void *tail, uint32_t tlen,
                         const void *bulk, uint32_t blen, void *out, uint32_t outcap, uint32_t *outlen,
                         void (*meanwhile)(void *), void *marg) {
    uint32_t mlen = (uint32_t)sizeof(fos_msg_hdr) + flen + tlen;
    if (mlen > sizeof C.msg) return ENAMETOOLONG;
    int cancel, err;
    fos_shim_conn *c = fos_shim_enter(&cancel, &err);
    if (c == NULL) return err;
    /* op 0 (fos_shim_fs_settle): no request, only the writes sent ahead
     * answered, or sent again to a new member if theirs died. */
    if (op == 0 && c->ahead.n == 0) {
        fos_shim_leave(c, cancel);
        return 0;
    }
    if (flen) memcpy(c->msg + sizeof(fos_msg_hdr), fixed, flen);
    if (tlen) memcpy(c->msg + sizeof(fos_msg_hdr) + flen, tail, tlen);
    fos_mailbox_addr dead[2];
    int ndead = 0;
    uint64_t sent = 0;
    fos_shim_ahead_q *q = &c->ahead;
    const fos_fs_io *io = !spawn && op == FOS_OP_FS_WRITE && flen == sizeof *io ? fixed : NULL;
    /* A SETATTR whose answer nobody reads (out NULL) may go ahead too. */
    int sa = !spawn && op == FOS_OP_FS_SETATTR && flen == sizeof(fos_fs_setattr) && out == NULL;
    fos_fs_stat scratch;
    if (out == NULL) {
        out = &scratch;
        outcap = sizeof scratch;
    }
    if (io && (err = fos_shim_ahead_take_late(q, io->ino)) != 0) {
        fos_shim_leave(c, cancel);
        return err;
    }
    for (int attempt = 0;; attempt++) {
        unsigned gen = __atomic_load_n(&fos_shim_cred_gen, __ATOMIC_ACQUIRE);
        if (c->up && (__atomic_load_n(&c->lost, __ATOMIC_ACQUIRE) || c->cred_gen != gen)) {
            /* The answers first, if they can be had: a program that closed
             * our descriptors leaves only those already there. */
            (void)fos_shim_ahead_collect(q, &c->fs, !__atomic_load_n(&c->lost, __ATOMIC_ACQUIRE));
            fos_shim_drop(c);
        }
        if (!c->up) {
            err = fos_shim_connect(c, dead, ndead);
            if (err) break;
            c->cred_gen = gen;
        }
        /* Writes sent ahead to a member that died go to this one first. */
        if (q->orphaned && (err = fos_shim_ahead_replay(q, &c->fs, &c->msg_id)) != 0) {
            dead[ndead++] = c->fs_addr;
            fos_shim_drop(c);
            if (err != EPIPE || attempt == 1) {
                fos_shim_ahead_lost(q);
                err = EIO;
                break;
            }
            continue;
        }
        /* Made before a replay found its file's create failed: the number
         * may be another file's now. */
        if (!spawn && op != 0 && fos_shim_ahead_dead(q, op, fixed, flen)) {
            err = ESTALE;
            break;
        }
        if (!spawn && op != 0) fos_shim_lease_before(&c->leases, op, fixed, flen, tail, tlen);
        /* Not a vfork child's (c is C only outside one: fos_shim_conn_here). */
        if ((io || sa) && c == &C && fos_shim_ahead_post(q, &c->fs, c->msg_id + 1, op, fixed, bulk) == 0) {
            c->msg_id++;
            if (io) {
                fos_fs_write_reply w = {.offset = io->offset, .count = io->count};
                memcpy(out, &w, sizeof w);
                *outlen = sizeof w;
            } else {
                *outlen = 0;
            }
            err = 0;
            break;
        }
        /* An fs request goes right behind those sent ahead (the member
         * serves it after them, and their answers come first); op 0 and a
         * spawn request only wait for their answers. */
        uint64_t id = 0;
        err = 0;
        if (op != 0 && !spawn) {
            /* Behind the request held back (ahead.c), if any. */
            err = fos_shim_ahead_flush(q, &c->fs);
        }
        if (err == 0 && op != 0 && !spawn) {
            id = ++c->msg_id;
            if (op == FOS_OP_FS_MKDIR) sent = fos_shim_now_ns(); /* a lease counts from here */
            err = fos_shim_chan_post(&c->fs, op, id, 0, c->msg, mlen, bulk, blen);
            if (err == 0 && meanwhile) {
                meanwhile(marg);
                meanwhile = NULL;
            }
        }
        if (err == 0 && q->n > 0 && (err = fos_shim_ahead_collect(q, &c->fs, 1)) != 0) {
            dead[ndead++] = c->fs_addr;
            fos_shim_drop(c);
            if (attempt == 1) {
                fos_shim_ahead_lost(q);
                err = EIO;
                break;
            }
            /* A member that is gone (EPIPE): ours goes again after those,
             * as any request whose member died before answering (it may
             * have been served: once more elsewhere, as FSClient does).
             * Otherwise (no answer in time, a broken reply) the member may
             * still serve it: not sent twice. */
            if (id != 0 && err != EPIPE) {
                err = EIO;
                break;
            }
            continue;
        }
        if (err == 0 && op == 0) break;
        if (err == 0 && spawn) {
            fos_name_entry e;
            err = c->spawn.base ? 0 : fos_shim_open_service(c, FOS_SHIM_SPAWN_NAME, &c->spawn, &e, NULL, 0);
            if (err == 0) {
                int32_t st = 0;
                err = fos_shim_chan_call(&c->spawn, op, ++c->msg_id, c->msg, mlen, bulk, blen, out, outcap, outlen,
                                         &st);
                if (err == 0) err = st;
                else fos_shim_chan_release(c, &c->spawn);
            }
            /* Not retried: a spawn that may have started must not start twice. */
            if (err == EPIPE || err == ETIMEDOUT) err = EHOSTDOWN;
            break;
        }
        int32_t st = 0;
        if (err == 0) err = fos_shim_chan_wait(&c->fs, op, id, out, outcap, outlen, &st);
        if (err == 0) {
            q->ok = (c->fs.reply_flags & FOS_MSG_AHEAD_OK) != 0;
            err = st;
            if (err == 0 && op == FOS_OP_FS_MKDIR && *outlen > sizeof(fos_fs_stat)) {
                fos_shim_lease_granted(&c->leases, fos_shim_lease_mkdir_path, out, *outlen, sent);
            }
            if (err == 0 && op == FOS_OP_FS_FSYNC && flen >= sizeof(uint64_t)) {
                uint64_t ino;
                memcpy(&ino, fixed, sizeof ino);
                err = fos_shim_ahead_take_late(q, ino);
            }
            break;
        }
        /* The member died (fosd restarts it) or broke the protocol: never
         * reuse a channel whose state is unknown. Once more elsewhere, as
         * FSClient does, if it died. */
        dead[ndead++] = c->fs_addr;
        fos_shim_drop(c);
        if (err != EPIPE || attempt == 1) {
            if (err == EPIPE) err = EIO;
            break;
        }
    }
    fos_shim_leave(c, cancel);
    return err;
}

/* Whether c is up and still this process's, with these credentials. */
static int fos_shim_conn_current(fos_shim_conn *c) {
    return c->up && !__atomic_load_n(&c->lost, __ATOMIC_ACQUIRE) &&
           c->cred_gen == __atomic_load_n(&fos_shim_cred_gen, __ATOMIC_ACQUIRE);
}

int fos_shim_fs_leased_dir(const char *fspath, uint64_t *ino) {
    /* Most processes never hold one: no lock, no getpid for them. */
    if (!fos_shim_lease_any(&C.leases) || fos_shim_in_vfork_child()) return 0;
    int cancel, err;
    fos_shim_conn *c = fos_shim_enter(&cancel, &err);
    if (c == NULL) return 0;
    int found = 0;
    if (fos_shim_conn_current(c)) {
        const fos_shim_lease *l = fos_shim_lease_at(&c->leases, fspath, fos_shim_now_ns());
        if (l) {
            *ino = l->dir;
            found = 1;
        }
    }
    fos_shim_leave(c, cancel);
    return found;
}

int fos_shim_fs_create_leased(const char *fspath, uint32_t sent, uint32_t perm, fos_fs_stat *st) {
    if (!fos_shim_lease_any(&C.leases) || (perm & ~0777u) != 0) return 1;
    if ((sent & ~(uint32_t)(O_ACCMODE | O_CREAT | O_EXCL | O_TRUNC | O_NOFOLLOW)) != 0) return 1;
    if (fos_shim_in_vfork_child()) return 1;
    int cancel, err;
    fos_shim_conn *c = fos_shim_enter(&cancel, &err);
    if (c == NULL) return 1;
    fos_shim_ahead_q *q = &c->ahead;
    const char *name;
    uint32_t nlen;
    fos_shim_lease *l = NULL;
    if (fos_shim_conn_current(c) && !q->orphaned && q->ok) {
        l = fos_shim_lease_for(&c->leases, fspath, &name, &nlen, fos_shim_now_ns());
    }
    if (l == NULL) {
        fos_shim_leave(c, cancel);
        return 1;
    }
    uint64_t ino = l->inos[l->next];
    fos_fs_create cr = {.dir = l->dir, .rdev = ino, .mode = perm, .flags = sent | FOS_FS_CREATE_LEASED,
                        .name_len = nlen};
    if (fos_shim_ahead_post(q, &c->fs, c->msg_id + 1, FOS_OP_FS_CREATE, &cr, name) != 0) {
        fos_shim_leave(c, cancel);
        return 1;
    }
    c->msg_id++;
    fos_shim_lease_used(l, name, nlen);
    int r = 0;
    /* Published before the expiry, or the member may have served someone
     * else first: then its answer decides (fos_wire.h). */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (fos_shim_now_ns() + FOS_SHIM_LEASE_MARGIN_NS / 2 >= l->expires_ns) {
        if (fos_shim_ahead_collect(q, &c->fs, 1) != 0) {
            /* The member is gone: it goes again to the next one, with the
             * same inode number, as every request sent ahead does. */
            fos_shim_drop(c);
        } else {
            r = -fos_shim_ahead_take_late(q, ino);
        }
    }
    fos_shim_leave(c, cancel);
    if (r) return r;
    *st = (fos_fs_stat){.ino = ino, .mode = S_IFREG | perm, .nlink = 1};
    return 0;
}

int fos_shim_fs_call(uint16_t op, const void *fixed, uint32_t flen, const void *tail, uint32_t tlen,
                     const void *bulk, uint32_t blen, void *out, uint32_t outcap, uint32_t *outlen,
                     void (*meanwhile)(void *), void *arg) {
    return fos_shim_call(0, op, fixed, flen, tail, tlen, bulk, blen, out, outcap, outlen, meanwhile, arg);
}

static int fos_shim_fs_unsettled(void) {
    fos_shim_ahead_q *q = &C.ahead;
    if (__atomic_load_n(&q->n, __ATOMIC_RELAXED) != 0) return 1;
    for (unsigned i = 0; i < sizeof q->late / sizeof q->late[0]; i++) {
        if (__atomic_load_n(&q->late[i].ino, __ATOMIC_RELAXED) != 0) return 1;
    }
    return 0;
}

/* The error an answer brought for ino; first, with wait, all answers
 * (sent again to a new member if theirs died), else those already there. */
static int fos_shim_fs_answers(uint64_t ino, int wait) {
    /* A vfork child never sends ahead (C is its parent's). */
    if (!fos_shim_fs_unsettled() || fos_shim_in_vfork_child()) return 0;
    if (wait) (void)fos_shim_call(0, 0, NULL, 0, NULL, 0, NULL, 0, NULL, 0, NULL, NULL, NULL);
    if (ino == 0) return 0;
    int cancel, err;
    fos_shim_conn *c = fos_shim_enter(&cancel, &err);
    if (c == NULL) return 0;
    fos_shim_ahead_q *q = &c->ahead;
    /* A channel whose state is unknown is not read again (the next
     * call connects afresh and sends the unanswered ones again). */
    if (!wait && c->up && !__atomic_load_n(&c->lost, __ATOMIC_ACQUIRE) && q->done < q->n &&
        (fos_shim_ahead_flush(q, &c->fs) != 0 || fos_shim_ahead_collect(q, &c->fs, 0) != 0)) {
        fos_shim_drop(c);
    }
    err = fos_shim_ahead_take_late(q, ino);
    fos_shim_leave(c, cancel);
    return err;
}

int fos_shim_fs_settle(uint64_t ino) { return fos_shim_fs_answers(ino, 1); }

void fos_shim_fs_flush(void) {
    /* A vfork child's C is its parent's, which it must not use. */
    if (fos_shim_in_vfork_child()) return;
    int saved = errno;
    int cancel, err;
    fos_shim_conn *c = fos_shim_enter(&cancel, &err);
    if (c == NULL) {
        errno = saved;
        return;
    }
    fos_shim_ahead_q *q = &c->ahead;
    int stranded = 0;
    if (c == &C && fos_shim_ahead_held_w(q)) {
        /* A channel whose state is unknown is not used again. */
        if (c->up && !__atomic_load_n(&c->lost, __ATOMIC_ACQUIRE) && fos_shim_ahead_flush(q, &c->fs) != 0) {
            fos_shim_drop(c);
        }
        stranded = fos_shim_ahead_held_w(q) != NULL;
    }
    fos_shim_leave(c, cancel);
    /* No channel to send it on: connect afresh and send it again with
     * the others (their answers are waited for), rather than leave it
     * for a next call that may not come (_exit). */
    if (stranded) (void)fos_shim_fs_settle(0);
    errno = saved;
}

int fos_shim_fs_late(uint64_t ino) { return fos_shim_fs_answers(ino, 0); }

int fos_shim_spawn_call(uint16_t op, const void *payload, uint32_t len, void *out, uint32_t outcap, uint32_t *outlen) {
    return fos_shim_call(1, op, NULL, 0, NULL, 0, payload, len, out, outcap, outlen, NULL, NULL);
}

uint64_t fos_shim_node;

int fos_shim_fetch(const uint8_t *tag, int *fd) {
    int cancel, err;
    fos_shim_conn *c = fos_shim_enter(&cancel, &err);
    if (c == NULL) return err;
    _Alignas(8) uint8_t rep[64];
    uint32_t rl = 0;
    int fds[8], nf = 0;
    fos_ctl_fetch f;
    memcpy(f.tag, tag, FOS_KEY_BYTES);
    err = c->up ? fos_shim_ctl(c, FOS_CTL_FETCH, &f, sizeof f, rep, sizeof rep, &rl, fds, 1, &nf) : EHOSTDOWN;
    if (err == 0 && nf != 1) {
        for (int i = 0; i < nf; i++) fos_shim_sys_close(fds[i]);
        err = EIO;
    }
    if (err == 0) *fd = fds[0];
    fos_shim_leave(c, cancel);
    return err;
}

void fos_shim_creds_changed(void) { __atomic_fetch_add(&fos_shim_cred_gen, 1, __ATOMIC_ACQ_REL); }

/* In the child of fork: the lock may have been held by a thread that does
 * not exist here, and the connection is the parent's (fosd attested the
 * parent's pid). Close our copies only; the next call connects afresh. */
void fos_shim_conn_atfork_child(void) {
    fos_shim_proc_pid = (pid_t)syscall(SYS_getpid);
    pthread_mutex_init(&C.mu, NULL);
    if (C.up || C.ctl >= 0) fos_shim_drop(&C);
    fos_shim_ahead_forget(&C.ahead); /* the parent's, which it takes itself */
    fos_shim_lease_clear(&C.leases);  /* the parent's channel's */
    fos_shim_in_call = 0;
    fos_shim_vconn = NULL;
}
