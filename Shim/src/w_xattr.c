/*
 * Extended attributes of fos files (ls asks for security.selinux and ACLs,
 * cp -a copies them). The fs keeps them per inode; a value or a name list
 * comes back whole, at most one message, and is cut to the caller's size
 * here (ERANGE, or just the size when size is 0, as Linux answers).
 */
#include "shim.h"

#include <stdlib.h>
#include <string.h>
#include <sys/xattr.h>

/* The inode (dirfd-less: path or fd) a call names: 1 with *ino, 0 for a
 * host target (then *host names it), or -errno. */
static int fos_shim_xattr_ino(const char *path, int fd, int follow, uint64_t *ino, char *buf, const char **host) {
    *host = path;
    if (path == NULL) {
        fos_shim_ofd *o = fos_shim_fd(fd);
        if (o == NULL) return 0;
        *ino = o->ino;
        return 1;
    }
    int k = fos_shim_classify(AT_FDCWD, path, buf);
    if (k < 0) return k;
    if (k == FOS_SHIM_REWRITTEN) *host = buf;
    if (k != FOS_SHIM_FOS) return 0;
    int r = fos_shim_op_resolve(buf, follow, ino);
    return r ? r : 1;
}

static int fos_shim_xattr_hdr(fos_fs_xattr *x, uint64_t ino, const char *name, size_t vlen, int flags) {
    size_t n = name ? strlen(name) : 0;
    if (n == 0 || n > FOS_FS_NAME_MAX) return -ERANGE;
    if (vlen > FOS_FS_MAX_IO) return -E2BIG;
    memset(x, 0, sizeof *x);
    x->ino = ino;
    x->flags = (uint32_t)flags;
    x->name_len = (uint16_t)n;
    x->value_len = (uint32_t)vlen;
    return 0;
}

/* A whole reply (value or name list) cut to the caller's buffer. */
static ssize_t fos_shim_xattr_fetch(uint16_t op, const void *fixed, uint32_t flen, const char *name, uint32_t nlen,
                                    void *out, size_t size) {
    uint8_t *buf = malloc(FOS_MAX_PAYLOAD);
    if (buf == NULL) return -ENOMEM;
    uint32_t got = 0;
    int r = -fos_shim_fs_call(op, fixed, flen, name, nlen, NULL, 0, buf, FOS_MAX_PAYLOAD, &got, NULL, NULL);
    ssize_t res = r;
    if (r == 0) {
        res = got;
        if (size != 0 && got > size) res = -ERANGE;
        else if (size != 0) memcpy(out, buf, got);
    }
    free(buf);
    return res;
}

/* One extended-attribute call, as the caller made it. */
typedef struct fos_shim_xop {
    enum { FOS_SHIM_XGET, FOS_SHIM_XLIST, FOS_SHIM_XSET, FOS_SHIM_XREMOVE } kind;
    const char *name;
    void *value;       /* GET: out, LIST: out, SET: in */
    size_t size;
    int flags;
} fos_shim_xop;

static ssize_t fos_shim_xattr_host(const char *path, int fd, int follow, const fos_shim_xop *x) {
    switch (x->kind) {
    case FOS_SHIM_XGET:
        if (path == NULL) return FOS_REAL(fgetxattr)(fd, x->name, x->value, x->size);
        return follow ? FOS_REAL(getxattr)(path, x->name, x->value, x->size)
                      : FOS_REAL(lgetxattr)(path, x->name, x->value, x->size);
    case FOS_SHIM_XLIST:
        if (path == NULL) return FOS_REAL(flistxattr)(fd, x->value, x->size);
        return follow ? FOS_REAL(listxattr)(path, x->value, x->size) : FOS_REAL(llistxattr)(path, x->value, x->size);
    case FOS_SHIM_XSET:
        if (path == NULL) return FOS_REAL(fsetxattr)(fd, x->name, x->value, x->size, x->flags);
        return follow ? FOS_REAL(setxattr)(path, x->name, x->value, x->size, x->flags)
                      : FOS_REAL(lsetxattr)(path, x->name, x->value, x->size, x->flags);
    default:
        if (path == NULL) return FOS_REAL(fremovexattr)(fd, x->name);
        return follow ? FOS_REAL(removexattr)(path, x->name) : FOS_REAL(lremovexattr)(path, x->name);
    }
}

static ssize_t fos_shim_xattr_fos(uint64_t ino, const fos_shim_xop *x) {
    if (x->kind == FOS_SHIM_XLIST) {
        fos_fs_ino i = {.ino = ino};
        return fos_shim_xattr_fetch(FOS_OP_FS_LISTXATTR, &i, sizeof i, NULL, 0, x->value, x->size);
    }
    int set = x->kind == FOS_SHIM_XSET;
    fos_fs_xattr h;
    int r = fos_shim_xattr_hdr(&h, ino, x->name, set ? x->size : 0, set ? x->flags : 0);
    if (r) return r;
    if (x->kind == FOS_SHIM_XGET) {
        return fos_shim_xattr_fetch(FOS_OP_FS_GETXATTR, &h, sizeof h, x->name, h.name_len, x->value, x->size);
    }
    uint32_t got = 0;
    return -fos_shim_fs_call(set ? FOS_OP_FS_SETXATTR : FOS_OP_FS_REMOVEXATTR, &h, sizeof h, x->name, h.name_len,
                             set ? x->value : NULL, set ? (uint32_t)x->size : 0, NULL, 0, &got, NULL, NULL);
}

