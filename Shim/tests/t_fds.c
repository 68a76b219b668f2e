/* Descriptors: dup, dup2, dup3 and fcntl share the open file description
 * (offset, status flags) as the kernel does; so do fork and the vector
 * calls; record locks and flock between processes. */
#include "check.h"

#include <sys/file.h>
#include <sys/uio.h>
#include <sys/wait.h>

static int make(const char *d, const char *name, const char *text) {
    int fd = open(path_in(d, name), O_CREAT | O_RDWR | O_TRUNC, 0644);
    CHECK(fd >= 0);
    write_all(fd, text, strlen(text));
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    return fd;
}

static void test_dup(const char *d) {
    int fd = make(d, "dup", "0123456789");
    char b[4];
    int a = dup(fd);
    CHECK(a > fd);
    CHECK(read(fd, b, 3) == 3 && lseek(a, 0, SEEK_CUR) == 3);
    CHECK(read(a, b, 2) == 2 && memcmp(b, "34", 2) == 0 && lseek(fd, 0, SEEK_CUR) == 5);
    int c = 50;
    CHECK(dup2(fd, c) == c);
    CHECK(read(c, b, 1) == 1 && b[0] == '5' && lseek(fd, 0, SEEK_CUR) == 6);
    /* dup2 over a fos descriptor: the old one is gone, the new one shares. */
    int other = make(d, "other", "xyz");
    CHECK(dup2(other, c) == c);
    CHECK(read(c, b, 1) == 1 && b[0] == 'x');
    CHECK(dup3(fd, c, O_CLOEXEC) == c && (fcntl(c, F_GETFD) & FD_CLOEXEC));
    CHECK(read(c, b, 1) == 1 && b[0] == '6');
    CHECK_ERRNO(dup3(fd, fd, 0), EINVAL);
    /* fcntl: F_DUPFD above a floor, status flags shared, descriptor flags not. */
    int e = fcntl(fd, F_DUPFD_CLOEXEC, 100);
    CHECK(e >= 100 && (fcntl(e, F_GETFD) & FD_CLOEXEC) && !(fcntl(fd, F_GETFD) & FD_CLOEXEC));
    CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_RDWR && !(fcntl(fd, F_GETFL) & O_APPEND));
    CHECK(fcntl(e, F_SETFL, O_APPEND | O_NONBLOCK) == 0);
    CHECK((fcntl(fd, F_GETFL) & (O_APPEND | O_NONBLOCK)) == (O_APPEND | O_NONBLOCK));
    CHECK(write(fd, "!", 1) == 1 && lseek(fd, 0, SEEK_CUR) == 11);
    CHECK(fcntl(e, F_SETFL, 0) == 0 && !(fcntl(a, F_GETFL) & O_APPEND));
    close(e);
    /* Closing one copy leaves the others working. */
    close(a);
    CHECK(pread(fd, b, 1, 0) == 1 && b[0] == '0');
    close(c);
    close(fd);
    close(other);
}

static void test_vectors(const char *d) {
    int fd = make(d, "vec", "");
    struct iovec w[3] = {{"ab", 2}, {"", 0}, {"cdef", 4}};
    CHECK(writev(fd, w, 3) == 6);
    CHECK(lseek(fd, 1, SEEK_SET) == 1);
    char x[2], y[10];
    struct iovec r[2] = {{x, 2}, {y, 10}};
    CHECK(readv(fd, r, 2) == 5 && memcmp(x, "bc", 2) == 0 && memcmp(y, "def", 3) == 0);
    /* Positional forms leave the offset alone. */
    struct iovec p[2] = {{"XY", 2}, {"Z", 1}};
    CHECK(pwritev(fd, p, 2, 1) == 3 && lseek(fd, 0, SEEK_CUR) == 6);
    CHECK(preadv(fd, r, 2, 0) == 6 && memcmp(x, "aX", 2) == 0 && memcmp(y, "YZef", 4) == 0);
    CHECK(lseek(fd, 0, SEEK_CUR) == 6);
    CHECK(preadv2(fd, r, 1, 0, 0) == 2 && pwritev2(fd, p, 1, -1, 0) == 2 && lseek(fd, 0, SEEK_CUR) == 8);
    close(fd);
}

