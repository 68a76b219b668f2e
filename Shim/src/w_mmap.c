/*
 * mmap of fos files. The kernel would map the placeholder, so:
 *   - MAP_SHARED maps the memfd that the inode's home member keeps as the
 *     file's page cache (FOS_OP_FS_MAP, FosFSServer/SharedMaps.swift):
 *     every shared mapping of the file on this machine, and read and write
 *     from anywhere, see the same bytes at once, as on Linux (SQLite's WAL
 *     index needs exactly this). The member writes the pages back; msync
 *     asks it to now (MS_SYNC: and to flush). Past the end of the file a
 *     page faults (SIGBUS), as on Linux.
 *   - MAP_PRIVATE, and MAP_SHARED where the member cannot share memory
 *     with us (its home is on another machine, the file is very large), is
 *     anonymous memory filled from the file at mmap time: exact for a
 *     private mapping except that pages are not refreshed by later writes
 *     to the file (Linux shows them until a page is first written); a
 *     shared one like that is written back by msync, munmap and at exit,
 *     and other processes see its changes only then. Beyond the end of the
 *     file such a mapping reads zeros.
 */
#include "shim.h"

#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>

#define FOS_SHIM_MAPS 1024

typedef struct fos_shim_map {
    uint8_t *addr;
    size_t len;
    uint64_t ino;
    uint64_t off;
    int member;        /* the member's memfd: it writes back; msync only asks it to */
    uint64_t memfd_ino; /* which memfd (a restarted member that lost it says so) */
} fos_shim_map;

/* Shared mappings: copies to be written back, and the member's memfds (for msync). */
static fos_shim_map fos_shim_maps[FOS_SHIM_MAPS];
static int fos_shim_nmaps;
static pthread_mutex_t fos_shim_maps_mu = PTHREAD_MUTEX_INITIALIZER;

void fos_shim_maps_atfork_child(void) { pthread_mutex_init(&fos_shim_maps_mu, NULL); }

/* Writes [a, a+n) of mapping m back, up to the file's current size. */
static int fos_shim_write_back(const fos_shim_map *m, uint8_t *a, size_t n, int durable) {
    if (m->member) return fos_shim_op_msync(m->ino, m->memfd_ino, durable);
    fos_fs_stat st;
    int r = fos_shim_op_getattr(m->ino, &st);
    if (r) return r;
    uint64_t at = m->off + (uint64_t)(a - m->addr);
    if (at >= st.size) return 0;
    if (n > st.size - at) n = (size_t)(st.size - at);
    uint64_t where;
    int64_t put = fos_shim_op_write(m->ino, at, a, n, 0, &where);
    return put < 0 ? (int)put : put == (int64_t)n ? 0 : -EIO;
}

/* Writes back every part of [addr, addr+len) that a writable shared fos
 * mapping covers; with forget, drops those parts from the records. The
 * write-backs run outside the lock: a request may reconnect, which unmaps
 * the old channel's rings through munmap, which takes the lock. */
static int fos_shim_sync_range(uint8_t *addr, size_t len, int forget, int durable) {
    int err = 0, from = 0;
    while (from < FOS_SHIM_MAPS) {
        /* A batch of the records it touches, found and (forget) trimmed under one lock. */
        struct {
            fos_shim_map m;
            uint8_t *a, *b;
        } work[16];
        int n = 0;
        pthread_mutex_lock(&fos_shim_maps_mu);
        for (; from < FOS_SHIM_MAPS && n < 16; from++) {
            fos_shim_map *m = &fos_shim_maps[from];
            if (m->addr == NULL || addr >= m->addr + m->len || addr + len <= m->addr) continue;
            uint8_t *a = addr > m->addr ? addr : m->addr;
            uint8_t *b = addr + len < m->addr + m->len ? addr + len : m->addr + m->len;
            work[n].m = *m;
            work[n].a = a;
            work[n].b = b;
            n++;
            if (!forget) continue;
            if (a == m->addr && b == m->addr + m->len) {
                m->addr = NULL;
                __atomic_sub_fetch(&fos_shim_nmaps, 1, __ATOMIC_RELEASE);
            } else if (a == m->addr) {
                m->off += (uint64_t)(b - m->addr);
                m->len -= (size_t)(b - m->addr);
                m->addr = b;
            } else {
                if (b < m->addr + m->len) {
                    /* A hole in the middle: the tail becomes a record of its own. */
                    fos_shim_map tail = *m;
                    tail.off += (uint64_t)(b - m->addr);
                    tail.len = (size_t)(m->addr + m->len - b);
                    tail.addr = b;
                    for (int j = 0; j < FOS_SHIM_MAPS; j++) {
                        if (fos_shim_maps[j].addr != NULL) continue;
                        fos_shim_maps[j] = tail;
                        __atomic_add_fetch(&fos_shim_nmaps, 1, __ATOMIC_RELEASE);
                        break;
                    }
                }
                m->len = (size_t)(a - m->addr);
            }
        }
        pthread_mutex_unlock(&fos_shim_maps_mu);
        for (int i = 0; i < n; i++) {
            /* The member's memfd needs nothing when unmapped: it writes back itself. */
            if (forget && work[i].m.member) continue;
            int r = fos_shim_write_back(&work[i].m, work[i].a, (size_t)(work[i].b - work[i].a), durable);
            if (r && !err) err = r;
        }
    }
    return err;
}

