// POSIX conformance of a file system, written for fos: for create, open,
// unlink, rename, link, symlink, chmod, chown, truncate, utimens, mkdir,
// rmdir and mkfifo, the success case and the errno cases POSIX names (with
// Linux's choice where POSIX leaves one), as root and as an unprivileged
// user. The expectations are Linux's: run against a local file system the
// suite passes; run against a fos mount it shows where fos differs.
//
//   fuse_conformance prepare BASE        as root: fixtures owned by root
//   fuse_conformance run BASE XDEV       as anyone: the cases; XDEV is a
//                                        writable directory on another
//                                        file system (EXDEV)
//
// Prints one line per case ("PASS", "FAIL" with what happened, or "SKIP"
// where the case does not apply to this user) and a last line
// "conformance: N passed, N failed, N skipped"; exits 1 if any failed.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static const char *base, *xdev;
static char work[PATH_MAX - 512];
static int is_root;
static int passed, failed, skipped;

// An expectation per identity: OK, an errno, or NA (skip).
#define OK 0
#define NA -1

static const char *ename(int e) {
    switch (e) {
    case 0: return "success";
    case ENOENT: return "ENOENT";
    case ENOTDIR: return "ENOTDIR";
    case EEXIST: return "EEXIST";
    case EISDIR: return "EISDIR";
    case ENOTEMPTY: return "ENOTEMPTY";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENAMETOOLONG: return "ENAMETOOLONG";
    case ELOOP: return "ELOOP";
    case EINVAL: return "EINVAL";
    case EXDEV: return "EXDEV";
    case EBADF: return "EBADF";
    case EFBIG: return "EFBIG";
    case EBUSY: return "EBUSY";
    case EMLINK: return "EMLINK";
    default: return strerror(e);
    }
}

static void report(const char *call, const char *what, int ok, const char *fmt, ...) {
    char detail[512] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(detail, sizeof detail, fmt, ap);
        va_end(ap);
    }
    if (ok) passed++;
    else failed++;
    printf("%s %-9s %s%s%s\n", ok ? "PASS" : "FAIL", call, what, detail[0] ? ": " : "", detail);
}

/// Whether a case applies to this user; says so if not.
static int applies(const char *call, const char *what, int want) {
    if (want != NA) return 1;
    skipped++;
    printf("SKIP %-9s %s\n", call, what);
    return 0;
}

/// Checks one case: `rc` is the call's result (-1 and errno on failure).
static void expect(const char *call, const char *what, int want, long rc, int err) {
    int got = rc < 0 ? err : 0;
    report(call, what, got == want, got == want ? NULL : "want %s, got %s", ename(want), ename(got));
}

// The call runs only where the case applies (a skipped one must not change
// the fixtures), once, its errno taken at once.
#define T(call, what, wr, wu, expr)                              \
    do {                                                         \
        int want_ = is_root ? (wr) : (wu);                       \
        if (applies(call, what, want_)) {                        \
            errno = 0;                                           \
            long rc_ = (long)(expr);                             \
            int e_ = errno;                                      \
            expect(call, what, want_, rc_, e_);                  \
        }                                                        \
    } while (0)

// An open(2) case: closes what it opened.
static long opened(int fd) {
    if (fd >= 0) {
        int e = errno;
        close(fd);
        errno = e;
        return 0;
    }
    return -1;
}

static const char *B(const char *rel) {
    static char bufs[8][PATH_MAX];
    static int n;
    char *b = bufs[n++ % 8];
    snprintf(b, PATH_MAX, "%s/%s", base, rel);
    return b;
}

static const char *W(const char *rel) {
    static char bufs[8][PATH_MAX];
    static int n;
    char *b = bufs[n++ % 8];
    snprintf(b, PATH_MAX, "%s/%s", work, rel);
    return b;
}

static char long_name[300];   // 256 bytes: one too many
static char max_name[300];    // 255 bytes
static char long_path[PATH_MAX + 64];

static void put(const char *p, const char *content, mode_t mode) {
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    if (fd < 0) {
        fprintf(stderr, "cannot create %s: %s\n", p, strerror(errno));
        exit(2);
    }
    if (content && write(fd, content, strlen(content)) < 0) exit(2);
    fchmod(fd, mode);
    close(fd);
}

static void mk(const char *p, mode_t mode) {
    if (mkdir(p, mode) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot mkdir %s: %s\n", p, strerror(errno));
        exit(2);
    }
    chmod(p, mode);
}

