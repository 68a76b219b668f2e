/*
 * The process's connection to its node, made on the first fos call: the
 * control socket to fosd (HELLO), the name service (NAME_SERVICE, CONNECT,
 * LOOKUP of /sys/fs), then a channel to one fs member, as libfos does
 * (FosCore/Runtime.swift, Names.swift, FosFSClient/FSClient.swift).
 *
 * One channel per process, one call in flight, behind a mutex. A wrapper
 * entered again on the same thread while it is inside a call (a signal
 * handler that touches fos) fails with EINTR at once instead of
 * deadlocking; pthread cancellation is held off during a call.
 *
 * fosd attests the process's pid and credentials once, when the control
 * socket connects, and the fs fleet checks permissions with those (its
 * supplementary groups when the channel's first request arrives). So a
 * forked child drops its inherited copy (its own descriptors only: the
 * parent's connection lives on) and connects anew, and a process whose
 * credentials changed (setuid and friends, see creds.c) reconnects before
 * its next call. A descriptor of ours that the program closes or
 * overwrites (a daemon closing every descriptor) makes the next call
 * reconnect too.
 */
#include "shim.h"

#include <pthread.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>

#define FOS_SHIM_FS_NAME "/sys/fs"
#define FOS_SHIM_OWNED 8

static struct {
    pthread_mutex_t mu;
    int up;
    int ctl;
    uint64_t ctl_id;
    uint64_t msg_id;
    unsigned cred_gen;
    fos_mailbox_addr fs_addr;
    fos_shim_chan fs;
    fos_shim_chan name; /* open only while connecting */
} C = {.mu = PTHREAD_MUTEX_INITIALIZER, .ctl = -1};

static unsigned fos_shim_cred_gen;
static int fos_shim_lost;
static int fos_shim_owned[FOS_SHIM_OWNED]; /* fd + 1 of each descriptor we hold; 0 = free */
static FOS_SHIM_TLS int fos_shim_in_call;

/* Requests are assembled here under the lock: [hdr][fixed][tail]. */
static _Alignas(8) uint8_t fos_shim_msg[sizeof(fos_msg_hdr) + 64 + FOS_SHIM_PATH_BUF + 2 * FOS_FS_NAME_MAX];