static int fos_shim_record(uint8_t *addr, size_t len, uint64_t ino, uint64_t off, int member, uint64_t memfd_ino) {
    int ok = -ENOMEM;
    pthread_mutex_lock(&fos_shim_maps_mu);
    for (int i = 0; i < FOS_SHIM_MAPS && ok; i++) {
        if (fos_shim_maps[i].addr != NULL) continue;
        fos_shim_maps[i] = (fos_shim_map){.addr = addr, .len = len, .ino = ino, .off = off, .member = member,
                                          .memfd_ino = memfd_ino};
        __atomic_add_fetch(&fos_shim_nmaps, 1, __ATOMIC_RELEASE);
        ok = 0;
    }
    pthread_mutex_unlock(&fos_shim_maps_mu);
    return ok;
}

/* A shared mapping of the member's memfd; -EAGAIN where it cannot share
 * memory with us (then a copy will do). */
static void *fos_shim_mmap_member(void *addr, size_t len, int prot, int flags, const fos_shim_ofd *o, off_t off) {
    int fd = -1;
    uint64_t size = 0;
    /* Writable whenever the descriptor is: mprotect may add PROT_WRITE later, as on Linux. */
    int r = fos_shim_op_map(o->ino, (o->flags & O_ACCMODE) == O_RDWR, &fd, &size);
    if (r == -EACCES && !(prot & PROT_WRITE)) r = fos_shim_op_map(o->ino, 0, &fd, &size);
    switch (r) {
    case 0:
        break;
    case -EXDEV: case -EFBIG: case -ENOSYS: case -EOPNOTSUPP:
        /* The member cannot share this file's memory with us: a copy. */
        return (void *)(intptr_t)-EAGAIN;
    case -EACCES: case -ENODEV: case -ENOMEM: case -EPERM: case -EINVAL: case -EMFILE: case -ENFILE:
        return (void *)(intptr_t)r;
    default:
        /* Never a silent copy (processes that must share would not):
         * mmap's own word for "not now". */
        return (void *)(intptr_t)-ENOMEM;
    }
    struct stat st;
    uint64_t memfd_ino = syscall(SYS_fstat, fd, &st) == 0 ? (uint64_t)st.st_ino : 0;
    uint8_t *p = FOS_REAL(mmap)(addr, len, prot, flags, fd, off);
    r = p == MAP_FAILED ? -errno : 0;
    fos_shim_sys_close(fd);
    if (r) return (void *)(intptr_t)r;
    r = fos_shim_record(p, len, o->ino, (uint64_t)off, 1, memfd_ino);
    if (r) {
        FOS_REAL(munmap)(p, len);
        return (void *)(intptr_t)r;
    }
    return p;
}

static void *fos_shim_mmap_fos(void *addr, size_t len, int prot, int flags, const fos_shim_ofd *o, off_t off) {
    int acc = (int)(o->flags & O_ACCMODE);
    int type = flags & MAP_TYPE;
    int shared = type == MAP_SHARED || type == MAP_SHARED_VALIDATE;
    int shared_write = shared && (prot & PROT_WRITE);
    if (len == 0 || off < 0 || (off & 4095)) return (void *)(intptr_t)-EINVAL;
    if ((o->flags & O_PATH) || S_ISDIR(o->mode)) return (void *)(intptr_t)-EACCES;
    if (acc == O_WRONLY || (shared_write && acc != O_RDWR)) return (void *)(intptr_t)-EACCES;
    if (shared) {
        void *m = fos_shim_mmap_member(addr, len, prot, flags, o, off);
        if ((intptr_t)m != -EAGAIN) return m;
    }
    fos_fs_stat st;
    int r = fos_shim_op_getattr(o->ino, &st);
    if (r) return (void *)(intptr_t)r;
    int keep = flags & (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_POPULATE | MAP_NORESERVE | MAP_LOCKED);
    uint8_t *p = FOS_REAL(mmap)(addr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | keep, -1, 0);
    if (p == MAP_FAILED) return (void *)(intptr_t)-errno;
    if ((uint64_t)off < st.size) {
        size_t want = st.size - (uint64_t)off < len ? (size_t)(st.size - (uint64_t)off) : len;
        int64_t got = fos_shim_op_read(o->ino, (uint64_t)off, p, want);
        r = got < 0 ? (int)got : 0;
    }
    if (r == 0 && prot != (PROT_READ | PROT_WRITE) && mprotect(p, len, prot) != 0) r = -errno;
    if (r == 0 && shared_write) r = fos_shim_record(p, len, o->ino, (uint64_t)off, 0, 0);
    if (r) {
        FOS_REAL(munmap)(p, len);
        return (void *)(intptr_t)r;
    }
    return p;
}