static struct stat st_of(const char *p) {
    struct stat st;
    memset(&st, 0, sizeof st);
    if (lstat(p, &st) != 0) st.st_ino = 0;
    return st;
}

static int exists(const char *p) {
    struct stat st;
    return lstat(p, &st) == 0;
}

// MARK: fixtures

static void prepare(void) {
    umask(0);
    mk(base, 0755);
    put(B("file"), "data", 0644);
    mk(B("dir"), 0755);
    put(B("dir/f"), "f", 0644);
    mk(B("dir/sub"), 0755);
    mk(B("private"), 0700);
    put(B("private/f"), "p", 0644);
    put(B("ro"), "x", 0444);
    put(B("secret"), "s", 0600);
    put(B("shared"), "w", 0666);
    mk(B("sticky"), 01777);
    put(B("sticky/rootfile"), "r", 0666);
    mk(B("sticky/rootdir"), 0777);
    mk(B("sgid"), 02777);
    mk(B("work"), 0777);
    unlink(B("loop_a"));
    unlink(B("loop_b"));
    if (symlink("loop_b", B("loop_a")) != 0 || symlink("loop_a", B("loop_b")) != 0) exit(2);
}

// MARK: cases

static void t_create(void) {
    const char *c = "create";
    T(c, "new file", OK, OK, opened(open(W("c1"), O_CREAT | O_WRONLY | O_EXCL, 0640)));
    struct stat st = st_of(W("c1"));
    report(c, "mode and owner of a new file", st.st_ino && (st.st_mode & 07777) == 0640 && st.st_uid == geteuid() &&
           st.st_gid == getegid(), "mode %o uid %d gid %d", st.st_mode & 07777, st.st_uid, st.st_gid);
    T(c, "O_EXCL on an existing file", EEXIST, EEXIST, opened(open(W("c1"), O_CREAT | O_EXCL | O_WRONLY, 0644)));
    T(c, "O_CREAT on an existing file opens it", OK, OK, opened(open(W("c1"), O_CREAT | O_WRONLY, 0644)));
    T(c, "missing directory", ENOENT, ENOENT, opened(open(W("missing/x"), O_CREAT | O_WRONLY, 0644)));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, opened(open(W("c1/x"), O_CREAT | O_WRONLY, 0644)));
    T(c, "on an existing directory", EISDIR, EISDIR, opened(open(work, O_CREAT | O_WRONLY, 0644)));
    T(c, "in a directory without write permission", OK, EACCES, opened(open(B("dir/new"), O_CREAT | O_WRONLY, 0644)));
    T(c, "below a directory without search permission", OK, EACCES,
      opened(open(B("private/new"), O_CREAT | O_WRONLY, 0644)));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, opened(open(W(long_name), O_CREAT | O_WRONLY, 0644)));
    T(c, "255-byte name", OK, OK, opened(open(W(max_name), O_CREAT | O_WRONLY, 0644)));
    T(c, "path longer than PATH_MAX", ENAMETOOLONG, ENAMETOOLONG, opened(open(long_path, O_CREAT | O_WRONLY, 0644)));
    T(c, "symlink loop in the path", ELOOP, ELOOP, opened(open(B("loop_a/x"), O_CREAT | O_WRONLY, 0644)));
    if (symlink("c1", W("c1link")) != 0) perror("symlink");
    T(c, "O_NOFOLLOW on a symlink", ELOOP, ELOOP, opened(open(W("c1link"), O_CREAT | O_NOFOLLOW | O_WRONLY, 0644)));
    if (symlink("dangling_target", W("dangling")) != 0) perror("symlink");
    T(c, "through a dangling symlink creates its target", OK, OK,
      opened(open(W("dangling"), O_CREAT | O_WRONLY, 0644)));
    report(c, "the dangling symlink's target exists", exists(W("dangling_target")), NULL);
    T(c, "O_CREAT | O_DIRECTORY", EINVAL, EINVAL, opened(open(W("c2"), O_CREAT | O_DIRECTORY | O_RDONLY, 0644)));
    T(c, "bad directory descriptor", EBADF, EBADF, opened(openat(-1, "c3", O_CREAT | O_WRONLY, 0644)));
    int fd = open(W("c1"), O_RDONLY);
    T(c, "directory descriptor of a file", ENOTDIR, ENOTDIR, opened(openat(fd, "c3", O_CREAT | O_WRONLY, 0644)));
    close(fd);
}

