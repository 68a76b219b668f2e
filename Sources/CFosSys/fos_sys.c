#define _GNU_SOURCE
#include "fos_sys.h"

#include <errno.h>
#include <malloc.h>
#include <sys/uio.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <linux/fs.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

ssize_t fos_sys_send(int sock, const void *buf, size_t len, const int *fds, int nfds) {
    if (nfds < 0 || nfds > FOS_SYS_MAX_FDS) return -EINVAL;
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union {
        char buf[CMSG_SPACE(sizeof(int) * FOS_SYS_MAX_FDS)];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (nfds > 0) {
        memset(&u, 0, sizeof u);
        msg.msg_control = u.buf;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
    }
    for (;;) {
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n >= 0) return n;
        if (errno != EINTR) return -errno;
    }
}

ssize_t fos_sys_recv(int sock, void *buf, size_t cap, int *fds, int maxfds, int *nfds, int dontwait) {
    struct iovec iov = {.iov_base = buf, .iov_len = cap};
    union {
        char buf[CMSG_SPACE(sizeof(int) * FOS_SYS_MAX_FDS)];
        struct cmsghdr align;
    } u;
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
                         .msg_controllen = sizeof u.buf};
    *nfds = 0;
    ssize_t n;
    for (;;) {
        n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | (dontwait ? MSG_DONTWAIT : 0));
        if (n >= 0) break;
        if (errno != EINTR) return -errno;
    }
    int got = 0;
    int tmp[FOS_SYS_MAX_FDS];
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k && got < FOS_SYS_MAX_FDS; i++) {
            memcpy(&tmp[got++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        }
    }
    if ((msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) || got > maxfds) {
        for (int i = 0; i < got; i++) close(tmp[i]);
        return -EMSGSIZE;
    }
    memcpy(fds, tmp, sizeof(int) * (size_t)got);
    *nfds = got;
    return n;
}

int fos_sys_accept(int listen_fd) {
    for (;;) {
        int fd = accept4(listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd >= 0) return fd;
        if (errno != EINTR) return -errno;
    }
}

int fos_sys_peercred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid) {
    struct ucred cr;
    socklen_t len = sizeof cr;
    if (getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0) return -errno;
    *pid = cr.pid;
    *uid = cr.uid;
    *gid = cr.gid;
    return 0;
}

int fos_sys_epoll_create(void) {
    int fd = epoll_create1(EPOLL_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

static int epoll_op(int ep, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev = {.events = events, .data.u64 = data};
    return epoll_ctl(ep, op, fd, &ev) < 0 ? -errno : 0;
}
int fos_sys_epoll_add(int ep, int fd, uint32_t events, uint64_t data) {
    return epoll_op(ep, EPOLL_CTL_ADD, fd, events, data);
}
int fos_sys_epoll_mod(int ep, int fd, uint32_t events, uint64_t data) {
    return epoll_op(ep, EPOLL_CTL_MOD, fd, events, data);
}
int fos_sys_epoll_del(int ep, int fd) { return epoll_op(ep, EPOLL_CTL_DEL, fd, 0, 0); }

int fos_sys_epoll_wait(int ep, uint64_t *data, uint32_t *events, int max, int timeout_ms) {
    struct epoll_event evs[64];
    if (max > 64) max = 64;
    int n = epoll_wait(ep, evs, max, timeout_ms);
    if (n < 0) return errno == EINTR ? 0 : -errno;
    for (int i = 0; i < n; i++) {
        data[i] = evs[i].data.u64;
        events[i] = evs[i].events;
    }
    return n;
}

int fos_sys_memfd(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    return fd < 0 ? -errno : fd;
}

int fos_sys_seal_size(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0 ? -errno : 0;
}

int fos_sys_seal_seals(int fd) {
    return fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL) < 0 ? -errno : 0;
}

int fos_sys_check_sealed(int fd) {
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) return -errno;
    return (seals & F_SEAL_SHRINK) ? 0 : -EPERM;
}

