/*
 * exec and posix_spawn. Host programs are exec'd by the kernel, with the
 * shim's variables put back into their environment (exec_env.c). A program
 * the kernel cannot reach (its file, or an interpreter's, is under the
 * prefix) is checked here, so that the caller gets the errno exec would
 * give (ENOENT, EACCES, ENOEXEC, E2BIG ...), and then run by fos-exec: the
 * caller execs (or posix_spawns) fos-exec, which asks the spawn service to
 * start the program and stands in for it (standin.c). So exec still
 * replaces the caller's image the kernel's way, and posix_spawn, system
 * and popen return a real pid to wait for.
 *
 * Programs the shim cannot reach (static, Go, foreign) are refused when
 * fos is in view (exec_prog.c). That needs a look at the program file,
 * taken only when fos is in view at all, so host execs cost nothing more.
 *
 * Everything is built on the stack: the caller may be a child of vfork,
 * which must not allocate (its fs calls use a connection of its own,
 * conn.c).
 */
#include "shim.h"

#include <spawn.h>
#include <stdarg.h>
#include <stdlib.h>

extern char **environ;

#define FOS_SHIM_FIXED_ENV(envp, name, standin)                                             \
    char *name##_v[fos_shim_env_len(envp) + FOS_SHIM_ENV_EXTRA];                            \
    fos_shim_envbuf name##_b;                                                               \
    char **name = fos_shim_env_fix(envp, name##_v, &name##_b, standin)

/* For posix_spawn: FOS_CWD where the chdir actions of fa leave the child. */
#define FOS_SHIM_SPAWN_ENV(envp, fa, name, standin)                                         \
    char name##_cwd[FOS_SHIM_PATH_BUF];                                                     \
    int name##_k = fos_shim_fa_cwd(fa, name##_cwd);                                         \
    char *name##_v[fos_shim_env_len(envp) + FOS_SHIM_ENV_EXTRA];                            \
    fos_shim_envbuf name##_b;                                                               \
    char **name = fos_shim_env_fix_cwd(envp, name##_v, &name##_b, standin,                  \
                                       name##_k == FOS_SHIM_FA_CWD_FOS ? name##_cwd         \
                                       : name##_k != FOS_SHIM_FA_CWD_NONE ? "" : NULL)

/* Cheap first test of the rule: is fos in view of the new program? */
static int fos_shim_fos_in_view(char *const argv[]) {
    if (fos_shim_vcwd_on()) return 1;
    for (int i = 1; argv && argv[0] && argv[i]; i++) {
        if (strstr(argv[i], fos_shim_cfg.prefix) || strstr(argv[i], "..") ||
            (argv[i][0] != '/' && fos_shim_rcwd_is_near())) {
            return 1;
        }
    }
    return fos_shim_fd_inherited();
}

/* A host program about to be exec'd: refused if it cannot see the shim
 * and fos is in view (0 or -EPERM; other trouble is left to the kernel). */
static int fos_shim_host_check(const char *path, char *const argv[], char *const envp[]) {
    if (!fos_shim_fos_in_view(argv)) return 0;
    fos_shim_prog p;
    if (fos_shim_prog_resolve(path, &p) != 0) return 0;
    char *args[fos_shim_prog_argc(&p, argv)];
    fos_shim_prog_argv(&p, path, argv, args);
    return fos_shim_prog_reachable(&p, args, envp);
}

/* Would a SPAWN of it fit in one message? */
static int fos_shim_spawn_fits(char *const *argv, char *const *envp, size_t extra) {
    size_t n = sizeof(fos_spawn_req) + sizeof(fos_spawn_ext) + FOS_SPAWN_MAX_FDS * sizeof(fos_spawn_fd) +
               2 * FOS_SHIM_PATH_BUF + extra;
    size_t c = 0;
    for (char *const *v = argv; v && *v; v++, c++) n += strlen(*v) + 1;
    for (char *const *v = envp; v && *v; v++, c++) n += strlen(*v) + 1;
    return n <= FOS_MAX_PAYLOAD && c <= FOS_SPAWN_MAX_ARGS ? 0 : -E2BIG;
}

/* What exec of a fos program would say before fos-exec takes over. */
static int fos_shim_fos_check(const char *path, char *const argv[], char *const envp[], int fds) {
    fos_shim_prog p;
    int r = fos_shim_prog_resolve(path, &p);
    if (r < 0) return r;
    char *args[fos_shim_prog_argc(&p, argv)];
    fos_shim_prog_argv(&p, path, argv, args);
    r = fos_shim_prog_reachable(&p, args, envp);
    if (r == 0) r = fos_shim_spawn_fits(args, envp, FOS_SHIM_ENV_EXTRA * FOS_SHIM_PATH_BUF);
    fos_spawn_fd kept[FOS_SPAWN_MAX_FDS];
    if (r == 0 && fds) r = fos_shim_exec_fds(kept, FOS_SPAWN_MAX_FDS);
    return r < 0 ? r : 0;
}

/* fos-exec's arguments: [fos-exec, path, argv0, argv1, ...]. */
#define FOS_SHIM_HELPER_ARGV(name, path, argv)                                              \
    size_t name##_n = fos_shim_env_len(argv);                                               \
    char *name[name##_n + 4];                                                               \
    name[0] = (char *)fos_shim_exec_helper();                                               \
    name[1] = (char *)(path);                                                               \
    name[2] = name##_n ? (argv)[0] : (char *)(path);                                        \
    name[3] = NULL;                                                                         \
    for (size_t i_ = 1; i_ <= name##_n; i_++) name[2 + i_] = (argv)[i_]

/* Returns only on failure: -errno. */
static int fos_shim_exec_fos(const char *path, char *const argv[], char *const envp[], int checked) {
    if (fos_shim_standin_mode) return fos_shim_standin(path, argv, envp);
    if (fos_shim_exec_helper() == NULL) return -ENOEXEC;
    int r = checked ? 0 : fos_shim_fos_check(path, argv, envp, 1);
    if (r < 0) return r;
    FOS_SHIM_HELPER_ARGV(hargv, path, argv);
    FOS_SHIM_FIXED_ENV(envp, env, 1);
    (void)fos_shim_fs_settle(0); /* this image's writes sent ahead */
    fos_shim_conn_child_release();
    FOS_REAL(execve)(hargv[0], hargv, env);
    return -errno;
}

/* After the kernel found no interpreter: is it one under the prefix? */
static int fos_shim_needs_fos_interp(const char *path) {
    fos_shim_prog p;
    return fos_shim_prog_resolve(path, &p) == 0 && p.on_fos;
}

FOS_SHIM_EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
    int saved = errno;
    char buf[FOS_SHIM_PATH_BUF];
    const char *use = path;
    int k = fos_shim_maybe_fos(AT_FDCWD, path) ? fos_shim_classify(AT_FDCWD, path, buf) : FOS_SHIM_HOST;
    if (k < 0) return (int)fos_shim_ret(k, saved);
    if (k == FOS_SHIM_FOS || fos_shim_standin_mode) return (int)fos_shim_ret(fos_shim_exec_fos(path, argv, envp, 0), saved);
    if (k == FOS_SHIM_REWRITTEN) use = buf;
    int r = fos_shim_host_check(use, argv, envp);
    if (r < 0) return (int)fos_shim_ret(r, saved);
    FOS_SHIM_FIXED_ENV(envp, env, 0);
    (void)fos_shim_fs_settle(0); /* this image's writes sent ahead */
    fos_shim_conn_child_release();
    FOS_REAL(execve)(use, argv, env);
    int e = errno;
    if (e == ENOENT && fos_shim_needs_fos_interp(use)) return (int)fos_shim_ret(fos_shim_exec_fos(use, argv, envp, 0), saved);
    errno = e;
    return -1;
}

FOS_SHIM_EXPORT int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }

/* Must a PATH search be ours? When PATH names a fos directory (the kernel
 * cannot look there), and when the program found must be looked at. */
static int fos_shim_search_is_ours(char *const argv[], char *const envp[]) {
    if (fos_shim_standin_mode) return 1;
    const char *path = getenv("PATH");
    char buf[FOS_SHIM_PATH_BUF], fs[FOS_SHIM_PATH_BUF];
    for (const char *s = path; s && *s;) {
        const char *e = strchr(s, ':');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (n < sizeof buf) {
            memcpy(buf, s, n);
            buf[n] = 0;
            if (n == 0 ? fos_shim_vcwd_on()
                       : fos_shim_maybe_fos(AT_FDCWD, buf) && fos_shim_classify(AT_FDCWD, buf, fs) == FOS_SHIM_FOS) {
                return 1;
            }
        }
        s = e ? e + 1 : s + n;
    }
    (void)envp;
    return fos_shim_fos_in_view(argv);
}

/* PATH entry `dir` (n bytes; empty: the cwd) joined with file. */
static int fos_shim_join(char *out, const char *dir, size_t n, const char *file) {
    int k = n ? snprintf(out, FOS_SHIM_PATH_BUF, "%.*s/%s", (int)n, dir, file) : snprintf(out, FOS_SHIM_PATH_BUF, "%s", file);
    return k > 0 && k < FOS_SHIM_PATH_BUF ? 0 : -ENAMETOOLONG;
}

/* execvp's search (glibc's rules) through our own execve. */
static int fos_shim_execvpe_search(const char *file, char *const argv[], char *const envp[]) {
    const char *path = getenv("PATH");
    if (path == NULL) path = "/bin:/usr/bin";
    int denied = 0;
    char cand[FOS_SHIM_PATH_BUF];
    for (const char *s = path;;) {
        const char *e = strchr(s, ':');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        if (fos_shim_join(cand, s, n, file) == 0) {
            execve(cand, argv, envp);
            if (errno == ENOEXEC) {
                /* Not a program the kernel knows: a shell script without "#!". */
                size_t argc = fos_shim_env_len(argv);
                char *sh[argc + 2];
                sh[0] = "/bin/sh";
                sh[1] = cand;
                for (size_t i = 1; i <= argc; i++) sh[i + 1] = argv[i];
                execve(sh[0], sh, envp);
                return -1;
            }
            if (errno == EACCES) denied = 1;
            else if (errno != ENOENT && errno != ENOTDIR && errno != ESTALE && errno != ENODEV && errno != ETIMEDOUT) return -1;
        }
        if (e == NULL) break;
        s = e + 1;
    }
    errno = denied ? EACCES : ENOENT;
    return -1;
}

FOS_SHIM_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
    if (strchr(file, '/')) return execve(file, argv, envp);
    if (*file == 0) {
        errno = ENOENT;
        return -1;
    }
    if (fos_shim_search_is_ours(argv, envp)) return fos_shim_execvpe_search(file, argv, envp);
    FOS_SHIM_FIXED_ENV(envp, env, 0);
    fos_shim_conn_child_release();
    (void)fos_shim_fs_settle(0);
    return FOS_REAL(execvpe)(file, argv, env);
}

FOS_SHIM_EXPORT int execvp(const char *file, char *const argv[]) { return execvpe(file, argv, environ); }

/* A fos descriptor's file, materialised: fexecve and execveat(AT_EMPTY_PATH).
 * fos-exec gets it as /proc/self/fd/N. A "#!" script reached only by a
 * descriptor is not served (its interpreter would need the file by name). */
static int fos_shim_exec_fos_fd(const fos_shim_ofd *o, char *const argv[], char *const envp[]) {
    fos_fs_stat st;
    int r = fos_shim_op_getattr(o->ino, &st);
    if (r == 0 && !S_ISREG(st.mode)) r = -EACCES;
    if (r == 0) r = fos_shim_permits(&st, X_OK, 1);
    char head[2] = {0, 0};
    if (r == 0 && fos_shim_op_read(st.ino, 0, head, 2) == 2 && head[0] == '#' && head[1] == '!') r = -ENOEXEC;
    fos_shim_prog p = {.final = "fos-exec", .final_fos = 1, .ino = st.ino, .size = st.size};
    int mfd = r < 0 ? r : fos_shim_prog_materialise(&p);
    if (mfd < 0) return mfd;
    int kept = (int)syscall(SYS_fcntl, mfd, F_DUPFD, 3); /* fos-exec inherits it */
    if (kept < 0) r = -errno;
    fos_shim_sys_close(mfd);
    if (r < 0) return r;
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", kept);
    r = fos_shim_prog_resolve(self, &p);
    if (r == 0 && p.kind == FOS_ELF_OTHER) r = -ENOEXEC;
    if (r == 0) r = fos_shim_exec_fos(self, argv, envp, 0);
    fos_shim_sys_close(kept);
    return r;
}

FOS_SHIM_EXPORT int fexecve(int fd, char *const argv[], char *const envp[]) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd_marked(fd) ? fos_shim_fd(fd) : NULL;
    if (o) return (int)fos_shim_ret(fos_shim_exec_fos_fd(o, argv, envp), saved);
    char self[64];
    snprintf(self, sizeof self, "/proc/self/fd/%d", fd);
    int r = fos_shim_host_check(self, argv, envp);
    if (r < 0) return (int)fos_shim_ret(r, saved);
    FOS_SHIM_FIXED_ENV(envp, env, 0);
    fos_shim_conn_child_release();
    (void)fos_shim_fs_settle(0);
    return FOS_REAL(fexecve)(fd, argv, env);
}

