/* Per-call latency for `fos-bench shim`: `b_calls N TARGET...`, each
 * TARGET `name:DIR` or `name:DIR:PREPDIR` (the files are made through
 * PREPDIR and measured through DIR: a FUSE mount of the fs measured on
 * files the shim made, so its kernel caches have never seen them). Prints
 * one line per call and target: `call name ns`, the mean over N calls.
 *
 * Calls: stat of N files never looked at before ("stat, first time":
 * nothing cached by the client; on the host the page and dentry caches
 * hold them anyway), stat of one file, open+close, create+unlink of new
 * names, and a 4 KiB pread. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what, const char *path) {
    fprintf(stderr, "b_calls: %s %s failed\n", what, path);
    exit(1);
}

static const char *in(const char *dir, const char *name, int i) {
    static char b[2][4096];
    static int k;
    char *p = b[k++ & 1];
    if (i >= 0) snprintf(p, 4096, "%s/%s%d", dir, name, i);
    else snprintf(p, 4096, "%s/%s", dir, name);
    return p;
}

/* The data file (64 KiB) and n small files, made through dir. */
static void prepare(const char *dir, int n) {
    mkdir(dir, 0755);
    int fd = open(in(dir, "bench.dat", -1), O_CREAT | O_WRONLY | O_TRUNC, 0644);
    char block[4096];
    memset(block, 'b', sizeof block);
    for (int i = 0; i < 16; i++) {
        if (write(fd, block, sizeof block) != (ssize_t)sizeof block) die("write", dir);
    }
    close(fd);
    for (int i = 0; i < n; i++) {
        fd = open(in(dir, "s", i), O_CREAT | O_WRONLY | O_TRUNC, 0644);
        if (fd < 0 || write(fd, "x", 1) != 1) die("create", dir);
        close(fd);
    }
}

static double b_stat_first(const char *dir, int n) {
    struct stat st;
    double t = now();
    for (int i = 0; i < n; i++) {
        if (stat(in(dir, "s", i), &st) != 0) die("stat", dir);
    }
    return (now() - t) / n;
}

static double b_stat(const char *dir, int n) {
    struct stat st;
    const char *f = in(dir, "bench.dat", -1);
    double t = now();
    for (int i = 0; i < n; i++) {
        if (stat(f, &st) != 0) die("stat", f);
    }
    return (now() - t) / n;
}

static double b_open_close(const char *dir, int n) {
    const char *f = in(dir, "bench.dat", -1);
    double t = now();
    for (int i = 0; i < n; i++) {
        int fd = open(f, O_RDONLY);
        if (fd < 0) die("open", f);
        close(fd);
    }
    return (now() - t) / n;
}

static double b_create_unlink(const char *dir, int n) {
    double t = now();
    for (int i = 0; i < n; i++) {
        const char *f = in(dir, "c", i);
        int fd = open(f, O_CREAT | O_EXCL | O_WRONLY, 0644);
        if (fd < 0) die("create", f);
        close(fd);
        if (unlink(f) != 0) die("unlink", f);
    }
    return (now() - t) / n;
}

static double b_read4k(const char *dir, int n) {
    char buf[4096];
    const char *f = in(dir, "bench.dat", -1);
    int fd = open(f, O_RDONLY);
    if (fd < 0) die("open", f);
    double t = now();
    for (int i = 0; i < n; i++) {
        if (pread(fd, buf, sizeof buf, (off_t)(i % 16) * 4096) != (ssize_t)sizeof buf) die("pread", f);
    }
    double r = (now() - t) / n;
    close(fd);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int n = atoi(argv[1]);
    if (n < 10) return 2;
    struct {
        const char *name;
        double (*fn)(const char *, int);
    } calls[] = {{"stat,first", b_stat_first}, {"stat", b_stat}, {"open+close", b_open_close},
                 {"create+unlink", b_create_unlink}, {"read4k", b_read4k}};
    for (int a = 2; a < argc; a++) {
        char spec[8192];
        snprintf(spec, sizeof spec, "%s", argv[a]);
        char *dir = strchr(spec, ':');
        if (!dir) return 2;
        *dir++ = 0;
        char *prep = strchr(dir, ':');
        if (prep) *prep++ = 0;
        prepare(prep ? prep : dir, n);
        for (size_t i = 0; i < sizeof calls / sizeof calls[0]; i++) {
            if (i > 0) calls[i].fn(dir, n / 10); /* warm-up; the first-time stat has none by design */
            printf("%s %s %.0f\n", calls[i].name, spec, calls[i].fn(dir, n));
        }
    }
    return 0;
}
