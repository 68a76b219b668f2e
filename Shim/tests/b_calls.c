/* Per-call latency of stat, open+close, 4 KiB pread and a non-fos stat:
 * `b_calls FOSDIR HOSTDIR [N]`, run under fos-run. Prints one line per
 * measurement: name, ns per call on fos, on the host, and the ratio. */
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

static void prepare(const char *dir, char *file, size_t cap) {
    mkdir(dir, 0755);
    snprintf(file, cap, "%s/bench.dat", dir);
    int fd = open(file, O_CREAT | O_WRONLY | O_TRUNC, 0644);
    char block[4096];
    memset(block, 'b', sizeof block);
    for (int i = 0; i < 16; i++) {
        if (write(fd, block, sizeof block) != (ssize_t)sizeof block) exit(1);
    }
    close(fd);
}

typedef double (*bench_fn)(const char *file, int n);

static double b_stat(const char *file, int n) {
    struct stat st;
    double t = now();
    for (int i = 0; i < n; i++) {
        if (stat(file, &st) != 0) exit(2);
    }
    return (now() - t) / n;
}

static double b_open_close(const char *file, int n) {
    double t = now();
    for (int i = 0; i < n; i++) {
        int fd = open(file, O_RDONLY);
        if (fd < 0) exit(3);
        close(fd);
    }
    return (now() - t) / n;
}

static double b_read4k(const char *file, int n) {
    char buf[4096];
    int fd = open(file, O_RDONLY);
    double t = now();
    for (int i = 0; i < n; i++) {
        if (pread(fd, buf, sizeof buf, (off_t)(i % 16) * 4096) != (ssize_t)sizeof buf) exit(4);
    }
    double r = (now() - t) / n;
    close(fd);
    return r;
}

int main(int argc, char **argv) {
    if (argc < 3) return 2;
    int n = argc > 3 ? atoi(argv[3]) : 20000;
    char ff[4096], hf[4096];
    prepare(argv[1], ff, sizeof ff);
    prepare(argv[2], hf, sizeof hf);
    struct { const char *name; bench_fn fn; } b[] = {{"stat", b_stat}, {"open+close", b_open_close}, {"pread 4KiB", b_read4k}};
    for (size_t i = 0; i < sizeof b / sizeof b[0]; i++) {
        b[i].fn(ff, n / 10);
        b[i].fn(hf, n / 10);
        double f = b[i].fn(ff, n), h = b[i].fn(hf, n);
        printf("%-12s fos %8.0f ns  host %8.0f ns  ratio %.1f\n", b[i].name, f, h, f / h);
    }
    return 0;
}
