/*
 * realpath(3) of fos paths. glibc resolves with hidden lstat and readlink,
 * which would look on the host; here each component is looked at through
 * the fs (one message each) and symlinks are followed the fs's way (an
 * absolute target from the fs root), at most 40, as Linux allows.
 *
 * realpath exists in two versions (GLIBC_2.3, and an older one that
 * refuses a NULL buffer): the real one here is GLIBC_2.3's.
 */
#include "shim.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

void __chk_fail(void) __attribute__((noreturn));

/* Appends "/" and the n bytes of s to the path in buf (of cap bytes). */
static int fos_shim_append(char *buf, size_t cap, const char *s, size_t n) {
    size_t len = strlen(buf);
    if (len + 1 + n >= cap) return -ENAMETOOLONG;
    if (len == 0 || buf[len - 1] != '/') buf[len++] = '/';
    memcpy(buf + len, s, n);
    buf[len + n] = 0;
    return 0;
}

/* One pass over the fs path: 0 with the resolved fs path in walked, 1 if
 * a symlink was met (next holds the host path to try next), -errno. */
static int fos_shim_canon_pass(const char *fs, char *walked, char *next) {
    walked[0] = 0;
    for (const char *p = fs; *p;) {
        while (*p == '/') p++;
        const char *c = p;
        while (*p && *p != '/') p++;
        if (p == c) break;
        char cand[FOS_SHIM_PATH_BUF];
        memcpy(cand, walked, strlen(walked) + 1);
        int r = fos_shim_append(cand, sizeof cand, c, (size_t)(p - c));
        fos_fs_stat st;
        if (r == 0) r = fos_shim_op_stat_path(cand, 0, &st);
        if (r) return r;
        const char *rest = p;
        while (*rest == '/') rest++;
        if (S_ISLNK(st.mode)) {
            char t[FOS_FS_PATH_MAX + 1], fsnext[FOS_SHIM_PATH_BUF];
            uint64_t ino = st.ino;
            int64_t n = fos_shim_op_readlink(ino, t, sizeof t - 1);
            if (n < 0) return (int)n;
            t[n] = 0;
            fsnext[0] = 0;
            if (t[0] != '/') memcpy(fsnext, walked, strlen(walked) + 1);
            r = fos_shim_append(fsnext, sizeof fsnext, t, (size_t)n);
            if (r == 0 && *rest) r = fos_shim_append(fsnext, sizeof fsnext, rest, strlen(rest));
            if (r == 0) r = fos_shim_host_path(fsnext, next, FOS_SHIM_PATH_BUF);
            return r < 0 ? r : 1;
        }
        if (*rest && !S_ISDIR(st.mode)) return -ENOTDIR;
        memcpy(walked, cand, strlen(cand) + 1);
    }
    if (walked[0] == 0) memcpy(walked, "/", 2);
    return 0;
}

/* 0 with out the canonical host path, 1 for a host path (out then names
 * it for libc), -errno. */
static int fos_shim_canon(const char *path, char *out) {
    char cur[FOS_SHIM_PATH_BUF];
    if (strlen(path) >= sizeof cur) return -ENAMETOOLONG;
    memcpy(cur, path, strlen(path) + 1);
    for (int links = 0; links <= 40; links++) {
        char fs[FOS_SHIM_PATH_BUF], walked[FOS_SHIM_PATH_BUF], next[FOS_SHIM_PATH_BUF];
        int k = fos_shim_classify(AT_FDCWD, cur, fs);
        if (k < 0) return k;
        if (k != FOS_SHIM_FOS) {
            memcpy(out, k == FOS_SHIM_REWRITTEN ? fs : cur, strlen(k == FOS_SHIM_REWRITTEN ? fs : cur) + 1);
            return 1;
        }
        int r = fos_shim_canon_pass(fs, walked, next);
        if (r < 0) return r;
        if (r == 0) return fos_shim_host_path(walked, out, PATH_MAX) < 0 ? -ENAMETOOLONG : 0;
        memcpy(cur, next, strlen(next) + 1);
    }
    return -ELOOP;
}

FOS_SHIM_EXPORT char *realpath(const char *path, char *resolved) {
    if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL_V(realpath, FOS_SHIM_V_REALPATH)(path, resolved);
    char out[FOS_SHIM_PATH_BUF];
    int saved = errno;
    if (path == NULL) {
        errno = EINVAL;
        return NULL;
    }
    int r = fos_shim_canon(path, out);
    if (r == 1) return FOS_REAL_V(realpath, FOS_SHIM_V_REALPATH)(out, resolved);
    if (r < 0) {
        errno = -r;
        return NULL;
    }
    if (resolved == NULL) {
        resolved = strdup(out);
        if (resolved == NULL) return NULL;
    } else {
        memcpy(resolved, out, strlen(out) + 1);
    }
    errno = saved;
    return resolved;
}

FOS_SHIM_EXPORT char *canonicalize_file_name(const char *path) { return realpath(path, NULL); }

char *__realpath_chk(const char *path, char *resolved, size_t resolvedlen);

FOS_SHIM_EXPORT char *__realpath_chk(const char *path, char *resolved, size_t resolvedlen) {
    if (resolvedlen < PATH_MAX) __chk_fail();
    return realpath(path, resolved);
}