static void fos_shim_own(int fd) {
    for (int i = 0; i < FOS_SHIM_OWNED; i++) {
        int z = 0;
        if (__atomic_compare_exchange_n(&fos_shim_owned[i], &z, fd + 1, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) return;
    }
}

int fos_shim_conn_owns(int fd) {
    int hit = 0;
    for (int i = 0; i < FOS_SHIM_OWNED; i++) {
        int v = fd + 1;
        if (__atomic_load_n(&fos_shim_owned[i], __ATOMIC_RELAXED) != v) continue;
        if (__atomic_compare_exchange_n(&fos_shim_owned[i], &v, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) hit = 1;
    }
    if (hit) __atomic_store_n(&fos_shim_lost, 1, __ATOMIC_RELEASE);
    return hit;
}

static int fos_shim_still_owned(int fd) {
    for (int i = 0; i < FOS_SHIM_OWNED; i++) {
        if (fd >= 0 && __atomic_load_n(&fos_shim_owned[i], __ATOMIC_ACQUIRE) == fd + 1) return 1;
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
static void fos_shim_chan_release(fos_shim_chan *c) {
    int *fds[3] = {&c->memfd, &c->wait_fd, &c->wake_fd};
    for (int i = 0; i < 3; i++) {
        if (!fos_shim_still_owned(*fds[i])) *fds[i] = -1;
    }
    fos_shim_chan_unmap(c);
}

static void fos_shim_drop(void) {
    fos_shim_chan_release(&C.fs);
    fos_shim_chan_release(&C.name);
    if (C.ctl >= 0 && fos_shim_still_owned(C.ctl)) fos_shim_sys_close(C.ctl);
    C.ctl = -1;
    for (int i = 0; i < FOS_SHIM_OWNED; i++) __atomic_store_n(&fos_shim_owned[i], 0, __ATOMIC_RELEASE);
    __atomic_store_n(&fos_shim_lost, 0, __ATOMIC_RELEASE);
    C.up = 0;
}

int fos_shim_conn_ctl_fd(void) { return C.ctl; }

void fos_shim_conn_notified(uint16_t op, const void *payload, uint32_t len) {
    if (op == FOS_CTL_SHUTDOWN) {
        C.fs.closed = C.name.closed = 1;
        return;
    }
    fos_ctl_channel_close cc;
    if (op != FOS_CTL_CHANNEL_CLOSE || len < sizeof cc) return;
    memcpy(&cc, payload, sizeof cc);
    if (C.fs.base && cc.channel == C.fs.id) C.fs.closed = 1;
    if (C.name.base && cc.channel == C.name.id) C.name.closed = 1;
}

int fos_shim_conn_peer_gone(fos_shim_chan *c) {
    if (C.ctl >= 0 && fos_shim_ctl_drain(C.ctl) < 0) C.fs.closed = C.name.closed = 1;
    return c->closed;
}

static void fos_shim_nap_ms(long ms) {
    struct timespec ts = {0, ms * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {}
}

static int fos_shim_ctl(uint16_t op, const void *payload, uint32_t len, void *reply, uint32_t cap,
                        uint32_t *rlen, int *fds, int maxfds, int *nfds) {
    return fos_shim_ctl_request(C.ctl, op, ++C.ctl_id, payload, len, reply, cap, rlen, fds, maxfds, nfds);
}

static int fos_shim_open_chan(fos_shim_chan *c, const fos_mailbox_addr *a, const uint8_t *key) {
    fos_ctl_connect req;
    memset(&req, 0, sizeof req);
    req.addr = *a;
    if (key) memcpy(req.key, key, FOS_KEY_BYTES);
    _Alignas(8) uint8_t rep[512];
    uint32_t rl = 0;
    int fds[8], nf = 0;
    int err = fos_shim_ctl(FOS_CTL_CONNECT, &req, sizeof req, rep, sizeof rep, &rl, fds, 3, &nf);
    if (err) return err;
    if (nf != 3 || rl < sizeof(fos_ctl_channel)) {
        for (int i = 0; i < nf; i++) fos_shim_sys_close(fds[i]);
        return EIO;
    }
    for (int i = 0; i < 3; i++) {
        fds[i] = fos_shim_high(fds[i]);
        fos_shim_own(fds[i]);
    }
    fos_ctl_channel info;
    memcpy(&info, rep, sizeof info);
    return fos_shim_chan_map(c, &info, fds);
}

/* One member of /sys/fs, not one of `dead`; waits while the fleet is not
 * registered yet (it mounts the disk first). */
static int fos_shim_lookup_fs(fos_name_entry *e, const fos_mailbox_addr *dead, int ndead) {
    static _Alignas(8) uint8_t msg[sizeof(fos_msg_hdr) + sizeof(fos_name_lookup) + 6 * sizeof(fos_mailbox_addr) + 16];
    _Alignas(8) uint8_t rep[sizeof(fos_name_entry) + FOS_MAX_NAME + 8];
    fos_name_lookup l;
    memset(&l, 0, sizeof l);
    l.client_key = (uint64_t)getpid();
    l.client_core = sched_getcpu();
    l.exclude_count = (uint32_t)ndead;
    l.name_len = (uint16_t)(sizeof FOS_SHIM_FS_NAME - 1);
    size_t at = sizeof(fos_msg_hdr);
    memcpy(msg + at, &l, sizeof l);
    at += sizeof l;
    memcpy(msg + at, dead, sizeof *dead * (size_t)ndead);
    at += sizeof *dead * (size_t)ndead;
    memcpy(msg + at, FOS_SHIM_FS_NAME, sizeof FOS_SHIM_FS_NAME - 1);
    at += sizeof FOS_SHIM_FS_NAME - 1;
    for (int tries = 0;; tries++) {
        uint32_t rl = 0;
        int32_t st = 0;
        int err = fos_shim_chan_call(&C.name, FOS_OP_NAME_LOOKUP, ++C.msg_id, msg, (uint32_t)at, NULL, 0, rep,
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

static int fos_shim_connect(const fos_mailbox_addr *dead, int ndead) {
    int fd = fos_shim_ctl_open(fos_shim_cfg.runtime);
    if (fd < 0) return -fd;
    C.ctl = fos_shim_high(fd);
    fos_shim_own(C.ctl);
    C.fs.memfd = C.fs.wait_fd = C.fs.wake_fd = -1;
    C.name.memfd = C.name.wait_fd = C.name.wake_fd = -1;
    _Alignas(8) uint8_t rep[512];
    uint32_t rl = 0;
    int fds[8], nf = 0;
    int err = fos_shim_ctl(FOS_CTL_HELLO, NULL, 0, rep, sizeof rep, &rl, fds, 1, &nf);
    for (int i = 0; i < nf; i++) fos_shim_sys_close(fds[i]); /* the stats page: a client has none to show */
    if (err == 0 && rl < sizeof(fos_ctl_hello_reply)) err = EIO;
    fos_mailbox_addr ns;
    for (int tries = 0; err == 0; tries++) {
        err = fos_shim_ctl(FOS_CTL_NAME_SERVICE, NULL, 0, rep, sizeof rep, &rl, fds, 0, &nf);
        if (err == EAGAIN && tries < 200) {
            err = 0;
            fos_shim_nap_ms(10);
            continue;
        }
        if (err == 0 && rl != sizeof ns) err = EIO;
        if (err == 0) memcpy(&ns, rep, sizeof ns);
        break;
    }
    if (err == 0) err = fos_shim_open_chan(&C.name, &ns, NULL);
    fos_name_entry e;
    fos_mailbox_addr gone[6];
    int ngone = ndead > 2 ? 2 : ndead;
    memcpy(gone, dead, sizeof *dead * (size_t)ngone);
    for (int tries = 0; err == 0; tries++) {
        err = fos_shim_lookup_fs(&e, gone, ngone);
        if (err == 0) err = fos_shim_open_chan(&C.fs, &e.addr, e.key);
        /* Registered but already gone: ask for another member. */
        if ((err == ENOENT || err == ECONNREFUSED) && tries < 4) {
            gone[ngone++] = e.addr;
            err = 0;
            continue;
        }
        break;
    }
    if (C.name.base) fos_shim_ctl_notify_close(C.ctl, C.name.id);
    fos_shim_chan_release(&C.name);
    if (err) {
        fos_shim_drop();
        /* A node that answers but fails the handshake is as unusable as none. */
        return err == ETIMEDOUT || err == EIO || err == ENOENT ? EHOSTDOWN : err;
    }
    C.fs_addr = e.addr;
    C.fs.peer_core = e.core;
    C.up = 1;
    return 0;
}

int fos_shim_fs_call(uint16_t op, const void *fixed, uint32_t flen, const void *tail, uint32_t tlen,
                     const void *bulk, uint32_t blen, void *out, uint32_t outcap, uint32_t *outlen) {
    uint32_t mlen = (uint32_t)sizeof(fos_msg_hdr) + flen + tlen;
    if (mlen > sizeof fos_shim_msg) return ENAMETOOLONG;
    if (fos_shim_in_call) return EINTR;
    fos_shim_in_call = 1;
    int cancel;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &cancel);
    pthread_mutex_lock(&C.mu);
    if (flen) memcpy(fos_shim_msg + sizeof(fos_msg_hdr), fixed, flen);
    if (tlen) memcpy(fos_shim_msg + sizeof(fos_msg_hdr) + flen, tail, tlen);
    fos_mailbox_addr dead[2];
    int ndead = 0;
    int err;
    for (int attempt = 0;; attempt++) {
        unsigned gen = __atomic_load_n(&fos_shim_cred_gen, __ATOMIC_ACQUIRE);
        if (C.up && (__atomic_load_n(&fos_shim_lost, __ATOMIC_ACQUIRE) || C.cred_gen != gen)) fos_shim_drop();
        if (!C.up) {
            err = fos_shim_connect(dead, ndead);
            if (err) break;
            C.cred_gen = gen;
        }
        int32_t st = 0;
        err = fos_shim_chan_call(&C.fs, op, ++C.msg_id, fos_shim_msg, mlen, bulk, blen, out, outcap, outlen, &st);
        if (err == 0) {
            err = st;
            break;
        }
        /* The member died (fosd restarts it) or broke the protocol: never
         * reuse a channel whose state is unknown. Once more elsewhere, as
         * FSClient does, if it died. */
        dead[ndead++] = C.fs_addr;
        fos_shim_drop();
        if (err != EPIPE || attempt == 1) {
            if (err == EPIPE) err = EIO;
            break;
        }
    }
    pthread_mutex_unlock(&C.mu);
    pthread_setcancelstate(cancel, NULL);
    fos_shim_in_call = 0;
    return err;
}

void fos_shim_creds_changed(void) { __atomic_fetch_add(&fos_shim_cred_gen, 1, __ATOMIC_ACQ_REL); }

/* In the child of fork: the lock may have been held by a thread that does
 * not exist here, and the connection is the parent's (fosd attested the
 * parent's pid). Close our copies only; the next call connects afresh. */
void fos_shim_conn_atfork_child(void) {
    pthread_mutex_init(&C.mu, NULL);
    if (C.up || C.ctl >= 0) fos_shim_drop();
    fos_shim_in_call = 0;
}
