/*
 * Calls by which a process may tell another what it did, wait, or end:
 * each first sends the write or attribute change the shim holds back
 * (ahead.c), so that another process finds it made, as it would on a
 * kernel file system. write, writev and close do the same (w_io.c,
 * w_vec.c, w_open.c), read and readv of anything but a regular file too,
 * and so do fork, vfork, clone and _Fork (init.c, w_fork.c); exec,
 * posix_spawn, system, popen and exit wait for every request sent ahead
 * anyway. Each costs nothing more while nothing is held. Not covered:
 * shared memory, futexes (pthread's waits) and a process that computes
 * without a call: what is held then goes at the process's next call of
 * these or of the fs.
 */
#include "shim.h"

#include <poll.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

FOS_SHIM_EXPORT ssize_t send(int fd, const void *buf, size_t n, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(send)(fd, buf, n, flags);
}

FOS_SHIM_EXPORT ssize_t sendto(int fd, const void *buf, size_t n, int flags, const struct sockaddr *to,
                               socklen_t tolen) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sendto)(fd, buf, n, flags, to, tolen);
}

FOS_SHIM_EXPORT ssize_t sendmsg(int fd, const struct msghdr *m, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sendmsg)(fd, m, flags);
}

FOS_SHIM_EXPORT int kill(pid_t pid, int sig) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(kill)(pid, sig);
}

/* The system call itself, as glibc's _exit makes it: nothing to look up
 * in a vfork child or a signal handler. */
static _Noreturn void fos_shim_exit_now(int status) {
    FOS_SHIM_FLUSH_HELD();
    for (;;) syscall(SYS_exit_group, status);
}

FOS_SHIM_EXPORT _Noreturn void _exit(int status) { fos_shim_exit_now(status); }

FOS_SHIM_EXPORT _Noreturn void _Exit(int status) { fos_shim_exit_now(status); }

/* Calls that wait: what is held goes before the process sleeps, so that
 * a process that changes a file and then waits (for input, a child, a
 * timer) does not keep the change from others meanwhile. */

void fos_shim_flush_before_read(int fd) {
    /* A regular file's read does not wait (tar reads its archive between
     * two writes of a file, which are to go as one). */
    struct stat st;
    if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode)) fos_shim_fs_flush();
}

FOS_SHIM_EXPORT ssize_t recv(int fd, void *buf, size_t n, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(recv)(fd, buf, n, flags);
}

FOS_SHIM_EXPORT ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *from, socklen_t *fromlen) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(recvfrom)(fd, buf, n, flags, from, fromlen);
}

FOS_SHIM_EXPORT ssize_t recvmsg(int fd, struct msghdr *m, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(recvmsg)(fd, m, flags);
}

FOS_SHIM_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(accept)(fd, addr, len);
}

FOS_SHIM_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(accept4)(fd, addr, len, flags);
}

FOS_SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(connect)(fd, addr, len);
}

FOS_SHIM_EXPORT int poll(struct pollfd *fds, nfds_t n, int timeout) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(poll)(fds, n, timeout);
}

FOS_SHIM_EXPORT int ppoll(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(ppoll)(fds, n, t, mask);
}

FOS_SHIM_EXPORT int select(int n, fd_set *r, fd_set *w, fd_set *e, struct timeval *t) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(select)(n, r, w, e, t);
}

FOS_SHIM_EXPORT int pselect(int n, fd_set *r, fd_set *w, fd_set *e, const struct timespec *t, const sigset_t *mask) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(pselect)(n, r, w, e, t, mask);
}

FOS_SHIM_EXPORT int epoll_wait(int fd, struct epoll_event *ev, int n, int timeout) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(epoll_wait)(fd, ev, n, timeout);
}

FOS_SHIM_EXPORT int epoll_pwait(int fd, struct epoll_event *ev, int n, int timeout, const sigset_t *mask) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(epoll_pwait)(fd, ev, n, timeout, mask);
}

FOS_SHIM_EXPORT int nanosleep(const struct timespec *t, struct timespec *left) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(nanosleep)(t, left);
}

FOS_SHIM_EXPORT int clock_nanosleep(clockid_t clock, int flags, const struct timespec *t, struct timespec *left) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(clock_nanosleep)(clock, flags, t, left);
}

FOS_SHIM_EXPORT unsigned sleep(unsigned s) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sleep)(s);
}

FOS_SHIM_EXPORT int usleep(useconds_t us) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(usleep)(us);
}

FOS_SHIM_EXPORT int pause(void) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(pause)();
}

FOS_SHIM_EXPORT int sigsuspend(const sigset_t *mask) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sigsuspend)(mask);
}

FOS_SHIM_EXPORT int sigwait(const sigset_t *set, int *sig) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sigwait)(set, sig);
}

FOS_SHIM_EXPORT int sigwaitinfo(const sigset_t *set, siginfo_t *info) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sigwaitinfo)(set, info);
}

FOS_SHIM_EXPORT int sigtimedwait(const sigset_t *set, siginfo_t *info, const struct timespec *t) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sigtimedwait)(set, info, t);
}

FOS_SHIM_EXPORT pid_t wait(int *status) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(wait)(status);
}

FOS_SHIM_EXPORT pid_t waitpid(pid_t pid, int *status, int options) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(waitpid)(pid, status, options);
}

FOS_SHIM_EXPORT pid_t wait3(int *status, int options, struct rusage *ru) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(wait3)(status, options, ru);
}

FOS_SHIM_EXPORT pid_t wait4(pid_t pid, int *status, int options, struct rusage *ru) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(wait4)(pid, status, options, ru);
}

FOS_SHIM_EXPORT int waitid(idtype_t type, id_t id, siginfo_t *info, int options) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(waitid)(type, id, info, options);
}
