/*
 * Typed requests of the fs fleet (fos_wire.h, "File system service"), as
 * FosFSClient/FSClient.swift sends them. Every reply is checked against
 * what was asked (exact struct sizes, counts no larger than requested):
 * anything else is EIO, never trusted.
 */
#include "shim.h"

#include <string.h>

static int fos_shim_req(uint16_t op, const void *fixed, uint32_t flen, const void *tail, uint32_t tlen,
                        const void *bulk, uint32_t blen, void *out, uint32_t cap, uint32_t *olen) {
    uint32_t got = 0;
    int err = fos_shim_fs_call(op, fixed, flen, tail, tlen, bulk, blen, out, cap, olen ? olen : &got, NULL, NULL);
    return -err;
}

/* A reply that must be exactly one struct; meanwhile as fos_shim_fs_call's. */
static int fos_shim_req_exact_meanwhile(uint16_t op, const void *fixed, uint32_t flen, const void *tail,
                                        uint32_t tlen, void *out, uint32_t size, void (*meanwhile)(void *),
                                        void *arg) {
    uint32_t n = 0;
    int r = -fos_shim_fs_call(op, fixed, flen, tail, tlen, NULL, 0, out, size, &n, meanwhile, arg);
    if (r == 0 && n != size) return -EIO;
    return r;
}

static int fos_shim_req_exact(uint16_t op, const void *fixed, uint32_t flen, const void *tail, uint32_t tlen,
                              void *out, uint32_t size) {
    return fos_shim_req_exact_meanwhile(op, fixed, flen, tail, tlen, out, size, NULL, NULL);
}

static int fos_shim_path_len(const char *p, uint32_t *len) {
    size_t n = strlen(p);
    if (n == 0) return -ENOENT;
    if (n >= FOS_FS_PATH_MAX) return -ENAMETOOLONG;
    *len = (uint32_t)n;
    return 0;
}

static int fos_shim_name_len(const char *p, uint32_t *len) {
    size_t n = strlen(p);
    if (n == 0) return -ENOENT;
    if (n > FOS_FS_NAME_MAX) return -ENAMETOOLONG;
    *len = (uint32_t)n;
    return 0;
}

int fos_shim_op_open(const char *fspath, uint32_t flags, uint32_t mode, fos_fs_stat *st) {
    return fos_shim_op_open_meanwhile(fspath, flags, mode, st, NULL, NULL);
}

int fos_shim_op_open_meanwhile(const char *fspath, uint32_t flags, uint32_t mode, fos_fs_stat *st,
                               void (*meanwhile)(void *), void *arg) {
    fos_fs_open o = {.flags = flags, .mode = mode};
    int r = fos_shim_path_len(fspath, &o.path_len);
    if (r) return r;
    return fos_shim_req_exact_meanwhile(FOS_OP_FS_OPEN, &o, sizeof o, fspath, o.path_len, st, sizeof *st,
                                        meanwhile, arg);
}

int fos_shim_op_resolve(const char *fspath, int follow, uint64_t *ino) {
    int leased;
    return fos_shim_op_resolve_leased(fspath, follow, ino, &leased);
}

int fos_shim_op_resolve_leased(const char *fspath, int follow, uint64_t *ino, int *leased) {
    /* A leased directory is not a symlink: followed or not, the same. */
    *leased = fos_shim_fs_leased_dir(fspath, ino);
    if (*leased) return 0;
    fos_fs_open o = {.flags = follow ? 0u : (uint32_t)O_NOFOLLOW};
    int r = fos_shim_path_len(fspath, &o.path_len);
    if (r) return r;
    fos_fs_ino i;
    r = fos_shim_req_exact(FOS_OP_FS_RESOLVE, &o, sizeof o, fspath, o.path_len, &i, sizeof i);
    if (r == 0) *ino = i.ino;
    return r;
}

int fos_shim_op_getattr(uint64_t ino, fos_fs_stat *st) {
    fos_fs_ino i = {.ino = ino};
    return fos_shim_req_exact(FOS_OP_FS_GETATTR, &i, sizeof i, NULL, 0, st, sizeof *st);
}

/* An OPEN with access mode 3 (Linux's "no access" mode) checks nothing on
 * the file itself and returns its attributes: stat in one message. With
 * O_NOFOLLOW a final symlink is ELOOP; then the symlink's own attributes
 * take a RESOLVE and a GETATTR, and its size a READLINK: readlink shows an
 * absolute target with the prefix (w_link.c), and st_size must be the
 * length readlink returns. */
