/* open, read, write, seek, stat and the name space on fos paths, with
 * the errnos Linux gives; errno kept on success; host paths untouched. */
#include "check.h"

static void test_open_flags(const char *d) {
    char f[4096];
    snprintf(f, sizeof f, "%s/f", d);
    CHECK_ERRNO(open(f, O_RDONLY), ENOENT);
    int fd = open(f, O_CREAT | O_EXCL | O_RDWR, 0640);
    CHECK(fd >= 0);
    CHECK_ERRNO(open(f, O_CREAT | O_EXCL | O_RDWR, 0640), EEXIST);
    write_all(fd, "hello world", 11);
    struct stat st;
    CHECK(fstat(fd, &st) == 0);
    CHECK(S_ISREG(st.st_mode) && (st.st_mode & 0777) == (0640 & ~022) && st.st_size == 11);
    CHECK(st.st_nlink == 1 && st.st_uid == geteuid() && is_fos_dev(st.st_dev));
    CHECK(close(fd) == 0);
    CHECK_ERRNO(close(fd), EBADF);

    /* O_TRUNC empties; O_APPEND writes at the end whatever the offset. */
    fd = open(f, O_WRONLY | O_TRUNC);
    CHECK(fd >= 0 && fstat(fd, &st) == 0 && st.st_size == 0);
    write_all(fd, "abc", 3);
    close(fd);
    fd = open(f, O_WRONLY | O_APPEND);
    CHECK(fd >= 0 && lseek(fd, 0, SEEK_SET) == 0);
    write_all(fd, "def", 3);
    CHECK(lseek(fd, 0, SEEK_CUR) == 6);
    CHECK(fcntl(fd, F_GETFL) & O_APPEND);
    close(fd);
    char buf[64] = {0};
    fd = open(f, O_RDONLY);
    CHECK(read(fd, buf, sizeof buf) == 6 && memcmp(buf, "abcdef", 6) == 0);
    CHECK(read(fd, buf, sizeof buf) == 0);
    CHECK_ERRNO(write(fd, "x", 1), EBADF);
    close(fd);
    fd = open(f, O_WRONLY);
    CHECK_ERRNO(read(fd, buf, 1), EBADF);
    close(fd);

    /* creat, O_DIRECTORY, a file used as a directory. */
    fd = creat(path_in(d, "c"), 0600);
    CHECK(fd >= 0 && write(fd, "1", 1) == 1 && close(fd) == 0);
    CHECK_ERRNO(open(f, O_RDONLY | O_DIRECTORY), ENOTDIR);
    CHECK_ERRNO(open(path_in(d, "f/x"), O_RDONLY), ENOTDIR);
    CHECK_ERRNO(open(d, O_WRONLY), EISDIR);
    fd = open(d, O_RDONLY | O_DIRECTORY);
    CHECK(fd >= 0);
    CHECK_ERRNO(read(fd, buf, 1), EISDIR);
    close(fd);
}