int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags);

FOS_SHIM_EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags) {
    int saved = errno;
    if ((flags & AT_EMPTY_PATH) && path[0] == 0) return fexecve(dirfd, argv, envp);
    char buf[FOS_SHIM_PATH_BUF];
    int k = fos_shim_maybe_fos(dirfd, path) ? fos_shim_classify(dirfd, path, buf) : FOS_SHIM_HOST;
    if (k < 0) return (int)fos_shim_ret(k, saved);
    if (k == FOS_SHIM_FOS) {
        char host[FOS_SHIM_PATH_BUF];
        int n = fos_shim_host_path(buf, host, sizeof host);
        return (int)fos_shim_ret(n < 0 ? n : fos_shim_exec_fos(host, argv, envp, 0), saved);
    }
    if (k == FOS_SHIM_REWRITTEN) return execve(buf, argv, envp);
    if (dirfd == AT_FDCWD || path[0] == '/') {
        int r = fos_shim_host_check(path, argv, envp);
        if (r < 0) return (int)fos_shim_ret(r, saved);
    }
    FOS_SHIM_FIXED_ENV(envp, env, 0);
    fos_shim_conn_child_release();
    (void)fos_shim_fs_settle(0);
    return FOS_REAL(execveat)(dirfd, path, argv, env, flags);
}