static void test_fork(const char *d) {
    int fd = make(d, "fork", "abcdefghij");
    char b[4];
    CHECK(read(fd, b, 2) == 2);
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        /* The child shares the offset, and reconnects to the node on its own. */
        if (read(fd, b, 3) != 3 || memcmp(b, "cde", 3) != 0) _exit(2);
        int g = open(path_in(d, "from-child"), O_CREAT | O_WRONLY, 0644);
        if (g < 0 || write(g, "child", 5) != 5) _exit(3);
        _exit(0);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    CHECK(lseek(fd, 0, SEEK_CUR) == 5);
    CHECK(read(fd, b, 1) == 1 && b[0] == 'f');
    struct stat s;
    CHECK(stat(path_in(d, "from-child"), &s) == 0 && s.st_size == 5);
    close(fd);
    /* A write the parent sent ahead (ahead.c) before fork is the parent's
     * alone: the child, on its own connection, must not send it again
     * (over the parent's later write). */
    fd = make(d, "fork2", "");
    int go[2];
    CHECK(pipe(go) == 0);
    CHECK(pwrite(fd, "A", 1, 0) == 1);
    p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1) _exit(2);
        if (pread(fd, &c, 1, 0) != 1 || c != 'B') _exit(3);
        if (pread(fd, &c, 1, 0) != 1 || c != 'B') _exit(4);
        _exit(0);
    }
    close(go[0]);
    CHECK(pwrite(fd, "B", 1, 0) == 1 && fsync(fd) == 0);
    CHECK(write(go[1], "g", 1) == 1);
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st));
    if (WEXITSTATUS(st) != 0) fprintf(stderr, "fork child: step %d\n", WEXITSTATUS(st));
    CHECK(WEXITSTATUS(st) == 0);
    CHECK(pread(fd, b, 1, 0) == 1 && b[0] == 'B');
    close(go[1]);
    close(fd);
}

/* 1 if another process sees bytes 0-4 of path write-locked, 0 if free. */
static int locked_elsewhere(const char *path) {
    pid_t p = fork();
    if (p == 0) {
        int g = open(path, O_RDWR);
        struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 5};
        if (g < 0 || fcntl(g, F_GETLK, &q) != 0) _exit(2);
        _exit(q.l_type == F_UNLCK ? 0 : 1);
    }
    int st;
    if (p < 0 || waitpid(p, &st, 0) != p || !WIFEXITED(st)) return -1;
    return WEXITSTATUS(st);
}

static void test_locks(const char *d) {
    int fd = make(d, "lock", "0123456789");
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 5};
    CHECK(fcntl(fd, F_SETLK, &fl) == 0);
    pid_t me = getpid();
    pid_t p = fork();
    CHECK(p >= 0);
    if (p == 0) {
        int g = open(path_in(d, "lock"), O_RDWR);
        struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 2, .l_len = 1};
        if (fcntl(g, F_GETLK, &q) != 0 || q.l_type != F_WRLCK || q.l_pid != me) _exit(2);
        q.l_type = F_WRLCK;
        if (fcntl(g, F_SETLK, &q) != -1 || (errno != EAGAIN && errno != EACCES)) _exit(3);
        struct flock free = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 6, .l_len = 2};
        if (fcntl(g, F_SETLK, &free) != 0) _exit(4);
        if (flock(g, LOCK_EX | LOCK_NB) != 0) _exit(5);
        _exit(0);
    }
    int st;
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st));
    CHECK(WEXITSTATUS(st) == 0);
    /* The child's locks went with it: when the fs hears that its channel
     * closed, a moment after the exit (not at once, as on Linux). */
    int tries = 0;
    while (flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK && tries++ < 200) usleep(10000);
    CHECK(tries < 200 && flock(fd, LOCK_UN) == 0);
    /* Closing a descriptor of another file keeps the process's POSIX locks;
     * closing any descriptor of this one drops them. */
    CHECK(locked_elsewhere(path_in(d, "lock")) == 1);
    close(make(d, "unrelated", "x"));
    CHECK(locked_elsewhere(path_in(d, "lock")) == 1);
    close(open(path_in(d, "lock"), O_RDONLY));
    CHECK(locked_elsewhere(path_in(d, "lock")) == 0);
    CHECK(fcntl(fd, F_SETLK, &fl) == 0);
    CHECK(locked_elsewhere(path_in(d, "lock")) == 1);
    /* A vfork child's close of the file releases the child's locks (none),
     * not the parent's; the parent's own close still releases them. */
    int other = open(path_in(d, "lock"), O_RDONLY);
    CHECK(other >= 0);
    pid_t v = vfork();
    if (v == 0) {
        close(other);
        _exit(0);
    }
    CHECK(v > 0 && waitpid(v, &st, 0) == v);
    CHECK(locked_elsewhere(path_in(d, "lock")) == 1);
    close(other);
    CHECK(locked_elsewhere(path_in(d, "lock")) == 0);
    CHECK(fcntl(fd, F_SETLK, &fl) == 0);
    fl.l_type = F_UNLCK;
    CHECK(fcntl(fd, F_SETLK, &fl) == 0);
    CHECK(locked_elsewhere(path_in(d, "lock")) == 0);
    close(fd);
}

/* O_SYNC and O_DSYNC are kept (F_GETFL shows them, as on Linux; a dup
 * shares them), and writes through them work (that each is flushed
 * before it returns cannot be seen from here). */
