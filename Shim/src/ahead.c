/*
 * Writes sent ahead (FOS_MSG_AHEAD, fos_wire.h): a WRITE at an offset goes
 * out and write() returns without waiting for the member's answer, while
 * the member's last reply said AHEAD_OK. So does root's change of a file's
 * mode, owner or times (a SETATTR that cannot fail for it): tar sets all
 * three on every file it writes, and the member commits the file's writes
 * and changes at once (FosCore/AheadOrder.swift). So does an exclusive
 * create in a directory this process holds a lease on (lease.c), with the
 * inode number the member set aside for it. The process's next
 * ordinary request goes right behind them (conn.c), and waits for their
 * answers, in order, before its own (so it reads what it wrote); fsync
 * of a file, exec and exit wait for them too. close does not, as Linux's
 * close does not wait for write-back. The member serves them before
 * anything that reaches it later from anyone (FosCore/AheadOrder.swift),
 * so another process this one tells finds them done.
 *
 * Why: a write's answer is the member's whole work on it (13-15 µs of an
 * untar's 18 µs per write); a program that writes and computes in turn
 * (sqlite, tar) now overlaps the two. sqlite's 10 000 inserts went from
 * 1.12-1.45x native to about 1.0x.
 *
 * Nothing acknowledged is lost: each one's data is kept here until its
 * answer is taken. A member that dies first is replaced, and its
 * unanswered writes go again, in order, to the new one before anything
 * else (answers already in the reply ring were taken first, and the
 * member answers each before it serves anything taken after it, so
 * nothing that came later is overwritten). Left: a process that is itself
 * killed, or _exits, right after its member died loses those writes.
 *
 * Errors: the member says AHEAD_OK only with room for every client's
 * FOS_FS_AHEAD_BYTES beyond a margin, so ENOSPC is not met late in
 * practice; any error an answer carries is kept for the file and given to
 * its next write, fsync or close in this process (close: if the answer
 * has come by then), as Linux gives a failed write-back to the next fsync.
 *
 * In the first millisecond (FOS_HOLD_US) of a file this process created
 * under a lease, a WRITE or SETATTR of it is held back, not sent at once: the
 * WRITEs that go on where it ends join a WRITE (up to FOS_FS_MAX_IO), the
 * file's next SETATTRs a SETATTR (fos_shim_ahead_merge). tar's 10 KiB
 * writes of a file go as one request, and its futimens, fchown and
 * fchmod as one: an untar made 3 900 requests, now 1 930 (each took the
 * member ~1.2 µs, and the member's time is the untar's). Any other file,
 * or later (a log written as the program goes), is not held: what it
 * writes shows at once. What is held goes, still ahead, before anything
 * else this process sends, at the file's close, and before any call by
 * which the process may tell another what it did, or wait (w_tell.c:
 * write, send, kill, fork, vfork, _exit, sleep, poll ...): another
 * process finds it made, as if sent at once. Left: a process killed by a
 * signal while one is held loses it (it had returned; the process's next
 * call of those would have sent it), and one that tells another through
 * shared memory alone, or computes on, sends it only at its next such
 * call.
 *
 * Everything here runs under the connection's lock, and allocates nothing
 * but the data buffer (one anonymous mapping, at the first write sent).
 */
#include "shim.h"

#include <string.h>
#include <sys/mman.h>

/* The largest request kept whole: a CREATE and its name. */
#define FOS_SHIM_AHEAD_FIXED_MAX (sizeof(fos_fs_create) + FOS_FS_NAME_MAX)

int fos_shim_ahead_held;

/* n and late[].ino are read without the lock (fos_shim_fs_unsettled, from
 * close, exec and exit, which may run in a signal handler inside a call):
 * written atomically. */
static void fos_shim_ahead_empty(fos_shim_ahead_q *q) {
    __atomic_store_n(&q->n, 0u, __ATOMIC_RELAXED);
    q->done = 0;
    q->used = 0;
    __atomic_store_n(&fos_shim_ahead_held, 0, __ATOMIC_RELAXED);
}

/* The request w is (its data or its SETATTR kept at w->at): msg gets the
 * header's room and the fixed part (*mlen in all), *bulk the data. */
