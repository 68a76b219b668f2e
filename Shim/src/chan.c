/*
 * A channel to a server, client side, as FosCore/Channel.swift keeps it: a
 * size-sealed memfd with the request and reply rings (fos_ring.h) and two
 * eventfds. A call is one request and its reply: the sender spins briefly
 * for the reply, then announces sleep (consumer_sleeping, full fence,
 * re-check: the Dekker protocol of fos_ring.h) and waits on its eventfd,
 * and on fosd's socket, which says when the server side is gone.
 *
 * The shim has one call in flight per channel, but for requests sent
 * ahead (ahead.c), whose replies it takes in order before its next call's
 * own: any record that is not the reply waited for breaks the protocol
 * (EIO, and the caller drops the channel).
 */
#include "shim.h"

#include <poll.h>
#include <sched.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define FOS_SHIM_CALL_TIMEOUT_NS (120ull * 1000000000ull)

uint64_t fos_shim_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void fos_shim_efd_signal(int fd) {
    uint64_t one = 1;
    (void)syscall(SYS_write, fd, &one, sizeof one); /* EAGAIN: already signalled */
}

static void fos_shim_efd_drain(int fd) {
    uint64_t v;
    (void)syscall(SYS_read, fd, &v, sizeof v);
}

int fos_shim_chan_map(fos_shim_chan *c, const fos_ctl_channel *info, int fds[3]) {
    memset(c, 0, sizeof *c);
    c->memfd = c->wait_fd = c->wake_fd = -1;
    c->peer_core = -1;
    uint32_t rb = info->ring_bytes;
    size_t size = (size_t)fos_chan_size(rb);
    struct stat st;
    /* Only a size-sealed memfd is safe to map: a peer that could shrink it
     * would make our next access die of SIGBUS. */
    long seals = syscall(SYS_fcntl, fds[0], F_GET_SEALS);
    void *p = MAP_FAILED;
    if (fos_ring_bytes_valid(rb) && seals >= 0 && (seals & F_SEAL_SHRINK) && syscall(SYS_fstat, fds[0], &st) == 0 &&
        (uint64_t)st.st_size >= size) {
        p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fds[0], 0);
    }
    if (p == MAP_FAILED) {
        for (int i = 0; i < 3; i++) fos_shim_sys_close(fds[i]);
        return EIO;
    }
    fos_chan_shm *shm = p;
    c->base = p;
    c->size = size;
    c->memfd = fds[0];
    c->wake_fd = fds[1];
    c->wait_fd = fds[2];
    c->id = info->channel;
    fos_ring_init(&c->tx, &shm->req, fos_chan_req_data(p), rb);
    fos_ring_init(&c->rx, &shm->rep, fos_chan_rep_data(p, rb), rb);
    return 0;
}

void fos_shim_chan_unmap(fos_shim_chan *c) {
    if (c->base) fos_shim_sys_munmap(c->base, c->size);
    if (c->memfd >= 0) fos_shim_sys_close(c->memfd);
    if (c->wait_fd >= 0) fos_shim_sys_close(c->wait_fd);
    if (c->wake_fd >= 0) fos_shim_sys_close(c->wake_fd);
    memset(c, 0, sizeof *c);
    c->memfd = c->wait_fd = c->wake_fd = -1;
}

/* Waits up to ms for the eventfd or for fosd; 1 if the peer is gone. */
static int fos_shim_chan_sleep(fos_shim_chan *c, int ms) {
    struct pollfd p[2] = {{.fd = c->wait_fd, .events = POLLIN}, {.fd = fos_shim_conn_ctl_fd(c), .events = POLLIN}};
    int n = fos_shim_sys_poll(p, p[1].fd >= 0 ? 2 : 1, ms);
    if (n > 0 && (p[0].revents & POLLIN)) fos_shim_efd_drain(c->wait_fd);
    if (n > 0 && p[1].revents) return fos_shim_conn_peer_gone(c);
    return c->closed;
}

static int fos_shim_chan_send(fos_shim_chan *c, const void *a, uint32_t alen, const void *b, uint32_t blen,
                              uint64_t deadline) {
    for (int spins = 0;; spins++) {
        int r = fos_ring_write2(&c->tx, a, alen, b, blen);
        if (r == 0) break;
        if (r != -EAGAIN) return EIO;
        if (spins < 2000) {
            fos_cpu_relax();
            continue;
        }
        if (fos_shim_now_ns() > deadline) return ETIMEDOUT;
        int gone = 0;
        if (!fos_ring_prepare_wait_space(&c->tx, alen + blen)) gone = fos_shim_chan_sleep(c, 1);
        fos_ring_space_done(&c->tx);
        if (gone) return EPIPE;
    }
    if (fos_ring_consumer_asleep(&c->tx)) fos_shim_efd_signal(c->wake_fd);
    return 0;
}

