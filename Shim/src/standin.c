/*
 * fos-exec standing in for a program the kernel cannot exec (its file, or
 * an interpreter's, is stored under the prefix). The caller's exec became
 * an exec of fos-exec (w_exec.c), so this process has the caller's pid,
 * parent, descriptors (close-on-exec ones gone), cwd, signal mask,
 * ignored signals, umask and resource limits. It asks the spawn service to start the program as the
 * caller with all of those (a fos binary travels as a sealed memfd the
 * service copies with pidfd_getfd and execs), then:
 *   - keeps none of the program's descriptors (a pipe's reader sees end of
 *     file when the program closes its end, not when we exit);
 *   - passes every signal sent to it on to the program (through a pidfd:
 *     same node, same user); one the terminal sent (^C, ^\, ^Z, hangup,
 *     resize) to the program's whole process group, as the terminal would
 *     have reached the program's children in the caller's job; a stop as
 *     SIGSTOP (the program's own session has no job control) while
 *     stopping itself, so its shell sees the job stop and can continue it
 *     (and continuing the program at once where the kernel discards our
 *     own stop: in an orphaned process group);
 *   - is tied to it: the service kills the program if we end first, which
 *     only SIGKILL makes us do (so kill -9 of the pid the parent knows
 *     ends the program, as it would have);
 *   - waits (SPAWN_WAIT) and ends as the program ended: its exit code, or
 *     killed by the same signal (re-raised, core dumps off: the program
 *     dumped its own), so the parent sees the real cause.
 */
#include "shim.h"

#include "fos_shim.h"

#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_send_signal
#define SYS_pidfd_send_signal 424
#endif

static int fos_shim_standin_pidfd = -1;
static pid_t fos_shim_standin_pid; /* the program's, and its process group's (it leads a session) */

int fos_shim_exec_fds(fos_spawn_fd *out, int max) {
    char buf[2048];
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -errno;
    int n = 0;
    for (;;) {
        long k = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (k <= 0) break;
        for (long at = 0; at < k;) {
            struct {
                uint64_t ino;
                int64_t off;
                unsigned short reclen;
                unsigned char type;
                char name[];
            } *d = (void *)(buf + at);
            at += d->reclen;
            char *end;
            long fd = strtol(d->name, &end, 10);
            if (d->name[0] < '0' || d->name[0] > '9' || *end || fd == dfd) continue;
            long fl = syscall(SYS_fcntl, (int)fd, F_GETFD);
            if (fl < 0 || (fl & FD_CLOEXEC)) continue;
            if (fd >= (long)FOS_SPAWN_FD_LIMIT || n == max) {
                n = -EMFILE;
                break;
            }
            out[n].from = out[n].to = (int32_t)fd;
            n++;
        }
        if (n < 0) break;
    }
    fos_shim_sys_close(dfd);
    return n;
}

static uint64_t fos_shim_sigbits(const sigset_t *s) {
    uint64_t b = 0;
    for (int i = 1; i <= 64 && i < NSIG; i++) {
        if (sigismember(s, i) == 1) b |= 1ull << (i - 1);
    }
    return b;
}

static uint64_t fos_shim_ignored(void) {
    uint64_t b = 0;
    for (int i = 1; i <= 64 && i < NSIG; i++) {
        struct sigaction sa;
        if (sigaction(i, NULL, &sa) == 0 && sa.sa_handler == SIG_IGN) b |= 1ull << (i - 1);
    }
    return b;
}

/* Appends n bytes; -E2BIG past the payload limit. */
static int fos_shim_put(uint8_t *p, size_t *at, const void *b, size_t n) {
    if (n > FOS_MAX_PAYLOAD - *at) return -E2BIG;
    memcpy(p + *at, b, n);
    *at += n;
    return 0;
}

/* The SPAWN request: [req][path][cwd][argv\0...][env\0...][fds][ext]. */
static int fos_shim_standin_request(uint8_t *p, size_t *len, const char *path, char *const *argv, char *const *envp,
                                    const fos_spawn_fd *fds, int nfds, const fos_spawn_ext *x) {
    char cwd[FOS_SHIM_PATH_BUF];
    long c = syscall(SYS_getcwd, cwd, sizeof cwd);
    if (c <= 1 || cwd[0] != '/') strcpy(cwd, "/"); /* removed or unreachable: the service's default */
    fos_spawn_req h = {.path_len = (uint32_t)strlen(path), .cwd_len = (uint32_t)strlen(cwd), .nfds = (uint32_t)nfds,
                       .cpu = -1, .flags = FOS_SPAWN_F_EXT};
    h.argc = (uint32_t)fos_shim_env_len(argv);
    h.envc = (uint32_t)fos_shim_env_len(envp);
    if (h.argc > FOS_SPAWN_MAX_ARGS || h.envc > FOS_SPAWN_MAX_ARGS) return -E2BIG;
    size_t at = 0;
    int r = fos_shim_put(p, &at, &h, sizeof h);
    if (r == 0) r = fos_shim_put(p, &at, path, h.path_len);
    if (r == 0) r = fos_shim_put(p, &at, cwd, h.cwd_len);
    for (uint32_t i = 0; r == 0 && i < h.argc; i++) r = fos_shim_put(p, &at, argv[i], strlen(argv[i]) + 1);
    for (uint32_t i = 0; r == 0 && i < h.envc; i++) r = fos_shim_put(p, &at, envp[i], strlen(envp[i]) + 1);
    if (r == 0) r = fos_shim_put(p, &at, fds, sizeof *fds * (size_t)nfds);
    if (r == 0) r = fos_shim_put(p, &at, x, sizeof *x);
    *len = at;
    return r;
}