static void t_open(void) {
    const char *c = "open";
    put(W("o1"), "hello", 0644);
    T(c, "read an existing file", OK, OK, opened(open(B("file"), O_RDONLY)));
    T(c, "missing file", ENOENT, ENOENT, opened(open(W("none"), O_RDONLY)));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, opened(open(B("file/x"), O_RDONLY)));
    T(c, "O_DIRECTORY on a file", ENOTDIR, ENOTDIR, opened(open(B("file"), O_RDONLY | O_DIRECTORY)));
    T(c, "O_DIRECTORY on a directory", OK, OK, opened(open(work, O_RDONLY | O_DIRECTORY)));
    T(c, "directory for writing", EISDIR, EISDIR, opened(open(work, O_WRONLY)));
    T(c, "directory for reading and writing", EISDIR, EISDIR, opened(open(work, O_RDWR)));
    T(c, "read without read permission", OK, EACCES, opened(open(B("secret"), O_RDONLY)));
    T(c, "write without write permission", OK, EACCES, opened(open(B("ro"), O_WRONLY)));
    T(c, "O_TRUNC without write permission", OK, EACCES, opened(open(B("ro"), O_WRONLY | O_TRUNC)));
    T(c, "below a directory without search permission", OK, EACCES, opened(open(B("private/f"), O_RDONLY)));
    if (symlink("o1", W("o1link")) != 0) perror("symlink");
    T(c, "O_NOFOLLOW on a symlink", ELOOP, ELOOP, opened(open(W("o1link"), O_RDONLY | O_NOFOLLOW)));
    T(c, "symlink loop", ELOOP, ELOOP, opened(open(B("loop_a"), O_RDONLY)));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, opened(open(W(long_name), O_RDONLY)));
    T(c, "O_NOATIME on another user's file", OK, EPERM, opened(open(B("shared"), O_RDONLY | O_NOATIME)));
    T(c, "bad directory descriptor", EBADF, EBADF, opened(openat(-1, "o1", O_RDONLY)));
    T(c, "O_TRUNC", OK, OK, opened(open(W("o1"), O_WRONLY | O_TRUNC)));
    report(c, "O_TRUNC empties the file", st_of(W("o1")).st_size == 0, "size %ld", (long)st_of(W("o1")).st_size);
    put(W("o2"), "12345", 0644);
    int fd = open(W("o2"), O_WRONLY | O_APPEND);
    ssize_t n = write(fd, "678", 3);
    close(fd);
    report(c, "O_APPEND writes at the end", n == 3 && st_of(W("o2")).st_size == 8, "size %ld",
           (long)st_of(W("o2")).st_size);
}

static void t_unlink(void) {
    const char *c = "unlink";
    put(W("u1"), "x", 0644);
    T(c, "a file", OK, OK, unlink(W("u1")));
    report(c, "the name is gone", !exists(W("u1")), NULL);
    T(c, "missing file", ENOENT, ENOENT, unlink(W("u1")));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, unlink(B("file/x")));
    mk(W("ud"), 0755);
    T(c, "a directory", EISDIR, EISDIR, unlink(W("ud")));
    T(c, "in a directory without write permission", NA, EACCES, unlink(B("dir/f")));
    T(c, "another user's file in a sticky directory", NA, EPERM, unlink(B("sticky/rootfile")));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, unlink(W(long_name)));
    T(c, "symlink loop in the path", ELOOP, ELOOP, unlink(B("loop_a/x")));
    if (symlink("u-target", W("ulink")) != 0) perror("symlink");
    T(c, "a symlink (not its target)", OK, OK, unlink(W("ulink")));
    T(c, "bad directory descriptor", EBADF, EBADF, unlinkat(-1, "x", 0));
    T(c, "bad flags", EINVAL, EINVAL, unlinkat(AT_FDCWD, W("x"), 0x1234));
}

