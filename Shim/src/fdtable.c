/*
 * fos descriptors. An open fos file is a real kernel descriptor: a memfd
 * placeholder, so the kernel gives fos files unique numbers, close-on-exec,
 * inheritance and dup for free. The open file description is the
 * placeholder's own, which every copy of the descriptor shares (dup, fork,
 * exec), exactly as the kernel shares it:
 *   - the file offset is the placeholder's file position, minus
 *     FOS_SHIM_POS_BASE;
 *   - the status flags (O_APPEND, O_NONBLOCK ...) are the placeholder's;
 *   - what never changes (inode, access mode, file type) is in its name,
 *     "fos-<ino>-<flags>-<mode>-<node>" in hex, which a new image reads
 *     back from /proc/self/fd after exec (the node: fs members on this host
 *     count only their own node's placeholders, FosFSServer/Openers.swift);
 *   - a directory's placeholder holds its readdir cookie and its fs path
 *     (for *at, fchdir and fdopendir); a file's holds nothing, so opening
 *     one costs no page.
 * The placeholder's size is sealed and its position lies beyond its end, so
 * a read that bypasses the shim (stdio's internal __read) sees end of file
 * and a write fails (EPERM): neither can leak or corrupt anything.
 *
 * Per process, a table fd -> what the name says, mmap'd (no malloc before
 * main), read without locks.
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

fos_shim_ofd *fos_shim_fdtab;
size_t fos_shim_fdtab_len;
/* Above every descriptor ever entered: how far a scan of the table goes. */
static int fos_shim_fdtab_top;

#define FOS_SHIM_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
/* A directory placeholder: the cookie, then the path. */
#define FOS_SHIM_DIR_COOKIE_AT 0
#define FOS_SHIM_DIR_PATH_AT 8

static fos_shim_ofd *fos_shim_table(void) {
    fos_shim_ofd *t = __atomic_load_n(&fos_shim_fdtab, __ATOMIC_ACQUIRE);
    if (t) return t;
    struct rlimit rl;
    size_t n = 1u << 20;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max != RLIM_INFINITY && rl.rlim_max < n) {
        n = rl.rlim_max < 1024 ? 1024 : (size_t)rl.rlim_max;
    }
    void *p = mmap(NULL, n * sizeof *t, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return NULL;
    fos_shim_ofd *expected = NULL;
    if (!__atomic_compare_exchange_n(&fos_shim_fdtab, &expected, (fos_shim_ofd *)p, 0, __ATOMIC_ACQ_REL,
                                     __ATOMIC_ACQUIRE)) {
        fos_shim_sys_munmap(p, n * sizeof *t);
        return expected;
    }
    __atomic_store_n(&fos_shim_fdtab_len, n, __ATOMIC_RELEASE);
    return (fos_shim_ofd *)p;
}

void fos_shim_fd_forget(int fd) {
    if (!fos_shim_fd_marked(fd)) return;
    /* A vfork child shares the table but not the descriptors: its close
     * leaves the parent's entry (a later lookup checks it anyway). */
    if (fos_shim_in_vfork_child()) return;
    __atomic_store_n(&fos_shim_fdtab[fd].memfd_ino, 0, __ATOMIC_RELEASE);
}