int fos_sys_eventfd(void) {
    int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int fos_sys_eventfd_signal(int fd) {
    uint64_t one = 1;
    for (;;) {
        if (write(fd, &one, sizeof one) == sizeof one) return 0;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? 0 : -errno; /* counter saturated: already signalled */
    }
}

int fos_sys_eventfd_drain(int fd) {
    uint64_t v;
    for (;;) {
        if (read(fd, &v, sizeof v) == sizeof v) return 1;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? 0 : -errno;
    }
}

int fos_sys_signalfd(const int *signals, int n) {
    sigset_t set;
    sigemptyset(&set);
    for (int i = 0; i < n; i++) sigaddset(&set, signals[i]);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0) return -EINVAL;
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

int fos_sys_signalfd_read(int fd) {
    struct signalfd_siginfo si;
    for (;;) {
        ssize_t n = read(fd, &si, sizeof si);
        if (n == (ssize_t)sizeof si) return (int)si.ssi_signo;
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        return n < 0 ? -errno : -EIO;
    }
}

int fos_sys_pidfd_open(pid_t pid) {
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

int fos_sys_pidfd_kill(int pidfd, int sig) {
    return syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0) < 0 ? -errno : 0;
}

pid_t fos_sys_spawn(const char *path, char *const argv[], char *const envp[], int cpu,
                    const int *keep, int nkeep, int *pidfd) {
    if (nkeep < 0 || nkeep > FOS_SYS_MAX_FDS) return -EINVAL;
    pid_t parent = getpid();
    int errpipe[2];
    pid_t pid = fos_sys_fork_reporting(errpipe);
    if (pid < 0) return pid;
    if (pid == 0) {
        /* Child: async-signal-safe calls only. */
        int e;
        int tmp[FOS_SYS_MAX_FDS];
        int ep = fcntl(errpipe[1], F_DUPFD_CLOEXEC, 600);
        if (ep < 0) {
            /* Nothing has been moved yet: the original end still works. */
            e = errno;
            (void)!write(errpipe[1], &e, sizeof e);
            _exit(127);
        }
        fos_sys_child_clean_signals();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0) goto fail;
        if (getppid() != parent) _exit(127);
        setpgid(0, 0);
        if (cpu >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            if (sched_setaffinity(0, sizeof set, &set) < 0) goto fail;
        }
        for (int i = 0; i < nkeep; i++) {
            tmp[i] = fcntl(keep[i], F_DUPFD_CLOEXEC, 512);
            if (tmp[i] < 0) goto fail;
        }
        syscall(SYS_close_range, 3, ~0U, CLOSE_RANGE_CLOEXEC);
        for (int i = 0; i < nkeep; i++) {
            if (dup2(tmp[i], 3 + i) < 0) goto fail; /* dup2 clears close-on-exec */
        }
        execve(path, argv, envp);
    fail:
        e = errno;
        (void)!write(ep, &e, sizeof e);
        _exit(127);
    }
    close(errpipe[1]);
    return fos_sys_spawn_collect(pid, errpipe[0], pidfd);
}

pid_t fos_sys_fork_reporting(int errpipe[2]) {
    if (pipe2(errpipe, O_CLOEXEC) < 0) return -errno;
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(errpipe[0]);
        close(errpipe[1]);
        return -e;
    }
    return pid;
}

void fos_sys_child_clean_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP) signal(s, SIG_DFL);
    }
}

pid_t fos_sys_spawn_collect(pid_t pid, int errfd, int *pidfd) {
    int childerr = 0;
    ssize_t r;
    do {
        r = read(errfd, &childerr, sizeof childerr);
    } while (r < 0 && errno == EINTR);
    close(errfd);
    if (r == sizeof childerr) {
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        return -childerr;
    }
    int pfd = fos_sys_pidfd_open(pid);
    if (pfd < 0) {
        kill(pid, SIGKILL);
        int st;
        while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
        return pfd;
    }
    *pidfd = pfd;
    return pid;
}

int fos_sys_pin_self(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof set, &set) < 0 ? -errno : 0;
}

int fos_sys_current_cpu(void) { return sched_getcpu(); }

int fos_sys_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0) return 1;
    int n = CPU_COUNT(&set);
    return n > 0 ? n : 1;
}