static void t_rename(void) {
    const char *c = "rename";
    char buf[16] = {0};
    put(W("r1"), "one", 0644);
    T(c, "a file to a new name", OK, OK, rename(W("r1"), W("r2")));
    report(c, "old name gone, new name there", !exists(W("r1")) && exists(W("r2")), NULL);
    put(W("r3"), "three", 0644);
    T(c, "a file over another", OK, OK, rename(W("r3"), W("r2")));
    int fd = open(W("r2"), O_RDONLY);
    if (fd >= 0 && read(fd, buf, sizeof buf - 1) < 0) buf[0] = 0;
    close(fd);
    report(c, "the target holds the source's data", strcmp(buf, "three") == 0, "holds '%s'", buf);
    mk(W("rd1"), 0755);
    T(c, "a directory", OK, OK, rename(W("rd1"), W("rd2")));
    mk(W("rd3"), 0755);
    T(c, "a directory over an empty one", OK, OK, rename(W("rd2"), W("rd3")));
    T(c, "missing source", ENOENT, ENOENT, rename(W("nothing"), W("r9")));
    T(c, "a directory over a file", ENOTDIR, ENOTDIR, rename(W("rd3"), W("r2")));
    T(c, "a file over a directory", EISDIR, EISDIR, rename(W("r2"), W("rd3")));
    mk(W("rfull"), 0755);
    put(W("rfull/x"), "x", 0644);
    mk(W("rd4"), 0755);
    T(c, "a directory over a non-empty one", ENOTEMPTY, ENOTEMPTY, rename(W("rd4"), W("rfull")));
    mk(W("rd4/sub"), 0755);
    T(c, "a directory into itself", EINVAL, EINVAL, rename(W("rd4"), W("rd4/sub/inside")));
    T(c, "out of a directory without write permission", NA, EACCES, rename(B("dir/f"), W("stolen")));
    put(W("r5"), "5", 0644);
    T(c, "into a directory without write permission", NA, EACCES, rename(W("r5"), B("dir/r5")));
    T(c, "another user's file in a sticky directory", NA, EPERM, rename(B("sticky/rootfile"), B("sticky/moved")));
    char x[PATH_MAX];
    snprintf(x, sizeof x, "%s/xdev-%d", xdev, (int)getpid());
    T(c, "to another file system", EXDEV, EXDEV, rename(W("r5"), x));
    T(c, "to a 256-byte name", ENAMETOOLONG, ENAMETOOLONG, rename(W("r5"), W(long_name)));
    T(c, "symlink loop in the path", ELOOP, ELOOP, rename(W("r5"), B("loop_a/x")));
    if (link(W("r5"), W("r5hard")) != 0) perror("link");
    T(c, "onto a hard link of itself", OK, OK, rename(W("r5"), W("r5hard")));
    report(c, "both links remain", exists(W("r5")) && exists(W("r5hard")), NULL);
    put(W("ra"), "a", 0644);
    put(W("rb"), "b", 0644);
    T(c, "RENAME_NOREPLACE onto an existing name", EEXIST, EEXIST,
      renameat2(AT_FDCWD, W("ra"), AT_FDCWD, W("rb"), RENAME_NOREPLACE));
    ino_t ia = st_of(W("ra")).st_ino, ib = st_of(W("rb")).st_ino;
    T(c, "RENAME_EXCHANGE", OK, OK, renameat2(AT_FDCWD, W("ra"), AT_FDCWD, W("rb"), RENAME_EXCHANGE));
    report(c, "RENAME_EXCHANGE swapped the inodes", st_of(W("ra")).st_ino == ib && st_of(W("rb")).st_ino == ia, NULL);
    T(c, "RENAME_EXCHANGE with a missing target", ENOENT, ENOENT,
      renameat2(AT_FDCWD, W("ra"), AT_FDCWD, W("rnone"), RENAME_EXCHANGE));
    T(c, "RENAME_NOREPLACE | RENAME_EXCHANGE", EINVAL, EINVAL,
      renameat2(AT_FDCWD, W("ra"), AT_FDCWD, W("rb"), RENAME_NOREPLACE | RENAME_EXCHANGE));
    T(c, "bad directory descriptor", EBADF, EBADF, renameat(-1, "a", AT_FDCWD, W("zz")));
}

