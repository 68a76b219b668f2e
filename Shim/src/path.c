/*
 * Which paths belong to fos, and the virtual cwd.
 *
 * A path is a fos path if, resolved lexically ("." and ".." by name, as a
 * shell's `cd` does), it is the prefix or lies below it. Host paths are
 * handed to libc as the program wrote them, so the kernel keeps its own
 * semantics (symlinks before ".."); only a path that reached the fos tree
 * on the way (a virtual cwd, a fos directory descriptor, "/fos/../tmp") is
 * rewritten into the absolute host path it names.
 *
 * A cwd inside the fos tree is virtual: the kernel's cwd stays where it
 * was, the shim keeps the fos directory, and relative paths resolve
 * against it. FOS_CWD carries it across exec. Otherwise the shim keeps a
 * copy of the kernel's cwd (read at start and after each chdir), because a
 * relative path can reach the fos tree from there too ("fos/x" from "/",
 * "../../fos" from anywhere). Readers are lock-free (a sequence counter)
 * so a relative open in a signal handler never blocks.
 *
 * A child of vfork changes its own cwd, not its parent's (a chdir between
 * vfork and exec, as python's subprocess does for cwd=), but shares the
 * parent's memory: its cwds go to pages of its own, found through a
 * thread-local pointer tagged with its pid (its thread's storage is the
 * suspended parent thread's; the parent drops a stale one on sight), and
 * the environment, which is the parent's too, is left alone.
 */
#include "shim.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

int fos_shim_vcwd_set;
int fos_shim_rcwd_near;
/* [0] the virtual cwd, [1] the kernel's (host form, absolute). */
static struct {
    char path[FOS_SHIM_PATH_BUF];
    size_t len;
} fos_shim_cwds[2];
static unsigned fos_shim_vcwd_seq;
static pthread_mutex_t fos_shim_vcwd_mu = PTHREAD_MUTEX_INITIALIZER;

enum { FOS_SHIM_VIRTUAL = 0, FOS_SHIM_KERNEL = 1 };

static int fos_shim_cwd_copy(int which, char out[FOS_SHIM_PATH_BUF]);

struct fos_shim_child_cwds {
    pid_t pid;
    int vset, near;
    struct {
        char path[FOS_SHIM_PATH_BUF];
        size_t len;
    } cwds[2];
};
FOS_SHIM_TLS fos_shim_child_cwds *fos_shim_ccwd;

/* This vfork child's cwds (made from the parent's if create), or NULL.
 * Drops one left by an earlier child. */
static fos_shim_child_cwds *fos_shim_ccwd_here(int create) {
    fos_shim_child_cwds *c = fos_shim_ccwd;
    pid_t me = c || create ? (pid_t)syscall(SYS_getpid) : 0;
    if (c && c->pid == me) return c;
    if (c) {
        fos_shim_ccwd = NULL;
        fos_shim_sys_munmap(c, sizeof *c);
    }
    if (!create || me == __atomic_load_n(&fos_shim_proc_pid, __ATOMIC_RELAXED)) return NULL;
    c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED) return NULL;
    c->pid = me;
    c->vset = __atomic_load_n(&fos_shim_vcwd_set, __ATOMIC_ACQUIRE);
    c->near = __atomic_load_n(&fos_shim_rcwd_near, __ATOMIC_ACQUIRE);
    for (int w = 0; w < 2; w++) c->cwds[w].len = (size_t)fos_shim_cwd_copy(w, c->cwds[w].path);
    fos_shim_ccwd = c;
    return c;
}

int fos_shim_vcwd_on(void) {
    fos_shim_child_cwds *c = fos_shim_ccwd ? fos_shim_ccwd_here(0) : NULL;
    return c ? c->vset : __atomic_load_n(&fos_shim_vcwd_set, __ATOMIC_ACQUIRE);
}