static int fos_shim_wait(uint64_t gpid, uint32_t ms, fos_spawn_status *st) {
    fos_spawn_wait w = {.gpid = gpid, .wait_ms = ms};
    uint32_t n = 0;
    int err = fos_shim_spawn_call(FOS_OP_SPAWN_WAIT, &w, sizeof w, st, sizeof *st, &n);
    if (err == 0 && (n != sizeof *st || st->state > FOS_SPAWN_SIGNALED)) err = EIO;
    return err;
}

/* Synchronous faults of our own are not the program's business: they end
 * us (handler reset; the instruction faults again). */
static int fos_shim_is_fault(int sig) {
    return sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE || sig == SIGILL || sig == SIGTRAP || sig == SIGSYS;
}

static void fos_shim_standin_forward(int sig, siginfo_t *si, void *uc) {
    (void)uc;
    int saved = errno;
    if (fos_shim_is_fault(sig) && si && si->si_code > 0) {
        signal(sig, SIG_DFL);
        errno = saved;
        return;
    }
    int stop = sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU;
    int fwd = stop ? SIGSTOP : sig;
    /* The group's leader is alive or unreaped while we run, so its id is not reused. */
    if ((si && si->si_code == SI_KERNEL) || stop || sig == SIGCONT) syscall(SYS_kill, -fos_shim_standin_pid, fwd);
    else syscall(SYS_pidfd_send_signal, fos_shim_standin_pidfd, fwd, NULL, 0);
    if (stop) {
        /* Stop ourselves with the same signal, as the job's shell expects. */
        struct sigaction dfl = {.sa_handler = SIG_DFL}, mine;
        sigaction(sig, &dfl, &mine);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        syscall(SYS_kill, syscall(SYS_getpid), sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL); /* stops here until SIGCONT */
        sigprocmask(SIG_BLOCK, &one, NULL);
        sigaction(sig, &mine, NULL);
        /* Only a SIGCONT ends a stop, and it waits here (every signal is
         * blocked in this handler). Without one our stop was discarded
         * (the kernel does so in an orphaned process group, where a caller
         * never sees a program stop), or a newer stop signal took the
         * SIGCONT away; either way the program is to be continued (the
         * newer stop's own handler stops it again). */
        sigset_t pending;
        if (sigpending(&pending) == 0 && sigismember(&pending, SIGCONT) != 1) {
            syscall(SYS_kill, -fos_shim_standin_pid, SIGCONT);
        }
    }
    errno = saved;
}

static void fos_shim_standin_signals(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = fos_shim_standin_forward;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigfillset(&sa.sa_mask);
    for (int s = 1; s < NSIG; s++) {
        if (s == SIGKILL || s == SIGSTOP || s == SIGCHLD) continue;
        sigaction(s, &sa, NULL); /* libc's own signals refuse: fine */
    }
}

static _Noreturn void fos_shim_standin_end(const fos_spawn_status *st) {
    if (st->state == FOS_SPAWN_EXITED) _exit(st->code & 0xff);
    int sig = st->code;
    if (sig > 0 && sig < NSIG && sig != SIGKILL && sig != SIGSTOP) {
        struct rlimit none = {0, 0};
        setrlimit(RLIMIT_CORE, &none);
        signal(sig, SIG_DFL);
        sigset_t one;
        sigemptyset(&one);
        sigaddset(&one, sig);
        syscall(SYS_kill, syscall(SYS_getpid), sig);
        sigprocmask(SIG_UNBLOCK, &one, NULL);
    } else if (sig == SIGKILL) {
        syscall(SYS_kill, syscall(SYS_getpid), SIGKILL);
    }
    _exit(128 + (sig & 0x7f)); /* a signal whose default is not to end a process */
}

/* The node lost track of the program (its spawn service restarted): wait
 * for it to end without learning how. */
static _Noreturn void fos_shim_standin_orphaned(void) {
    if (fos_shim_standin_pidfd < 0) _exit(255);
    struct pollfd p = {.fd = fos_shim_standin_pidfd, .events = POLLIN};
    while (fos_shim_sys_poll(&p, 1, -1) < 0 && errno == EINTR) {}
    _exit(255);
}

/* "/proc/self/fd/N" or "/dev/fd/N": a program already in a memfd (fexecve). */
static int fos_shim_fd_path_number(const char *p) {
    const char *d = strncmp(p, "/proc/self/fd/", 14) == 0 ? p + 14 : strncmp(p, "/dev/fd/", 8) == 0 ? p + 8 : NULL;
    if (d == NULL || *d < '0' || *d > '9') return -1;
    char *end;
    long n = strtol(d, &end, 10);
    return *end || n > 1 << 24 ? -1 : (int)n;
}