int fos_sys_random(void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom((char *)buf + done, len - done, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        done += (size_t)n;
    }
    return 0;
}

int fos_sys_reap(pid_t pid, int nohang) {
    int st;
    for (;;) {
        pid_t r = waitpid(pid, &st, nohang ? WNOHANG : 0);
        if (r == pid) return st;
        if (r == 0) return -EAGAIN;
        if (errno != EINTR) return -errno;
    }
}

void *fos_sys_map_shared(int fd, size_t len, int writable) {
    void *p = mmap(NULL, len, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED, fd, 0);
    return p == MAP_FAILED ? NULL : p;
}

int fos_sys_unmap(void *addr, size_t len) { return munmap(addr, len) < 0 ? -errno : 0; }

int fos_sys_key_equal(const uint8_t *a, const uint8_t *b, size_t len) {
    volatile uint8_t diff = 0;
    for (size_t i = 0; i < len; i++) diff |= a[i] ^ b[i];
    return diff == 0;
}

int fos_sys_flock_exclusive(int fd) {
    for (;;) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) return 0;
        if (errno != EINTR) return -errno;
    }
}

uint64_t fos_sys_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int fos_sys_blockdev_bytes(int fd, uint64_t *bytes) {
    return ioctl(fd, BLKGETSIZE64, bytes) < 0 ? -errno : 0;
}

int fos_sys_o_direct(void) { return O_DIRECT; }

int fos_sys_nth_allowed_cpu(int k) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) < 0) return -errno;
    int n = CPU_COUNT(&set);
    if (n <= 0) return -EINVAL;
    k %= n;
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (CPU_ISSET(c, &set) && k-- == 0) return c;
    }
    return -EINVAL;
}

long fos_sys_raise_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) < 0) return -errno;
    if (r.rlim_cur < r.rlim_max) {
        r.rlim_cur = r.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &r) < 0) return -errno;
    }
    return (long)r.rlim_cur;
}

int fos_sys_spawn_actions_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

void fos_sys_name_thread(const char *name) {
    char short_name[16];
    strncpy(short_name, name, sizeof short_name - 1);
    short_name[sizeof short_name - 1] = 0;
    (void)pthread_setname_np(pthread_self(), short_name);
}

void fos_sys_keep_heap(void) {
    /* Above the largest message buffers (1 MiB writes, 60 KiB messages);
     * what stays is bounded by the trim threshold. */
    (void)mallopt(M_MMAP_THRESHOLD, 4 << 20);
    (void)mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

#ifndef SYS_cachestat
#define SYS_cachestat 451
#endif

ssize_t fos_sys_pread_cached(int fd, void *buf, size_t n, uint64_t off) {
    /* Only a range the page cache holds whole: a miss under RWF_NOWAIT
     * still starts the kernel's readahead, device I/O that the caller's
     * other way of reading then repeats, and that can race direct writes.
     * (cachestat(2): Linux 6.5.) */
    struct { uint64_t off, len; } range = {off, n};
    struct { uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted; } cs;
    if (n == 0) return 0;
    if (syscall(SYS_cachestat, fd, &range, &cs, 0) != 0) return -errno;
    uint64_t page = (uint64_t)getpagesize();
    if (cs.nr_cache < (off + n + page - 1) / page - off / page) return -EAGAIN;
    struct iovec v = {.iov_base = buf, .iov_len = n};
    ssize_t r;
    do {
        r = preadv2(fd, &v, 1, (off_t)off, RWF_NOWAIT);
    } while (r < 0 && errno == EINTR);
    return r < 0 ? -errno : r;
}

int64_t fos_sys_fs_type(int fd) {
    struct statfs st;
    int r;
    do {
        r = fstatfs(fd, &st);
    } while (r != 0 && errno == EINTR);
    return r == 0 ? (int64_t)st.f_type : -(int64_t)errno;
}

int fos_sys_allocate(int fd, uint64_t off, uint64_t len) {
    int r;
    do {
        r = fallocate(fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
    } while (r != 0 && errno == EINTR);
    return r == 0 ? 0 : -errno;
}