int fos_shim_rcwd_is_near(void) {
    fos_shim_child_cwds *c = fos_shim_ccwd ? fos_shim_ccwd_here(0) : NULL;
    return c ? c->near : __atomic_load_n(&fos_shim_rcwd_near, __ATOMIC_ACQUIRE);
}


static int fos_shim_under_prefix(const char *p, size_t n) {
    size_t k = __atomic_load_n(&fos_shim_cfg.prefix_len, __ATOMIC_ACQUIRE);
    if (k == 0 || n < k || memcmp(p, fos_shim_cfg.prefix, k) != 0) return 0;
    return n == k || p[k] == '/';
}

/* The fast test every path-taking wrapper runs first: the prefix itself,
 * or any "//", "/." that lexical resolution could turn into it. */
int fos_shim_abs_maybe(const char *path) {
    size_t k = __atomic_load_n(&fos_shim_cfg.prefix_len, __ATOMIC_ACQUIRE);
    if (FOS_SHIM_UNLIKELY(k == 0)) return 0; /* before the constructor: nothing is fos yet */
    if (strncmp(path, fos_shim_cfg.prefix, k) == 0 && (path[k] == 0 || path[k] == '/')) return 1;
    for (const char *q = path; *q; q++) {
        if (q[0] == '/' && (q[1] == '/' || q[1] == '.')) return 1;
    }
    return 0;
}

/* Appends the components of rel to the absolute, normalised out[0..*len).
 * *entered: the walk was inside the fos tree at some point. */
