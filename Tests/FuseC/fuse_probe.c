// Probes of a mounted file system that shell tools cannot make: mmap,
// telldir/seekdir, record locks and flock between processes, FIFOs,
// extended attributes, renameat2 flags, one large write, files open after
// their last name went. Each subcommand
// prints what failed and exits 1, or exits 0.
//   fuse_probe mmap|seekdir|locks|fifo|xattr|rename2|bigio|unlinked PATH
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

static int bad;
#define EXPECT(cond, ...)                                                   \
    do {                                                                    \
        if (!(cond)) {                                                      \
            fprintf(stderr, "%s:%d: %s: ", __FILE__, __LINE__, #cond);      \
            fprintf(stderr, __VA_ARGS__);                                   \
            fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno));    \
            bad = 1;                                                        \
        }                                                                   \
    } while (0)

static void msleep(int ms) {
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
}

// Shared writable mapping: stores reach the file (read back with read(2)
// after munmap and a reopen), and data written with write(2) shows in a
// fresh read-only mapping.
static void probe_mmap(const char *path) {
    const size_t n = 3 * 4096 + 100;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    EXPECT(fd >= 0, "open");
    if (fd < 0) return;
    EXPECT(ftruncate(fd, (off_t)n) == 0, "ftruncate");
    unsigned char *m = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    EXPECT(m != MAP_FAILED, "mmap rw");
    if (m == MAP_FAILED) return;
    for (size_t i = 0; i < n; i++) m[i] = (unsigned char)(i * 7 + 3);
    EXPECT(msync(m, n, MS_SYNC) == 0, "msync");
    munmap(m, n);
    close(fd);
    fd = open(path, O_RDONLY);
    unsigned char *buf = malloc(n);
    EXPECT(pread(fd, buf, n, 0) == (ssize_t)n, "pread");
    for (size_t i = 0; i < n; i++) {
        if (buf[i] != (unsigned char)(i * 7 + 3)) {
            EXPECT(0, "byte %zu is %u after mmap write", i, buf[i]);
            break;
        }
    }
    close(fd);
    fd = open(path, O_RDWR);
    const char *msg = "written with write(2)";
    EXPECT(pwrite(fd, msg, strlen(msg), 5000) == (ssize_t)strlen(msg), "pwrite");
    m = mmap(NULL, n, PROT_READ, MAP_SHARED, fd, 0);
    EXPECT(m != MAP_FAILED, "mmap ro");
    if (m != MAP_FAILED) {
        EXPECT(memcmp(m + 5000, msg, strlen(msg)) == 0, "mapping misses a write(2)");
        munmap(m, n);
    }
    close(fd);
    free(buf);
}

// telldir/seekdir over a directory larger than one readdir batch.
static void probe_seekdir(const char *dir) {
    enum { N = 600 };
    char p[4096];
    for (int i = 0; i < N; i++) {
        snprintf(p, sizeof p, "%s/entry-%04d-%s", dir, i, "padding-to-make-names-longer");
        int fd = open(p, O_CREAT | O_WRONLY, 0644);
        EXPECT(fd >= 0, "create %s", p);
        close(fd);
    }
    DIR *d = opendir(dir);
    EXPECT(d != NULL, "opendir");
    if (!d) return;
    static char names[N + 2][256];
    static long pos[N + 2];
    int count = 0;
    for (;;) {
        long t = telldir(d);
        struct dirent *e = readdir(d);
        if (!e) break;
        if (count < N + 2) {
            pos[count] = t;
            snprintf(names[count], 256, "%s", e->d_name);
        }
        count++;
    }
    EXPECT(count == N + 2, "readdir saw %d entries, want %d", count, N + 2);
    int picks[] = {0, 1, 2, 57, 300, 301, count - 1, 128, 5};
    for (size_t k = 0; k < sizeof picks / sizeof picks[0]; k++) {
        int i = picks[k];
        if (i < 0 || i >= count || i >= N + 2) continue;
        seekdir(d, pos[i]);
        struct dirent *e = readdir(d);
        EXPECT(e && strcmp(e->d_name, names[i]) == 0, "seekdir to #%d gave %s, want %s", i, e ? e->d_name : "(end)",
               names[i]);
    }
    rewinddir(d);
    struct dirent *e = readdir(d);
    EXPECT(e && strcmp(e->d_name, names[0]) == 0, "rewinddir");
    closedir(d);
}

