/*
 * Directory leases (fos_wire.h, "Directory leases"): a directory this
 * process made, in which, for a moment, only it changes anything, so it
 * knows a new name there is free, and the member has set inode numbers
 * aside for it. An exclusive create of a plain name in it goes ahead
 * (conn.c, fos_shim_fs_create_leased) instead of waiting about 15 µs for
 * the member: tar makes each directory and then its files.
 *
 * What the process itself does meanwhile counts too: every name it may
 * have made in a leased directory (by any call, even one that failed) is
 * remembered, and such a name is created the usual way. A rename or an
 * rmdir anywhere, and an unlink or a symlink outside a leased directory,
 * may move, remove or redirect a leased directory's path, and a change of
 * mode or owner may take away the right to create there (the host's root
 * aside, who needs none): each drops every lease.
 *
 * Everything here runs under the connection's lock, and the table lives
 * in the connection: a new connection (fork, exec, new credentials, a
 * member that died) starts with none.
 */
#include "shim.h"

#include <string.h>

FOS_SHIM_TLS const char *fos_shim_lease_mkdir_path;

void fos_shim_lease_clear(fos_shim_lease_tab *t) {
    for (int i = 0; i < FOS_SHIM_LEASES; i++) t->l[i].dir = 0;
    __atomic_store_n(&t->any, 0, __ATOMIC_RELAXED);
}

static uint32_t fos_shim_lease_hash(const char *name, uint32_t n) {
    uint32_t h = 2166136261u; /* FNV-1a */
    for (uint32_t i = 0; i < n; i++) h = (h ^ (uint8_t)name[i]) * 16777619u;
    return h | 1u; /* never 0 */
}

static void fos_shim_lease_remember(fos_shim_lease *l, const char *name, uint32_t n) {
    if (l->nnames < FOS_SHIM_LEASE_NAMES) {
        l->names[l->nnames++] = fos_shim_lease_hash(name, n);
    } else {
        l->next = l->ninos; /* too many to tell apart: no more creates under it */
    }
}

static int fos_shim_lease_knows(const fos_shim_lease *l, uint32_t h) {
    for (uint32_t i = 0; i < l->nnames; i++) {
        if (l->names[i] == h) return 1;
    }
    return 0;
}

void fos_shim_lease_granted(fos_shim_lease_tab *t, const char *path, const void *reply, uint32_t len,
                            uint64_t sent) {
    const uint8_t *p = reply;
    fos_fs_stat st;
    fos_fs_lease g;
    if (path == NULL || len < sizeof st + sizeof g) return;
    memcpy(&st, p, sizeof st);
    memcpy(&g, p + sizeof st, sizeof g);
    size_t plen = strlen(path);
    if (g.count == 0 || g.count > FOS_FS_LEASE_MAX_INOS || len != sizeof st + sizeof g + 8u * g.count ||
        !S_ISDIR(st.mode) || st.ino == 0 || plen >= FOS_SHIM_LEASE_PATH) {
        return;
    }
    uint64_t now = fos_shim_now_ns();
    if (g.lifetime_us == 0 || sent + (uint64_t)g.lifetime_us * 1000u <= now) return;
    fos_shim_lease *slot = NULL;
    for (int i = 0; i < FOS_SHIM_LEASES; i++) {
        fos_shim_lease *l = &t->l[i];
        if (l->dir == 0 || l->expires_ns <= now || l->dir == st.ino) {
            l->dir = 0;
            if (slot == NULL) slot = l;
        }
    }
    if (slot == NULL) {
        /* All in use: the one ending first goes. */
        slot = &t->l[0];
        for (int i = 1; i < FOS_SHIM_LEASES; i++) {
            if (t->l[i].expires_ns < slot->expires_ns) slot = &t->l[i];
        }
    }
    /* Counted from before the member granted it, on our own clock. */
    slot->expires_ns = sent + (uint64_t)g.lifetime_us * 1000u;
    slot->ninos = g.count;
    slot->next = 0;
    slot->nnames = 0;
    memcpy(slot->inos, p + sizeof st + sizeof g, 8u * g.count);
    memcpy(slot->path, path, plen);
    slot->plen = (uint32_t)plen;
    slot->dir = st.ino;
    __atomic_store_n(&t->any, 1, __ATOMIC_RELAXED);
}

static fos_shim_lease *fos_shim_lease_by_dir(fos_shim_lease_tab *t, uint64_t dir) {
    for (int i = 0; i < FOS_SHIM_LEASES; i++) {
        if (t->l[i].dir != 0 && t->l[i].dir == dir) return &t->l[i];
    }
    return NULL;
}

static fos_shim_lease *fos_shim_lease_by_path(fos_shim_lease_tab *t, const char *parent, size_t plen) {
    for (int i = 0; i < FOS_SHIM_LEASES; i++) {
        fos_shim_lease *l = &t->l[i];
        if (l->dir != 0 && l->plen == plen && memcmp(l->path, parent, plen) == 0) return l;
    }
    return NULL;
}

