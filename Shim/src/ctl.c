/*
 * fosd's control socket (SOCK_SEQPACKET, one datagram a message, fos_ctl_hdr
 * first), as libfos speaks it (FosCore/ControlConnection.swift). fosd
 * attests who we are from SO_PEERCRED when we connect; everything it sends
 * is still checked before use.
 */
#include "shim.h"

#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define FOS_SHIM_CTL_TIMEOUT_MS 10000
#define FOS_SHIM_CTL_BUF 1024

int fos_shim_ctl_open(const char *runtime) {
    struct sockaddr_un a;
    memset(&a, 0, sizeof a);
    a.sun_family = AF_UNIX;
    size_t n = strlen(runtime);
    if (n + 1 + sizeof FOS_CTL_SOCKET > sizeof a.sun_path) return -EHOSTDOWN;
    memcpy(a.sun_path, runtime, n);
    a.sun_path[n] = '/';
    memcpy(a.sun_path + n + 1, FOS_CTL_SOCKET, sizeof FOS_CTL_SOCKET);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (fos_shim_sys_connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        fos_shim_sys_close(fd);
        return -EHOSTDOWN;
    }
    /* Only a fosd of root or of our own user is trusted with our requests. */
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || (cr.uid != 0 && cr.uid != geteuid())) {
        fos_shim_sys_close(fd);
        return -EHOSTDOWN;
    }
    return fd;
}

static int fos_shim_ctl_send(int fd, uint16_t op, uint64_t id, const void *payload, uint32_t len) {
    fos_ctl_hdr h;
    memset(&h, 0, sizeof h);
    h.version = FOS_WIRE_VERSION;
    h.op = op;
    h.len = (uint32_t)sizeof h + len;
    h.request_id = id;
    struct iovec iov[2] = {{&h, sizeof h}, {(void *)payload, len}};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = iov;
    m.msg_iovlen = len ? 2 : 1;
    for (;;) {
        if (fos_shim_sys_sendmsg(fd, &m, MSG_NOSIGNAL) >= 0) return 0;
        if (errno != EINTR) return errno == EPIPE || errno == ECONNRESET ? EHOSTDOWN : errno;
    }
}

void fos_shim_ctl_notify_close(int fd, uint64_t channel) {
    fos_ctl_channel_close cc = {.channel = channel};
    (void)fos_shim_ctl_send(fd, FOS_CTL_CHANNEL_CLOSE, 0, &cc, sizeof cc);
}

static void fos_shim_close_fds(const int *fds, int n) {
    for (int i = 0; i < n; i++) fos_shim_sys_close(fds[i]);
}

/* One datagram: its length (> 0), 0 at end of stream, -EAGAIN if none
 * waits (dontwait), -EMSGSIZE for a truncated one (descriptors closed). */
static long fos_shim_ctl_recv(int fd, void *buf, size_t cap, int *fds, int *nfds, int dontwait) {
    union {
        char b[CMSG_SPACE(sizeof(int) * 8)];
        struct cmsghdr align;
    } u;
    struct iovec iov = {buf, cap};
    struct msghdr m;
    memset(&m, 0, sizeof m);
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    m.msg_control = u.b;
    m.msg_controllen = sizeof u.b;
    long n;
    do {
        n = fos_shim_sys_recvmsg(fd, &m, MSG_CMSG_CLOEXEC | (dontwait ? MSG_DONTWAIT : 0));
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    *nfds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k && *nfds < 8; i++) memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    if (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        fos_shim_close_fds(fds, *nfds);
        *nfds = 0;
        return -EMSGSIZE;
    }
    return n;
}

/* A datagram that is not a reply we wait for: notifications go to conn.c,
 * anything else is dropped with its descriptors. */
static void fos_shim_ctl_other(fos_shim_conn *conn, const fos_ctl_hdr *h, const uint8_t *buf, long n, const int *fds,
                               int nfds) {
    fos_shim_close_fds(fds, nfds);
    if (h->request_id == 0) fos_shim_conn_notified(conn, h->op, buf + sizeof *h, (uint32_t)(n - (long)sizeof *h));
}

static int fos_shim_ctl_valid(const fos_ctl_hdr *h, long n) {
    return n >= (long)sizeof *h && h->version == FOS_WIRE_VERSION && h->len == (uint32_t)n && h->op != 0;
}

static uint64_t fos_shim_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int fos_shim_ctl_request(fos_shim_conn *conn, int fd, uint16_t op, uint64_t id, const void *payload, uint32_t len,
                         void *reply, uint32_t cap, uint32_t *rlen, int *fds, int maxfds, int *nfds) {
    _Alignas(8) uint8_t buf[FOS_SHIM_CTL_BUF];
    int got[8];
    int ng = 0;
    *nfds = 0;
    int err = fos_shim_ctl_send(fd, op, id, payload, len);
    if (err) return err;
    uint64_t deadline = fos_shim_now_ms() + FOS_SHIM_CTL_TIMEOUT_MS;
    for (;;) {
        uint64_t now = fos_shim_now_ms();
        if (now >= deadline) return ETIMEDOUT;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int pr = fos_shim_sys_poll(&p, 1, (int)(deadline - now));
        if (pr < 0 && errno != EINTR) return errno;
        if (pr <= 0) continue;
        long n = fos_shim_ctl_recv(fd, buf, sizeof buf, got, &ng, 1);
        if (n == -EAGAIN || n == -EMSGSIZE) continue;
        if (n == 0) return EHOSTDOWN; /* fosd went away */
        if (n < 0) return (int)-n;
        fos_ctl_hdr h = {0};
        memcpy(&h, buf, n >= (long)sizeof h ? sizeof h : 0);
        if (!fos_shim_ctl_valid(&h, n)) {
            fos_shim_close_fds(got, ng);
            continue;
        }
        if (h.request_id != id || h.op != op) {
            fos_shim_ctl_other(conn, &h, buf, n, got, ng);
            continue;
        }
        uint32_t plen = (uint32_t)(n - (long)sizeof h);
        if (h.status != 0 || plen > cap || ng > maxfds) {
            fos_shim_close_fds(got, ng);
            return h.status > 0 ? h.status : EIO;
        }
        memcpy(reply, buf + sizeof h, plen);
        *rlen = plen;
        memcpy(fds, got, sizeof(int) * (size_t)ng);
        *nfds = ng;
        return 0;
    }
}

int fos_shim_ctl_drain(fos_shim_conn *conn, int fd) {
    _Alignas(8) uint8_t buf[FOS_SHIM_CTL_BUF];
    int got[8];
    int ng = 0;
    for (;;) {
        long n = fos_shim_ctl_recv(fd, buf, sizeof buf, got, &ng, 1);
        if (n == -EMSGSIZE) continue;
        if (n == 0) return -1;
        if (n < 0) return n == -EAGAIN ? 0 : -1;
        fos_ctl_hdr h = {0};
        memcpy(&h, buf, n >= (long)sizeof h ? sizeof h : 0);
        if (fos_shim_ctl_valid(&h, n)) {
            fos_shim_ctl_other(conn, &h, buf, n, got, ng);
        } else {
            fos_shim_close_fds(got, ng);
        }
    }
}