// POSIX record locks and flock between two processes.
static void probe_locks(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    EXPECT(fd >= 0, "open");
    struct flock l = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 100, .l_len = 50};
    EXPECT(fcntl(fd, F_SETLK, &l) == 0, "F_SETLK");
    // Child to parent on c2p, parent to child on p2c.
    int c2p[2], p2c[2];
    if (pipe(c2p) != 0 || pipe(p2c) != 0) return;
    pid_t child = fork();
    if (child == 0) {
        int cfd = open(path, O_RDWR);
        struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 120, .l_len = 1};
        int rc = fcntl(cfd, F_GETLK, &q);
        int ok = rc == 0 && q.l_type == F_WRLCK && q.l_pid == getppid() && q.l_start == 100 && q.l_len == 50;
        if (!ok) fprintf(stderr, "F_GETLK: rc %d type %d pid %d (parent %d) start %ld len %ld\n", rc, q.l_type, q.l_pid,
                         getppid(), (long)q.l_start, (long)q.l_len);
        struct flock w = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 120, .l_len = 1};
        int e1 = fcntl(cfd, F_SETLK, &w) == -1 && (errno == EAGAIN || errno == EACCES);
        if (!e1) fprintf(stderr, "F_SETLK on a held range did not fail with EAGAIN\n");
        struct flock free_range = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100};
        int e2 = fcntl(cfd, F_SETLK, &free_range) == 0;
        if (!e2) fprintf(stderr, "F_SETLK on a free range failed: %s\n", strerror(errno));
        if (write(c2p[1], "x", 1) != 1) _exit(3);
        // Waits until the parent's close drops its lock.
        int e3 = fcntl(cfd, F_SETLKW, &w) == 0;
        if (!e3) fprintf(stderr, "F_SETLKW failed: %s\n", strerror(errno));
        // flock: the parent holds LOCK_EX on another open file.
        int ffd = open(path, O_RDWR);
        char c;
        if (read(p2c[0], &c, 1) != 1) _exit(3);
        int e4 = flock(ffd, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK;
        if (!e4) fprintf(stderr, "flock LOCK_NB on a held lock did not fail with EWOULDBLOCK\n");
        if (write(c2p[1], "y", 1) != 1) _exit(3);
        int e5 = flock(ffd, LOCK_EX) == 0;
        if (!e5) fprintf(stderr, "flock LOCK_EX failed: %s\n", strerror(errno));
        _exit(ok && e1 && e2 && e3 && e4 && e5 ? 0 : 1);
    }
    char c;
    EXPECT(read(c2p[0], &c, 1) == 1, "child sync");
    msleep(200);
    // Closing any descriptor of the file drops the process's POSIX locks.
    close(fd);
    int ffd = open(path, O_RDWR);
    EXPECT(flock(ffd, LOCK_EX) == 0, "flock");
    EXPECT(write(p2c[1], "z", 1) == 1, "sync");
    EXPECT(read(c2p[0], &c, 1) == 1, "child sync");
    msleep(200);
    close(ffd);
    int status = 0;
    waitpid(child, &status, 0);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child saw wrong lock behaviour (status %d)", status);
}