static void fos_shim_ahead_msg(const fos_shim_ahead_q *q, const fos_shim_ahead_w *w, uint8_t *msg, uint32_t *mlen,
                               const void **bulk, uint32_t *blen) {
    if (w->op == FOS_OP_FS_SETATTR || w->op == FOS_OP_FS_CREATE) {
        memcpy(msg + sizeof(fos_msg_hdr), q->kept + w->at, w->len);
        *mlen = (uint32_t)sizeof(fos_msg_hdr) + w->len;
        *bulk = NULL;
        *blen = 0;
    } else {
        fos_fs_io io = {.ino = w->ino, .offset = w->off, .count = w->len};
        memcpy(msg + sizeof(fos_msg_hdr), &io, sizeof io);
        *mlen = sizeof(fos_msg_hdr) + sizeof io;
        *bulk = q->kept + w->at;
        *blen = w->len;
    }
}

/* Puts w on the ring, sent ahead: 0 or the channel's errno. */
static int fos_shim_ahead_send(const fos_shim_ahead_q *q, fos_shim_chan *fs, const fos_shim_ahead_w *w) {
    _Alignas(8) uint8_t msg[sizeof(fos_msg_hdr) + FOS_SHIM_AHEAD_FIXED_MAX];
    uint32_t mlen, blen;
    const void *bulk;
    fos_shim_ahead_msg(q, w, msg, &mlen, &bulk, &blen);
    return fos_shim_chan_post(fs, w->op, w->id, FOS_MSG_AHEAD, msg, mlen, bulk, blen);
}

/* Whether a SETATTR can go ahead: only what cannot fail for the caller
 * (a late error would surprise a program told it succeeded). Root may
 * change any file's mode, owner and times (the file is one the caller
 * has open: fos_shim_op_setattr_open); a size is a truncate, which may
 * meet a full disk or a shared mapping. */
static int fos_shim_ahead_setattr_ok(const fos_fs_setattr *sa) {
    const uint32_t may = FOS_FS_SET_MODE | FOS_FS_SET_UID | FOS_FS_SET_GID | FOS_FS_SET_ATIME | FOS_FS_SET_MTIME |
                         FOS_FS_SET_ATIME_NOW | FOS_FS_SET_MTIME_NOW;
    return sa->valid != 0 && (sa->valid & ~may) == 0 && fos_shim_conn_root;
}

/* Whether SETATTR b, made right after a, may be made with it as one:
 * root's (the only ones sent ahead), so nothing is refused, and the file
 * system makes a SETATTR's mode first, then its owner (which clears the
 * set-id bits), then its times. Only a mode with set-id bits after an
 * owner would come out otherwise. */
static int fos_shim_ahead_mergeable(const fos_fs_setattr *a, const fos_fs_setattr *b) {
    if (a->ino != b->ino) return 0;
    return !((b->valid & FOS_FS_SET_MODE) && (a->valid & (FOS_FS_SET_UID | FOS_FS_SET_GID)) &&
             (b->mode & (S_ISUID | S_ISGID)));
}

/* a, then b (fos_shim_ahead_mergeable), as one: b's values win. */
static void fos_shim_ahead_merge(fos_fs_setattr *a, const fos_fs_setattr *b) {
    const uint32_t at = FOS_FS_SET_ATIME | FOS_FS_SET_ATIME_NOW, mt = FOS_FS_SET_MTIME | FOS_FS_SET_MTIME_NOW;
    if (b->valid & FOS_FS_SET_MODE) a->mode = b->mode;
    if (b->valid & FOS_FS_SET_UID) a->uid = b->uid;
    if (b->valid & FOS_FS_SET_GID) a->gid = b->gid;
    if (b->valid & at) {
        a->valid &= ~at;
        a->atime_ns = b->atime_ns;
    }
    if (b->valid & mt) {
        a->valid &= ~mt;
        a->mtime_ns = b->mtime_ns;
    }
    a->valid |= b->valid;
}

/* Whether ino is a file this process created under a lease less than
 * fos_shim_cfg.hold_ns ago (FOS_HOLD_US, default 1 ms). */