int fos_shim_op_stat_path(const char *fspath, int follow, fos_fs_stat *st) {
    int r = fos_shim_op_open(fspath, (uint32_t)(O_ACCMODE | (follow ? 0 : O_NOFOLLOW)), 0, st);
    if (r != -ELOOP || follow) return r;
    uint64_t ino;
    r = fos_shim_op_resolve(fspath, 0, &ino);
    if (r == 0) r = fos_shim_op_getattr(ino, st);
    char t[FOS_FS_PATH_MAX];
    int64_t n = r == 0 && S_ISLNK(st->mode) ? fos_shim_op_readlink(ino, t, sizeof t) : 0;
    if (n > 0 && t[0] == '/') st->size = (uint64_t)n + fos_shim_cfg.prefix_len - (n == 1);
    return r;
}

int fos_shim_op_setattr(const fos_fs_setattr *sa, fos_fs_stat *st) {
    fos_fs_stat ignored;
    return fos_shim_req_exact(FOS_OP_FS_SETATTR, sa, sizeof *sa, NULL, 0, st ? st : &ignored, sizeof *st);
}

int fos_shim_op_setattr_open(const fos_fs_setattr *sa) {
    /* No answer read (out NULL): the call may send it ahead (conn.c). */
    return fos_shim_req(FOS_OP_FS_SETATTR, sa, sizeof *sa, NULL, 0, NULL, 0, NULL, 0, NULL);
}

int64_t fos_shim_op_read(uint64_t ino, uint64_t off, void *buf, size_t n) {
    size_t done = 0;
    while (done < n) {
        uint32_t want = n - done < FOS_FS_MAX_IO ? (uint32_t)(n - done) : FOS_FS_MAX_IO;
        fos_fs_io io = {.ino = ino, .offset = off + done, .count = want};
        uint32_t got = 0;
        int r = fos_shim_req(FOS_OP_FS_READ, &io, sizeof io, NULL, 0, NULL, 0, (uint8_t *)buf + done, want, &got);
        if (r) return done ? (int64_t)done : r;
        done += got;
        if (got < want) break;
    }
    return (int64_t)done;
}

int64_t fos_shim_op_write(uint64_t ino, uint64_t off, const void *buf, size_t n, int append, uint64_t *where) {
    size_t done = 0;
    do {
        uint32_t len = n - done < FOS_FS_MAX_IO ? (uint32_t)(n - done) : FOS_FS_MAX_IO;
        fos_fs_io io = {.ino = ino, .offset = append ? 0 : off + done, .count = len,
                        .flags = append ? FOS_FS_IO_APPEND : 0};
        fos_fs_write_reply w;
        uint32_t got = 0;
        int r = fos_shim_req(FOS_OP_FS_WRITE, &io, sizeof io, NULL, 0, (const uint8_t *)buf + done, len, &w,
                             sizeof w, &got);
        if (r == 0 && (got != sizeof w || w.count > len)) r = -EIO;
        if (r) return done ? (int64_t)done : r;
        if (done == 0) *where = w.offset;
        done += w.count;
        if (w.count < len) break;
    } while (done < n);
    return (int64_t)done;
}

int fos_shim_op_fsync(uint64_t ino, int datasync) {
    fos_fs_fsync f = {.ino = ino, .datasync = datasync ? 1u : 0u};
    return fos_shim_req(FOS_OP_FS_FSYNC, &f, sizeof f, NULL, 0, NULL, 0, NULL, 0, NULL);
}

int fos_shim_op_map(uint64_t ino, int writable, int *fd, uint64_t *size) {
    fos_fs_map m = {.ino = ino, .flags = writable ? FOS_FS_MAP_WRITE : 0u};
    fos_fs_map_reply r;
    int e = fos_shim_req_exact(FOS_OP_FS_MAP, &m, sizeof m, NULL, 0, &r, sizeof r);
    if (e) return e;
    int err = fos_shim_fetch(r.tag, fd);
    if (err) return -err;
    *size = r.size;
    return 0;
}

int fos_shim_op_msync(uint64_t ino, uint64_t memfd_ino, int durable) {
    fos_fs_msync f = {.ino = ino, .memfd_ino = memfd_ino, .flags = durable ? FOS_FS_MSYNC_FLUSH : 0u};
    return fos_shim_req(FOS_OP_FS_MSYNC, &f, sizeof f, NULL, 0, NULL, 0, NULL, 0, NULL);
}

/* The directory inode holding fspath's last name: one RESOLVE (none for
 * the root). 1 if fspath is the fs root itself. */
static int fos_shim_parent(char *fspath, uint64_t *dir, const char **name, uint32_t *nlen) {
    const char *parent;
    if (fos_shim_split(fspath, &parent, name)) return 1;
    int r = fos_shim_name_len(*name, nlen);
    if (r) return r;
    if (parent[0] == '/' && parent[1] == 0) {
        *dir = FOS_FS_ROOT_INO;
        return 0;
    }
    return fos_shim_op_resolve(parent, 1, dir);
}

