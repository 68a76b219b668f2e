/*
 * What an exec would run, found as the kernel finds it: the file, and if
 * it starts with "#!", its interpreter, up to four levels (binfmt_script),
 * each a host file or a fos file. Then the rule for programs the shim
 * cannot reach (fos_elf.h), and the copy of a fos binary into a memfd the
 * spawn service can exec.
 *
 * Runs in the caller of exec, which may be a child of vfork: stack
 * buffers and syscalls only.
 */
#include "shim.h"

#include <sys/mman.h>

#include "fos_mountinfo.h"


#ifndef MFD_EXEC
#define MFD_EXEC 0x0010U
#endif

/* As much of a file as is looked at before reading further: the "#!" line
 * (the kernel reads 256 bytes) and, in practice, an ELF program's headers
 * and notes. */
#define FOS_SHIM_HEAD 4096

typedef struct fos_shim_file {
    int fos;       /* a fos file (ino), else a host one (fd) */
    uint64_t ino;
    int fd;
    uint8_t head[FOS_SHIM_HEAD];
    long headlen;
} fos_shim_file;

static long fos_shim_file_read(void *ctx, void *buf, size_t n, uint64_t off) {
    fos_shim_file *f = ctx;
    if (off + n <= (uint64_t)f->headlen) {
        memcpy(buf, f->head + off, n);
        return (long)n;
    }
    if (f->fos) return (long)fos_shim_op_read(f->ino, off, buf, n);
    long r = syscall(SYS_pread64, f->fd, buf, n, (long)off);
    return r < 0 ? -errno : r;
}

/* Opens one level of the chain: -errno as exec would fail (EACCES for a
 * directory, a device or a file without execute permission). */
static int fos_shim_file_open(const char *path, fos_shim_file *f, fos_shim_prog *p) {
    char buf[FOS_SHIM_PATH_BUF];
    int k = fos_shim_maybe_fos(AT_FDCWD, path) ? fos_shim_classify(AT_FDCWD, path, buf) : FOS_SHIM_HOST;
    if (k < 0) return k;
    f->fos = k == FOS_SHIM_FOS;
    f->fd = -1;
    if (f->fos) {
        fos_fs_stat st;
        int r = fos_shim_op_open(buf, O_RDONLY, 0, &st);
        if (r < 0) return r;
        if (!S_ISREG(st.mode)) return -EACCES;
        r = fos_shim_permits(&st, X_OK, 1);
        if (r < 0) return r;
        f->ino = st.ino;
        p->on_fos = 1;
        p->ino = st.ino;
        p->size = st.size;
        f->headlen = fos_shim_op_read(st.ino, 0, f->head, sizeof f->head);
        return f->headlen < 0 ? (int)f->headlen : 0;
    }
    const char *host = k == FOS_SHIM_REWRITTEN ? buf : path;
    /* As exec checks it: with the effective ids. */
    long a = syscall(SYS_faccessat2, AT_FDCWD, host, X_OK, AT_EACCESS);
    if (a != 0 && errno == ENOSYS) a = syscall(SYS_faccessat, AT_FDCWD, host, X_OK);
    if (a != 0) return -errno;
    f->fd = (int)syscall(SYS_openat, AT_FDCWD, host, O_RDONLY | O_CLOEXEC);
    if (f->fd < 0) return -errno;
    struct stat st;
    if (syscall(SYS_fstat, f->fd, &st) != 0 || !S_ISREG(st.st_mode)) return -EACCES;
    f->headlen = syscall(SYS_pread64, f->fd, f->head, sizeof f->head, 0L);
    return f->headlen < 0 ? -errno : 0;
}

/* The "#!" line of level d, split in place as binfmt_script does: the
 * interpreter, then everything after it (trimmed) as one argument. */
static int fos_shim_shebang(fos_shim_prog *p, int d, const uint8_t *head, long n) {
    char *l = p->line[d];
    long len = n < FOS_SHIM_BINPRM ? n : FOS_SHIM_BINPRM - 1;
    memcpy(l, head, (size_t)len);
    l[len] = 0;
    char *nl = strchr(l, '\n');
    if (nl) *nl = 0;
    else if (n >= FOS_SHIM_BINPRM) return -ENOEXEC; /* the kernel would cut the interpreter short */
    char *s = l + 2;
    while (*s == ' ' || *s == '\t') s++;
    char *e = s + strlen(s);
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r')) *--e = 0;
    if (*s == 0) return -ENOEXEC;
    p->interp[d] = s;
    while (*s && *s != ' ' && *s != '\t') s++;
    p->arg[d] = NULL;
    if (*s) {
        *s++ = 0;
        while (*s == ' ' || *s == '\t') s++;
        if (*s) p->arg[d] = s;
    }
    return 0;
}

int fos_shim_prog_resolve(const char *path, fos_shim_prog *p) {
    p->depth = 0;
    p->on_fos = 0;
    const char *at = path;
    for (;;) {
        fos_shim_file f;
        p->final_fos = 0;
        p->final = NULL;
        int r = fos_shim_file_open(at, &f, p);
        if (r == 0) {
            p->final_fos = f.fos;
            if (f.headlen >= 2 && f.head[0] == '#' && f.head[1] == '!') {
                r = p->depth == FOS_SHIM_MAX_INTERP ? -ELOOP : fos_shim_shebang(p, p->depth, f.head, f.headlen);
                if (r == 0) at = p->interp[p->depth++];
            } else {
                p->final = at;
                p->kind = fos_elf_kind(fos_shim_file_read, &f);
            }
        }
        if (f.fd >= 0) fos_shim_sys_close(f.fd);
        if (r < 0) return r;
        if (p->final == at) return p->final_fos && p->kind == FOS_ELF_OTHER ? -ENOEXEC : 0;
    }
}