/* st_ino of fd if it is a placeholder (a file with exactly our seals), else 0. */
static uint64_t fos_shim_memfd_ino(int fd) {
    struct stat st;
    if (syscall(SYS_fstat, fd, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    return (uint64_t)st.st_ino;
}

fos_shim_ofd *fos_shim_fd(int fd) {
    if (!fos_shim_fd_marked(fd)) return NULL;
    fos_shim_ofd *o = &fos_shim_fdtab[fd];
    /* A close we did not see (close_range, a raw syscall) and the number
     * reused for another file: the kernel knows. */
    if (fos_shim_memfd_ino(fd) != __atomic_load_n(&o->memfd_ino, __ATOMIC_ACQUIRE)) {
        fos_shim_fd_forget(fd);
        return NULL;
    }
    return o;
}

static int fos_shim_install(int fd, const fos_shim_ofd *o) {
    fos_shim_ofd *t = fos_shim_table();
    if (t == NULL || (size_t)fd >= fos_shim_fdtab_len) return -EMFILE;
    __atomic_store_n(&t[fd].memfd_ino, 0, __ATOMIC_RELEASE);
    t[fd].ino = o->ino;
    t[fd].flags = o->flags;
    t[fd].mode = o->mode;
    __atomic_store_n(&t[fd].memfd_ino, o->memfd_ino, __ATOMIC_RELEASE);
    int top = __atomic_load_n(&fos_shim_fdtab_top, __ATOMIC_RELAXED);
    while (fd >= top && !__atomic_compare_exchange_n(&fos_shim_fdtab_top, &top, fd + 1, 0, __ATOMIC_RELEASE,
                                                     __ATOMIC_RELAXED)) {}
    return fd;
}

/* The kernel keeps these status flags in the placeholder's description. */
#define FOS_SHIM_KERNEL_FL (O_APPEND | O_ASYNC | O_NOATIME | O_NONBLOCK)

/* A placeholder for st (with its fs path, a directory's), not in the
 * table yet: the fd and its entry in *o, or -errno. */
static int fos_shim_fd_make(const fos_fs_stat *st, int oflags, int cloexec, const char *fspath, fos_shim_ofd *o) {
    char name[96];
    uint32_t kept = (uint32_t)(oflags & (O_ACCMODE | O_PATH | O_SYNC)); /* O_SYNC: O_DSYNC too */
    snprintf(name, sizeof name, "fos-%llx-%x-%x-%llx", (unsigned long long)st->ino, kept, st->mode,
             (unsigned long long)__atomic_load_n(&fos_shim_node, __ATOMIC_RELAXED));
    int fd = (int)syscall(SYS_memfd_create, name, MFD_ALLOW_SEALING | (cloexec ? MFD_CLOEXEC : 0));
    if (fd < 0) return -errno;
    int err = 0;
    if (S_ISDIR(st->mode)) {
        size_t plen = strlen(fspath);
        while (plen > 1 && fspath[plen - 1] == '/') plen--;
        uint8_t buf[FOS_SHIM_DIR_PATH_AT + FOS_SHIM_PATH_BUF] = {0};
        size_t n = FOS_SHIM_DIR_PATH_AT + plen;
        if (plen >= FOS_SHIM_PATH_BUF) {
            err = ENAMETOOLONG;
        } else {
            memcpy(buf + FOS_SHIM_DIR_PATH_AT, fspath, plen);
            if (syscall(SYS_pwrite64, fd, buf, n, 0) != (long)n) err = errno ? errno : EIO;
        }
    }
    *o = (fos_shim_ofd){.ino = st->ino, .flags = kept, .mode = st->mode};
    if (err == 0 && (o->memfd_ino = fos_shim_memfd_ino(fd)) == 0) err = EIO;
    if (err == 0 && syscall(SYS_fcntl, fd, F_ADD_SEALS, FOS_SHIM_SEALS) != 0) err = errno;
    if (err == 0 && syscall(SYS_lseek, fd, (long)FOS_SHIM_POS_BASE, SEEK_SET) < 0) err = errno;
    if (err == 0 && (oflags & FOS_SHIM_KERNEL_FL) && syscall(SYS_fcntl, fd, F_SETFL, oflags & FOS_SHIM_KERNEL_FL) != 0) {
        err = errno;
    }
    if (err == 0) return fd;
    fos_shim_sys_close(fd);
    return -err;
}

int fos_shim_fd_create(const fos_fs_stat *st, int oflags, const char *fspath) {
    fos_shim_ofd o;
    int fd = fos_shim_fd_make(st, oflags, (oflags & O_CLOEXEC) != 0, fspath, &o);
    if (fd < 0) return fd;
    int r = fos_shim_install(fd, &o);
    if (r < 0) fos_shim_sys_close(fd);
    return r;
}

int fos_shim_fd_spare(uint64_t ino, uint32_t mode, int oflags, fos_shim_ofd *o) {
    /* Close-on-exec until adopted: a thread's exec meanwhile must not
     * hand a new image a placeholder for a file not opened. */
    fos_fs_stat st = {.ino = ino, .mode = mode};
    return fos_shim_fd_make(&st, oflags, 1, NULL, o);
}

int fos_shim_fd_adopt(int fd, const fos_shim_ofd *o, int oflags) {
    int r = 0;
    if (!(oflags & O_CLOEXEC) && syscall(SYS_fcntl, fd, F_SETFD, 0) != 0) r = -errno;
    if (r == 0) r = fos_shim_install(fd, o);
    if (r < 0) fos_shim_sys_close(fd);
    return r;
}

int fos_shim_fd_dup(int from, int to) {
    fos_shim_ofd o = fos_shim_fdtab[from];
    return fos_shim_install(to, &o);
}

int64_t fos_shim_fd_offset(int fd) {
    long p = syscall(SYS_lseek, fd, 0L, SEEK_CUR);
    if (p < 0) return -errno;
    return p < (long)FOS_SHIM_POS_BASE ? 0 : p - (long)FOS_SHIM_POS_BASE;
}

int fos_shim_fd_seek(int fd, uint64_t off) {
    if (off > (uint64_t)INT64_MAX - FOS_SHIM_POS_BASE) return -EOVERFLOW;
    return syscall(SYS_lseek, fd, (long)(off + FOS_SHIM_POS_BASE), SEEK_SET) < 0 ? -errno : 0;
}

uint32_t fos_shim_fd_status(int fd, const fos_shim_ofd *o) {
    long k = syscall(SYS_fcntl, fd, F_GETFL);
    uint32_t kernel = k < 0 ? 0 : (uint32_t)k;
    return (kernel & ~(uint32_t)O_ACCMODE) | o->flags;
}

int fos_shim_fd_set_status(int fd, uint32_t flags) {
    long k = syscall(SYS_fcntl, fd, F_GETFL);
    if (k < 0) return -errno;
    long want = (k & ~(long)FOS_SHIM_KERNEL_FL) | (long)(flags & FOS_SHIM_KERNEL_FL);
    return syscall(SYS_fcntl, fd, F_SETFL, want) < 0 ? -errno : 0;
}

int fos_shim_fd_cookie(int fd, uint64_t *cookie) {
    return syscall(SYS_pread64, fd, cookie, sizeof *cookie, FOS_SHIM_DIR_COOKIE_AT) == sizeof *cookie ? 0 : -EBADF;
}

int fos_shim_fd_set_cookie(int fd, uint64_t cookie) {
    return syscall(SYS_pwrite64, fd, &cookie, sizeof cookie, FOS_SHIM_DIR_COOKIE_AT) == sizeof cookie ? 0 : -EBADF;
}

int fos_shim_fd_path(int fd, const fos_shim_ofd *o, char out[FOS_SHIM_PATH_BUF]) {
    if (!S_ISDIR(o->mode)) return -ENOTDIR;
    long n = syscall(SYS_pread64, fd, out, FOS_SHIM_PATH_BUF - 1, FOS_SHIM_DIR_PATH_AT);
    if (n <= 0 || out[0] != '/' || memchr(out, 0, (size_t)n) != NULL) return -EBADF;
    out[n] = 0;
    return (int)n;
}

/* Set for good once a child may have got an open fos file of ours (fork,
 * exec in a child of vfork, posix_spawn with any open): our closes then
 * do not say the file is closed everywhere. */
static int fos_shim_files_shared;
/* Opens between their OPEN request and their entry in the table (another
 * thread's: the fs already counts us as the file's opener). */
int fos_shim_opens_pending;

/* Whether this process holds an open fos file, by its table (a close it
 * did not see only makes the answer "yes", which is safe). */
static int fos_shim_fd_holds_files(void) {
    int top = __atomic_load_n(&fos_shim_fdtab_top, __ATOMIC_ACQUIRE);
    for (int fd = 0; fd < top; fd++) {
        if (fos_shim_fd_marked(fd) && !S_ISDIR(fos_shim_fdtab[fd].mode)) return 1;
    }
    return 0;
}

void fos_shim_fd_note_child(void) {
    if (!__atomic_load_n(&fos_shim_files_shared, __ATOMIC_RELAXED) && fos_shim_fd_holds_files()) {
        __atomic_store_n(&fos_shim_files_shared, 1, __ATOMIC_RELAXED);
    }
}

uint32_t fos_shim_fd_unlink_flags(uint64_t list[FOS_FS_UNLINK_LIST_MAX], uint32_t *count) {
    *count = 0;
    if (__atomic_load_n(&fos_shim_files_shared, __ATOMIC_RELAXED)) return 0;
    /* The files themselves (one pass over the table), when few: the fs
     * then need not read our descriptors in /proc (some 20 µs an unlink). */
    int top = __atomic_load_n(&fos_shim_fdtab_top, __ATOMIC_ACQUIRE);
    uint32_t n = 0;
    int over = 0;
    for (int fd = 0; fd < top && !over; fd++) {
        if (!fos_shim_fd_marked(fd) || S_ISDIR(fos_shim_fdtab[fd].mode)) continue;
        uint64_t ino = fos_shim_fdtab[fd].ino;
        uint32_t k = 0;
        while (k < n && list[k] != ino) k++;
        if (k < n) continue;
        if (n == FOS_FS_UNLINK_LIST_MAX) over = 1;
        else list[n++] = ino;
    }
    if (n == 0) return FOS_FS_UNLINK_HOLDS_NONE;
    /* Not while another thread's open is between its answer and its entry
     * here: the list would leave out a file we are about to hold. */
    if (over || __atomic_load_n(&fos_shim_opens_pending, __ATOMIC_ACQUIRE) > 0) return FOS_FS_UNLINK_SHARED_NONE;
    *count = n;
    return FOS_FS_UNLINK_HOLDS_LISTED;
}

void fos_shim_fd_poison(uint64_t ino) {
    int top = __atomic_load_n(&fos_shim_fdtab_top, __ATOMIC_ACQUIRE);
    for (int fd = 0; fd < top; fd++) {
        if (fos_shim_fd_marked(fd) && fos_shim_fdtab[fd].ino == ino) {
            __atomic_store_n(&fos_shim_fdtab[fd].ino, FOS_SHIM_DEAD_INO, __ATOMIC_RELEASE);
        }
    }
}

int fos_shim_fd_inherited(void) {
    int top = __atomic_load_n(&fos_shim_fdtab_top, __ATOMIC_ACQUIRE);
    for (int fd = 0; fd < top; fd++) {
        if (!fos_shim_fd_marked(fd)) continue;
        long fl = syscall(SYS_fcntl, fd, F_GETFD);
        if (fl >= 0 && !(fl & FD_CLOEXEC) && fos_shim_fd(fd)) return 1;
    }
    return 0;
}

/* "fos-<ino>-<flags>-<mode>-<node>" as the placeholder's name reads back. */
static int fos_shim_parse_name(const char *s, fos_shim_ofd *o) {
    unsigned long long v[4];
    for (int i = 0; i < 4; i++) {
        if (*s++ != '-') return -1;
        char *end;
        if (*s < '0' || (*s > '9' && *s < 'a') || *s > 'f') return -1;
        v[i] = strtoull(s, &end, 16);
        s = end;
    }
    if (strcmp(s, " (deleted)") != 0 || v[0] == 0 || v[1] > 0xffffffffu || v[2] > 0xffffffffu) return -1;
    o->ino = v[0];
    o->flags = (uint32_t)v[1];
    o->mode = (uint32_t)v[2];
    return 0;
}

struct fos_shim_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

static const char fos_shim_memfd_prefix[] = "/memfd:fos";

void fos_shim_fd_rediscover(void) {
    static char buf[4096];
    int dfd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/fd", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return;
    for (;;) {
        long n = syscall(SYS_getdents64, dfd, buf, sizeof buf);
        if (n <= 0) break;
        for (long at = 0; at < n;) {
            struct fos_shim_dirent64 *d = (struct fos_shim_dirent64 *)(buf + at);
            at += d->d_reclen;
            int fd = 0;
            const char *c = d->d_name;
            if (*c == 0 || *c == '.') continue;
            for (; *c >= '0' && *c <= '9' && fd < (1 << 24); c++) fd = fd * 10 + (*c - '0');
            if (*c != 0 || fd == dfd) continue;
            char link[128];
            long k = syscall(SYS_readlinkat, dfd, d->d_name, link, sizeof link - 1);
            if (k <= (long)sizeof fos_shim_memfd_prefix - 1) continue;
            link[k] = 0;
            fos_shim_ofd o;
            if (memcmp(link, fos_shim_memfd_prefix, sizeof fos_shim_memfd_prefix - 1) != 0 ||
                fos_shim_parse_name(link + sizeof fos_shim_memfd_prefix - 1, &o) != 0 ||
                syscall(SYS_fcntl, fd, F_GET_SEALS) != FOS_SHIM_SEALS || (o.memfd_ino = fos_shim_memfd_ino(fd)) == 0) {
                continue;
            }
            fos_shim_install(fd, &o);
        }
    }
    fos_shim_sys_close(dfd);
}