int fos_shim_op_mkdir(char *fspath, uint32_t mode) {
    fos_fs_create c = {.mode = mode, .flags = FOS_FS_MKDIR_LEASE};
    const char *name;
    char path[FOS_SHIM_LEASE_PATH];
    size_t plen = strlen(fspath);
    while (plen > 1 && fspath[plen - 1] == '/') plen--;
    if (plen < sizeof path) {
        memcpy(path, fspath, plen);
        path[plen] = 0;
    }
    int r = fos_shim_parent(fspath, &c.dir, &name, &c.name_len);
    if (r == 1) return -EEXIST;
    if (r) return r;
    /* The reply: the new directory, and a lease on it if the member
     * grants one (lease.c: conn.c takes it). */
    _Alignas(8) uint8_t rep[sizeof(fos_fs_stat) + sizeof(fos_fs_lease) + 8 * FOS_FS_LEASE_MAX_INOS];
    uint32_t n = 0;
    fos_shim_lease_mkdir_path = plen < sizeof path ? path : NULL;
    if (plen >= sizeof path) c.flags = 0;
    r = fos_shim_req(FOS_OP_FS_MKDIR, &c, sizeof c, name, c.name_len, NULL, 0, rep, sizeof rep, &n);
    fos_shim_lease_mkdir_path = NULL;
    if (r == 0 && n < sizeof(fos_fs_stat)) return -EIO;
    return r;
}

int fos_shim_op_remove(char *fspath, int dir) {
    fos_fs_name_req q = {0};
    const char *name;
    int r = fos_shim_parent(fspath, &q.dir, &name, &q.name_len);
    if (r == 1) return dir ? -EBUSY : -EISDIR;
    if (r) return r;
    if (dir) return fos_shim_req(FOS_OP_FS_RMDIR, &q, sizeof q, name, q.name_len, NULL, 0, NULL, 0, NULL);
    uint64_t held[FOS_FS_UNLINK_LIST_MAX];
    uint32_t n = 0;
    q.flags = fos_shim_fd_unlink_flags(held, &n);
    uint8_t list[4 + 8 * FOS_FS_UNLINK_LIST_MAX];
    uint32_t len = 0;
    if (q.flags & FOS_FS_UNLINK_HOLDS_LISTED) {
        memcpy(list, &n, 4);
        memcpy(list + 4, held, 8 * (size_t)n);
        len = 4 + 8 * n;
    }
    return fos_shim_req(FOS_OP_FS_UNLINK, &q, sizeof q, name, q.name_len, list, len, NULL, 0, NULL);
}

int fos_shim_op_rename(char *from, char *to, uint32_t flags) {
    const char *an, *bn;
    uint32_t al, bl;
    fos_fs_rename q = {.flags = flags};
    int r = fos_shim_parent(from, &q.old_dir, &an, &al);
    if (r == 0) r = fos_shim_parent(to, &q.new_dir, &bn, &bl);
    if (r == 1) return -EBUSY;
    if (r) return r;
    q.old_len = (uint16_t)al;
    q.new_len = (uint16_t)bl;
    return fos_shim_req(FOS_OP_FS_RENAME, &q, sizeof q, an, al, bn, bl, NULL, 0, NULL);
}

struct fos_shim_linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

/* The largest READDIR record: the entry and a longest name, padded. */
#define FOS_SHIM_DIRENT_MAX (sizeof(fos_fs_dirent) + FOS_FS_NAME_MAX + 1)

/* READDIR's records are never smaller than linux_dirent64's for the same
 * name, so the reply is received into the caller's buffer and rewritten in
 * place, front to back. */