/* Consumes the next record if there is one: 1 (with *ok set if it is the
 * reply to (op, id) and its payload fit in out), 0 if none, -EPROTO for a
 * corrupt ring. fos_ring_read, but with the payload copied straight into
 * the caller's buffer (a read's data lands in the program's memory). */
static int fos_shim_take(fos_ring *r, uint16_t op, uint64_t id, fos_msg_hdr *h, void *out, uint32_t outcap, int *ok) {
    int64_t next = fos_ring_next(r);
    if (next <= 0) return (int)next;
    uint32_t len = (uint32_t)next;
    uint64_t need = FOS_RING_RECORD_HDR + fos_ring_align8(len);
    *ok = 0;
    if (len >= sizeof *h) {
        fos_ring_copy_out(r, r->pos + FOS_RING_RECORD_HDR, h, sizeof *h);
        int mine = h->version == FOS_WIRE_VERSION && (h->flags & FOS_MSG_REPLY) && h->request_id == id &&
                   (h->opcode == op || (h->opcode == FOS_OP_ERROR && h->status > 0));
        if (mine && h->payload_len == len - sizeof *h && h->payload_len <= outcap && h->status >= 0) {
            fos_ring_copy_out(r, r->pos + FOS_RING_RECORD_HDR + sizeof *h, out, h->payload_len);
            *ok = 1;
        }
    }
    r->pos += need;
    return 1;
}

/* Calls in a row this thread made on its server's core. */
static FOS_SHIM_TLS unsigned fos_shim_same_core_calls;
/* When a thread of this process last left a server's core (ns). */
static uint64_t fos_shim_left_core_at;

/* Set once a seccomp filter was seen: filters are never removed, and one
 * may forbid sched_setaffinity (systemd's SystemCallFilter=~@resources
 * kills the process with SIGSYS for it). */
static int fos_shim_filtered;

/* Whether this thread runs without a seccomp filter, from Seccomp: in
 * /proc/thread-self/status. Read again at every move while it says none
 * (a process may sandbox itself later; a move is at most every 2 ms).
 * Raw calls and a stack buffer: this may run in a signal handler's fos
 * call; never inlined, so that the buffer is not in every call's frame. */
static __attribute__((noinline, cold)) int fos_shim_unfiltered(void) {
    if (__atomic_load_n(&fos_shim_filtered, __ATOMIC_RELAXED)) return 0;
    char buf[4096];
    long n = -1;
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/thread-self/status", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        n = syscall(SYS_read, fd, buf, sizeof buf - 1);
        fos_shim_sys_close(fd);
    }
    if (n <= 0) return 0;
    buf[n] = 0;
    const char *p = strstr(buf, "\nSeccomp:");
    if (!p) return 0;
    p += 9;
    while (*p == ' ' || *p == '\t') p++;
    if (*p == '0') return 1;
    if (*p >= '1' && *p <= '9') __atomic_store_n(&fos_shim_filtered, 1, __ATOMIC_RELAXED);
    return 0;
}

/* Moves this thread off the server's core when it keeps landing there:
 * out of the thread's allowed cores and straight back in. The kernel
 * migrates a thread whose core is no longer allowed at once, and the
 * restored set leaves it where it went. 1 if it moved.
 *
 * Why: the fs member is pinned and spins between requests. A program
 * forked while the member slept (it sleeps after its spin) is often put
 * on the member's core, and there the two take turns (yielding, see
 * below) while another core stays idle: the load balancer pulls the
 * program away only after 10-50 ms, as the member blocks between bursts.
 * A tar extraction of 600 files took 75-95 ms instead of 52 when it
 * started there. A process that only makes a call now and then never
 * gets 16 in a row there. At most once per 2 ms in a process (the kernel
 * may move it back when the other cores are busy); never if the thread
 * may run only there, under a seccomp filter, or with FOS_LEAVE_CORE=0.
 * The restored set is the one read before, now set explicitly: a change
 * made to it by another thread in between is lost. */
static int fos_shim_leave_core(int core, uint64_t now) {
    if (++fos_shim_same_core_calls < 16) return 0;
    fos_shim_same_core_calls = 0;
    uint64_t last = __atomic_load_n(&fos_shim_left_core_at, __ATOMIC_RELAXED);
    if (!fos_shim_cfg.leave_core || now - last < 2000000ull) return 0;
    __atomic_store_n(&fos_shim_left_core_at, now, __ATOMIC_RELAXED);
    int saved = errno, moved = 0;
    cpu_set_t was, off;
    if (core < CPU_SETSIZE && fos_shim_unfiltered() && sched_getaffinity(0, sizeof was, &was) == 0 &&
        CPU_ISSET(core, &was) && CPU_COUNT(&was) >= 2) {
        off = was;
        CPU_CLR(core, &off);
        if (sched_setaffinity(0, sizeof off, &off) == 0) {
            moved = 1;
            /* Should the restore fail, the thread is only kept off that core. */
            if (sched_setaffinity(0, sizeof was, &was) != 0) (void)sched_setaffinity(0, sizeof was, &was);
        }
    }
    errno = saved;
    return moved;
}

