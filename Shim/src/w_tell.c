/*
 * Calls by which a process may tell another what it did, wait, or end:
 * each first sends the write or attribute change the shim holds back
 * (ahead.c), so that another process finds it made, as it would on a
 * kernel file system. write, writev and close do the same (w_io.c,
 * w_vec.c, w_open.c), read and readv of anything but a regular file too,
 * and so do fork, vfork, clone and _Fork (init.c, w_fork.c); exec,
 * posix_spawn, system, popen and exit wait for every request sent ahead
 * anyway. Each costs nothing more while nothing is held. Not covered:
 * stdio's own writes and reads of a pipe or terminal (glibc makes them
 * through hidden names; fflush is covered, printf's line-buffered flush
 * is not), shared memory, futexes (pthread's waits) and a process that
 * computes without a call: what is held then goes at the process's next
 * call of these or of the fs, or at its exit.
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

/* The real functions of the waits a signal handler may make (waitpid in
 * SIGCHLD's, kill), resolved in the constructor: dlsym in a handler could
 * deadlock. The others are resolved at their first call, as elsewhere. */
#define FOS_TELL_EAGER(X) X(kill) X(killpg) X(sigqueue) X(wait) X(waitpid) X(wait3) X(wait4) X(waitid) X(sigsuspend)
#define FOS_TELL_SLOT(fn) static void *fos_tell_slot_##fn;
FOS_TELL_EAGER(FOS_TELL_SLOT)

void fos_shim_tell_init(void) {
#define FOS_TELL_RESOLVE(fn) (void)fos_shim_real(&fos_tell_slot_##fn, #fn, NULL);
    FOS_TELL_EAGER(FOS_TELL_RESOLVE)
}

#define FOS_TELL_REAL(fn)                                                                        \
    ((__typeof__(&fn))(__atomic_load_n(&fos_tell_slot_##fn, __ATOMIC_ACQUIRE)                  \
                           ? fos_tell_slot_##fn                                                \
                           : fos_shim_real(&fos_tell_slot_##fn, #fn, NULL)))

int fos_shim_sys_poll(struct pollfd *p, unsigned long n, int ms) {
    struct timespec t = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    return (int)syscall(SYS_ppoll, p, n, ms < 0 ? NULL : &t, NULL, (size_t)8);
}

/* Telling. */

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

FOS_SHIM_EXPORT int sendmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(sendmmsg)(fd, v, n, flags);
}

FOS_SHIM_EXPORT int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(connect)(fd, addr, len);
}

FOS_SHIM_EXPORT int kill(pid_t pid, int sig) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(kill)(pid, sig);
}

FOS_SHIM_EXPORT int killpg(pid_t pgrp, int sig) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(killpg)(pgrp, sig);
}

FOS_SHIM_EXPORT int sigqueue(pid_t pid, int sig, const union sigval value) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(sigqueue)(pid, sig, value);
}

FOS_SHIM_EXPORT int fflush(FILE *f) {
    /* A stream of a pipe or a terminal tells (a fos file's is the shim's
     * own, w_stdio.c, and goes in order anyway). */
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(fflush)(f);
}

/* The system call itself, as glibc's _exit makes it: nothing to look up
 * in a vfork child or a signal handler. */
static _Noreturn void fos_shim_exit_now(int status) {
    FOS_SHIM_FLUSH_HELD();
    for (;;) syscall(SYS_exit_group, status);
}

FOS_SHIM_EXPORT _Noreturn void _exit(int status) { fos_shim_exit_now(status); }

FOS_SHIM_EXPORT _Noreturn void _Exit(int status) { fos_shim_exit_now(status); }

/* Waiting: what is held goes before the process sleeps, so that a
 * process that changes a file and then waits (for input, a child, a
 * timer) does not keep the change from others meanwhile. */

void fos_shim_flush_before_read(int fd) {
    /* A regular file's read does not wait (tar reads its archive between
     * two writes of a file, which are to go as one). */
    int saved = errno;
    struct stat st;
    if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode)) fos_shim_fs_flush();
    errno = saved;
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

FOS_SHIM_EXPORT int recvmmsg(int fd, struct mmsghdr *v, unsigned int n, int flags, struct timespec *t) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(recvmmsg)(fd, v, n, flags, t);
}

/* The fortified forms (_FORTIFY_SOURCE) of the above. */
ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags);
ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *from,
                       socklen_t *fromlen);
int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen);
int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask, size_t fdslen);

FOS_SHIM_EXPORT ssize_t __recv_chk(int fd, void *buf, size_t n, size_t buflen, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(__recv_chk)(fd, buf, n, buflen, flags);
}

FOS_SHIM_EXPORT ssize_t __recvfrom_chk(int fd, void *buf, size_t n, size_t buflen, int flags, struct sockaddr *from,
                                       socklen_t *fromlen) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(__recvfrom_chk)(fd, buf, n, buflen, flags, from, fromlen);
}

FOS_SHIM_EXPORT int __poll_chk(struct pollfd *fds, nfds_t n, int timeout, size_t fdslen) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(__poll_chk)(fds, n, timeout, fdslen);
}

FOS_SHIM_EXPORT int __ppoll_chk(struct pollfd *fds, nfds_t n, const struct timespec *t, const sigset_t *mask,
                                size_t fdslen) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(__ppoll_chk)(fds, n, t, mask, fdslen);
}

FOS_SHIM_EXPORT int accept(int fd, struct sockaddr *addr, socklen_t *len) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(accept)(fd, addr, len);
}

FOS_SHIM_EXPORT int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_REAL(accept4)(fd, addr, len, flags);
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
    return FOS_TELL_REAL(sigsuspend)(mask);
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
    return FOS_TELL_REAL(wait)(status);
}

FOS_SHIM_EXPORT pid_t waitpid(pid_t pid, int *status, int options) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(waitpid)(pid, status, options);
}

FOS_SHIM_EXPORT pid_t wait3(int *status, int options, struct rusage *ru) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(wait3)(status, options, ru);
}

FOS_SHIM_EXPORT pid_t wait4(pid_t pid, int *status, int options, struct rusage *ru) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(wait4)(pid, status, options, ru);
}

FOS_SHIM_EXPORT int waitid(idtype_t type, id_t id, siginfo_t *info, int options) {
    FOS_SHIM_FLUSH_HELD();
    return FOS_TELL_REAL(waitid)(type, id, info, options);
}