int64_t fos_shim_op_getdents(uint64_t ino, uint64_t *cookie, void *buf, size_t cap) {
    _Alignas(8) uint8_t small[sizeof(fos_fs_readdir_reply) + FOS_SHIM_DIRENT_MAX];
    uint8_t *rx = cap < sizeof small ? small : buf;
    size_t rcap = cap < sizeof small ? sizeof small : cap;
    if (rcap > FOS_MAX_PAYLOAD) rcap = FOS_MAX_PAYLOAD;
    if (cap < sizeof(struct fos_shim_linux_dirent64) + 2) return -EINVAL;
    size_t max = (rcap - sizeof(fos_fs_readdir_reply)) / FOS_SHIM_DIRENT_MAX;
    fos_fs_readdir q = {.ino = ino, .cookie = *cookie, .max = (uint32_t)(max < 1 ? 1 : max > 1024 ? 1024 : max)};
    uint32_t n = 0;
    int r = fos_shim_req(FOS_OP_FS_READDIR, &q, sizeof q, NULL, 0, NULL, 0, rx, (uint32_t)rcap, &n);
    if (r) return r;
    fos_fs_readdir_reply h;
    if (n < sizeof h) return -EIO;
    memcpy(&h, rx, sizeof h);
    if (h.count > q.max) return -EIO;
    size_t in = sizeof h, out = 0;
    for (uint32_t i = 0; i < h.count; i++) {
        fos_fs_dirent d;
        if (n - in < sizeof d) return -EIO;
        memcpy(&d, rx + in, sizeof d);
        size_t nameat = in + sizeof d;
        if (d.name_len == 0 || d.name_len > FOS_FS_NAME_MAX || n - nameat < d.name_len) return -EIO;
        if (memchr(rx + nameat, 0, d.name_len) || memchr(rx + nameat, '/', d.name_len)) return -EIO;
        size_t reclen = (offsetof(struct fos_shim_linux_dirent64, d_name) + d.name_len + 1 + 7) & ~(size_t)7;
        if (out + reclen > cap) break; /* the rest comes at the next call, from this cookie */
        struct fos_shim_linux_dirent64 ld = {.d_ino = d.ino, .d_off = (int64_t)d.next_cookie,
                                             .d_reclen = (unsigned short)reclen, .d_type = d.type};
        uint8_t *o = (uint8_t *)buf + out;
        memmove(o + offsetof(struct fos_shim_linux_dirent64, d_name), rx + nameat, d.name_len);
        memcpy(o, &ld, offsetof(struct fos_shim_linux_dirent64, d_name));
        memset(o + offsetof(struct fos_shim_linux_dirent64, d_name) + d.name_len, 0,
               reclen - offsetof(struct fos_shim_linux_dirent64, d_name) - d.name_len);
        out += reclen;
        in = (nameat + d.name_len + 7) & ~(size_t)7;
        *cookie = d.next_cookie;
    }
    if (h.count > 0 && out == 0) return -EINVAL; /* not even one entry fits */
    return (int64_t)out;
}

int fos_shim_op_lock(const fos_fs_lock *l, fos_fs_lock_reply *r) {
    uint32_t n = 0;
    int e = fos_shim_req(FOS_OP_FS_LOCK, l, sizeof *l, NULL, 0, NULL, 0, r, sizeof *r, &n);
    if (e == 0 && l->command == FOS_FS_LOCK_GET && n != sizeof *r) return -EIO;
    return e;
}

int64_t fos_shim_op_readlink(uint64_t ino, char *buf, size_t cap) {
    fos_fs_ino i = {.ino = ino};
    uint32_t n = 0;
    int r = fos_shim_req(FOS_OP_FS_READLINK, &i, sizeof i, NULL, 0, NULL, 0, buf, (uint32_t)cap, &n);
    return r ? r : (int64_t)n;
}

/* A new name in fspath's parent: SYMLINK (target), MKNOD (mode, rdev). */
static int fos_shim_make(uint16_t op, char *fspath, uint32_t mode, uint64_t rdev, const char *target) {
    fos_fs_create c = {.mode = mode, .rdev = rdev};
    const char *name;
    int r = fos_shim_parent(fspath, &c.dir, &name, &c.name_len);
    if (r == 1) return -EEXIST;
    if (r) return r;
    if (target) {
        size_t t = strlen(target);
        if (t == 0) return -ENOENT;
        if (t >= FOS_FS_PATH_MAX) return -ENAMETOOLONG;
        c.target_len = (uint32_t)t;
    }
    fos_fs_stat st;
    uint32_t n = 0;
    r = fos_shim_req(op, &c, sizeof c, name, c.name_len, target, c.target_len, &st, sizeof st, &n);
    if (r == 0 && n != sizeof st) return -EIO;
    return r;
}

int fos_shim_op_symlink(const char *target, char *fspath) {
    return fos_shim_make(FOS_OP_FS_SYMLINK, fspath, 0777, 0, target);
}

int fos_shim_op_mknod(char *fspath, uint32_t mode, uint64_t rdev) {
    return fos_shim_make(FOS_OP_FS_MKNOD, fspath, mode, rdev, NULL);
}

int fos_shim_op_link(uint64_t ino, char *fspath) {
    fos_fs_link l = {.ino = ino};
    const char *name;
    int r = fos_shim_parent(fspath, &l.dir, &name, &l.name_len);
    if (r == 1) return -EEXIST;
    if (r) return r;
    fos_fs_stat st;
    return fos_shim_req_exact(FOS_OP_FS_LINK, &l, sizeof l, name, l.name_len, &st, sizeof st);
}

int fos_shim_op_statfs(fos_fs_statfs *s) {
    return fos_shim_req_exact(FOS_OP_FS_STATFS, NULL, 0, NULL, 0, s, sizeof *s);
}