static void test_io(const char *d) {
    char f[4096];
    snprintf(f, sizeof f, "%s/io", d);
    int fd = open(f, O_CREAT | O_RDWR | O_TRUNC, 0644);
    CHECK(fd >= 0);
    /* Larger than one message (60 KiB): split and reassembled. */
    size_t n = 200 * 1024 + 17;
    unsigned char *big = malloc(n), *back = malloc(n);
    for (size_t i = 0; i < n; i++) big[i] = (unsigned char)(i * 31 + (i >> 12));
    CHECK(write(fd, big, n) == (ssize_t)n);
    CHECK(lseek(fd, 0, SEEK_END) == (off_t)n);
    CHECK(lseek(fd, -17, SEEK_END) == (off_t)(n - 17));
    CHECK(lseek(fd, 5, SEEK_CUR) == (off_t)(n - 12));
    CHECK_ERRNO(lseek(fd, -1, SEEK_SET), EINVAL);
    CHECK_ERRNO(lseek(fd, 0, 42), EINVAL);
    CHECK(lseek(fd, 0, SEEK_SET) == 0);
    CHECK(read(fd, back, n) == (ssize_t)n && memcmp(big, back, n) == 0);
    /* pread and pwrite leave the offset alone. */
    char b[8];
    CHECK(pread(fd, b, 4, 1000) == 4 && memcmp(b, big + 1000, 4) == 0);
    CHECK(lseek(fd, 0, SEEK_CUR) == (off_t)n);
    CHECK(pwrite(fd, "ZZZZ", 4, 10) == 4);
    CHECK(pread(fd, b, 4, 10) == 4 && memcmp(b, "ZZZZ", 4) == 0);
    CHECK(lseek(fd, 0, SEEK_CUR) == (off_t)n);
    CHECK_ERRNO(pread(fd, b, 4, -1), EINVAL);
    /* Past the end: a short read, then nothing; writing there makes a hole. */
    CHECK(pread(fd, b, 8, n - 3) == 3);
    CHECK(pread(fd, b, 8, n + 100) == 0);
    CHECK(pwrite(fd, "E", 1, n + 4095) == 1);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && st.st_size == (off_t)(n + 4096));
    CHECK(pread(fd, b, 2, n + 10) == 2 && b[0] == 0 && b[1] == 0);
    /* ftruncate, fsync, fdatasync. */
    CHECK(ftruncate(fd, 100) == 0 && fstat(fd, &st) == 0 && st.st_size == 100);
    CHECK(fsync(fd) == 0 && fdatasync(fd) == 0);
    CHECK(truncate(f, 50) == 0 && stat(f, &st) == 0 && st.st_size == 50);
    CHECK_ERRNO(ftruncate(fd, -1), EINVAL);
    /* posix_fallocate: the size covers the range; what is there stays. */
    CHECK(posix_fallocate(fd, 10, 20) == 0 && fstat(fd, &st) == 0 && st.st_size == 50);
    CHECK(posix_fallocate(fd, 40, 8000) == 0 && fstat(fd, &st) == 0 && st.st_size == 8040);
    CHECK(pread(fd, b, 4, 10) == 4 && memcmp(b, "ZZZZ", 4) == 0);
    CHECK(pread(fd, b, 2, 8000) == 2 && b[0] == 0 && b[1] == 0);
    CHECK(posix_fallocate(fd, -1, 10) == EINVAL && posix_fallocate(fd, 0, 0) == EINVAL);
    CHECK(ftruncate(fd, 50) == 0);
    /* Past the largest file (16 TiB): EFBIG from the write itself, also
     * where writes go without waiting (the shim's ahead.c); the file is
     * unchanged and its close has nothing to report. */
    CHECK_ERRNO(pwrite(fd, "xy", 2, (off_t)(1ull << 44) - 1), EFBIG);
    CHECK(pwrite(fd, "x", 1, (off_t)(1ull << 44) - 1) == 1);
    CHECK(ftruncate(fd, 50) == 0);
    CHECK(close(fd) == 0);
    fd = open(f, O_RDONLY);
    CHECK_ERRNO(ftruncate(fd, 0), EINVAL);
    close(fd);
    free(big);
    free(back);
}

static void test_stat(const char *d) {
    struct stat a, b;
    char f[4096];
    snprintf(f, sizeof f, "%s/s", d);
    int fd = open(f, O_CREAT | O_WRONLY, 0644);
    write_all(fd, "12345", 5);
    CHECK(fstat(fd, &a) == 0);
    close(fd);
    CHECK(stat(f, &b) == 0 && a.st_ino == b.st_ino && b.st_size == 5 && b.st_dev == a.st_dev);
    CHECK(lstat(f, &b) == 0 && a.st_ino == b.st_ino);
    CHECK(fstatat(AT_FDCWD, f, &b, 0) == 0 && a.st_ino == b.st_ino);
    CHECK(b.st_blksize > 0 && b.st_mtim.tv_sec > 1600000000);
    CHECK(stat(d, &b) == 0 && S_ISDIR(b.st_mode) && b.st_nlink >= 2);
    CHECK_ERRNO(stat(path_in(d, "missing"), &b), ENOENT);
    CHECK_ERRNO(stat(path_in(d, "s/x"), &b), ENOTDIR);
    struct statx sx;
    CHECK(statx(AT_FDCWD, f, 0, STATX_BASIC_STATS, &sx) == 0 && sx.stx_size == 5 && sx.stx_ino == a.st_ino);
    CHECK(sx.stx_dev_minor == 0xf05f5 && (sx.stx_mask & STATX_BTIME));
    CHECK(access(f, R_OK | W_OK) == 0 && access(f, F_OK) == 0);
    CHECK_ERRNO(access(f, X_OK), EACCES);
    CHECK_ERRNO(access(path_in(d, "missing"), F_OK), ENOENT);
    CHECK(faccessat(AT_FDCWD, f, R_OK, AT_EACCESS) == 0);
    /* The fos root. */
    CHECK(stat("/fos", &b) == 0 && S_ISDIR(b.st_mode) && b.st_ino == 1);
    CHECK(stat("/fos/", &b) == 0 && b.st_ino == 1);
    CHECK(stat("//fos/.", &b) == 0 && b.st_ino == 1);
}

