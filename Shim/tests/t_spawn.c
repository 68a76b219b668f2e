/* Programs stored under the prefix, started every way libc offers: execve
 * after fork and after vfork, fexecve, posix_spawn(p), system and popen.
 * The program is this test itself, copied into DIR; run as
 * `t_spawn DIR`, it starts `DIR/self DIR child MODE ...`. */
#include "check.h"

#include <dirent.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>

int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags);

extern char **environ;

static const char *dir;

static int copy_then_check(const char *kind);

/* ---- the program's side ---- */

static void on_usr2(int s) {
    (void)s;
    _exit(12);
}

static void on_cont(int s) {
    (void)s;
    ssize_t r = write(1, "cont\n", 5);
    (void)r;
}

static int child(int argc, char **argv) {
    const char *mode = argv[3];
    if (strcmp(mode, "exit") == 0) return atoi(argv[4]);
    if (strcmp(mode, "echo") == 0) {
        /* args, environment, cwd, and a fos descriptor at its shared offset */
        char cwd[4096], b[5] = {0};
        CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, dir) == 0);
        int fd = argc > 4 ? atoi(argv[4]) : -1;
        if (fd >= 0) CHECK(read(fd, b, 4) == 4);
        if (argc > 5) CHECK(fcntl(atoi(argv[5]), F_GETFD) == -1 && errno == EBADF);
        printf("echo %s %s %s\n", getenv("T_SPAWN") ? getenv("T_SPAWN") : "-", b, argv[0]);
        fflush(stdout);
        return 7;
    }
    if (strcmp(mode, "copy") == 0) return copy_then_check(argv[4]);
    if (strcmp(mode, "incwd") == 0) {
        char cwd[4096];
        return getcwd(cwd, sizeof cwd) && strcmp(cwd, argv[4]) == 0 ? 0 : 1;
    }
    if (strcmp(mode, "state") == 0) {
        /* What exec keeps besides descriptors: umask and resource limits;
         * and a descriptor above 1023. */
        struct rlimit rl;
        mode_t m = umask(0);
        if (m != (mode_t)strtol(argv[4], NULL, 8)) return 2;
        if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur != (rlim_t)atol(argv[5])) return 3;
        if (getrlimit(RLIMIT_CORE, &rl) != 0 || rl.rlim_cur != 0) return 4;
        return fcntl(atoi(argv[6]), F_GETFD) == 0 ? 0 : 5;
    }
    if (strcmp(mode, "raise") == 0) {
        raise(SIGUSR1);
        return 1;
    }
    if (strcmp(mode, "wait") == 0) {
        signal(SIGUSR2, on_usr2);
        signal(SIGCONT, on_cont);
        puts("ready");
        fflush(stdout);
        for (;;) pause();
    }
    return 99;
}

/* ---- the caller's side ---- */

static int status_of(pid_t p) {
    int st;
    CHECK(waitpid(p, &st, 0) == p);
    return st;
}

/* Everything a pipe gives until its writers are gone. */
static void slurp(int fd, char *out, size_t cap) {
    size_t n = 0;
    ssize_t k;
    while (n + 1 < cap && (k = read(fd, out + n, cap - 1 - n)) > 0) n += (size_t)k;
    out[n] = 0;
    close(fd);
}

static void copy_self(const char *to) {
    int in = open("/proc/self/exe", O_RDONLY);
    int out = open(to, O_CREAT | O_WRONLY | O_TRUNC, 0755);
    CHECK(in >= 0 && out >= 0);
    char b[65536];
    ssize_t n;
    while ((n = read(in, b, sizeof b)) > 0) write_all(out, b, (size_t)n);
    CHECK(n == 0 && close(in) == 0 && close(out) == 0);
}