/* The execl family: the arguments as an argv on the stack. */
#define FOS_SHIM_VARARGS_ARGV(first, argv)                                                  \
    size_t argc_ = 1;                                                                       \
    va_list ap_;                                                                            \
    va_start(ap_, first);                                                                   \
    while (va_arg(ap_, char *)) argc_++;                                                    \
    va_end(ap_);                                                                            \
    char *argv[argc_ + 1];                                                                  \
    argv[0] = (char *)(first);                                                              \
    va_start(ap_, first);                                                                   \
    for (size_t i_ = 1; i_ <= argc_; i_++) argv[i_] = va_arg(ap_, char *)

FOS_SHIM_EXPORT int execl(const char *path, const char *arg, ...) {
    FOS_SHIM_VARARGS_ARGV(arg, argv);
    va_end(ap_);
    return execve(path, argv, environ);
}

/* execle: the environment follows the argument list's NULL. */
FOS_SHIM_EXPORT int execle(const char *path, const char *arg, ...) {
    FOS_SHIM_VARARGS_ARGV(arg, argv);
    char *const *envp = va_arg(ap_, char *const *);
    va_end(ap_);
    return execve(path, argv, envp);
}

FOS_SHIM_EXPORT int execlp(const char *file, const char *arg, ...) {
    FOS_SHIM_VARARGS_ARGV(arg, argv);
    va_end(ap_);
    return execvpe(file, argv, environ);
}

