/*
 * statfs and statvfs of the fos file system: the fleet's figures (STATFS),
 * once the path or descriptor is known to name a fos file.
 */
#include "shim.h"

#include <string.h>
#include <sys/statfs.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>

/* "FOS!" as the file system type statfs reports. */
#define FOS_SHIM_FS_MAGIC 0x464f5321

/* The fleet's figures, after checking that the target exists. */
static int fos_shim_statfs_fos(const char *fspath, fos_shim_ofd *o, fos_fs_statfs *s) {
    fos_fs_stat st;
    int r = o ? fos_shim_op_getattr(o->ino, &st) : fos_shim_op_stat_path(fspath, 1, &st);
    return r ? r : fos_shim_op_statfs(s);
}

static void fos_shim_fill_statfs(void *dst, const fos_fs_statfs *s) {
    struct statfs *out = dst;
    memset(out, 0, sizeof *out);
    out->f_type = FOS_SHIM_FS_MAGIC;
    out->f_bsize = s->block_size;
    out->f_frsize = s->block_size;
    out->f_blocks = s->total_blocks;
    out->f_bfree = s->free_blocks;
    out->f_bavail = s->avail_blocks;
    out->f_files = s->total_inodes;
    out->f_ffree = s->free_inodes;
    out->f_namelen = s->name_max;
    out->f_fsid.__val[0] = (int)makedev(FOS_SHIM_DEV_MAJOR, FOS_SHIM_DEV_MINOR);
}

static void fos_shim_fill_statvfs(void *dst, const fos_fs_statfs *s) {
    struct statfs f;
    fos_shim_fill_statfs(&f, s);
    struct statvfs *out = dst;
    memset(out, 0, sizeof *out);
    out->f_bsize = (unsigned long)f.f_bsize;
    out->f_frsize = (unsigned long)f.f_frsize;
    out->f_blocks = f.f_blocks;
    out->f_bfree = f.f_bfree;
    out->f_bavail = f.f_bavail;
    out->f_files = f.f_files;
    out->f_ffree = f.f_ffree;
    out->f_favail = f.f_ffree;
    out->f_fsid = makedev(FOS_SHIM_DEV_MAJOR, FOS_SHIM_DEV_MINOR);
    out->f_namemax = (unsigned long)f.f_namelen;
}

typedef void (*fos_shim_fill_fn)(void *out, const fos_fs_statfs *s);
typedef int (*fos_shim_statfs_path_fn)(const char *path, void *out);
typedef int (*fos_shim_statfs_fd_fn)(int fd, void *out);

/* The 64 forms share the layout of the plain ones on 64-bit Linux. */
static int fos_shim_statfs_path(const char *path, void *out, fos_shim_fill_fn fill, fos_shim_statfs_path_fn real) {
    char buf[FOS_SHIM_PATH_BUF];
    fos_fs_statfs s;
    int saved = errno;
    int k = fos_shim_classify(AT_FDCWD, path, buf);
    if (k == FOS_SHIM_HOST || k == FOS_SHIM_REWRITTEN) return real(k == FOS_SHIM_HOST ? path : buf, out);
    if (k < 0) return (int)fos_shim_ret(k, saved);
    int r = fos_shim_statfs_fos(buf, NULL, &s);
    if (r == 0) fill(out, &s);
    return (int)fos_shim_ret(r, saved);
}

static int fos_shim_statfs_fd(int fd, void *out, fos_shim_fill_fn fill, fos_shim_statfs_fd_fn real) {
    fos_fs_statfs s;
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (o == NULL) return real(fd, out);
    int r = fos_shim_statfs_fos(NULL, o, &s);
    if (r == 0) fill(out, &s);
    return (int)fos_shim_ret(r, saved);
}

#define FOS_SHIM_STATFS_PATH(name, type, fill)                                                 \
    FOS_SHIM_EXPORT int name(const char *path, struct type *out) {                              \
        if (FOS_SHIM_LIKELY(!fos_shim_maybe_fos(AT_FDCWD, path))) return FOS_REAL(name)(path, out); \
        return fos_shim_statfs_path(path, out, fill, (fos_shim_statfs_path_fn)FOS_REAL(name));     \
    }

#define FOS_SHIM_STATFS_FD(name, type, fill)                                                   \
    FOS_SHIM_EXPORT int name(int fd, struct type *out) {                                        \
        if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd))) return FOS_REAL(name)(fd, out);            \
        return fos_shim_statfs_fd(fd, out, fill, (fos_shim_statfs_fd_fn)FOS_REAL(name));          \
    }

FOS_SHIM_STATFS_PATH(statfs, statfs, fos_shim_fill_statfs)
FOS_SHIM_STATFS_PATH(statfs64, statfs64, fos_shim_fill_statfs)
FOS_SHIM_STATFS_PATH(statvfs, statvfs, fos_shim_fill_statvfs)
FOS_SHIM_STATFS_PATH(statvfs64, statvfs64, fos_shim_fill_statvfs)
FOS_SHIM_STATFS_FD(fstatfs, statfs, fos_shim_fill_statfs)
FOS_SHIM_STATFS_FD(fstatfs64, statfs64, fos_shim_fill_statfs)
FOS_SHIM_STATFS_FD(fstatvfs, statvfs, fos_shim_fill_statvfs)
FOS_SHIM_STATFS_FD(fstatvfs64, statvfs64, fos_shim_fill_statvfs)