static void test_fork_exec(const char *self) {
    int fd = open(path_in(dir, "data"), O_CREAT | O_RDWR | O_TRUNC, 0644);
    write_all(fd, "0123456789", 10);
    CHECK(lseek(fd, 3, SEEK_SET) == 3);
    int clofd = open(path_in(dir, "data"), O_RDONLY | O_CLOEXEC);
    int p2[2];
    CHECK(clofd >= 0 && pipe(p2) == 0);
    char a[16], b[16];
    snprintf(a, sizeof a, "%d", fd);
    snprintf(b, sizeof b, "%d", clofd);
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        dup2(p2[1], 1);
        close(p2[0]);
        char *args[] = {"named", (char *)dir, "child", "echo", a, b, NULL};
        char *env[] = {"T_SPAWN=fork", "PATH=/usr/bin:/bin", NULL};
        execve(self, args, env);
        _exit(100 + errno);
    }
    close(p2[1]);
    char out[256];
    slurp(p2[0], out, sizeof out);
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7);
    CHECK(strcmp(out, "echo fork 3456 named\n") == 0);
    /* The program read at our offset, through the same open file description. */
    CHECK(lseek(fd, 0, SEEK_CUR) == 7);
    close(fd);
    close(clofd);
}

static void test_vfork_exec(const char *self) {
    pid_t p = vfork();
    CHECK(p >= 0);
    if (p == 0) {
        char *args[] = {(char *)self, (char *)dir, "child", "exit", "23", NULL};
        execv(self, args);
        _exit(1);
    }
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 23);
    /* Errors come back to the child of vfork as from a real exec. */
    volatile int err = 0; /* written by the child of vfork */
    p = vfork();
    if (p == 0) {
        char *args[] = {"x", NULL};
        execv(path_in(dir, "missing"), args);
        err = errno;
        _exit(0);
    }
    CHECK(status_of(p) == 0 && err == ENOENT);
    /* The parent's own connection survived the child's. */
    struct stat s;
    CHECK(stat(self, &s) == 0 && S_ISREG(s.st_mode));
    /* A chdir in the child of vfork is the child's (python's subprocess
     * does that for cwd=): the program starts there, the parent stays. */
    char sub[4200];
    snprintf(sub, sizeof sub, "%s/sub", dir);
    CHECK(mkdir(sub, 0755) == 0);
    const char *where[] = {"sub", "/tmp"};
    for (int i = 0; i < 2; i++) {
        p = vfork();
        if (p == 0) {
            if (chdir(where[i]) != 0) _exit(2);
            char *args[] = {"self", (char *)dir, "child", "incwd", i == 0 ? sub : "/tmp", NULL};
            execv(i == 0 ? "../self" : self, args);
            _exit(3);
        }
        int st = status_of(p);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
        char cwd[4200];
        CHECK(getcwd(cwd, sizeof cwd) && strcmp(cwd, dir) == 0);
        CHECK(stat("self", &s) == 0 && S_ISREG(s.st_mode));
    }
}

/* Writes "copy" into the fos file arg names; 0 if that worked. */
static int copy_child(void *arg) {
    int fd = open((const char *)arg, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 2;
    if (write(fd, "copy", 4) != 4) return 3;
    return close(fd) == 0 ? 0 : 4;
}

/* A child of clone or of _Fork has a copy of our memory, our connection
 * included, and no fork handler told the shim: it must make its own, and
 * ours must go on working. In a new image (nothing made a child before),
 * once for each. */
static int copy_then_check(const char *kind) {
    static char stack[256 * 1024] __attribute__((aligned(16)));
    char path[4200], got[8] = {0};
    struct stat s;
    snprintf(path, sizeof path, "%s/%s", dir, kind);
    if (stat(dir, &s) != 0) return 10; /* connected before the copy */
    pid_t p = strcmp(kind, "clone") == 0 ? clone(copy_child, stack + sizeof stack, SIGCHLD, path) : _Fork();
    if (p == 0) _exit(copy_child(path));
    if (p < 0) return 11;
    int st;
    if (waitpid(p, &st, 0) != p || !WIFEXITED(st) || WEXITSTATUS(st) != 0) return 12;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || read(fd, got, sizeof got) != 4 || memcmp(got, "copy", 4) != 0 || close(fd) != 0) return 13;
    return stat(path, &s) == 0 && s.st_size == 4 ? 0 : 14;
}

static void test_clone_and_fork(const char *self) {
    const char *kinds[] = {"clone", "fork"};
    for (int i = 0; i < 2; i++) {
        pid_t p = fork();
        CHECK(p >= 0);
        if (p == 0) {
            char *args[] = {(char *)self, (char *)dir, "child", "copy", (char *)kinds[i], NULL};
            execv(self, args);
            _exit(100);
        }
        int st = status_of(p);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) fprintf(stderr, "%s: status %#x\n", kinds[i], st);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
}