static int fos_shim_walk(char *out, size_t *len, const char *rel, int *entered) {
    size_t n = *len;
    const char *p = rel;
    while (*p) {
        while (*p == '/') p++;
        const char *s = p;
        while (*p && *p != '/') p++;
        size_t c = (size_t)(p - s);
        if (c == 0 || (c == 1 && s[0] == '.')) continue;
        if (c == 2 && s[0] == '.' && s[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--;
            if (n > 1) n--; /* drop the '/' too, except the root's */
            out[n] = 0;
            continue;
        }
        if (n + (n > 1) + c >= FOS_SHIM_PATH_BUF) return -ENAMETOOLONG;
        if (n > 1) out[n++] = '/';
        memcpy(out + n, s, c);
        n += c;
        out[n] = 0;
        if (fos_shim_under_prefix(out, n)) *entered = 1;
    }
    *len = n;
    return 0;
}

/* Does the path end in a way that demands a directory ("/", "/.", "/..")? */
static int fos_shim_wants_dir(const char *path) {
    size_t n = strlen(path);
    if (n == 0) return 0;
    if (path[n - 1] == '/') return 1;
    if (path[n - 1] == '.' && (n == 1 || path[n - 2] == '/')) return 1;
    return path[n - 1] == '.' && n >= 2 && path[n - 2] == '.' && (n == 2 || path[n - 3] == '/');
}

int fos_shim_classify(int dirfd, const char *path, char out[FOS_SHIM_PATH_BUF]) {
    if (path == NULL || path[0] == 0) return FOS_SHIM_HOST;
    size_t n = 0;
    int entered = 0;
    if (path[0] == '/') {
        out[n++] = '/';
        out[n] = 0;
    } else if (dirfd == AT_FDCWD) {
        n = (size_t)fos_shim_vcwd_get(out);
        entered = n > 0;
        if (n == 0) n = (size_t)fos_shim_cwd_copy(FOS_SHIM_KERNEL, out);
        if (n == 0) return FOS_SHIM_HOST; /* the kernel's cwd is unknown (removed): its paths stay its own */
    } else {
        fos_shim_ofd *o = fos_shim_fd(dirfd);
        if (o == NULL) return FOS_SHIM_HOST;
        char fs[FOS_SHIM_PATH_BUF];
        int r = fos_shim_fd_path(dirfd, o, fs);
        if (r >= 0) r = fos_shim_host_path(fs, out, FOS_SHIM_PATH_BUF);
        if (r < 0) return r;
        n = (size_t)r;
        entered = 1;
    }
    int r = fos_shim_walk(out, &n, path, &entered);
    if (r < 0) return r;
    if (!fos_shim_under_prefix(out, n)) return entered ? FOS_SHIM_REWRITTEN : FOS_SHIM_HOST;
    size_t k = fos_shim_cfg.prefix_len;
    memmove(out, out + k, n - k + 1);
    n -= k;
    if (n == 0) {
        out[n++] = '/';
        out[n] = 0;
    } else if (fos_shim_wants_dir(path)) {
        if (n + 1 >= FOS_SHIM_PATH_BUF) return -ENAMETOOLONG;
        out[n++] = '/';
        out[n] = 0;
    }
    return FOS_SHIM_FOS;
}

int fos_shim_classify2(int *odir, const char **from, char *a, int *ndir, const char **to, char *b) {
    int ka = fos_shim_classify(*odir, *from, a);
    if (ka < 0) return ka;
    int kb = fos_shim_classify(*ndir, *to, b);
    if (kb < 0) return kb;
    if (ka == FOS_SHIM_FOS && kb == FOS_SHIM_FOS) return 1;
    if (ka == FOS_SHIM_FOS || kb == FOS_SHIM_FOS) return -EXDEV;
    if (ka == FOS_SHIM_REWRITTEN) {
        *odir = AT_FDCWD;
        *from = a;
    }
    if (kb == FOS_SHIM_REWRITTEN) {
        *ndir = AT_FDCWD;
        *to = b;
    }
    return 0;
}

int fos_shim_split(char *fspath, const char **parent, const char **name) {
    size_t n = strlen(fspath);
    while (n > 1 && fspath[n - 1] == '/') n--;
    if (n <= 1) return 1; /* the fs root */
    fspath[n] = 0;
    size_t s = n;
    while (s > 0 && fspath[s - 1] != '/') s--;
    *name = fspath + s;
    if (s <= 1) {
        *parent = "/";
    } else {
        fspath[s - 1] = 0;
        *parent = fspath;
    }
    return 0;
}

int fos_shim_host_path(const char *fspath, char *out, size_t cap) {
    size_t k = fos_shim_cfg.prefix_len;
    size_t n = strlen(fspath);
    if (n == 1 && fspath[0] == '/') n = 0;
    if (k + n + 1 > cap) return -ENAMETOOLONG;
    memcpy(out, fos_shim_cfg.prefix, k);
    memcpy(out + k, fspath, n);
    out[k + n] = 0;
    return (int)(k + n);
}

static int fos_shim_cwd_copy(int which, char out[FOS_SHIM_PATH_BUF]) {
    fos_shim_child_cwds *c = fos_shim_ccwd ? fos_shim_ccwd_here(0) : NULL;
    if (c) {
        memcpy(out, c->cwds[which].path, c->cwds[which].len + 1);
        return (int)c->cwds[which].len;
    }
    for (;;) {
        unsigned s1 = __atomic_load_n(&fos_shim_vcwd_seq, __ATOMIC_ACQUIRE);
        if (s1 & 1) continue;
        size_t n = __atomic_load_n(&fos_shim_cwds[which].len, __ATOMIC_RELAXED);
        if (n >= FOS_SHIM_PATH_BUF) n = FOS_SHIM_PATH_BUF - 1;
        memcpy(out, fos_shim_cwds[which].path, n);
        out[n] = 0;
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&fos_shim_vcwd_seq, __ATOMIC_RELAXED) == s1) return (int)n;
    }
}

int fos_shim_vcwd_get(char out[FOS_SHIM_PATH_BUF]) {
    if (!fos_shim_vcwd_on()) return 0;
    return fos_shim_cwd_copy(FOS_SHIM_VIRTUAL, out);
}