static void t_link(void) {
    const char *c = "link";
    put(W("l1"), "x", 0644);
    T(c, "a file", OK, OK, link(W("l1"), W("l2")));
    report(c, "both names, one inode, two links", st_of(W("l1")).st_ino == st_of(W("l2")).st_ino &&
           st_of(W("l1")).st_nlink == 2, "nlink %ld", (long)st_of(W("l1")).st_nlink);
    T(c, "onto an existing name", EEXIST, EEXIST, link(W("l1"), W("l2")));
    T(c, "missing source", ENOENT, ENOENT, link(W("lnone"), W("l3")));
    mk(W("ldir"), 0755);
    T(c, "a directory", EPERM, EPERM, link(W("ldir"), W("ldir2")));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, link(W("l1"), W("l1/x")));
    T(c, "into a directory without write permission", NA, EACCES, link(W("l1"), B("dir/l1")));
    char x[PATH_MAX];
    snprintf(x, sizeof x, "%s/xlink-%d", xdev, (int)getpid());
    T(c, "to another file system", EXDEV, EXDEV, link(W("l1"), x));
    T(c, "to a 256-byte name", ENAMETOOLONG, ENAMETOOLONG, link(W("l1"), W(long_name)));
    T(c, "symlink loop in the path", ELOOP, ELOOP, link(B("loop_a/x"), W("l4")));
    // fs.protected_hardlinks (Debian's default 1): no links to files one may not write.
    FILE *f = fopen("/proc/sys/fs/protected_hardlinks", "r");
    int prot = 0;
    if (f) {
        if (fscanf(f, "%d", &prot) != 1) prot = 0;
        fclose(f);
    }
    T(c, "another user's file one may not write (protected_hardlinks)", NA, prot ? EPERM : OK,
      link(B("secret"), W("l5")));
    if (symlink("l1", W("lsym")) != 0) perror("symlink");
    T(c, "a symlink itself", OK, OK, linkat(AT_FDCWD, W("lsym"), AT_FDCWD, W("lsym2"), 0));
    report(c, "the new name is the symlink", S_ISLNK(st_of(W("lsym2")).st_mode), NULL);
    T(c, "AT_SYMLINK_FOLLOW", OK, OK, linkat(AT_FDCWD, W("lsym"), AT_FDCWD, W("l6"), AT_SYMLINK_FOLLOW));
    report(c, "AT_SYMLINK_FOLLOW links the target", st_of(W("l6")).st_ino == st_of(W("l1")).st_ino, NULL);
}

static void t_symlink(void) {
    const char *c = "symlink";
    T(c, "a new symlink", OK, OK, symlink("some/target", W("s1")));
    char buf[64] = {0};
    ssize_t n = readlink(W("s1"), buf, sizeof buf - 1);
    struct stat st = st_of(W("s1"));
    report(c, "readlink and lstat", n == 11 && strcmp(buf, "some/target") == 0 && S_ISLNK(st.st_mode) &&
           st.st_size == 11 && st.st_uid == geteuid(), "readlink '%s' size %ld", buf, (long)st.st_size);
    T(c, "onto an existing name", EEXIST, EEXIST, symlink("x", W("s1")));
    T(c, "missing directory", ENOENT, ENOENT, symlink("x", W("snone/s")));
    T(c, "empty target", ENOENT, ENOENT, symlink("", W("s2")));
    put(W("sfile"), "x", 0644);
    T(c, "a component is a file", ENOTDIR, ENOTDIR, symlink("x", W("sfile/s")));
    T(c, "in a directory without write permission", NA, EACCES, symlink("x", B("dir/s")));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, symlink("x", W(long_name)));
    static char target[PATH_MAX + 10];
    memset(target, 'a', PATH_MAX);
    target[PATH_MAX] = 0;
    T(c, "target of PATH_MAX bytes", ENAMETOOLONG, ENAMETOOLONG, symlink(target, W("s3")));
    T(c, "symlink loop in the path", ELOOP, ELOOP, symlink("x", B("loop_a/s")));
    T(c, "bad directory descriptor", EBADF, EBADF, symlinkat("x", -1, "s4"));
}

static void t_chmod(void) {
    const char *c = "chmod";
    put(W("m1"), "x", 0644);
    T(c, "own file", OK, OK, chmod(W("m1"), 0600));
    report(c, "the mode changed", (st_of(W("m1")).st_mode & 07777) == 0600, "mode %o", st_of(W("m1")).st_mode & 07777);
    T(c, "missing file", ENOENT, ENOENT, chmod(W("none"), 0644));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, chmod(W("m1/x"), 0644));
    T(c, "another user's file", OK, EPERM, chmod(B("file"), 0644));
    T(c, "below a directory without search permission", OK, EACCES, chmod(B("private/f"), 0644));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, chmod(W(long_name), 0644));
    T(c, "symlink loop", ELOOP, ELOOP, chmod(B("loop_a"), 0644));
    // In a setgid directory a new file takes the directory's group, which a
    // user may not be in: then chmod drops S_ISGID.
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/sgid/m-%d", base, (int)getuid());
    put(p, "x", 0644);
    T(c, "S_ISGID on a file of a foreign group", OK, OK, chmod(p, 02755));
    int kept = (st_of(p).st_mode & S_ISGID) != 0;
    report(c, is_root ? "root keeps S_ISGID" : "S_ISGID dropped outside the file's group", is_root ? kept : !kept,
           "mode %o", st_of(p).st_mode & 07777);
    unlink(p);
    T(c, "bad descriptor", EBADF, EBADF, fchmod(-1, 0644));
}