int fos_shim_standin(const char *path, char *const argv[], char *const envp[]) {
    fos_shim_prog p;
    int execfd = fos_shim_fd_path_number(path), r = 0;
    const char *target = path;
    size_t argc = fos_shim_env_len(argv) + 2 * FOS_SHIM_MAX_INTERP + 2;
    char *args[argc];
    if (execfd >= 0) {
        if (syscall(SYS_fcntl, execfd, F_SETFD, FD_CLOEXEC) != 0) return -errno;
        fos_shim_prog_argv(&(fos_shim_prog){.depth = 0}, path, argv, args);
    } else {
        r = fos_shim_prog_resolve(path, &p);
        if (r == 0) {
            fos_shim_prog_argv(&p, path, argv, args);
            r = fos_shim_prog_reachable(&p, args, envp);
            if (r == -EPERM) r = -FOS_SHIM_ERR_REFUSED; /* fos-exec adds no line of its own */
        }
        if (r == 0 && p.final_fos) {
            execfd = fos_shim_prog_materialise(&p);
            if (execfd < 0) r = execfd;
        }
        if (r < 0) return r;
        target = p.final;
    }
    /* The service wants an absolute path: the name of a materialised
     * program, or the host binary (relative to our kernel cwd). */
    char abs[FOS_SHIM_PATH_BUF];
    if (target[0] != '/') {
        long c = syscall(SYS_getcwd, abs, sizeof abs);
        size_t n = c > 0 ? strlen(abs) : 0;
        if (c <= 0 || abs[0] != '/' || n + 1 + strlen(target) >= sizeof abs) r = -ENAMETOOLONG;
        else snprintf(abs + n, sizeof abs - n, "/%s", target);
        target = abs;
    }
    size_t nenv = fos_shim_env_len(envp) + FOS_SHIM_ENV_EXTRA;
    char *env[nenv];
    fos_shim_envbuf eb;
    fos_shim_env_fix(envp, env, &eb, 0);
    fos_spawn_fd fds[FOS_SPAWN_MAX_FDS];
    int nfds = r < 0 ? r : fos_shim_exec_fds(fds, FOS_SPAWN_MAX_FDS);
    if (nfds < 0) r = nfds;
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_SETMASK, &all, &old);
    fos_spawn_ext x = {.exec_fd = execfd, .flags = FOS_SPAWN_X_TIED | FOS_SPAWN_X_UMASK | FOS_SPAWN_X_RLIMITS,
                       .umask = (uint32_t)fos_shim_umask(), .sigmask = fos_shim_sigbits(&old), .sigign = fos_shim_ignored()};
    uint8_t *req = mmap(NULL, FOS_MAX_PAYLOAD, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t len = 0;
    if (r == 0 && req == MAP_FAILED) r = -ENOMEM;
    if (r == 0) r = fos_shim_standin_request(req, &len, target, args, env, fds, nfds, &x);
    fos_spawn_reply rep;
    uint32_t n = 0;
    if (r == 0) r = -fos_shim_spawn_call(FOS_OP_SPAWN, req, (uint32_t)len, &rep, sizeof rep, &n);
    if (r == 0 && n != sizeof rep) r = -EIO;
    if (req != MAP_FAILED) fos_shim_sys_munmap(req, FOS_MAX_PAYLOAD);
    if (execfd >= 0) fos_shim_sys_close(execfd);
    if (r < 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        return r;
    }
    /* Committed: the program runs. From here on we only stand in. */
    for (int i = 0; i < nfds; i++) fos_shim_sys_close(fds[i].from);
    fos_spawn_status st;
    fos_shim_standin_pid = rep.pid;
    int pfd = (int)syscall(SYS_pidfd_open, rep.pid, 0);
    /* Not where the program's descriptors were: nothing should mistake it. */
    fos_shim_standin_pidfd = pfd < 0 ? pfd : (int)syscall(SYS_fcntl, pfd, F_DUPFD_CLOEXEC, 100);
    if (pfd >= 0) fos_shim_sys_close(pfd);
    /* The service has not reaped the program while it says it runs, so
     * its pid was not reused before our pidfd_open. */
    int err = fos_shim_wait(rep.gpid, 0, &st);
    if (err == 0 && st.state != FOS_SPAWN_RUNNING) fos_shim_standin_end(&st);
    if (err || fos_shim_standin_pidfd < 0) fos_shim_standin_orphaned();
    fos_shim_standin_signals();
    sigemptyset(&all);
    sigprocmask(SIG_SETMASK, &all, NULL);
    for (;;) {
        err = fos_shim_wait(rep.gpid, FOS_SPAWN_MAX_WAIT_MS, &st);
        if (err == 0 && st.state != FOS_SPAWN_RUNNING) fos_shim_standin_end(&st);
        if (err && err != ETIMEDOUT && err != EINTR) fos_shim_standin_orphaned();
    }
}