static void test_posix_spawn(const char *self) {
    pid_t p;
    char *args[] = {(char *)self, (char *)dir, "child", "exit", "5", NULL};
    CHECK(posix_spawn(&p, self, NULL, NULL, args, environ) == 0);
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 5);
    /* posix_spawnp finds it in a fos directory of PATH. */
    char path[4200];
    snprintf(path, sizeof path, "%s:/usr/bin:/bin", dir);
    setenv("PATH", path, 1);
    char *pargs[] = {"self", (char *)dir, "child", "exit", "6", NULL};
    CHECK(posix_spawnp(&p, "self", NULL, NULL, pargs, environ) == 0);
    st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 6);
    /* execvp too, in a child. */
    p = fork();
    if (p == 0) {
        char *vargs[] = {"self", (char *)dir, "child", "exit", "8", NULL};
        execvp("self", vargs);
        _exit(1);
    }
    st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 8);
    setenv("PATH", "/usr/bin:/bin", 1);
    CHECK(posix_spawn(&p, path_in(dir, "missing"), NULL, NULL, args, environ) == ENOENT);
}

static void test_state(const char *self) {
    struct rlimit old, rl;
    CHECK(getrlimit(RLIMIT_NOFILE, &old) == 0 && old.rlim_max >= 2000);
    rl = old;
    rl.rlim_cur = 2000;
    CHECK(setrlimit(RLIMIT_NOFILE, &rl) == 0);
    struct rlimit core = {0, 0}, oldcore;
    CHECK(getrlimit(RLIMIT_CORE, &oldcore) == 0 && setrlimit(RLIMIT_CORE, &core) == 0);
    CHECK(dup2(0, 1500) == 1500);
    mode_t m = umask(027);
    pid_t p;
    char *args[] = {(char *)self, (char *)dir, "child", "state", "027", "2000", "1500", NULL};
    CHECK(posix_spawn(&p, self, NULL, NULL, args, environ) == 0);
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    umask(m);
    close(1500);
    CHECK(setrlimit(RLIMIT_NOFILE, &old) == 0);
}

static void test_system_popen(const char *self) {
    char cmd[4400];
    snprintf(cmd, sizeof cmd, "%s %s child exit 4", self, dir);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 4);
    snprintf(cmd, sizeof cmd, "T_SPAWN=popen %s %s child echo", self, dir);
    FILE *f = popen(cmd, "r");
    CHECK(f != NULL);
    char line[256] = {0};
    CHECK(fgets(line, sizeof line, f) != NULL);
    CHECK(strncmp(line, "echo popen", 10) == 0);
    st = pclose(f);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7);
}

static void test_fexecve(const char *self) {
    int fd = open(self, O_RDONLY);
    CHECK(fd >= 0);
    pid_t p = fork();
    if (p == 0) {
        char *args[] = {"fexec", (char *)dir, "child", "exit", "9", NULL};
        fexecve(fd, args, environ);
        _exit(100 + errno);
    }
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 9);
    close(fd);
}

static void test_execveat(void) {
    /* Relative to a fos directory descriptor, and of a fos descriptor itself. */
    int d = open(dir, O_RDONLY | O_DIRECTORY);
    int f = open(path_in(dir, "self"), O_RDONLY);
    CHECK(d >= 0 && f >= 0);
    for (int i = 0; i < 2; i++) {
        pid_t p = fork();
        if (p == 0) {
            char *args[] = {"at", (char *)dir, "child", "exit", i ? "11" : "10", NULL};
            if (i == 0) execveat(d, "self", args, environ, 0);
            else execveat(f, "", args, environ, AT_EMPTY_PATH);
            _exit(100 + errno);
        }
        int st = status_of(p);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == (i ? 11 : 10));
    }
    close(d);
    close(f);
}

/* Starts this program in "wait" mode with its stdout on a pipe, and
 * returns once it is ready (its signal handlers set); *out: the pipe. */
static pid_t spawn_waiting(const char *self, int *out) {
    int pp[2];
    CHECK(pipe(pp) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, pp[1], 1);
    posix_spawn_file_actions_addclose(&fa, pp[0]);
    char *wargs[] = {(char *)self, (char *)dir, "child", "wait", NULL};
    pid_t p;
    CHECK(posix_spawn(&p, self, &fa, NULL, wargs, environ) == 0);
    posix_spawn_file_actions_destroy(&fa);
    close(pp[1]);
    char b[6] = {0};
    CHECK(read(pp[0], b, 6) == 6 && memcmp(b, "ready\n", 6) == 0);
    *out = pp[0];
    return p;
}