/* The name after fspath's last '/' and its parent's length. */
static int fos_shim_lease_split(const char *fspath, size_t *plen, const char **name, uint32_t *nlen) {
    const char *slash = strrchr(fspath, '/');
    if (slash == NULL || slash == fspath) return -1; /* the root is never leased */
    size_t n = strlen(slash + 1);
    if (n == 0 || n > FOS_FS_NAME_MAX) return -1;
    *plen = (size_t)(slash - fspath);
    *name = slash + 1;
    *nlen = (uint32_t)n;
    return 0;
}

static void fos_shim_lease_note_dir(fos_shim_lease_tab *t, uint64_t dir, const void *name, uint32_t n) {
    fos_shim_lease *l = fos_shim_lease_by_dir(t, dir);
    if (l && n > 0) fos_shim_lease_remember(l, name, n);
}

void fos_shim_lease_before(fos_shim_lease_tab *t, uint16_t op, const void *fixed, uint32_t flen, const void *tail,
                           uint32_t tlen) {
    switch (op) {
    case FOS_OP_FS_CREATE:
    case FOS_OP_FS_MKDIR:
    case FOS_OP_FS_MKNOD:
    case FOS_OP_FS_SYMLINK: {
        fos_fs_create c;
        if (flen != sizeof c) break;
        memcpy(&c, fixed, sizeof c);
        if (c.flags & FOS_FS_CREATE_LEASED) break; /* counted when sent */
        /* A symlink elsewhere may take the place of a path's component. */
        if (op == FOS_OP_FS_SYMLINK && fos_shim_lease_by_dir(t, c.dir) == NULL) {
            fos_shim_lease_clear(t);
            break;
        }
        fos_shim_lease_note_dir(t, c.dir, tail, c.name_len <= tlen ? c.name_len : tlen);
        break;
    }
    case FOS_OP_FS_UNLINK: {
        /* In a leased directory it only frees a name (no path goes through
         * it); elsewhere it may remove a symlink on a leased path. */
        fos_fs_name_req q;
        if (flen != sizeof q) break;
        memcpy(&q, fixed, sizeof q);
        if (fos_shim_lease_by_dir(t, q.dir) == NULL) fos_shim_lease_clear(t);
        break;
    }
    case FOS_OP_FS_LINK: {
        fos_fs_link k;
        if (flen != sizeof k) break;
        memcpy(&k, fixed, sizeof k);
        fos_shim_lease_note_dir(t, k.dir, tail, k.name_len <= tlen ? k.name_len : tlen);
        break;
    }
    case FOS_OP_FS_OPEN: {
        fos_fs_open o;
        char path[FOS_SHIM_LEASE_PATH + FOS_FS_NAME_MAX + 2];
        if (flen != sizeof o) break;
        memcpy(&o, fixed, sizeof o);
        if (!(o.flags & O_CREAT) || o.path_len != tlen || tlen >= sizeof path) break;
        memcpy(path, tail, tlen);
        path[tlen] = 0;
        size_t plen;
        const char *name;
        uint32_t nlen;
        if (fos_shim_lease_split(path, &plen, &name, &nlen) != 0) break;
        fos_shim_lease *l = fos_shim_lease_by_path(t, path, plen);
        if (l) fos_shim_lease_remember(l, name, nlen);
        break;
    }
    case FOS_OP_FS_RENAME:
    case FOS_OP_FS_RMDIR:
        fos_shim_lease_clear(t);
        break;
    case FOS_OP_FS_SETATTR: {
        fos_fs_setattr sa;
        if (flen != sizeof sa) break;
        memcpy(&sa, fixed, sizeof sa);
        if ((sa.valid & (FOS_FS_SET_MODE | FOS_FS_SET_UID | FOS_FS_SET_GID)) &&
            !fos_shim_conn_root) {
            fos_shim_lease_clear(t);
        }
        break;
    }
    default:
        break;
    }
}

fos_shim_lease *fos_shim_lease_for(fos_shim_lease_tab *t, const char *fspath, const char **name, uint32_t *nlen,
                                   uint64_t now) {
    size_t plen;
    if (fos_shim_lease_split(fspath, &plen, name, nlen) != 0) return NULL;
    fos_shim_lease *l = fos_shim_lease_by_path(t, fspath, plen);
    if (l == NULL || l->next >= l->ninos || now + FOS_SHIM_LEASE_MARGIN_NS >= l->expires_ns) return NULL;
    /* A plain name: what the fs takes as it is (not "." or "..", nothing
     * it might refuse: printable ASCII only). */
    const char *n = *name;
    if (n[0] == '.' && (*nlen == 1 || (*nlen == 2 && n[1] == '.'))) return NULL;
    for (uint32_t i = 0; i < *nlen; i++) {
        if ((uint8_t)n[i] < 0x20 || (uint8_t)n[i] > 0x7e) return NULL;
    }
    if (fos_shim_lease_knows(l, fos_shim_lease_hash(n, *nlen))) return NULL;
    return l;
}

const fos_shim_lease *fos_shim_lease_at(fos_shim_lease_tab *t, const char *fspath, uint64_t now) {
    const fos_shim_lease *l = fos_shim_lease_by_path(t, fspath, strlen(fspath));
    return l && now + FOS_SHIM_LEASE_MARGIN_NS < l->expires_ns ? l : NULL;
}

void fos_shim_lease_used(fos_shim_lease *l, const char *name, uint32_t nlen) {
    l->next++;
    fos_shim_lease_remember(l, name, nlen);
}
