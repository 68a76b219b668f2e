/*
 * The shim's state that lives in the environment goes with every new
 * image. Shells and many programs exec with an environment of their own
 * making (not `environ`, where chdir keeps FOS_CWD), and some clear it
 * (env -i): every exec gets FOS_CWD as the virtual cwd is now (or none),
 * and LD_PRELOAD, FOS_PREFIX and FOS_RUNTIME back if they were dropped.
 * system and popen start /bin/sh from `environ` inside libc, so there the
 * variables are put back into `environ` itself.
 *
 * Also where fos-exec (the stand-in for programs stored under the prefix)
 * lives, and whether this process is one: FOS_EXEC_STANDIN=1, which the
 * shim sets only when it execs fos-exec and never passes further.
 *
 * Everything runs on the stack: the caller may be a child of vfork.
 */
#include "shim.h"

#include <dlfcn.h>
#include <stdlib.h>

#define FOS_SHIM_STANDIN_VAR "FOS_EXEC_STANDIN"

static char fos_shim_self_buf[FOS_SHIM_PATH_BUF];
static char fos_shim_helper_buf[FOS_SHIM_PATH_BUF];
/* fos-run beside the shim: a static executable that knows fos (it reads
 * FOS_CWD and starts its command with the shim), so the rule for programs
 * the shim cannot reach does not refuse it. */
static struct stat fos_shim_runner;
int fos_shim_standin_mode;

/* Once, from the constructor: dladdr may take the loader's lock, which a
 * child of vfork must not wait for. */
void fos_shim_exec_init(void) {
    Dl_info info;
    if (dladdr((void *)fos_shim_exec_init, &info) != 0 && info.dli_fname && info.dli_fname[0] == '/') {
        snprintf(fos_shim_self_buf, sizeof fos_shim_self_buf, "%s", info.dli_fname);
        const char *slash = strrchr(fos_shim_self_buf, '/');
        int n = snprintf(fos_shim_helper_buf, sizeof fos_shim_helper_buf, "%.*s/fos-exec",
                         (int)(slash - fos_shim_self_buf), fos_shim_self_buf);
        if (n <= 0 || (size_t)n >= sizeof fos_shim_helper_buf) fos_shim_helper_buf[0] = 0;
        char runner[FOS_SHIM_PATH_BUF];
        n = snprintf(runner, sizeof runner, "%.*s/fos-run", (int)(slash - fos_shim_self_buf), fos_shim_self_buf);
        if (n <= 0 || (size_t)n >= sizeof runner || syscall(SYS_newfstatat, AT_FDCWD, runner, &fos_shim_runner, 0) != 0) {
            fos_shim_runner.st_ino = 0;
        }
    }
    const char *m = getenv(FOS_SHIM_STANDIN_VAR);
    fos_shim_standin_mode = m && strcmp(m, "1") == 0;
}

const char *fos_shim_self(void) { return fos_shim_self_buf[0] ? fos_shim_self_buf : NULL; }
const char *fos_shim_exec_helper(void) { return fos_shim_helper_buf[0] ? fos_shim_helper_buf : NULL; }

int fos_shim_is_runner(const char *path) {
    struct stat st;
    return fos_shim_runner.st_ino != 0 && syscall(SYS_newfstatat, AT_FDCWD, path, &st, 0) == 0 &&
           st.st_dev == fos_shim_runner.st_dev && st.st_ino == fos_shim_runner.st_ino;
}

size_t fos_shim_env_len(char *const *envp) {
    size_t n = 0;
    while (envp && envp[n]) n++;
    return n;
}

static int fos_shim_is_var(const char *e, const char *name) {
    size_t n = strlen(name);
    return strncmp(e, name, n) == 0 && e[n] == '=';
}

char **fos_shim_env_fix(char *const *envp, char **out, fos_shim_envbuf *b, int standin) {
    return fos_shim_env_fix_cwd(envp, out, b, standin, NULL);
}

char **fos_shim_env_fix_cwd(char *const *envp, char **out, fos_shim_envbuf *b, int standin, const char *cwd) {
    /* Every exec and spawn comes here: a child may get our open files. */
    fos_shim_fd_note_child();
    size_t n = 0;
    int has_prefix = 0, has_runtime = 0, has_self = 0;
    const char *theirs = NULL; /* an LD_PRELOAD without the shim: ours goes first */
    const char *self = fos_shim_self();
    for (size_t i = 0; envp && envp[i]; i++) {
        if (fos_shim_is_var(envp[i], "FOS_CWD") || fos_shim_is_var(envp[i], FOS_SHIM_STANDIN_VAR)) continue;
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
    if (cwd ? cwd[0] != 0 : fos_shim_vcwd_get(v) > 0) {
        snprintf(b->cwd, sizeof b->cwd, "FOS_CWD=%s", cwd ? cwd : v);
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
    if (standin) out[n++] = FOS_SHIM_STANDIN_VAR "=1";
    out[n] = NULL;
    return out;
}

/* `environ` as an exec from it would fix it (for libc's own spawns). */
static void fos_shim_environ_repair(void) {
    const char *self = fos_shim_self();
    const char *pre = getenv("LD_PRELOAD");
    if (self && !(pre && strstr(pre, self))) {
        char v[2 * FOS_SHIM_PATH_BUF];
        int k = pre && *pre ? snprintf(v, sizeof v, "%s %s", self, pre) : snprintf(v, sizeof v, "%s", self);
        if (k > 0 && (size_t)k < sizeof v) setenv("LD_PRELOAD", v, 1);
    }
    char cwd[FOS_SHIM_PATH_BUF];
    if (fos_shim_vcwd_get(cwd) > 0) setenv("FOS_CWD", cwd, 1);
    if (!getenv("FOS_PREFIX")) setenv("FOS_PREFIX", fos_shim_cfg.prefix, 1);
    if (!getenv("FOS_RUNTIME")) setenv("FOS_RUNTIME", fos_shim_cfg.runtime, 1);
}

FOS_SHIM_EXPORT int system(const char *command) {
    int saved = errno;
    fos_shim_fd_note_child(); /* the shell it starts gets what we do not close on exec */
    fos_shim_environ_repair();
    errno = saved;
    return FOS_REAL(system)(command);
}

FOS_SHIM_EXPORT FILE *popen(const char *command, const char *mode) {
    int saved = errno;
    fos_shim_fd_note_child(); /* the shell it starts gets what we do not close on exec */
    fos_shim_environ_repair();
    errno = saved;
    return FOS_REAL(popen)(command, mode);
}