static void t_chown(void) {
    const char *c = "chown";
    put(W("o1"), "x", 0644);
    uid_t other = is_root ? 65534 : 0;
    T(c, "own file to another user", OK, EPERM, chown(W("o1"), other, other));
    T(c, "own file to a group one is not in", OK, EPERM, chown(W("o1"), (uid_t)-1, 0));
    T(c, "own file to one's own group", OK, OK, chown(W("o1"), (uid_t)-1, getegid()));
    T(c, "another user's file", OK, EPERM, chown(B("file"), 0, 0));
    T(c, "missing file", ENOENT, ENOENT, chown(W("none"), 0, 0));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, chown(W("o1/x"), 0, 0));
    T(c, "below a directory without search permission", OK, EACCES, chown(B("private/f"), 0, 0));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, chown(W(long_name), 0, 0));
    T(c, "symlink loop", ELOOP, ELOOP, chown(B("loop_a"), 0, 0));
    put(W("o2"), "x", 0755);
    chmod(W("o2"), 04755);
    T(c, "a set-user-id file", OK, NA, chown(W("o2"), 65534, 65534));
    if (is_root) report(c, "chown drops S_ISUID", (st_of(W("o2")).st_mode & S_ISUID) == 0, "mode %o",
                        st_of(W("o2")).st_mode & 07777);
    if (symlink("o1", W("olink")) != 0) perror("symlink");
    T(c, "lchown changes the symlink", OK, NA, lchown(W("olink"), 65534, 65534));
    if (is_root) report(c, "the symlink's owner changed, not the target's", st_of(W("olink")).st_uid == 65534 &&
                        st_of(W("o1")).st_uid != 65534 - 1, NULL);
    T(c, "bad descriptor", EBADF, EBADF, fchown(-1, 0, 0));
}

static void t_truncate(void) {
    const char *c = "truncate";
    put(W("t1"), "0123456789", 0644);
    T(c, "grow", OK, OK, truncate(W("t1"), 10000));
    int fd = open(W("t1"), O_RDONLY);
    char b[16] = {1};
    ssize_t n = pread(fd, b, 4, 5000);
    close(fd);
    report(c, "grown bytes read as zeros", st_of(W("t1")).st_size == 10000 && n == 4 && !b[0] && !b[3], NULL);
    T(c, "shrink", OK, OK, truncate(W("t1"), 3));
    report(c, "the size shrank", st_of(W("t1")).st_size == 3, "size %ld", (long)st_of(W("t1")).st_size);
    T(c, "missing file", ENOENT, ENOENT, truncate(W("none"), 0));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, truncate(W("t1/x"), 0));
    T(c, "a directory", EISDIR, EISDIR, truncate(work, 0));
    T(c, "without write permission", OK, EACCES, truncate(B("ro"), 1));
    T(c, "negative length", EINVAL, EINVAL, truncate(W("t1"), -1));
    T(c, "symlink loop", ELOOP, ELOOP, truncate(B("loop_a"), 0));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, truncate(W(long_name), 0));
    T(c, "beyond the largest file", EFBIG, EFBIG, truncate(W("t1"), (off_t)1 << 62));
    fd = open(W("t1"), O_RDONLY);
    T(c, "ftruncate on a read-only descriptor", EINVAL, EINVAL, ftruncate(fd, 0));
    close(fd);
    T(c, "bad descriptor", EBADF, EBADF, ftruncate(-1, 0));
}