static void test_signals(const char *self) {
    /* A stop that never comes (a process group the kernel will not stop,
     * see main) ends the test here instead of at its caller's timeout. */
    alarm(30);
    /* Killed by a signal: the parent sees that signal. */
    pid_t p;
    char *args[] = {(char *)self, (char *)dir, "child", "raise", NULL};
    CHECK(posix_spawn(&p, self, NULL, NULL, args, environ) == 0);
    int st = status_of(p);
    CHECK(WIFSIGNALED(st) && WTERMSIG(st) == SIGUSR1);
    /* A signal to the pid we have reaches the program; so do stop and continue. */
    int out;
    p = spawn_waiting(self, &out);
    CHECK(kill(p, SIGTSTP) == 0);
    CHECK(waitpid(p, &st, WUNTRACED) == p && WIFSTOPPED(st) && WSTOPSIG(st) == SIGTSTP);
    CHECK(kill(p, SIGCONT) == 0);
    CHECK(kill(p, SIGUSR2) == 0);
    st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 12);
    close(out);
    alarm(0);
}

/* In an orphaned process group the kernel discards SIGTSTP: a program
 * there never stops, nor must a program behind a stand-in stay stopped.
 * A child in a session of its own starts a program and sends it SIGTSTP:
 * the stand-in, whose own stop is discarded, must continue the program it
 * stopped (which says "cont"). The alarm turns a program left stopped into
 * a failure, and ends the stand-in (and so the program tied to it). */
static volatile pid_t orphan_standin;

static void on_orphan_alarm(int s) {
    (void)s;
    if (orphan_standin > 0) kill(orphan_standin, SIGKILL);
    _exit(2);
}