static void *fos_shim_mmap_any(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    int saved = errno;
    fos_shim_ofd *o = fos_shim_fd(fd);
    if (o == NULL) return FOS_REAL(mmap)(addr, len, prot, flags, fd, off);
    void *p = fos_shim_mmap_fos(addr, len, prot, flags, o, off);
    intptr_t e = (intptr_t)p;
    if (e < 0 && e > -4096) {
        errno = (int)-e;
        return MAP_FAILED;
    }
    errno = saved;
    return p;
}

/* A MAP_FIXED mapping replaces what was there: as munmap would. */
static void fos_shim_mmap_fixed(void *addr, size_t len, int flags) {
    if (FOS_SHIM_LIKELY(!(flags & MAP_FIXED) || __atomic_load_n(&fos_shim_nmaps, __ATOMIC_ACQUIRE) == 0)) return;
    int saved = errno;
    (void)fos_shim_sync_range(addr, len, 1, 0);
    errno = saved;
}

FOS_SHIM_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    fos_shim_mmap_fixed(addr, len, flags);
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd) || (flags & MAP_ANONYMOUS))) {
        return FOS_REAL(mmap)(addr, len, prot, flags, fd, off);
    }
    return fos_shim_mmap_any(addr, len, prot, flags, fd, off);
}

FOS_SHIM_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off) {
    fos_shim_mmap_fixed(addr, len, flags);
    if (FOS_SHIM_LIKELY(!fos_shim_fd_marked(fd) || (flags & MAP_ANONYMOUS))) {
        return FOS_REAL(mmap64)(addr, len, prot, flags, fd, off);
    }
    return fos_shim_mmap_any(addr, len, prot, flags, fd, off);
}

FOS_SHIM_EXPORT int munmap(void *addr, size_t len) {
    if (FOS_SHIM_UNLIKELY(__atomic_load_n(&fos_shim_nmaps, __ATOMIC_ACQUIRE) > 0)) {
        int saved = errno;
        (void)fos_shim_sync_range(addr, len, 1, 0); /* unmapping cannot report a failed write-back */
        errno = saved;
    }
    return FOS_REAL(munmap)(addr, len);
}

/* A record that covers exactly [old, old+oldlen) follows the move; any
 * other overlap is let go as munmap would (a copy is written back first). */
FOS_SHIM_EXPORT void *mremap(void *old, size_t oldlen, size_t newlen, int flags, ...) {
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
    }
    if (FOS_SHIM_LIKELY(__atomic_load_n(&fos_shim_nmaps, __ATOMIC_ACQUIRE) == 0)) {
        return FOS_REAL(mremap)(old, oldlen, newlen, flags, want);
    }
    int saved = errno;
    if (flags & MREMAP_FIXED) (void)fos_shim_sync_range(want, newlen, 1, 0);
    int exact = -1;
    pthread_mutex_lock(&fos_shim_maps_mu);
    for (int i = 0; i < FOS_SHIM_MAPS && exact < 0; i++) {
        if (fos_shim_maps[i].addr == old && fos_shim_maps[i].len == oldlen) exact = i;
    }
    pthread_mutex_unlock(&fos_shim_maps_mu);
    if (exact < 0) (void)fos_shim_sync_range(old, oldlen, 1, 0);
    errno = saved;
    uint8_t *p = FOS_REAL(mremap)(old, oldlen, newlen, flags, want);
    if (p == MAP_FAILED || exact < 0) return p;
    pthread_mutex_lock(&fos_shim_maps_mu);
    fos_shim_map *m = &fos_shim_maps[exact];
    if (m->addr == old) {
        /* With MREMAP_DONTUNMAP the old range stays, empty: the record follows the pages. */
        m->addr = p;
        /* A copy's new pages are not the file's: only the old length is. */
        m->len = m->member || newlen < oldlen ? newlen : oldlen;
    }
    pthread_mutex_unlock(&fos_shim_maps_mu);
    return p;
}

FOS_SHIM_EXPORT int msync(void *addr, size_t len, int flags) {
    if (FOS_SHIM_LIKELY(__atomic_load_n(&fos_shim_nmaps, __ATOMIC_ACQUIRE) == 0)) return FOS_REAL(msync)(addr, len, flags);
    int saved = errno;
    int r = fos_shim_sync_range(addr, len, 0, (flags & MS_SYNC) != 0);
    if (r) return (int)fos_shim_ret(r, saved);
    return FOS_REAL(msync)(addr, len, flags);
}

/* At exit, what a writable shared mapping holds reaches the file, as the
 * kernel would write dirty pages back. */
__attribute__((destructor)) static void fos_shim_maps_at_exit(void) {
    if (__atomic_load_n(&fos_shim_nmaps, __ATOMIC_ACQUIRE) == 0) return;
    int saved = errno;
    for (int i = 0; i < FOS_SHIM_MAPS; i++) {
        fos_shim_map m = fos_shim_maps[i];
        if (m.addr && !m.member) (void)fos_shim_write_back(&m, m.addr, m.len, 0);
    }
    errno = saved;
}