static void t_utimens(void) {
    const char *c = "utimens";
    put(W("u1"), "x", 0644);
    struct timespec ts[2] = {{1000000000, 123456789}, {1100000000, 987654321}};
    T(c, "explicit times on one's own file", OK, OK, utimensat(AT_FDCWD, W("u1"), ts, 0));
    struct stat st = st_of(W("u1"));
    report(c, "the times are set to the nanosecond", st.st_atim.tv_sec == 1000000000 &&
           st.st_atim.tv_nsec == 123456789 && st.st_mtim.tv_sec == 1100000000 && st.st_mtim.tv_nsec == 987654321,
           "atime %ld.%09ld mtime %ld.%09ld", (long)st.st_atim.tv_sec, st.st_atim.tv_nsec, (long)st.st_mtim.tv_sec,
           st.st_mtim.tv_nsec);
    struct timespec omit[2] = {{0, UTIME_OMIT}, {0, UTIME_NOW}};
    T(c, "UTIME_OMIT and UTIME_NOW", OK, OK, utimensat(AT_FDCWD, W("u1"), omit, 0));
    st = st_of(W("u1"));
    report(c, "atime kept, mtime now", st.st_atim.tv_sec == 1000000000 && st.st_mtim.tv_sec > 1600000000, NULL);
    T(c, "explicit times on a writable file of another user", OK, EPERM, utimensat(AT_FDCWD, B("shared"), ts, 0));
    T(c, "now on a writable file of another user", OK, OK, utimensat(AT_FDCWD, B("shared"), NULL, 0));
    T(c, "now on a read-only file of another user", OK, EACCES, utimensat(AT_FDCWD, B("file"), NULL, 0));
    T(c, "missing file", ENOENT, ENOENT, utimensat(AT_FDCWD, W("none"), NULL, 0));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, utimensat(AT_FDCWD, W("u1/x"), NULL, 0));
    T(c, "symlink loop", ELOOP, ELOOP, utimensat(AT_FDCWD, B("loop_a"), NULL, 0));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, utimensat(AT_FDCWD, W(long_name), NULL, 0));
    struct timespec badns[2] = {{0, 1000000000}, {0, 0}};
    T(c, "nanoseconds out of range", EINVAL, EINVAL, utimensat(AT_FDCWD, W("u1"), badns, 0));
    if (symlink("u1", W("ulink")) != 0) perror("symlink");
    T(c, "AT_SYMLINK_NOFOLLOW on a symlink", OK, OK, utimensat(AT_FDCWD, W("ulink"), ts, AT_SYMLINK_NOFOLLOW));
    report(c, "the symlink's times changed, not the target's", st_of(W("ulink")).st_mtim.tv_sec == 1100000000 &&
           st_of(W("u1")).st_mtim.tv_sec != 1100000000, NULL);
    T(c, "bad descriptor", EBADF, EBADF, futimens(-1, NULL));
}

static void t_mkdir(void) {
    const char *c = "mkdir";
    T(c, "a new directory", OK, OK, mkdir(W("d1"), 0750));
    struct stat st = st_of(W("d1"));
    report(c, "mode, owner and link count", S_ISDIR(st.st_mode) && (st.st_mode & 07777) == 0750 &&
           st.st_uid == geteuid() && st.st_gid == getegid() && st.st_nlink == 2, "mode %o uid %d nlink %ld",
           st.st_mode & 07777, st.st_uid, (long)st.st_nlink);
    T(c, "onto an existing directory", EEXIST, EEXIST, mkdir(W("d1"), 0755));
    put(W("dfile"), "x", 0644);
    T(c, "onto an existing file", EEXIST, EEXIST, mkdir(W("dfile"), 0755));
    T(c, "missing parent", ENOENT, ENOENT, mkdir(W("dnone/d"), 0755));
    T(c, "a component is a file", ENOTDIR, ENOTDIR, mkdir(W("dfile/d"), 0755));
    T(c, "in a directory without write permission", NA, EACCES, mkdir(B("dir/d"), 0755));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, mkdir(W(long_name), 0755));
    T(c, "symlink loop in the path", ELOOP, ELOOP, mkdir(B("loop_a/d"), 0755));
    T(c, "with a trailing slash", OK, OK, mkdir(W("d2/"), 0755));
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/sgid/d-%d", base, (int)getuid());
    T(c, "in a setgid directory", OK, OK, mkdir(p, 0755));
    st = st_of(p);
    report(c, "inherits the group and S_ISGID", st.st_gid == st_of(B("sgid")).st_gid && (st.st_mode & S_ISGID),
           "gid %d mode %o", st.st_gid, st.st_mode & 07777);
    rmdir(p);
    T(c, "bad directory descriptor", EBADF, EBADF, mkdirat(-1, "d", 0755));
}

