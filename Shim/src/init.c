/*
 * Start-up of the shim in every process (and again after each exec):
 * configuration from the environment fos-run set, the umask, the fork
 * handler, and the fos descriptors and virtual cwd inherited across exec.
 * Nothing connects here: the first call that touches a fos path does.
 */
#include "shim.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

fos_shim_config fos_shim_cfg;
static mode_t fos_shim_mask;

void fos_shim_conn_atfork_child(void);
void fos_shim_vcwd_atfork_child(void);
void fos_shim_files_atfork_child(void);
void fos_shim_maps_atfork_child(void);
void fos_shim_fa_atfork_child(void);
void fos_shim_vcwd_init(const char *host_cwd);

/* Before fork: the child may look at what the parent changed
 * (w_tell.c). */
static void fos_shim_atfork_prepare(void) {
    FOS_SHIM_FLUSH_HELD();
    fos_shim_fd_note_child();
}

/* In the child of fork every lock of the shim may have been held by a
 * thread that does not exist there. */
static void fos_shim_atfork_child(void) {
    fos_shim_conn_atfork_child();
    fos_shim_vcwd_atfork_child();
    fos_shim_files_atfork_child();
    fos_shim_maps_atfork_child();
    fos_shim_fa_atfork_child();
}

/* At exit (not _exit): this process's writes sent ahead are answered,
 * or sent again to a new member if theirs died. */
__attribute__((destructor)) static void fos_shim_fini(void) {
    (void)fos_shim_fs_settle(0);
}

/* "/fos" unless FOS_PREFIX names another absolute directory ("/" would
 * capture the whole host and is refused, as are "." and ".." parts). */
static void fos_shim_init_prefix(void) {
    const char *p = getenv("FOS_PREFIX");
    size_t n = p ? strlen(p) : 0;
    while (n > 1 && p[n - 1] == '/') n--;
    int ok = p && n > 1 && n < sizeof fos_shim_cfg.prefix && p[0] == '/';
    for (size_t i = 0; ok && i < n; i++) {
        if (p[i] != '/') continue;
        if (i + 1 < n && p[i + 1] == '/') ok = 0;
        if (p[i + 1] == '.' && (i + 2 == n || p[i + 2] == '/')) ok = 0;
        if (p[i + 1] == '.' && p[i + 2] == '.' && (i + 3 == n || p[i + 3] == '/')) ok = 0;
    }
    if (!ok) {
        p = "/fos";
        n = 4;
    }
    memcpy(fos_shim_cfg.prefix, p, n);
    fos_shim_cfg.prefix[n] = 0;
    __atomic_store_n(&fos_shim_cfg.prefix_len, n, __ATOMIC_RELEASE);
}

/* As libfos (NodePaths.defaultRuntime): FOS_RUNTIME, $XDG_RUNTIME_DIR/fos,
 * /run/fos for root, /tmp/fos-<uid>. */
static void fos_shim_init_runtime(void) {
    const char *r = getenv("FOS_RUNTIME");
    const char *x = getenv("XDG_RUNTIME_DIR");
    char *out = fos_shim_cfg.runtime;
    size_t cap = sizeof fos_shim_cfg.runtime;
    if (r && *r) snprintf(out, cap, "%s", r);
    else if (x && *x) snprintf(out, cap, "%s/fos", x);
    else if (getuid() == 0) snprintf(out, cap, "/run/fos");
    else snprintf(out, cap, "/tmp/fos-%u", (unsigned)getuid());
}

/* Microseconds from the environment variable `name`, else `dflt`. */
static uint64_t fos_shim_env_us(const char *name, uint64_t dflt) {
    const char *s = getenv(name);
    if (s && *s) {
        char *end;
        unsigned long long v = strtoull(s, &end, 10);
        if (*end == 0 && v <= 1000000) return v;
    }
    return dflt;
}

static void fos_shim_init_spin(void) {
    fos_shim_cfg.spin_ns = fos_shim_env_us("FOS_SPIN_US", 50) * 1000;
    fos_shim_cfg.yield_ns = fos_shim_env_us("FOS_YIELD_US", 1000) * 1000;
    fos_shim_cfg.hold_ns = fos_shim_env_us("FOS_HOLD_US", 1000) * 1000;
    const char *lc = getenv("FOS_LEAVE_CORE");
    fos_shim_cfg.leave_core = !(lc && strcmp(lc, "0") == 0);
}

__attribute__((constructor)) static void fos_shim_init(void) {
    int saved = errno;
    fos_shim_proc_pid = (pid_t)syscall(SYS_getpid);
    fos_shim_init_prefix();
    fos_shim_init_runtime();
    fos_shim_init_spin();
    fos_shim_exec_init();
    fos_shim_tell_init();
    /* The raw syscall: the umask wrapper keeps fos_shim_mask from now on. */
    fos_shim_mask = (mode_t)syscall(SYS_umask, 022);
    syscall(SYS_umask, fos_shim_mask);
    pthread_atfork(fos_shim_atfork_prepare, NULL, fos_shim_atfork_child);
    fos_shim_rcwd_refresh();
    fos_shim_vcwd_init(getenv("FOS_CWD"));
    fos_shim_fd_rediscover();
    for (int fd = 0; fd <= 2; fd++) {
        if (fos_shim_fd_marked(fd)) fos_shim_std_rebind(fd);
    }
    errno = saved;
}

mode_t fos_shim_umask(void) { return __atomic_load_n(&fos_shim_mask, __ATOMIC_RELAXED); }

FOS_SHIM_EXPORT mode_t umask(mode_t mask) {
    mode_t old = FOS_REAL(umask)(mask);
    __atomic_store_n(&fos_shim_mask, mask & 0777, __ATOMIC_RELAXED);
    return old;
}