int fos_shim_chan_on_peer_core(const fos_shim_chan *c) {
    return c->peer_core >= 0 && sched_getcpu() == c->peer_core;
}

int fos_shim_chan_post(fos_shim_chan *c, uint16_t op, uint64_t id, uint32_t flags, uint8_t *msg, uint32_t mlen,
                       const void *bulk, uint32_t blen) {
    if (c->closed) return EPIPE;
    /* Each request counts once toward leaving the server's core (not each
     * wait: taking the answers of writes sent ahead is not a call). */
    if (fos_shim_chan_on_peer_core(c)) {
        (void)fos_shim_leave_core(c->peer_core, fos_shim_now_ns());
    } else {
        fos_shim_same_core_calls = 0;
    }
    fos_msg_hdr rq = {.version = FOS_WIRE_VERSION, .opcode = op, .flags = flags, .request_id = id,
                      .payload_len = mlen - (uint32_t)sizeof rq + blen};
    if (flags & FOS_MSG_AHEAD) rq.status = (int32_t)(uint32_t)(fos_shim_now_ns() >> FOS_MSG_AHEAD_STAMP_SHIFT);
    memcpy(msg, &rq, sizeof rq);
    return fos_shim_chan_send(c, msg, mlen, bulk, blen, fos_shim_now_ns() + FOS_SHIM_CALL_TIMEOUT_NS);
}

int fos_shim_chan_call(fos_shim_chan *c, uint16_t op, uint64_t id, uint8_t *msg, uint32_t mlen,
                       const void *bulk, uint32_t blen, void *out, uint32_t outcap, uint32_t *outlen,
                       int32_t *status) {
    int err = fos_shim_chan_post(c, op, id, 0, msg, mlen, bulk, blen);
    return err ? err : fos_shim_chan_wait(c, op, id, out, outcap, outlen, status);
}

int fos_shim_chan_wait(fos_shim_chan *c, uint16_t op, uint64_t id, void *out, uint32_t outcap, uint32_t *outlen,
                       int32_t *status) {
    uint64_t start = fos_shim_now_ns();
    uint64_t deadline = start + FOS_SHIM_CALL_TIMEOUT_NS;
    /* On the server's own core, spinning would keep it from answering:
     * yield the core to it instead, saying so, and it yields back once it
     * has answered (Channel.trySend) — cheaper than sleeping and being
     * woken. Elsewhere spin, then sleep. */
    int same_core = fos_shim_chan_on_peer_core(c);
    uint64_t spin_until = start + fos_shim_cfg.spin_ns;
    /* A slow answer (a flush): past the spin, give the core to whoever
     * else wants it for a while, then sleep until woken. Sleeping at once
     * cost each fsync some 25 µs more: waking a sleeping process (on a
     * virtual machine, its idle virtual CPU) takes longer than the yields.
     * Not on the server's core: there the call yields from the start. */
    uint64_t yield_until = same_core ? 0 : spin_until + fos_shim_cfg.yield_ns;
    int yielding = 0;
    if (same_core) fos_ring_set_yielding(&c->rx, 1);
    fos_msg_hdr h;
    int ok = 0;
    for (unsigned i = 1;; i++) {
        int r = fos_shim_take(&c->rx, op, id, &h, out, outcap, &ok);
        if (r > 0) break;
        if (r < 0) {
            if (same_core) fos_ring_set_yielding(&c->rx, 0);
            return EIO;
        }
        if (same_core || yielding) {
            sched_yield();
        } else if (i & 63) {
            fos_cpu_relax();
            continue;
        }
        uint64_t now = fos_shim_now_ns();
        if (now < spin_until) continue;
        if (now < yield_until) {
            yielding = 1;
            continue;
        }
        yielding = 0;
        if (same_core) fos_ring_set_yielding(&c->rx, 0);
        same_core = 0;
        if (now > deadline) return ETIMEDOUT;
        if (fos_ring_release(&c->rx)) fos_shim_efd_signal(c->wake_fd);
        int gone = 0;
        if (!fos_ring_prepare_sleep(&c->rx)) gone = fos_shim_chan_sleep(c, 1000);
        fos_ring_wake_done(&c->rx);
        if (gone && fos_ring_readable(&c->rx) == 0) return EPIPE;
    }
    /* Written only when set: the server reads this line after every answer. */
    if (same_core) fos_ring_set_yielding(&c->rx, 0);
    if (fos_ring_release(&c->rx)) fos_shim_efd_signal(c->wake_fd);
    if (!ok) return EIO;
    c->reply_flags = h.flags;
    *outlen = h.payload_len;
    *status = h.status;
    return 0;
}