static void t_rmdir(void) {
    const char *c = "rmdir";
    mk(W("e1"), 0755);
    T(c, "an empty directory", OK, OK, rmdir(W("e1")));
    report(c, "the directory is gone", !exists(W("e1")), NULL);
    T(c, "missing directory", ENOENT, ENOENT, rmdir(W("e1")));
    put(W("efile"), "x", 0644);
    T(c, "a file", ENOTDIR, ENOTDIR, rmdir(W("efile")));
    mk(W("efull"), 0755);
    put(W("efull/x"), "x", 0644);
    T(c, "a non-empty directory", ENOTEMPTY, ENOTEMPTY, rmdir(W("efull")));
    T(c, "\".\" as the last component", EINVAL, EINVAL, rmdir(W("efull/.")));
    T(c, "in a directory without write permission", NA, EACCES, rmdir(B("dir/sub")));
    T(c, "another user's directory in a sticky directory", NA, EPERM, rmdir(B("sticky/rootdir")));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, rmdir(W(long_name)));
    T(c, "symlink loop in the path", ELOOP, ELOOP, rmdir(B("loop_a/d")));
}

static void t_mkfifo(void) {
    const char *c = "mkfifo";
    T(c, "a new FIFO", OK, OK, mkfifo(W("f1"), 0640));
    struct stat st = st_of(W("f1"));
    report(c, "type, mode and owner", S_ISFIFO(st.st_mode) && (st.st_mode & 07777) == 0640 && st.st_uid == geteuid(),
           "mode %o", st.st_mode);
    T(c, "onto an existing name", EEXIST, EEXIST, mkfifo(W("f1"), 0644));
    T(c, "missing directory", ENOENT, ENOENT, mkfifo(W("fnone/f"), 0644));
    put(W("ffile"), "x", 0644);
    T(c, "a component is a file", ENOTDIR, ENOTDIR, mkfifo(W("ffile/f"), 0644));
    T(c, "in a directory without write permission", NA, EACCES, mkfifo(B("dir/fifo"), 0644));
    T(c, "256-byte name", ENAMETOOLONG, ENAMETOOLONG, mkfifo(W(long_name), 0644));
    T(c, "symlink loop in the path", ELOOP, ELOOP, mkfifo(B("loop_a/f"), 0644));
    T(c, "bad directory descriptor", EBADF, EBADF, mkfifoat(-1, "f", 0644));
    T(c, "mknod of a character device", OK, EPERM, mknod(W("chr"), S_IFCHR | 0600, makedev(1, 3)));
    if (is_root) report(c, "the device node's type and number", S_ISCHR(st_of(W("chr")).st_mode) &&
                        st_of(W("chr")).st_rdev == makedev(1, 3), NULL);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: fuse_conformance prepare BASE | run BASE XDEV\n");
        return 2;
    }
    base = argv[2];
    if (!strcmp(argv[1], "prepare")) {
        if (geteuid() != 0) {
            fprintf(stderr, "prepare runs as root\n");
            return 2;
        }
        prepare();
        return 0;
    }
    if (strcmp(argv[1], "run") || argc != 4) {
        fprintf(stderr, "usage: fuse_conformance prepare BASE | run BASE XDEV\n");
        return 2;
    }
    xdev = argv[3];
    is_root = geteuid() == 0;
    umask(022);
    snprintf(work, sizeof work, "%s/work/u%d", base, (int)geteuid());
    if (mkdir(work, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "cannot make %s: %s\n", work, strerror(errno));
        return 2;
    }
    memset(long_name, 'n', 256);
    long_name[256] = 0;
    memset(max_name, 'm', 255);
    max_name[255] = 0;
    size_t at = (size_t)snprintf(long_path, sizeof long_path, "%s", work);
    while (at < PATH_MAX + 8) at += (size_t)snprintf(long_path + at, sizeof long_path - at, "/%s", "component");
    printf("identity  uid %d gid %d on %s\n", (int)geteuid(), (int)getegid(), base);
    t_create();
    t_open();
    t_unlink();
    t_rename();
    t_link();
    t_symlink();
    t_chmod();
    t_chown();
    t_truncate();
    t_utimens();
    t_mkdir();
    t_rmdir();
    t_mkfifo();
    printf("conformance: %d passed, %d failed, %d skipped\n", passed, failed, skipped);
    return failed ? 1 : 0;
}