static int fos_shim_ahead_fresh(const fos_shim_ahead_q *q, uint64_t ino) {
    for (unsigned i = 0; i < sizeof q->fresh / sizeof q->fresh[0] && i < q->nfresh; i++) {
        if (q->fresh[i].ino == ino) return fos_shim_now_ns() - q->fresh[i].at_ns < fos_shim_cfg.hold_ns;
    }
    return 0;
}

/* Whether an error waits to be told for ino (or for any file). */
static int fos_shim_ahead_has_late(const fos_shim_ahead_q *q, uint64_t ino) {
    for (unsigned i = 0; i < sizeof q->late / sizeof q->late[0]; i++) {
        if (q->late[i].ino != 0 && (q->late[i].ino == ino || q->late[i].ino == UINT64_MAX)) return 1;
    }
    return 0;
}

int fos_shim_ahead_post(fos_shim_ahead_q *q, fos_shim_chan *fs, uint64_t id, uint16_t op, const void *fixed,
                        const void *data) {
    fos_fs_io io;
    fos_fs_setattr sa;
    fos_fs_create cr;
    uint8_t created[FOS_SHIM_AHEAD_FIXED_MAX];
    uint32_t len;
    if (op == FOS_OP_FS_WRITE) {
        memcpy(&io, fixed, sizeof io);
        if (io.flags != 0 || io.count == 0 || io.count > FOS_FS_AHEAD_BYTES) return -1;
        /* Past the largest file: EFBIG, from the write itself. */
        if (io.offset > FOS_FS_MAX_FILE_SIZE - io.count) return -1;
        len = io.count;
    } else if (op == FOS_OP_FS_SETATTR) {
        memcpy(&sa, fixed, sizeof sa);
        if (!fos_shim_ahead_setattr_ok(&sa)) return -1;
        io = (fos_fs_io){.ino = sa.ino};
        data = &sa;
        len = sizeof sa;
    } else if (op == FOS_OP_FS_CREATE) {
        /* Under a directory lease (lease.c): fixed is its fos_fs_create,
         * data the name; kept as one request. */
        memcpy(&cr, fixed, sizeof cr);
        if (!(cr.flags & FOS_FS_CREATE_LEASED) || cr.name_len == 0 || cr.name_len > FOS_FS_NAME_MAX) return -1;
        memcpy(created, &cr, sizeof cr);
        memcpy(created + sizeof cr, data, cr.name_len);
        io = (fos_fs_io){.ino = cr.rdev};
        data = created;
        len = (uint32_t)sizeof cr + cr.name_len;
    } else {
        return -1;
    }
    if (!q->ok) return -1;
    /* On the member's own core nothing would overlap (and a call there
     * counts toward leaving it: chan.c). */
    if (fos_shim_chan_on_peer_core(fs)) return -1;
    /* An error waits to be told for the file: its requests go one by one. */
    if (fos_shim_ahead_has_late(q, io.ino)) return -1;
    /* Made with the one held back, if it may be: a SETATTR of the same
     * file, or a WRITE that goes on where it ends (tar writes a file in
     * 10 KiB pieces). */
    int fresh = op != FOS_OP_FS_CREATE && fos_shim_ahead_fresh(q, io.ino);
    fos_shim_ahead_w *held = fresh ? fos_shim_ahead_held_w(q) : NULL;
    if (held && op == FOS_OP_FS_SETATTR && held->op == op) {
        fos_fs_setattr h;
        memcpy(&h, q->kept + held->at, sizeof h);
        if (fos_shim_ahead_mergeable(&h, &sa)) {
            fos_shim_ahead_merge(&h, &sa);
            memcpy(q->kept + held->at, &h, sizeof h);
            return 0;
        }
    }
    if (held && op == FOS_OP_FS_WRITE && held->op == op && held->ino == io.ino && held->off + held->len == io.offset &&
        held->at + held->len == q->used && held->len + len <= FOS_FS_MAX_IO && q->used + len <= FOS_FS_AHEAD_BYTES) {
        memcpy(q->kept + q->used, data, len);
        held->len += len;
        q->used += len;
        return 0;
    }
    /* Answers already there first (they also refresh q->ok); all of them
     * when the queue or the buffer is full. */
    if (q->done < q->n && fos_shim_ahead_collect(q, fs, 0) != 0) return -1;
    if (q->n == FOS_FS_AHEAD_MAX || q->used + len > FOS_FS_AHEAD_BYTES) {
        if (fos_shim_ahead_collect(q, fs, 1) != 0) return -1;
    }
    if (!q->ok) return -1;
    if (q->kept == NULL) {
        void *p = mmap(NULL, FOS_FS_AHEAD_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return -1;
        q->kept = p;
    }
    /* Whatever is held back goes first. */
    if (fos_shim_ahead_flush(q, fs) != 0) return -1;
    fos_shim_ahead_w w = {.id = id, .ino = io.ino, .off = io.offset, .len = len, .at = q->used, .op = op};
    memcpy(q->kept + w.at, data, len);
    if (op == FOS_OP_FS_CREATE) {
        unsigned i = q->nfresh++ % (sizeof q->fresh / sizeof q->fresh[0]);
        q->fresh[i].ino = io.ino;
        q->fresh[i].at_ns = fos_shim_now_ns();
    }
    if (fresh) {
        /* Held back: the file's next changes may be made with it. */
        w.held = 1;
        __atomic_store_n(&fos_shim_ahead_held, 1, __ATOMIC_RELAXED);
    } else if (fos_shim_ahead_send(q, fs, &w) != 0) {
        return -1;
    }
    q->w[q->n] = w;
    __atomic_store_n(&q->n, q->n + 1, __ATOMIC_RELAXED);
    q->used += len;
    return 0;
}

int fos_shim_ahead_flush(fos_shim_ahead_q *q, fos_shim_chan *fs) {
    fos_shim_ahead_w *w = fos_shim_ahead_held_w(q);
    if (w == NULL) return 0;
    int err = fos_shim_ahead_send(q, fs, w);
    if (err) return err;
    w->held = 0;
    __atomic_store_n(&fos_shim_ahead_held, 0, __ATOMIC_RELAXED);
    return 0;
}

/* What an answer may carry. */
typedef union fos_shim_ahead_reply {
    fos_fs_write_reply w;
    fos_fs_stat st;
} fos_shim_ahead_reply;

/* One answer: its error, if any, kept for the file. */
static void fos_shim_ahead_answered(fos_shim_ahead_q *q, const fos_shim_ahead_w *w, int32_t status,
                                    const fos_shim_ahead_reply *r, uint32_t rlen) {
    int err = status;
    if (w->op == FOS_OP_FS_SETATTR) {
        if (err == 0 && rlen != sizeof r->st) err = EIO;
    } else if (w->op == FOS_OP_FS_CREATE) {
        /* The file must be the one its placeholder names. If it is not
         * there, nothing more may go for its number: after a restart,
         * another file may have it (fos_wire.h). */
        if (err == 0 && (rlen != sizeof r->st || r->st.ino != w->ino || !S_ISREG(r->st.mode))) err = EIO;
        if (err) {
            fos_shim_fd_poison(w->ino);
            q->dead[q->ndead++ % (sizeof q->dead / sizeof q->dead[0])] = w->ino;
        }
    } else {
        /* A short count is the disk filling up (FileSystem.write stops there). */
        if (err == 0 && (rlen != sizeof r->w || r->w.count > w->len)) err = EIO;
        if (err == 0 && r->w.count < w->len) err = ENOSPC;
    }
    if (err) fos_shim_ahead_late(q, w->ino, err);
}

int fos_shim_ahead_collect(fos_shim_ahead_q *q, fos_shim_chan *fs, int wait) {
    if (wait) {
        int err = fos_shim_ahead_flush(q, fs);
        if (err) return err;
    }
    while (q->done < q->n) {
        /* The one held back has no answer to take yet. */
        if (q->w[q->done].held) return 0;
        if (!wait && fos_ring_readable(&fs->rx) <= 0) return 0;
        const fos_shim_ahead_w *w = &q->w[q->done];
        fos_shim_ahead_reply r;
        uint32_t rlen = 0;
        int32_t status = 0;
        int err = fos_shim_chan_wait(fs, w->op, w->id, &r, sizeof r, &rlen, &status);
        if (err) return err;
        q->ok = (fs->reply_flags & FOS_MSG_AHEAD_OK) != 0;
        fos_shim_ahead_answered(q, w, status, &r, rlen);
        q->done++;
    }
    fos_shim_ahead_empty(q);
    return 0;
}

/* Whether ino's create under a lease failed (fos_shim_ahead_answered). */
static int fos_shim_ahead_ino_dead(const fos_shim_ahead_q *q, uint64_t ino) {
    for (unsigned i = 0; i < sizeof q->dead / sizeof q->dead[0] && i < q->ndead; i++) {
        if (q->dead[i] == ino) return 1;
    }
    return 0;
}

int fos_shim_ahead_replay(fos_shim_ahead_q *q, fos_shim_chan *fs, uint64_t *msg_id) {
    while (q->done < q->n) {
        const fos_shim_ahead_w *w = &q->w[q->done];
        if (fos_shim_ahead_ino_dead(q, w->ino)) {
            /* Its file was not made: the number may be another's now. */
            fos_shim_ahead_late(q, w->ino, ESTALE);
            q->done++;
            continue;
        }
        _Alignas(8) uint8_t msg[sizeof(fos_msg_hdr) + FOS_SHIM_AHEAD_FIXED_MAX];
        uint32_t mlen, blen;
        const void *bulk;
        fos_shim_ahead_msg(q, w, msg, &mlen, &bulk, &blen);
        fos_shim_ahead_reply r;
        uint32_t rlen = 0;
        int32_t status = 0;
        int err = fos_shim_chan_call(fs, w->op, ++*msg_id, msg, mlen, bulk, blen, &r, sizeof r, &rlen, &status);
        if (err) return err;
        fos_shim_ahead_answered(q, w, status, &r, rlen);
        q->done++;
    }
    fos_shim_ahead_empty(q);
    q->orphaned = 0;
    return 0;
}

void fos_shim_ahead_lost(fos_shim_ahead_q *q) {
    for (unsigned i = q->done; i < q->n; i++) fos_shim_ahead_late(q, q->w[i].ino, EIO);
    fos_shim_ahead_empty(q);
    q->orphaned = 0;
}

void fos_shim_ahead_forget(fos_shim_ahead_q *q) {
    fos_shim_ahead_empty(q);
    q->orphaned = 0;
    q->ok = 0;
    q->ndead = 0;
    q->nfresh = 0;
    for (unsigned i = 0; i < sizeof q->late / sizeof q->late[0]; i++) __atomic_store_n(&q->late[i].ino, 0, __ATOMIC_RELAXED);
}

int fos_shim_ahead_dead(const fos_shim_ahead_q *q, uint16_t op, const void *fixed, uint32_t flen) {
    if (flen < sizeof(uint64_t) || op == FOS_OP_FS_OPEN || op == FOS_OP_FS_RESOLVE || op == FOS_OP_FS_WATCH) {
        return 0;
    }
    uint64_t ino;
    memcpy(&ino, fixed, sizeof ino);
    /* FOS_SHIM_DEAD_INO: a descriptor fos_shim_fd_poison emptied. */
    return ino == FOS_SHIM_DEAD_INO || fos_shim_ahead_ino_dead(q, ino);
}

void fos_shim_ahead_late(fos_shim_ahead_q *q, uint64_t ino, int err) {
    unsigned n = sizeof q->late / sizeof q->late[0];
    for (unsigned i = 0; i < n; i++) {
        if (q->late[i].ino == ino) return; /* the first one is told */
    }
    for (unsigned i = 0; i < n; i++) {
        if (q->late[i].ino == 0) {
            q->late[i].err = err;
            __atomic_store_n(&q->late[i].ino, ino, __ATOMIC_RELAXED);
            return;
        }
    }
    /* Full (eight files failed at once): the last slot says "any file". */
    q->late[n - 1].err = err;
    __atomic_store_n(&q->late[n - 1].ino, UINT64_MAX, __ATOMIC_RELAXED);
}

int fos_shim_ahead_take_late(fos_shim_ahead_q *q, uint64_t ino) {
    for (unsigned i = 0; i < sizeof q->late / sizeof q->late[0]; i++) {
        if (q->late[i].ino != 0 && (q->late[i].ino == ino || q->late[i].ino == UINT64_MAX)) {
            int err = q->late[i].err;
            __atomic_store_n(&q->late[i].ino, 0, __ATOMIC_RELAXED);
            return err;
        }
    }
    return 0;
}
