/* Threads and signals: concurrent calls share the process's one channel;
 * a signal handler that makes a fos call while its thread is inside one
 * gets EINTR instead of deadlocking; a change of credentials reconnects,
 * so the fs sees the new ones. */
#include "check.h"

#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <sys/time.h>
#include <sys/wait.h>

static const char *dir;

static void *worker(void *arg) {
    long id = (long)arg;
    char name[32], buf[64];
    snprintf(name, sizeof name, "t%ld", id);
    const char *p = path_in(dir, name);
    for (int i = 0; i < 200; i++) {
        int fd = open(p, O_CREAT | O_RDWR | O_TRUNC, 0644);
        if (fd < 0) return (void *)1;
        int n = snprintf(buf, sizeof buf, "thread %ld round %d", id, i);
        if (write(fd, buf, (size_t)n) != n || pread(fd, buf + 32, (size_t)n, 0) != n) return (void *)2;
        if (memcmp(buf, buf + 32, (size_t)n) != 0) return (void *)3;
        close(fd);
    }
    return NULL;
}

static volatile sig_atomic_t handled, interrupted, other;

static void on_alarm(int sig) {
    (void)sig;
    int saved = errno;
    struct stat st;
    if (stat(dir, &st) == 0) handled++;
    else if (errno == EINTR) interrupted++;
    else other++;
    errno = saved;
}

static void test_signals(void) {
    struct sigaction sa = {.sa_handler = on_alarm, .sa_flags = SA_RESTART};
    CHECK(sigaction(SIGALRM, &sa, NULL) == 0);
    struct itimerval it = {{0, 200}, {0, 200}};
    CHECK(setitimer(ITIMER_REAL, &it, NULL) == 0);
    int fd = open(path_in(dir, "sig"), O_CREAT | O_RDWR, 0644);
    CHECK(fd >= 0);
    char b[16];
    for (int i = 0; i < 3000; i++) {
        if (pwrite(fd, "signal", 6, 0) == -1) CHECK(errno == EINTR);
        if (pread(fd, b, 6, 0) == -1) CHECK(errno == EINTR);
    }
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    close(fd);
    CHECK(other == 0 && handled + interrupted > 0);
    printf("signals: %d handled, %d EINTR\n", (int)handled, (int)interrupted);
}

static void test_credentials(void) {
    if (geteuid() != 0) {
        puts("credentials: skipped (not root)");
        return;
    }
    const char *secret = path_in(dir, "secret");
    int fd = open(secret, O_CREAT | O_WRONLY, 0600);
    CHECK(fd >= 0 && write(fd, "s", 1) == 1 && close(fd) == 0);
    /* The parent of the dir must let nobody through for ENOENT vs EACCES to mean something. */
    CHECK(chmod(dir, 0755) == 0);
    const char *pub = path_in(dir, "pub");
    CHECK(mkdir(pub, 0777) == 0 && chmod(pub, 0777) == 0);
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        int g = open(secret, O_RDONLY);
        if (g < 0) _exit(2); /* still root here */
        close(g);
        if (setgroups(0, NULL) != 0 || setgid(65534) != 0 || setuid(65534) != 0) _exit(3);
        g = open(secret, O_RDONLY);
        if (g >= 0 || errno != EACCES) _exit(4);
        struct stat st;
        if (stat(secret, &st) != 0) _exit(5); /* the directory is still searchable */
        /* Created 0444, written through the descriptor that created it
         * (write permission is checked at open, as on Linux). */
        char ro[4096];
        snprintf(ro, sizeof ro, "%s/ro", pub);
        int w = open(ro, O_CREAT | O_EXCL | O_WRONLY, 0444);
        if (w < 0 || write(w, "x", 1) != 1 || close(w) != 0) _exit(6);
        if (open(ro, O_WRONLY) >= 0 || errno != EACCES) _exit(7);
        _exit(0);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st));
    if (WEXITSTATUS(st) != 0) fprintf(stderr, "credential child: step %d\n", WEXITSTATUS(st));
    CHECK(WEXITSTATUS(st) == 0);
}

int main(int argc, char **argv) {
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    dir = argv[1];
    pthread_t t[4];
    for (long i = 0; i < 4; i++) CHECK(pthread_create(&t[i], NULL, worker, (void *)i) == 0);
    for (int i = 0; i < 4; i++) {
        void *r;
        CHECK(pthread_join(t[i], &r) == 0 && r == NULL);
    }
    test_signals();
    test_credentials();
    puts("ok");
    return 0;
}
