/*
 * exec and posix_spawn: the shim's state that lives in the environment
 * goes with the new image. Shells and many programs exec with an
 * environment of their own making (not `environ`, where chdir keeps
 * FOS_CWD), and some clear it (env -i): every exec here gets FOS_CWD as
 * the virtual cwd is now (or none), and LD_PRELOAD, FOS_PREFIX and
 * FOS_RUNTIME back if they were dropped.
 *
 * Everything is built on the stack: the caller may be the child of a
 * vfork, which must not allocate. A program stored under the fos tree
 * cannot be exec'd by the kernel (that needs the spawn service: not yet).
 */
#include "shim.h"

#include <dlfcn.h>
#include <spawn.h>
#include <stdarg.h>
#include <string.h>

extern char **environ;

typedef struct fos_shim_envbuf {
    char cwd[FOS_SHIM_PATH_BUF + 16];
    char preload[2 * FOS_SHIM_PATH_BUF];
    char prefix[300];
    char runtime[FOS_SHIM_PATH_BUF + 16];
} fos_shim_envbuf;

/* Entries the shim adds at most, with the terminating NULL. */
#define FOS_SHIM_ENV_EXTRA 5

static size_t fos_shim_env_len(char *const *envp) {
    size_t n = 0;
    while (envp && envp[n]) n++;
    return n;
}

static int fos_shim_is_var(const char *e, const char *name) {
    size_t n = strlen(name);
    return strncmp(e, name, n) == 0 && e[n] == '=';
}

/* This library's own file, as the dynamic loader found it. */
static const char *fos_shim_self_path(void) {
    Dl_info info;
    if (dladdr((void *)fos_shim_self_path, &info) == 0 || info.dli_fname == NULL) return NULL;
    return info.dli_fname;
}

/* out: envp without FOS_CWD, then the shim's variables. out has room for
 * len(envp) + FOS_SHIM_ENV_EXTRA entries. */
static char **fos_shim_env_fix(char *const *envp, char **out, fos_shim_envbuf *b) {
    size_t n = 0;
    int has_prefix = 0, has_runtime = 0, has_self = 0;
    const char *theirs = NULL; /* an LD_PRELOAD without the shim: ours goes first */
    const char *self = fos_shim_self_path();
    for (size_t i = 0; envp && envp[i]; i++) {
        if (fos_shim_is_var(envp[i], "FOS_CWD")) continue;
        if (fos_shim_is_var(envp[i], "FOS_PREFIX")) has_prefix = 1;
        if (fos_shim_is_var(envp[i], "FOS_RUNTIME")) has_runtime = 1;
        if (fos_shim_is_var(envp[i], "LD_PRELOAD")) {
            const char *v = envp[i] + sizeof "LD_PRELOAD";
            if (self == NULL || strstr(v, self)) {
                has_self = 1;
            } else {
                theirs = v;
                continue;
            }
        }
        out[n++] = envp[i];
    }
    char v[FOS_SHIM_PATH_BUF];
    if (fos_shim_vcwd_get(v) > 0) {
        snprintf(b->cwd, sizeof b->cwd, "FOS_CWD=%s", v);
        out[n++] = b->cwd;
    }
    if (self && !has_self) {
        int k = theirs && *theirs ? snprintf(b->preload, sizeof b->preload, "LD_PRELOAD=%s %s", self, theirs)
                                  : snprintf(b->preload, sizeof b->preload, "LD_PRELOAD=%s", self);
        if (k > 0 && (size_t)k < sizeof b->preload) out[n++] = b->preload;
    }
    if (!has_prefix) {
        snprintf(b->prefix, sizeof b->prefix, "FOS_PREFIX=%s", fos_shim_cfg.prefix);
        out[n++] = b->prefix;
    }
    if (!has_runtime) {
        snprintf(b->runtime, sizeof b->runtime, "FOS_RUNTIME=%s", fos_shim_cfg.runtime);
        out[n++] = b->runtime;
    }
    out[n] = NULL;
    return out;
}

/* The program path as the kernel should see it: -errno for a fos path. */
static int fos_shim_exec_path(const char *path, char *buf, const char **use) {
    *use = path;
    if (!fos_shim_maybe_fos(AT_FDCWD, path)) return 0;
    int k = fos_shim_classify(AT_FDCWD, path, buf);
    if (k == FOS_SHIM_REWRITTEN) *use = buf;
    if (k == FOS_SHIM_FOS) return -ENOEXEC; /* needs the spawn service (issue 4) */
    return k < 0 ? k : 0;
}

#define FOS_SHIM_FIXED_ENV(envp, name)                                                      \
    char *name##_v[fos_shim_env_len(envp) + FOS_SHIM_ENV_EXTRA];                            \
    fos_shim_envbuf name##_b;                                                               \
    char **name = fos_shim_env_fix(envp, name##_v, &name##_b)

FOS_SHIM_EXPORT int execve(const char *path, char *const argv[], char *const envp[]) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *use;
    int r = fos_shim_exec_path(path, buf, &use);
    if (r < 0) {
        errno = -r;
        return -1;
    }
    FOS_SHIM_FIXED_ENV(envp, env);
    return FOS_REAL(execve)(use, argv, env);
}

FOS_SHIM_EXPORT int execv(const char *path, char *const argv[]) { return execve(path, argv, environ); }

FOS_SHIM_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[]) {
    if (strchr(file, '/')) return execve(file, argv, envp);
    FOS_SHIM_FIXED_ENV(envp, env);
    return FOS_REAL(execvpe)(file, argv, env);
}

FOS_SHIM_EXPORT int execvp(const char *file, char *const argv[]) { return execvpe(file, argv, environ); }

FOS_SHIM_EXPORT int fexecve(int fd, char *const argv[], char *const envp[]) {
    if (fos_shim_fd_marked(fd) && fos_shim_fd(fd)) {
        errno = ENOEXEC; /* a fos file: needs the spawn service */
        return -1;
    }
    FOS_SHIM_FIXED_ENV(envp, env);
    return FOS_REAL(fexecve)(fd, argv, env);
}

int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags);

FOS_SHIM_EXPORT int execveat(int dirfd, const char *path, char *const argv[], char *const envp[], int flags) {
    if (fos_shim_maybe_fos(dirfd, path) || ((flags & AT_EMPTY_PATH) && fos_shim_fd_marked(dirfd))) {
        errno = ENOEXEC;
        return -1;
    }
    FOS_SHIM_FIXED_ENV(envp, env);
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

FOS_SHIM_EXPORT int posix_spawn(pid_t *pid, const char *path, const posix_spawn_file_actions_t *fa,
                                const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *use;
    int r = fos_shim_exec_path(path, buf, &use);
    if (r < 0) return -r;
    FOS_SHIM_FIXED_ENV(envp, env);
    return FOS_REAL_V(posix_spawn, FOS_SHIM_V_POSIX_SPAWN)(pid, use, fa, attr, argv, env);
}

FOS_SHIM_EXPORT int posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
                                 const posix_spawnattr_t *attr, char *const argv[], char *const envp[]) {
    if (strchr(file, '/')) return posix_spawn(pid, file, fa, attr, argv, envp);
    FOS_SHIM_FIXED_ENV(envp, env);
    return FOS_REAL_V(posix_spawnp, FOS_SHIM_V_POSIX_SPAWN)(pid, file, fa, attr, argv, env);
}