static void test_sync(const char *d) {
    int fd = open(path_in(d, "sync"), O_CREAT | O_RDWR | O_SYNC, 0644);
    CHECK(fd >= 0 && (fcntl(fd, F_GETFL) & O_SYNC) == O_SYNC);
    int e = dup(fd);
    CHECK((fcntl(e, F_GETFL) & O_SYNC) == O_SYNC);
    CHECK(write(e, "sync", 4) == 4 && pwrite(fd, "S", 1, 0) == 1);
    close(e);
    close(fd);
    fd = open(path_in(d, "sync"), O_RDWR | O_DSYNC);
    CHECK(fd >= 0 && (fcntl(fd, F_GETFL) & O_SYNC) == O_DSYNC);
    char b[4];
    CHECK(read(fd, b, 4) == 4 && memcmp(b, "Sync", 4) == 0);
    struct iovec v = {.iov_base = "!", .iov_len = 1};
    CHECK(pwritev2(fd, &v, 1, 4, RWF_DSYNC) == 1 && pwritev2(fd, &v, 1, 5, RWF_SYNC) == 1);
    close(fd);
    fd = open(path_in(d, "sync"), O_RDONLY);
    CHECK(fd >= 0 && read(fd, b, 4) == 4 && read(fd, b, 4) == 2 && memcmp(b, "!!", 2) == 0);
    close(fd);
    fd = open(path_in(d, "sync"), O_RDONLY);
    CHECK(fd >= 0 && !(fcntl(fd, F_GETFL) & O_DSYNC));
    close(fd);
}

/* The lowest descriptor number free now. */
static int lowest_free(void) {
    int fd = dup(0);
    CHECK(fd >= 0);
    close(fd);
    return fd;
}

/* New files (O_CREAT | O_EXCL) in two directories in turn, so that the
 * placeholder made while the create is in flight is for the wrong inode
 * number about every other time: either way the descriptor is the lowest
 * free one, is the new file's, keeps the flags asked for, and survives
 * exec unless close-on-exec; a create that fails uses no descriptor. */
static void test_new_files(const char *d) {
    char a[512], b[512];
    snprintf(a, sizeof a, "%s/new-a", d);
    snprintf(b, sizeof b, "%s/new-b", d);
    CHECK(mkdir(a, 0755) == 0 && mkdir(b, 0755) == 0);
    for (int i = 0; i < 24; i++) {
        const char *p = path_in(i % 4 < 2 ? a : b, i % 2 ? "odd" : "even");
        char name[64];
        snprintf(name, sizeof name, "%s%d", p, i);
        int want = lowest_free();
        int cloexec = i % 3 == 0 ? O_CLOEXEC : 0;
        int fd = open(name, O_CREAT | O_EXCL | O_WRONLY | cloexec, 0640);
        CHECK(fd == want);
        struct stat s1, s2;
        CHECK(fstat(fd, &s1) == 0 && stat(name, &s2) == 0);
        CHECK(is_fos_dev(s1.st_dev) && s1.st_ino == s2.st_ino && s1.st_mode == (S_IFREG | 0640));
        CHECK((fcntl(fd, F_GETFL) & O_ACCMODE) == O_WRONLY);
        CHECK(!!(fcntl(fd, F_GETFD) & FD_CLOEXEC) == !!cloexec);
        /* A failed create of the same name takes no descriptor. */
        CHECK_ERRNO(open(name, O_CREAT | O_EXCL | O_WRONLY, 0640), EEXIST);
        CHECK(lowest_free() == fd + 1 || lowest_free() < fd);
        if (i % 6 == 1 || i % 6 == 3) {
            /* A new image writes through it, or finds it closed. */
            char cmd[128];
            snprintf(cmd, sizeof cmd, "exec 2>/dev/null; echo new%d >&%d", i, fd);
            pid_t pid = fork();
            CHECK(pid >= 0);
            if (pid == 0) {
                execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
                _exit(127);
            }
            int st;
            CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st));
            CHECK((WEXITSTATUS(st) == 0) == !cloexec);
            char got[32] = {0}, exp[32];
            snprintf(exp, sizeof exp, "new%d\n", i);
            int r = open(name, O_RDONLY);
            CHECK(r >= 0 && read(r, got, sizeof got - 1) == (ssize_t)(cloexec ? 0 : strlen(exp)));
            CHECK(cloexec || strcmp(got, exp) == 0);
            close(r);
        }
        close(fd);
    }
}

int main(int argc, char **argv) {
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    test_dup(argv[1]);
    test_vectors(argv[1]);
    test_fork(argv[1]);
    test_locks(argv[1]);
    test_sync(argv[1]);
    test_new_files(argv[1]);
    puts("ok");
    return 0;
}
