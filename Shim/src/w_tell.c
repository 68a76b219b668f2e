/*
 * Calls by which a process may tell another what it did, or end: each
 * first sends the SETATTR the shim holds back (ahead.c), so that the
 * other process finds the change made, as it would on a kernel file
 * system. write, writev and close do the same (w_io.c, w_vec.c,
 * w_open.c), and so do fork, vfork, clone and _Fork (init.c, w_fork.c);
 * exec, posix_spawn, system, popen and exit wait for every request sent
 * ahead anyway. Not covered: shared memory and futexes, which the shim
 * cannot see (the change then goes at the process's next call here, or
 * of the fs).
 */
#include "shim.h"

#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>

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