static void test_orphaned_stop(const char *self) {
    pid_t c = fork();
    CHECK(c >= 0);
    if (c == 0) {
        signal(SIGALRM, on_orphan_alarm);
        alarm(20);
        CHECK(setsid() > 0);
        int out;
        pid_t p = spawn_waiting(self, &out);
        orphan_standin = p;
        CHECK(kill(p, SIGTSTP) == 0);
        char b[5];
        CHECK(read(out, b, 5) == 5 && memcmp(b, "cont\n", 5) == 0);
        CHECK(kill(p, SIGUSR2) == 0);
        int st = status_of(p);
        _exit(WIFEXITED(st) && WEXITSTATUS(st) == 12 ? 0 : 1);
    }
    int st = status_of(c);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* File actions that open fos paths: for a host program, for a program
 * stored under the prefix, relative to the (virtual) cwd, and failing. */
static int open_fds(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    while (d && readdir(d)) n++;
    if (d) closedir(d);
    return n;
}

static void test_file_actions(const char *self) {
    int fd = open(path_in(dir, "in.txt"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write_all(fd, "abcdefgh\n", 9);
    close(fd);
    int before = open_fds();
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addopen(&fa, 0, "in.txt", O_RDONLY, 0) == 0);
    CHECK(posix_spawn_file_actions_addopen(&fa, 1, path_in(dir, "out.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0600) == 0);
    pid_t p;
    char *cat[] = {"cat", NULL};
    CHECK(posix_spawn(&p, "/bin/cat", &fa, NULL, cat, environ) == 0);
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    posix_spawn_file_actions_destroy(&fa);
    CHECK(open_fds() == before);
    char b[16] = {0};
    fd = open(path_in(dir, "out.txt"), O_RDONLY);
    CHECK(fd >= 0 && read(fd, b, sizeof b) == 9 && memcmp(b, "abcdefgh\n", 9) == 0);
    struct stat s;
    CHECK(fstat(fd, &s) == 0 && (s.st_mode & 0777) == 0600);
    close(fd);

    /* A program under the prefix gets the file as descriptor 7. */
    int pp[2];
    CHECK(pipe(pp) == 0);
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addopen(&fa, 7, "in.txt", O_RDONLY, 0) == 0);
    posix_spawn_file_actions_adddup2(&fa, pp[1], 1);
    posix_spawn_file_actions_addclose(&fa, pp[0]);
    char *echo[] = {(char *)self, (char *)dir, "child", "echo", "7", NULL};
    CHECK(posix_spawn(&p, self, &fa, NULL, echo, environ) == 0);
    close(pp[1]);
    char line[256] = {0};
    CHECK(read(pp[0], line, sizeof line - 1) > 0 && strncmp(line, "echo - abcd", 11) == 0);
    st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7);
    close(pp[0]);
    posix_spawn_file_actions_destroy(&fa);

    /* A fos open that fails: posix_spawn says why, and starts nothing. */
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addopen(&fa, 0, path_in(dir, "missing"), O_RDONLY, 0) == 0);
    CHECK(posix_spawn(&p, "/bin/cat", &fa, NULL, cat, environ) == ENOENT);
    CHECK(posix_spawnp(&p, "cat", &fa, NULL, cat, environ) == ENOENT);
    posix_spawn_file_actions_destroy(&fa);
    CHECK(open_fds() == before);
}

/* `sh -c script` spawned with fa (plus stdout to a pipe): its output. */
static void spawn_sh(posix_spawn_file_actions_t *fa, const char *script, char *out, size_t cap) {
    int pp[2];
    CHECK(pipe(pp) == 0);
    posix_spawn_file_actions_adddup2(fa, pp[1], 1);
    posix_spawn_file_actions_addclose(fa, pp[0]);
    char *sh[] = {"sh", "-c", (char *)script, NULL};
    pid_t p;
    CHECK(posix_spawn(&p, "/bin/sh", fa, NULL, sh, environ) == 0);
    close(pp[1]);
    size_t got = 0;
    ssize_t n;
    while (got < cap - 1 && (n = read(pp[0], out + got, cap - 1 - got)) > 0) got += (size_t)n;
    out[got] = 0;
    close(pp[0]);
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    posix_spawn_file_actions_destroy(fa);
}

/* chdir actions: into a fos directory the child starts in its virtual
 * cwd; into a host one it has none (not the parent's). */
static void test_chdir_actions(void) {
    CHECK(mkdir(path_in(dir, "cd"), 0755) == 0);
    int fd = open(path_in(dir, "cd/f"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write_all(fd, "in sub\n", 7);
    close(fd);
    char want[8192], out[8192];
    snprintf(want, sizeof want, "%s/cd\nin sub\n", dir);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, path_in(dir, "cd")) == 0);
    spawn_sh(&fa, "pwd; cat f", out, sizeof out);
    CHECK(strcmp(out, want) == 0);
    /* Relative to the fos directory an earlier action entered. */
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, dir) == 0);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, "cd") == 0);
    spawn_sh(&fa, "pwd; cat f", out, sizeof out);
    CHECK(strcmp(out, want) == 0);
    /* By descriptor. */
    int d = open(path_in(dir, "cd"), O_RDONLY | O_DIRECTORY);
    CHECK(d >= 0);
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addfchdir_np(&fa, d) == 0);
    spawn_sh(&fa, "pwd; cat f", out, sizeof out);
    CHECK(strcmp(out, want) == 0);
    close(d);
    /* Our cwd is in /fos; the child's is a host directory. */
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, "/tmp") == 0);
    spawn_sh(&fa, "pwd", out, sizeof out);
    CHECK(strcmp(out, "/tmp\n") == 0);
    /* Relative to a host directory an earlier action entered. */
    CHECK(mkdir("/tmp/fos-t-spawn-cd", 0755) == 0 || errno == EEXIST);
    CHECK(mkdir("/tmp/fos-t-spawn-cd/sub", 0755) == 0 || errno == EEXIST);
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, "/tmp/fos-t-spawn-cd") == 0);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, "sub") == 0);
    spawn_sh(&fa, "pwd", out, sizeof out);
    CHECK(strcmp(out, "/tmp/fos-t-spawn-cd/sub\n") == 0);
    rmdir("/tmp/fos-t-spawn-cd/sub");
    rmdir("/tmp/fos-t-spawn-cd");
    /* After a fos chdir, a relative open and a relative program path go from there. */
    fd = open(path_in(dir, "cd/prog.sh"), O_CREAT | O_WRONLY | O_TRUNC, 0755);
    write_all(fd, "#!/bin/sh\ncat f > copy; pwd\n", 27);
    close(fd);
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, path_in(dir, "cd")) == 0);
    CHECK(posix_spawn_file_actions_addopen(&fa, 1, "out.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644) == 0);
    char *prog[] = {"prog.sh", NULL};
    pid_t p;
    CHECK(posix_spawn(&p, "./prog.sh", &fa, NULL, prog, environ) == 0);
    int st = status_of(p);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    posix_spawn_file_actions_destroy(&fa);
    fd = open(path_in(dir, "cd/out.txt"), O_RDONLY);
    CHECK(fd >= 0);
    ssize_t got = read(fd, out, sizeof out - 1);
    CHECK(got > 0);
    out[got] = 0;
    close(fd);
    char here[8192];
    snprintf(here, sizeof here, "%s/cd\n", dir);
    CHECK(strcmp(out, here) == 0);
    fd = open(path_in(dir, "cd/copy"), O_RDONLY);
    CHECK(fd >= 0 && read(fd, out, 7) == 7 && memcmp(out, "in sub\n", 7) == 0);
    close(fd);
    /* Many live objects with host chdir actions: nothing runs out. */
    posix_spawn_file_actions_t many[100];
    for (int i = 0; i < 100; i++) {
        posix_spawn_file_actions_init(&many[i]);
        CHECK(posix_spawn_file_actions_addchdir_np(&many[i], "/tmp") == 0);
    }
    for (int i = 0; i < 100; i++) posix_spawn_file_actions_destroy(&many[i]);
    /* What the child's chdir would fail with, posix_spawn reports. */
    char *t[] = {"true", NULL};
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, path_in(dir, "missing")) == 0);
    CHECK(posix_spawn(&p, "/bin/true", &fa, NULL, t, environ) == ENOENT);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawn_file_actions_init(&fa);
    CHECK(posix_spawn_file_actions_addchdir_np(&fa, path_in(dir, "cd/f")) == 0);
    CHECK(posix_spawn(&p, "/bin/true", &fa, NULL, t, environ) == ENOTDIR);
    posix_spawn_file_actions_destroy(&fa);
}