int fos_shim_prog_argc(const fos_shim_prog *p, char *const argv[]) {
    int n = 0;
    while (argv && argv[n]) n++;
    return n + 2 * p->depth + 1;
}

/* As binfmt_script builds it, level by level: the outermost interpreter,
 * then for each level its argument and the file it runs, then argv[1..]. */
void fos_shim_prog_argv(const fos_shim_prog *p, const char *path, char *const argv[], char **out) {
    int n = 0;
    if (p->depth > 0) out[n++] = (char *)p->interp[p->depth - 1];
    for (int d = p->depth - 1; d >= 0; d--) {
        if (p->arg[d]) out[n++] = (char *)p->arg[d];
        out[n++] = (char *)(d == 0 ? path : p->interp[d - 1]);
    }
    if (argv && argv[0]) {
        for (int i = p->depth > 0 ? 1 : 0; argv[i]; i++) out[n++] = argv[i];
    } else if (p->depth == 0) {
        out[n++] = (char *)path; /* the spawn service wants an argv[0] */
    }
    out[n] = NULL;
}

/* Does an argument name a fos path, as it is or after "--option="? */
static int fos_shim_arg_is_fos(const char *a) {
    char buf[FOS_SHIM_PATH_BUF];
    for (int pass = 0; pass < 2 && a; pass++) {
        if (fos_shim_maybe_fos(AT_FDCWD, a) && fos_shim_classify(AT_FDCWD, a, buf) == FOS_SHIM_FOS) return 1;
        a = strchr(a, '=');
        if (a) a++;
    }
    return 0;
}

static int fos_shim_env_allows(char *const envp[]) {
    for (int i = 0; envp && envp[i]; i++) {
        if (strcmp(envp[i], "FOS_ALLOW_UNREACHABLE=1") == 0) return 1;
    }
    return 0;
}

int fos_shim_prog_reachable(const fos_shim_prog *p, char *const argv[], char *const envp[]) {
    if (p->kind != FOS_ELF_STATIC && p->kind != FOS_ELF_GO && p->kind != FOS_ELF_FOREIGN) return 0;
    if (fos_shim_env_allows(envp)) return 0;
    if (p->kind == FOS_ELF_STATIC && fos_shim_is_runner(p->final)) return 0;
    const char *why = NULL;
    if (fos_shim_vcwd_on()) why = "its cwd is";
    for (int i = 1; why == NULL && argv && argv[i]; i++) {
        if (fos_shim_arg_is_fos(argv[i])) why = "its arguments are";
    }
    if (why == NULL && fos_shim_fd_inherited()) why = "descriptors it inherits are";
    if (why == NULL) return 0;
    /* The node's own mount, if it has one (and a path of common length). */
    char mp[1024], where[1024 + 32];
    if (fos_mountinfo_fos_mount(fos_shim_cfg.runtime, mp, sizeof mp)) {
        snprintf(where, sizeof where, "at %s", mp);
    } else {
        snprintf(where, sizeof where, "(fosctl mount DIR)");
    }
    char line[FOS_SHIM_PATH_BUF + 1024 + 512];
    int n = snprintf(line, sizeof line,
                     "fos: %s %s, so it cannot see %s through the shim, and %s in it: run it on the FUSE mount "
                     "%s, or set FOS_ALLOW_UNREACHABLE=1 if it does not use %s\n",
                     p->final, fos_elf_why(p->kind), fos_shim_cfg.prefix, why, where, fos_shim_cfg.prefix);
    if (n > 0) (void)!write(2, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
    return -EPERM;
}

int fos_shim_prog_materialise(const fos_shim_prog *p) {
    char name[256];
    snprintf(name, sizeof name, "%s", p->final);
    int fd = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_EXEC);
    if (fd < 0 && errno == EINVAL) fd = (int)syscall(SYS_memfd_create, name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return -errno;
    int err = 0;
    void *m = MAP_FAILED;
    if (p->size > 0 && syscall(SYS_ftruncate, fd, (long)p->size) != 0) err = errno;
    if (err == 0 && p->size > 0) {
        m = mmap(NULL, p->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (m == MAP_FAILED) err = errno;
    }
    if (err == 0 && p->size > 0) {
        int64_t got = fos_shim_op_read(p->ino, 0, m, p->size);
        if (got < 0) err = (int)-got;
        /* Shorter now than when it was opened: what is there. */
        else if ((uint64_t)got < p->size && syscall(SYS_ftruncate, fd, (long)got) != 0) err = errno;
    }
    if (m != MAP_FAILED) fos_shim_sys_munmap(m, p->size);
    if (err == 0 && syscall(SYS_fcntl, fd, F_ADD_SEALS, F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
        err = errno;
    }
    if (err) {
        fos_shim_sys_close(fd);
        return -err;
    }
    return fd;
}
