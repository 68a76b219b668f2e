/* Writes and attribute changes the shim holds back (Shim/src/ahead.c):
 * in the first moments of a file this process created under a directory
 * lease (an exclusive create in a directory it just made), root's
 * fchmod, fchown and futimens of it go as one SETATTR and its writes one
 * after another as one WRITE, and yet another process finds each one
 * made as soon as this one tells it anything or waits: a pipe, a signal,
 * fork, vfork, _exit, close, poll. The changes come out as the kernel
 * makes them one by one (a set-id mode after an owner keeps its bits; an
 * owner after a set-id mode clears them). A file not just created is not
 * held at all. As an unprivileged user no SETATTR goes ahead (each one
 * may fail), and the same checks hold. The test runs itself again with
 * FOS_HOLD_US at 1 s, so that a slow machine still holds. */
#include "check.h"

#include <poll.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>

/* A file made as tar makes one: a new directory, and in it an exclusive
 * create (the shim's lease covers it), with one byte written. */
static int fresh_file(const char *d, const char *name, char *path, size_t cap) {
    snprintf(path, cap, "%s/%s", d, name);
    CHECK(mkdir(path, 0755) == 0);
    snprintf(path, cap, "%s/%s/f", d, name);
    int fd = open(path, O_CREAT | O_EXCL | O_RDWR, 0600);
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
    char path[4096];
    snprintf(path, sizeof path, "%s/pipe/f", d);
    int go;
    pid_t c = watcher(path, 0751, &go);
    int fd = fresh_file(d, "pipe", path, sizeof path);
    CHECK(fchmod(fd, 0751) == 0);
    CHECK(write(go, "g", 1) == 1);
    CHECK(exit_status(c) == 0);
    close(go);
    close(fd);
}

/* Told by a signal. */
static void test_signal(const char *d) {
    char path[4096];
    snprintf(path, sizeof path, "%s/signal/f", d);
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
    int fd = fresh_file(d, "signal", path, sizeof path);
    CHECK(fchmod(fd, 0710) == 0);
    CHECK(kill(c, SIGUSR1) == 0);
    CHECK(exit_status(c) == 0);
    close(fd);
}

/* fork's child, and a child of vfork that execs a shell to look. */
static void test_children(const char *d) {
    char path[4096];
    int fd = fresh_file(d, "fork", path, sizeof path);
    CHECK(fchmod(fd, 0701) == 0);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) _exit(mode_of(path) == 0701 ? 0 : 1);
    CHECK(exit_status(c) == 0);
    CHECK(fchmod(fd, 0705) == 0);
    char cmd[4200];
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
    char path[4096];
    snprintf(path, sizeof path, "%s/exit/f", d);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        /* A lease is granted only while no other process has been busy
         * with the member for 20 ms (the parent just was). */
        struct timespec t = {.tv_nsec = 40000000};
        nanosleep(&t, NULL);
        char p[4096];
        int g = fresh_file(d, "exit", p, sizeof p);
        if (fchmod(g, 0704) != 0) _exit(2);
        _exit(0);
    }
    CHECK(exit_status(c) == 0);
    CHECK(mode_of(path) == 0704);
}

/* tar's three changes, then the owner's effect on set-id bits either way. */
static void test_order(const char *d) {
    char path[4096];
    int fd = fresh_file(d, "order", path, sizeof path);
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

/* Writes one after another, one elsewhere, then read by this process
 * and by one it tells through a pipe. */
static void test_writes(const char *d) {
    char path[4096];
    snprintf(path, sizeof path, "%s/writes/f", d);
    int p[2];
    CHECK(pipe(p) == 0);
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        char b, got[32] = {0};
        close(p[1]);
        if (read(p[0], &b, 1) != 1) _exit(2);
        int g = open(path, O_RDONLY);
        if (g < 0) _exit(2);
        ssize_t n = pread(g, got, sizeof got, 0);
        _exit(n == 13 && memcmp(got, "abcdef\0\0\0\0xyz", 13) == 0 ? 0 : 1);
    }
    close(p[0]);
    int fd = fresh_file(d, "writes", path, sizeof path);
    CHECK(ftruncate(fd, 0) == 0 && lseek(fd, 0, SEEK_SET) == 0);
    CHECK(write(fd, "abc", 3) == 3);
    CHECK(write(fd, "def", 3) == 3);
    CHECK(pwrite(fd, "xyz", 3, 10) == 3);
    char got[16] = {0};
    CHECK(pread(fd, got, 6, 0) == 6 && memcmp(got, "abcdef", 6) == 0);
    CHECK(write(fd, "!", 1) == 1 && lseek(fd, 0, SEEK_END) == 13);
    CHECK(pwrite(fd, "\0", 1, 6) == 1);
    CHECK(write(p[1], "g", 1) == 1);
    CHECK(exit_status(c) == 0);
    close(p[1]);
    close(fd);
}

/* A child that looks once, 100 ms from now: 0 if path holds want (its
 * mode, or its first bytes), 1 if not. */
static pid_t look_later(const char *path, unsigned mode, const char *text) {
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        struct timespec t = {.tv_nsec = 100000000};
        nanosleep(&t, NULL);
        if (text) {
            char got[64] = {0};
            int g = open(path, O_RDONLY);
            if (g < 0) _exit(2);
            ssize_t n = read(g, got, sizeof got - 1);
            _exit(n == (ssize_t)strlen(text) && strcmp(got, text) == 0 ? 0 : 1);
        }
        _exit(mode_of(path) == mode ? 0 : 1);
    }
    return c;
}

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* A change, then a wait (poll): others see it meanwhile. A write to a
 * file this process did not just create, then a computation with no
 * call at all: others see it at once (only a fresh file's writes are
 * held). */
static void test_waits(const char *d) {
    char path[4096];
    snprintf(path, sizeof path, "%s/waits/f", d);
    pid_t c = look_later(path, 0741, NULL);
    int fd = fresh_file(d, "waits", path, sizeof path);
    CHECK(fchmod(fd, 0741) == 0);
    CHECK(poll(NULL, 0, 300) == 0);
    CHECK(exit_status(c) == 0);
    close(fd);
    /* An older file (made, closed and opened again): not held. */
    char log[4096];
    fd = fresh_file(d, "log", log, sizeof log);
    CHECK(ftruncate(fd, 0) == 0);
    close(fd);
    fd = open(log, O_WRONLY);
    CHECK(fd >= 0);
    c = look_later(log, 0, "line 1\n");
    CHECK(write(fd, "line 1\n", 7) == 7);
    volatile unsigned long spin = 0;
    for (double end = now_s() + 0.3; now_s() < end;) spin++;
    CHECK(exit_status(c) == 0);
    close(fd);
}

int main(int argc, char **argv) {
    if (getenv("FOS_HOLD_US") == NULL) {
        CHECK(setenv("FOS_HOLD_US", "1000000", 1) == 0);
        execv("/proc/self/exe", argv);
        CHECK(0);
    }
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    /* Calls from the fs member's core do not go ahead; a thread that
     * makes 16 in a row there moves to another core (Shim/src/chan.c). */
    struct stat st;
    for (int i = 0; i < 32; i++) CHECK(stat(argv[1], &st) == 0);
    test_pipe(argv[1]);
    test_signal(argv[1]);
    test_children(argv[1]);
    test_exit(argv[1]);
    test_order(argv[1]);
    test_writes(argv[1]);
    test_waits(argv[1]);
    puts("ok");
    return 0;
}
