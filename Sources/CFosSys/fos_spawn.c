/*
 * fork+exec on behalf of another user (the spawn fleet): the child drops to
 * the caller's uid, gid and groups, starts its own session, gets exactly the
 * descriptors it was given (at the numbers asked for; 0..2 that were not
 * given read and write /dev/null), the caller's cwd, and a clean signal
 * state (or the mask and ignored set exec would have kept). It execs a
 * path, or a descriptor (a program the caller materialised: the exec
 * happens after the child dropped to the caller's credentials, so it can
 * run nothing the caller could not run itself). Exec failures come back as
 * -errno through a close-on-exec pipe.
 */
#define _GNU_SOURCE
#include "fos_sys.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef AT_EMPTY_PATH
#define AT_EMPTY_PATH 0x1000
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

int fos_sys_pidfd_getfd(int pidfd, int fd) {
    int r = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    return r < 0 ? -errno : r;
}

static void child_fail(int ep) {
    int e = errno;
    (void)!write(ep, &e, sizeof e);
    _exit(127);
}

pid_t fos_sys_spawn_as(const char *path, char *const argv[], char *const envp[], const char *cwd,
                       const struct fos_sys_identity *id, const int *src, const int *dst, int nfds,
                       int cpu, const struct fos_sys_spawn_extra *extra, int *pidfd) {
    if (nfds < 0 || nfds > FOS_SYS_MAX_SPAWN_FDS) return -EINVAL;
    if (id && (id->ngroups < 0 || id->ngroups > FOS_SYS_MAX_GROUPS)) return -EINVAL;
    int top = 1024; /* parked descriptors go above every target */
    for (int i = 0; i < nfds; i++) {
        if (dst[i] < 0 || dst[i] >= FOS_SYS_SPAWN_FD_LIMIT || src[i] < 0) return -EBADF;
        if (dst[i] >= top) top = dst[i] + 1;
    }
    /* The caller's limits, read here: the child applies them once it has
     * parked its descriptors (a lower RLIMIT_NOFILE would stop that). */
    struct rlimit lim[RLIM_NLIMITS];
    int nlim = 0;
    if (extra && extra->limits_from > 0) {
        for (; nlim < RLIM_NLIMITS; nlim++) {
            if (prlimit(extra->limits_from, (__rlimit_resource_t)nlim, NULL, &lim[nlim]) < 0) return -errno;
        }
    }
    int errpipe[2];
    pid_t pid = fos_sys_fork_reporting(errpipe);
    if (pid < 0) return pid;
    if (pid == 0) {
        /* Child: async-signal-safe calls only. */
        int tmp[FOS_SYS_MAX_SPAWN_FDS];
        int ep = fcntl(errpipe[1], F_DUPFD_CLOEXEC, top);
        if (ep < 0) child_fail(errpipe[1]);
        fos_sys_child_clean_signals();
        if (setsid() < 0) child_fail(ep);
        if (cpu >= 0) {
            cpu_set_t set;
            CPU_ZERO(&set);
            CPU_SET(cpu, &set);
            if (sched_setaffinity(0, sizeof set, &set) < 0) child_fail(ep);
        }
        /* Park the given descriptors above every target before placing them;
         * the program to exec stays close-on-exec (an ELF needs no path). */
        for (int i = 0; i < nfds; i++) {
            tmp[i] = fcntl(src[i], F_DUPFD_CLOEXEC, top);
            if (tmp[i] < 0) child_fail(ep);
        }
        int xfd = -1;
        if (extra && extra->exec_fd >= 0 && (xfd = fcntl(extra->exec_fd, F_DUPFD_CLOEXEC, top)) < 0) child_fail(ep);
        /* Still root if the server is: limits may go up as well as down. */
        for (int r = 0; r < nlim; r++) (void)setrlimit((__rlimit_resource_t)r, &lim[r]);
        syscall(SYS_close_range, 0, ~0U, CLOSE_RANGE_CLOEXEC);
        for (int t = 0; t < 3; t++) {
            int given = 0;
            for (int i = 0; i < nfds; i++) given |= dst[i] == t;
            if (given) continue;
            int n = open("/dev/null", O_RDWR);
            if (n < 0) child_fail(ep);
            if (n != t && (dup2(n, t) < 0 || close(n) < 0)) child_fail(ep);
        }
        for (int i = 0; i < nfds; i++) {
            if (dup2(tmp[i], dst[i]) < 0) child_fail(ep); /* dup2 clears close-on-exec */
        }
        if (id) {
            if (setgroups((size_t)id->ngroups, id->groups) < 0) child_fail(ep);
            if (setresgid(id->gid, id->gid, id->gid) < 0) child_fail(ep);
            if (setresuid(id->uid, id->uid, id->uid) < 0) child_fail(ep);
        }
        if (cwd && chdir(cwd) < 0) child_fail(ep);
        if (extra && extra->umask >= 0) umask((mode_t)extra->umask);
        if (extra) {
            /* Errors ignored: SIGKILL, SIGSTOP and libc's own signals stay as they are. */
            sigset_t mask;
            sigemptyset(&mask);
            for (int s = 1; s <= 64 && s < NSIG; s++) {
                if (extra->sigign & (1ull << (s - 1))) signal(s, SIG_IGN);
                if (extra->sigmask & (1ull << (s - 1))) sigaddset(&mask, s);
            }
            sigprocmask(SIG_SETMASK, &mask, NULL);
        }
        if (xfd >= 0) {
            syscall(SYS_execveat, xfd, "", argv, envp, AT_EMPTY_PATH);
        } else {
            execve(path, argv, envp);
        }
        child_fail(ep);
    }
    close(errpipe[1]);
    return fos_sys_spawn_collect(pid, errpipe[0], pidfd);
}

int fos_sys_pidfd_wait(int pidfd, int *code, int *signaled) {
    siginfo_t info = {0};
    int r;
    do {
        r = waitid(P_PIDFD, (id_t)pidfd, &info, WEXITED | WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r < 0) return -errno;
    if (info.si_pid == 0) return 0;
    *signaled = info.si_code == CLD_KILLED || info.si_code == CLD_DUMPED;
    *code = info.si_status;
    return 1;
}