/* path NULL: the call names descriptor fd. */
static ssize_t fos_shim_xattr_any(const char *path, int fd, int follow, const fos_shim_xop *x) {
    char buf[FOS_SHIM_PATH_BUF];
    const char *host;
    uint64_t ino = 0;
    int saved = errno;
    int k = fos_shim_xattr_ino(path, fd, follow, &ino, buf, &host);
    if (k == 0) return fos_shim_xattr_host(host, fd, follow, x);
    if (k < 0) return fos_shim_ret(k, saved);
    return fos_shim_ret(fos_shim_xattr_fos(ino, x), saved);
}

static ssize_t fos_shim_getxattr_any(const char *path, int fd, int follow, const char *name, void *value, size_t size) {
    fos_shim_xop x = {.kind = FOS_SHIM_XGET, .name = name, .value = value, .size = size};
    return fos_shim_xattr_any(path, fd, follow, &x);
}

static ssize_t fos_shim_listxattr_any(const char *path, int fd, int follow, char *list, size_t size) {
    fos_shim_xop x = {.kind = FOS_SHIM_XLIST, .value = list, .size = size};
    return fos_shim_xattr_any(path, fd, follow, &x);
}

static int fos_shim_setxattr_any(const char *path, int fd, int follow, const char *name, const void *value,
                                 size_t size, int flags, int remove) {
    fos_shim_xop x = {.kind = remove ? FOS_SHIM_XREMOVE : FOS_SHIM_XSET, .name = name, .value = (void *)value,
                      .size = size, .flags = flags};
    return (int)fos_shim_xattr_any(path, fd, follow, &x);
}

#define FOS_SHIM_XPATH(p) (FOS_SHIM_UNLIKELY(fos_shim_maybe_fos(AT_FDCWD, p)))

FOS_SHIM_EXPORT ssize_t getxattr(const char *path, const char *name, void *value, size_t size) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(getxattr)(path, name, value, size);
    return fos_shim_getxattr_any(path, -1, 1, name, value, size);
}

FOS_SHIM_EXPORT ssize_t lgetxattr(const char *path, const char *name, void *value, size_t size) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(lgetxattr)(path, name, value, size);
    return fos_shim_getxattr_any(path, -1, 0, name, value, size);
}

FOS_SHIM_EXPORT ssize_t fgetxattr(int fd, const char *name, void *value, size_t size) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fgetxattr)(fd, name, value, size);
    return fos_shim_getxattr_any(NULL, fd, 1, name, value, size);
}

FOS_SHIM_EXPORT ssize_t listxattr(const char *path, char *list, size_t size) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(listxattr)(path, list, size);
    return fos_shim_listxattr_any(path, -1, 1, list, size);
}

FOS_SHIM_EXPORT ssize_t llistxattr(const char *path, char *list, size_t size) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(llistxattr)(path, list, size);
    return fos_shim_listxattr_any(path, -1, 0, list, size);
}

FOS_SHIM_EXPORT ssize_t flistxattr(int fd, char *list, size_t size) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(flistxattr)(fd, list, size);
    return fos_shim_listxattr_any(NULL, fd, 1, list, size);
}

FOS_SHIM_EXPORT int setxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(setxattr)(path, name, value, size, flags);
    return fos_shim_setxattr_any(path, -1, 1, name, value, size, flags, 0);
}

FOS_SHIM_EXPORT int lsetxattr(const char *path, const char *name, const void *value, size_t size, int flags) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(lsetxattr)(path, name, value, size, flags);
    return fos_shim_setxattr_any(path, -1, 0, name, value, size, flags, 0);
}

FOS_SHIM_EXPORT int fsetxattr(int fd, const char *name, const void *value, size_t size, int flags) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fsetxattr)(fd, name, value, size, flags);
    return fos_shim_setxattr_any(NULL, fd, 1, name, value, size, flags, 0);
}

FOS_SHIM_EXPORT int removexattr(const char *path, const char *name) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(removexattr)(path, name);
    return fos_shim_setxattr_any(path, -1, 1, name, NULL, 0, 0, 1);
}

FOS_SHIM_EXPORT int lremovexattr(const char *path, const char *name) {
    if (!FOS_SHIM_XPATH(path)) return FOS_REAL(lremovexattr)(path, name);
    return fos_shim_setxattr_any(path, -1, 0, name, NULL, 0, 0, 1);
}

FOS_SHIM_EXPORT int fremovexattr(int fd, const char *name) {
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(fremovexattr)(fd, name);
    return fos_shim_setxattr_any(NULL, fd, 1, name, NULL, 0, 0, 1);
}