// A FIFO made on the file system carries data between two processes.
static void probe_fifo(const char *path) {
    unlink(path);
    EXPECT(mkfifo(path, 0644) == 0, "mkfifo");
    struct stat st;
    EXPECT(stat(path, &st) == 0 && S_ISFIFO(st.st_mode), "not a FIFO");
    pid_t child = fork();
    if (child == 0) {
        int w = open(path, O_WRONLY);
        const char *msg = "through the fifo";
        _exit(w >= 0 && write(w, msg, strlen(msg)) == (ssize_t)strlen(msg) ? 0 : 1);
    }
    int r = open(path, O_RDONLY);
    EXPECT(r >= 0, "open fifo");
    char buf[64] = {0};
    ssize_t got = 0, n;
    while ((n = read(r, buf + got, sizeof buf - 1 - (size_t)got)) > 0) got += n;
    EXPECT(strcmp(buf, "through the fifo") == 0, "fifo carried '%s'", buf);
    close(r);
    int status = 0;
    waitpid(child, &status, 0);
    EXPECT(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fifo writer failed");
}

static void probe_xattr(const char *path) {
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    close(fd);
    EXPECT(setxattr(path, "user.colour", "blue", 4, 0) == 0, "setxattr");
    char v[64] = {0};
    EXPECT(getxattr(path, "user.colour", v, sizeof v) == 4 && memcmp(v, "blue", 4) == 0, "getxattr");
    EXPECT(getxattr(path, "user.colour", NULL, 0) == 4, "getxattr size");
    EXPECT(getxattr(path, "user.colour", v, 2) == -1 && errno == ERANGE, "getxattr small buffer");
    EXPECT(getxattr(path, "user.none", v, sizeof v) == -1 && errno == ENODATA, "getxattr missing");
    EXPECT(setxattr(path, "user.colour", "red", 3, XATTR_CREATE) == -1 && errno == EEXIST, "XATTR_CREATE");
    EXPECT(setxattr(path, "user.none", "x", 1, XATTR_REPLACE) == -1 && errno == ENODATA, "XATTR_REPLACE");
    EXPECT(setxattr(path, "user.second", "", 0, 0) == 0, "empty value");
    char list[256];
    ssize_t n = listxattr(path, list, sizeof list);
    EXPECT(n == (ssize_t)(strlen("user.colour") + 1 + strlen("user.second") + 1), "listxattr %zd", n);
    EXPECT(listxattr(path, NULL, 0) == n, "listxattr size");
    EXPECT(removexattr(path, "user.colour") == 0, "removexattr");
    EXPECT(removexattr(path, "user.colour") == -1 && errno == ENODATA, "removexattr again");
    EXPECT(getxattr(path, "user.colour", v, sizeof v) == -1 && errno == ENODATA, "removed");
    // A value larger than the file system keeps: E2BIG, as setxattr(2) says.
    static char big[65536];
    memset(big, 'v', sizeof big);
    EXPECT(setxattr(path, "user.big", big, sizeof big, 0) == -1 && errno == E2BIG, "64 KiB value: %s", strerror(errno));
    EXPECT(setxattr(path, "user.big", big, 4000, 0) == 0, "4000-byte value");
    static char back[4096];
    EXPECT(getxattr(path, "user.big", back, sizeof back) == 4000 && memcmp(back, big, 4000) == 0, "4000-byte value back");
}

static void touch(const char *p, const char *content) {
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
        if (write(fd, content, strlen(content)) < 0) bad = 1;
        close(fd);
    }
}

static void slurp(const char *p, char *buf, size_t n) {
    memset(buf, 0, n);
    int fd = open(p, O_RDONLY);
    if (fd >= 0) {
        if (read(fd, buf, n - 1) < 0) bad = 1;
        close(fd);
    }
}

static void probe_rename2(const char *dir) {
    char a[4096], b[4096], buf[64];
    snprintf(a, sizeof a, "%s/ra", dir);
    snprintf(b, sizeof b, "%s/rb", dir);
    touch(a, "A");
    touch(b, "B");
    EXPECT(renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_NOREPLACE) == -1 && errno == EEXIST, "RENAME_NOREPLACE");
    EXPECT(renameat2(AT_FDCWD, a, AT_FDCWD, b, RENAME_EXCHANGE) == 0, "RENAME_EXCHANGE");
    slurp(a, buf, sizeof buf);
    EXPECT(strcmp(buf, "B") == 0, "after exchange a holds %s", buf);
    slurp(b, buf, sizeof buf);
    EXPECT(strcmp(buf, "A") == 0, "after exchange b holds %s", buf);
    char c[4096];
    snprintf(c, sizeof c, "%s/rc", dir);
    EXPECT(renameat2(AT_FDCWD, a, AT_FDCWD, c, RENAME_NOREPLACE) == 0, "RENAME_NOREPLACE to a new name");
    EXPECT(renameat2(AT_FDCWD, c, AT_FDCWD, a, RENAME_EXCHANGE) == -1 && errno == ENOENT, "RENAME_EXCHANGE missing");
    EXPECT(renameat2(AT_FDCWD, c, AT_FDCWD, b, RENAME_EXCHANGE | RENAME_NOREPLACE) == -1 && errno == EINVAL,
           "both flags");
}