static void test_names(const char *d) {
    char sub[4096];
    snprintf(sub, sizeof sub, "%s/sub", d);
    struct stat st;
    CHECK(mkdir(sub, 0755) == 0);
    CHECK_ERRNO(mkdir(sub, 0755), EEXIST);
    CHECK_ERRNO(mkdir(path_in(d, "no/such"), 0755), ENOENT);
    CHECK_ERRNO(mkdir("/fos", 0755), EEXIST);
    int fd = open(path_in(d, "sub/x"), O_CREAT | O_WRONLY, 0644);
    CHECK(fd >= 0 && close(fd) == 0);
    CHECK_ERRNO(rmdir(sub), ENOTEMPTY);
    CHECK_ERRNO(unlink(sub), EISDIR);
    CHECK_ERRNO(rmdir(path_in(d, "sub/x")), ENOTDIR);
    CHECK(rename(path_in(d, "sub/x"), path_in(d, "y")) == 0);
    CHECK_ERRNO(stat(path_in(d, "sub/x"), &st), ENOENT);
    CHECK(stat(path_in(d, "y"), &st) == 0);
    CHECK(renameat2(AT_FDCWD, path_in(d, "y"), AT_FDCWD, path_in(d, "f"), RENAME_NOREPLACE) == -1 && errno == EEXIST);
    CHECK(rmdir(sub) == 0);
    CHECK(unlink(path_in(d, "y")) == 0);
    CHECK_ERRNO(unlink(path_in(d, "y")), ENOENT);
    /* Between the fos tree and the host: as between two file systems. */
    CHECK_ERRNO(rename(path_in(d, "f"), "/tmp/fos-shim-test-x"), EXDEV);
    CHECK(mkdir(sub, 0700) == 0 && stat(sub, &st) == 0 && (st.st_mode & 0777) == 0700);
    CHECK(chmod(sub, 0750) == 0 && stat(sub, &st) == 0 && (st.st_mode & 0777) == 0750);
    CHECK(rmdir(sub) == 0);
}

/* errno is the caller's after every successful call. */
static void test_errno(const char *d) {
    char f[4096];
    snprintf(f, sizeof f, "%s/e", d);
    errno = 4321;
    int fd = open(f, O_CREAT | O_RDWR, 0644);
    CHECK(fd >= 0 && errno == 4321);
    CHECK(write(fd, "x", 1) == 1 && errno == 4321);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && stat(f, &st) == 0 && errno == 4321);
    CHECK(lseek(fd, 0, SEEK_SET) == 0 && read(fd, &st, 1) == 1 && errno == 4321);
    CHECK(close(fd) == 0 && unlink(f) == 0 && errno == 4321);
}

/* A host path goes to the kernel as it is. */
static void test_host(void) {
    char tmpl[] = "/tmp/fos-shim-test-XXXXXX";
    int fd = mkstemp(tmpl);
    CHECK(fd >= 0);
    write_all(fd, "host", 4);
    struct stat st;
    CHECK(fstat(fd, &st) == 0 && !is_fos_dev(st.st_dev) && st.st_size == 4);
    close(fd);
    CHECK(stat(tmpl, &st) == 0 && !is_fos_dev(st.st_dev));
    CHECK(unlink(tmpl) == 0);
    /* A path that only looks like the prefix is a host path. */
    CHECK_ERRNO(stat("/fosx/y", &st), ENOENT);
}

int main(int argc, char **argv) {
    umask(022);
    CHECK(argc == 2 && mkdir(argv[1], 0755) == 0);
    test_open_flags(argv[1]);
    test_io(argv[1]);
    test_stat(argv[1]);
    test_names(argv[1]);
    test_errno(argv[1]);
    test_host();
    puts("ok");
    return 0;
}