/* posix_spawn of a fos program: fos-exec is spawned in its place (file
 * actions and attributes apply to it, and so to the program). */
static int fos_shim_spawn_fos(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                              const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    if (fos_shim_exec_helper() == NULL) return ENOEXEC;
    int r = fos_shim_fos_check(path, argv, envp, 0);
    if (r < 0) return -r;
    FOS_SHIM_HELPER_ARGV(hargv, path, argv);
    FOS_SHIM_SPAWN_ENV(envp, fa, env, 1);
    return FOS_REAL_V(posix_spawn, FOS_SHIM_V_POSIX_SPAWN)(pid, hargv[0], fa, attr, hargv, env);
}

FOS_SHIM_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                                const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    int failed = fos_shim_fa_error(fa);
    if (failed) return failed;
    int saved = errno;
    /* A relative program path goes from where the chdir actions leave the child. */
    char joined[FOS_SHIM_PATH_BUF];
    int j = fa ? fos_shim_fa_path(fa, path, joined) : 0;
    if (j < 0) return -j;
    if (j == 1) path = joined;
    if (j == 2) {
        /* Relative to a host directory known only to the child's kernel. */
        FOS_SHIM_SPAWN_ENV(envp, fa, env, 0);
        int r = FOS_REAL_V(posix_spawn, FOS_SHIM_V_POSIX_SPAWN)(pid, path, fa, attr, argv, env);
        errno = saved;
        return r;
    }
    char buf[FOS_SHIM_PATH_BUF];
    const char *use = path;
    int k = fos_shim_maybe_fos(AT_FDCWD, path) ? fos_shim_classify(AT_FDCWD, path, buf) : FOS_SHIM_HOST;
    int r = k < 0 ? -k : 0;
    if (k == FOS_SHIM_FOS) r = fos_shim_spawn_fos(pid, path, fa, attr, argv, envp);
    if (k == FOS_SHIM_REWRITTEN) use = buf;
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) {
        r = -fos_shim_host_check(use, argv, envp);
        if (r == 0) {
            FOS_SHIM_SPAWN_ENV(envp, fa, env, 0);
            r = FOS_REAL_V(posix_spawn, FOS_SHIM_V_POSIX_SPAWN)(pid, use, fa, attr, argv, env);
        }
        if (r == ENOENT && fos_shim_needs_fos_interp(use)) r = fos_shim_spawn_fos(pid, use, fa, attr, argv, envp);
    }
    errno = saved;
    return r;
}