// One write(2) and one read(2) of 4 MiB: the kernel splits them into
// max_write-sized requests; the bytes must come back in order.
static void probe_bigio(const char *path) {
    const size_t n = 4u << 20;
    unsigned char *w = malloc(n), *r = malloc(n);
    for (size_t i = 0; i < n; i++) w[i] = (unsigned char)((i >> 12) + i * 13);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
    EXPECT(write(fd, w, n) == (ssize_t)n, "write 4 MiB");
    close(fd);
    fd = open(path, O_RDONLY | O_DIRECT);
    if (fd < 0) fd = open(path, O_RDONLY);
    void *al = NULL;
    if (posix_memalign(&al, 4096, n) != 0) return;
    ssize_t got = 0, k;
    while ((size_t)got < n && (k = read(fd, (char *)al + got, n - (size_t)got)) > 0) got += k;
    EXPECT((size_t)got == n && memcmp(al, w, n) == 0, "read back %zd bytes", got);
    close(fd);
    free(al);
    free(w);
    free(r);
}

// A file open when its last name goes stays usable until closed: after
// unlink, and after a rename over it.
static void probe_unlinked(const char *dir) {
    char a[4096], b[4096], c[4096];
    snprintf(a, sizeof a, "%s/ua", dir);
    snprintf(b, sizeof b, "%s/ub", dir);
    snprintf(c, sizeof c, "%s/uc", dir);
    int fd = open(a, O_RDWR | O_CREAT | O_TRUNC, 0644);
    EXPECT(fd >= 0, "open");
    EXPECT(unlink(a) == 0, "unlink");
    EXPECT(write(fd, "after unlink", 12) == 12, "write after unlink");
    char buf[32] = {0};
    EXPECT(pread(fd, buf, sizeof buf, 0) == 12 && !strcmp(buf, "after unlink"), "read after unlink: '%s'", buf);
    struct stat st;
    EXPECT(fstat(fd, &st) == 0 && st.st_nlink == 0 && st.st_size == 12, "fstat after unlink: nlink %ld",
           (long)st.st_nlink);
    EXPECT(access(a, F_OK) == -1 && errno == ENOENT, "the name is gone");
    close(fd);
    touch(b, "old");
    touch(c, "new");
    fd = open(b, O_RDONLY);
    EXPECT(rename(c, b) == 0, "rename over an open file");
    memset(buf, 0, sizeof buf);
    EXPECT(pread(fd, buf, sizeof buf, 0) == 3 && !strcmp(buf, "old"), "the replaced file reads '%s'", buf);
    close(fd);
    slurp(b, buf, sizeof buf);
    EXPECT(!strcmp(buf, "new"), "the name holds '%s'", buf);
    unlink(b);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: fuse_probe mmap|seekdir|locks|fifo|xattr|rename2|bigio|unlinked PATH\n");
        return 2;
    }
    const char *what = argv[1], *path = argv[2];
    if (!strcmp(what, "mmap")) probe_mmap(path);
    else if (!strcmp(what, "seekdir")) probe_seekdir(path);
    else if (!strcmp(what, "locks")) probe_locks(path);
    else if (!strcmp(what, "fifo")) probe_fifo(path);
    else if (!strcmp(what, "xattr")) probe_xattr(path);
    else if (!strcmp(what, "rename2")) probe_rename2(path);
    else if (!strcmp(what, "bigio")) probe_bigio(path);
    else if (!strcmp(what, "unlinked")) probe_unlinked(path);
    else {
        fprintf(stderr, "fuse_probe: unknown probe %s\n", what);
        return 2;
    }
    return bad;
}
