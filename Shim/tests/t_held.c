/* Attribute changes the shim holds back (Shim/src/ahead.c): root's
 * fchmod, fchown and futimens of an open file are sent as one SETATTR,
 * and yet another process finds each one made as soon as this one tells
 * it anything: a pipe, a signal, fork, vfork, _exit, close. The changes
 * come out as the kernel makes them one by one (a set-id mode after an
 * owner keeps its bits; an owner after a set-id mode clears them). As an
 * unprivileged user nothing is held (each one may fail), and the same
 * checks hold. */
#include "check.h"

#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>

static int open_new(const char *d, const char *name) {
    int fd = open(path_in(d, name), O_CREAT | O_WRONLY | O_TRUNC, 0600);
    CHECK(fd >= 0);
    CHECK(write(fd, "x", 1) == 1);
    return fd;
}

static unsigned mode_of(const char *path) {
    struct stat s;
    CHECK(stat(path, &s) == 0);
    return (unsigned)(s.st_mode & 07777);
}

/* Forks a child that waits for a byte on a pipe, then exits 0 if path's
 * mode is want (1 if not, 2 if it could not look). */
static pid_t watcher(const char *path, unsigned want, int *go) {
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        char b;
        close(p[1]);
        if (read(p[0], &b, 1) != 1) _exit(2);
        struct stat s;
        if (stat(path, &s) != 0) _exit(2);
        _exit((unsigned)(s.st_mode & 07777) == want ? 0 : 1);
    }
    close(p[0]);
    *go = p[1];
    return c;
}

static int exit_status(pid_t c) {
    int st;
    CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st));
    return WEXITSTATUS(st);
}

/* A process started before the change, told through a pipe. */
static void test_pipe(const char *d) {
    const char *path = path_in(d, "pipe");
    int fd = open_new(d, "pipe");
    int go;
    pid_t c = watcher(path, 0751, &go);
    CHECK(fchmod(fd, 0751) == 0);
    CHECK(write(go, "g", 1) == 1);
    CHECK(exit_status(c) == 0);
    close(go);
    close(fd);
}

/* Told by a signal. */
static void test_signal(const char *d) {
    const char *path = path_in(d, "signal");
    int fd = open_new(d, "signal");
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &block, &old) == 0);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        int sig;
        if (sigwait(&block, &sig) != 0) _exit(2);
        _exit(mode_of(path) == 0710 ? 0 : 1);
    }
    CHECK(sigprocmask(SIG_SETMASK, &old, NULL) == 0);
    CHECK(fchmod(fd, 0710) == 0);
    CHECK(kill(c, SIGUSR1) == 0);
    CHECK(exit_status(c) == 0);
    close(fd);
}

/* fork's child, and a child of vfork that execs a shell to look. */
static void test_children(const char *d) {
    const char *path = path_in(d, "fork");
    int fd = open_new(d, "fork");
    CHECK(fchmod(fd, 0701) == 0);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) _exit(mode_of(path) == 0701 ? 0 : 1);
    CHECK(exit_status(c) == 0);
    CHECK(fchmod(fd, 0705) == 0);
    char cmd[512];
    snprintf(cmd, sizeof cmd, "test \"$(stat -c %%a %s)\" = 705", path);
    c = vfork();
    CHECK(c >= 0);
    if (c == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    CHECK(exit_status(c) == 0);
    close(fd);
}

/* A child that changes a file and _exits without closing it. */
static void test_exit(const char *d) {
    const char *path = path_in(d, "exit");
    int fd = open_new(d, "exit");
    close(fd);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        int g = open(path, O_WRONLY);
        if (g < 0 || fchmod(g, 0704) != 0) _exit(2);
        _exit(0);
    }
    CHECK(exit_status(c) == 0);
    CHECK(mode_of(path) == 0704);
}

/* tar's three changes, then the owner's effect on set-id bits either way. */
static void test_order(const char *d) {
    const char *path = path_in(d, "order");
    int fd = open_new(d, "order");
    struct timespec t[2] = {{.tv_nsec = UTIME_OMIT}, {.tv_sec = 1000000000, .tv_nsec = 5}};
    CHECK(futimens(fd, t) == 0);
    CHECK(fchown(fd, getuid(), getgid()) == 0);
    CHECK(fchmod(fd, 0644) == 0);
    int go;
    pid_t c = watcher(path, 0644, &go);
    CHECK(write(go, "g", 1) == 1);
    CHECK(exit_status(c) == 0);
    close(go);
    struct stat s;
    CHECK(fstat(fd, &s) == 0 && s.st_mtim.tv_sec == 1000000000 && s.st_mtim.tv_nsec == 5);
    CHECK((s.st_mode & 07777) == 0644 && s.st_uid == getuid());
    /* An owner, then a set-id mode: the bits stay. */
    CHECK(fchown(fd, getuid(), getgid()) == 0);
    CHECK(fchmod(fd, 06755) == 0);
    CHECK(fstat(fd, &s) == 0 && (s.st_mode & 07777) == 06755);
    /* A set-id mode, then an owner: the kernel clears them. */
    CHECK(fchmod(fd, 06755) == 0);
    CHECK(fchown(fd, getuid(), getgid()) == 0);
    CHECK(fstat(fd, &s) == 0 && (s.st_mode & 07777) == 0755);
    close(fd);
    CHECK(mode_of(path) == 0755);
}

int main(int argc, char **argv) {
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    test_pipe(argv[1]);
    test_signal(argv[1]);
    test_children(argv[1]);
    test_exit(argv[1]);
    test_order(argv[1]);
    puts("ok");
    return 0;
}