/* posix_spawnp's search where it must be ours: the first candidate that
 * is an executable regular file (host or fos) is spawned. */
static int fos_shim_spawnp_search(const char *file, char *out) {
    const char *path = getenv("PATH");
    if (path == NULL) path = "/bin:/usr/bin";
    int denied = 0;
    for (const char *s = path;;) {
        const char *e = strchr(s, ':');
        size_t n = e ? (size_t)(e - s) : strlen(s);
        struct stat st;
        if (fos_shim_join(out, s, n, file) == 0 && stat(out, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(out, X_OK) == 0) return 0;
            denied = 1;
        }
        if (e == NULL) break;
        s = e + 1;
    }
    return denied ? EACCES : ENOENT;
}

FOS_SHIM_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    int failed = fos_shim_fa_error(fa);
    if (failed) return failed;
    if (strchr(file, '/')) return posix_spawn(pid, file, fa, attr, argv, envp);
    if (fos_shim_search_is_ours(argv, envp)) {
        int saved = errno;
        char cand[FOS_SHIM_PATH_BUF];
        int r = fos_shim_spawnp_search(file, cand);
        errno = saved;
        return r ? r : posix_spawn(pid, cand, fa, attr, argv, envp);
    }
    FOS_SHIM_SPAWN_ENV(envp, fa, env, 0);
    return FOS_REAL_V(posix_spawnp, FOS_SHIM_V_POSIX_SPAWN)(pid, file, fa, attr, argv, env);
}