static void test_errors(void) {
    char *args[] = {"x", NULL};
    int fd = open(path_in(dir, "plain"), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    write_all(fd, "no program\n", 11);
    close(fd);
    CHECK_ERRNO(execv(path_in(dir, "missing"), args), ENOENT);
    CHECK_ERRNO(execv(path_in(dir, "plain"), args), EACCES);
    CHECK_ERRNO(execv(dir, args), EACCES);
    CHECK(chmod(path_in(dir, "plain"), 0755) == 0);
    CHECK_ERRNO(execv(path_in(dir, "plain"), args), ENOEXEC);
    fd = open(path_in(dir, "loop"), O_CREAT | O_WRONLY | O_TRUNC, 0755);
    char line[4200];
    int n = snprintf(line, sizeof line, "#!%s/loop\n", dir);
    write_all(fd, line, (size_t)n);
    close(fd);
    CHECK_ERRNO(execv(path_in(dir, "loop"), args), ELOOP);
    fd = open(path_in(dir, "noint"), O_CREAT | O_WRONLY | O_TRUNC, 0755);
    n = snprintf(line, sizeof line, "#!%s/none\n", dir);
    write_all(fd, line, (size_t)n);
    close(fd);
    CHECK_ERRNO(execv(path_in(dir, "noint"), args), ENOENT);
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[2], "child") == 0) {
        dir = argv[1];
        return child(argc, argv);
    }
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    dir = argv[1];
    /* test_signals needs a process group the kernel lets stop: not an
     * orphaned one, as a non-interactive shell's under setsid is. Unless
     * we run in a terminal's foreground group (a shell's job, which is
     * not orphaned, and whose ^C should reach us), a group of our own:
     * our parent is in another group of the same session. */
    if (tcgetpgrp(STDIN_FILENO) != getpgrp()) CHECK(setpgid(0, 0) == 0 || getpgrp() == getpid());
    char self[4200];
    snprintf(self, sizeof self, "%s/self", dir);
    copy_self(self);
    CHECK(chdir(dir) == 0);
    test_fork_exec(self);
    test_vfork_exec(self);
    test_clone_and_fork(self);
    test_posix_spawn(self);
    test_state(self);
    test_system_popen(self);
    test_fexecve(self);
    test_execveat();
    test_signals(self);
    test_orphaned_stop(self);
    test_file_actions(self);
    test_chdir_actions();
    test_errors();
    puts("ok");
    return 0;
}