/* host NULL: none. */
static void fos_shim_cwd_store(int which, const char *host, size_t n) {
    fos_shim_child_cwds *c = fos_shim_in_vfork_child() ? fos_shim_ccwd_here(1) : NULL;
    if (c) {
        if (host) memcpy(c->cwds[which].path, host, n);
        c->cwds[which].path[host ? n : 0] = 0;
        c->cwds[which].len = host ? n : 0;
        if (which == FOS_SHIM_VIRTUAL) c->vset = host != NULL;
        return;
    }
    pthread_mutex_lock(&fos_shim_vcwd_mu);
    __atomic_fetch_add(&fos_shim_vcwd_seq, 1, __ATOMIC_ACQ_REL);
    if (host) memcpy(fos_shim_cwds[which].path, host, n);
    fos_shim_cwds[which].path[host ? n : 0] = 0;
    __atomic_store_n(&fos_shim_cwds[which].len, host ? n : 0, __ATOMIC_RELAXED);
    __atomic_fetch_add(&fos_shim_vcwd_seq, 1, __ATOMIC_ACQ_REL);
    if (which == FOS_SHIM_VIRTUAL) __atomic_store_n(&fos_shim_vcwd_set, host != NULL, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&fos_shim_vcwd_mu);
}

static void fos_shim_vcwd_store(const char *host, size_t n) { fos_shim_cwd_store(FOS_SHIM_VIRTUAL, host, n); }

static void fos_shim_rcwd_set_near(int near) {
    fos_shim_child_cwds *c = fos_shim_ccwd ? fos_shim_ccwd_here(0) : NULL;
    if (c) c->near = near;
    else __atomic_store_n(&fos_shim_rcwd_near, near, __ATOMIC_RELEASE);
}

void fos_shim_rcwd_refresh(void) {
    char buf[FOS_SHIM_PATH_BUF];
    long n = syscall(SYS_getcwd, buf, sizeof buf);
    /* Unreachable or removed ("(unreachable)/..."): relative paths stay the kernel's. */
    if (n <= 1 || buf[0] != '/') {
        fos_shim_cwd_store(FOS_SHIM_KERNEL, NULL, 0);
        fos_shim_rcwd_set_near(0);
        return;
    }
    size_t len = (size_t)n - 1;
    fos_shim_cwd_store(FOS_SHIM_KERNEL, buf, len);
    /* From an ancestor of the prefix (or a host directory it hides) a plain
     * relative path can reach the fos tree. */
    const char *pfx = fos_shim_cfg.prefix;
    int near = len == 1 || (strncmp(pfx, buf, len) == 0 && pfx[len] == '/') || fos_shim_under_prefix(buf, len);
    fos_shim_rcwd_set_near(near);
}

void fos_shim_vcwd_change(const char *fspath) {
    if (fspath == NULL) {
        fos_shim_vcwd_store(NULL, 0);
        if (!fos_shim_in_vfork_child()) unsetenv("FOS_CWD");
        return;
    }
    char host[FOS_SHIM_PATH_BUF];
    int n = fos_shim_host_path(fspath, host, sizeof host);
    if (n < 0) return;
    while (n > 1 && host[n - 1] == '/') host[--n] = 0;
    fos_shim_vcwd_store(host, (size_t)n);
    if (!fos_shim_in_vfork_child()) setenv("FOS_CWD", host, 1);
}

/* FOS_CWD from the process that exec'd us (fos-run, or a program whose cwd
 * was in fos). Anything that is not a fos path is ignored. */
void fos_shim_vcwd_init(const char *host_cwd) {
    char fs[FOS_SHIM_PATH_BUF];
    if (host_cwd == NULL || host_cwd[0] != '/') return;
    if (fos_shim_classify(AT_FDCWD, host_cwd, fs) != FOS_SHIM_FOS) return;
    char host[FOS_SHIM_PATH_BUF];
    int n = fos_shim_host_path(fs, host, sizeof host);
    if (n < 0) return;
    while (n > 1 && host[n - 1] == '/') host[--n] = 0;
    fos_shim_vcwd_store(host, (size_t)n);
}

void fos_shim_vcwd_atfork_child(void) { pthread_mutex_init(&fos_shim_vcwd_mu, NULL); }
