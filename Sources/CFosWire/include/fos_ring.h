/*
 * Single-producer single-consumer byte ring in shared memory.
 *
 * A channel (memfd made by fosd) holds one fos_chan_shm followed by two rings
 * of equal capacity: requests (client -> server) and replies (server -> client).
 * Each side keeps its own position in private memory (struct fos_ring) and
 * only publishes it; the other side's published index is read, never trusted:
 * a value that would put more than `cap` bytes in flight marks the peer as
 * corrupt (-EPROTO) and the caller drops the channel.
 *
 * Records are [u32 length][u32 length ^ FOS_RING_CHECK][bytes, padded to 8].
 * A record becomes visible only when the producer stores the new tail, so a
 * sender that dies mid-message leaves nothing half-written behind. The
 * consumer copies a record out before anyone looks at it, so bytes changed
 * after publication cannot change what was validated.
 *
 * Wake-ups: the consumer sets consumer_sleeping, issues a full fence and
 * re-checks the tail before it blocks; the producer stores the tail, issues a
 * full fence and reads consumer_sleeping. One of the two always sees the
 * other (Dekker), so no wake-up is lost. Same for producer_waiting on a full
 * ring. The flags live in the channel of one sender only, so a hostile sender
 * can waste the receiver's time but cannot hide another sender's messages.
 *
 * Plain C11 with GCC atomic builtins on plain integers, so that Swift can
 * import the layout and the shim can use it before main.
 */
#ifndef FOS_RING_H
#define FOS_RING_H

#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "fos_wire.h"

#define FOS_CACHELINE 64u
#define FOS_CHAN_MAGIC 0x666f7363u /* "focs" */
#define FOS_RING_CHECK 0x5a5a5a5au
#define FOS_RING_RECORD_HDR 8u
#define FOS_RING_MAX_RECORD (FOS_MAX_PAYLOAD + (uint32_t)sizeof(fos_msg_hdr))
#define FOS_RING_MIN_BYTES (4u * 65536u)
#define FOS_RING_MAX_BYTES (64u * 1024u * 1024u)

typedef struct fos_ring_ctl {
    uint64_t tail; /* written by the producer */
    uint8_t pad0[FOS_CACHELINE - 8];
    uint64_t head; /* written by the consumer */
    uint8_t pad1[FOS_CACHELINE - 8];
    uint32_t consumer_sleeping; /* written by the consumer */
    uint32_t consumer_yielding; /* written by the consumer: it waits on the producer's core, yielding it */
    uint8_t pad2[FOS_CACHELINE - 8];
    uint32_t producer_waiting; /* written by the producer */
    uint8_t pad3[FOS_CACHELINE - 4];
} fos_ring_ctl;

typedef struct fos_chan_shm {
    uint32_t magic;
    uint32_t version;
    uint32_t ring_bytes;
    uint8_t pad[FOS_CACHELINE - 12];
    fos_ring_ctl req; /* client -> server */
    fos_ring_ctl rep; /* server -> client */
} fos_chan_shm;

_Static_assert(sizeof(fos_ring_ctl) == 4 * FOS_CACHELINE, "ring ctl layout");
_Static_assert(sizeof(fos_chan_shm) == 9 * FOS_CACHELINE, "chan shm layout");

/* Size of the memfd for a channel whose rings hold ring_bytes each. */
static inline uint64_t fos_chan_size(uint32_t ring_bytes) {
    return 4096u + 2u * (uint64_t)ring_bytes;
}
static inline uint8_t *fos_chan_req_data(void *base) { return (uint8_t *)base + 4096u; }
static inline uint8_t *fos_chan_rep_data(void *base, uint32_t ring_bytes) {
    return (uint8_t *)base + 4096u + ring_bytes;
}
/* Ring capacity must be a power of two between the bounds. */
static inline int fos_ring_bytes_valid(uint32_t ring_bytes) {
    return ring_bytes >= FOS_RING_MIN_BYTES && ring_bytes <= FOS_RING_MAX_BYTES &&
           (ring_bytes & (ring_bytes - 1u)) == 0;
}

/* Private view of one ring, one per side. */
typedef struct fos_ring {
    fos_ring_ctl *ctl;
    uint8_t *data;
    uint64_t cap;
    uint64_t pos;       /* producer: own tail; consumer: own head */
    uint64_t other;     /* last value read of the other side's index */
    uint64_t published; /* consumer: head last published */
} fos_ring;

static inline void fos_ring_init(fos_ring *r, fos_ring_ctl *ctl, uint8_t *data, uint32_t cap) {
    r->ctl = ctl;
    r->data = data;
    r->cap = cap;
    r->pos = 0;
    r->other = 0;
    r->published = 0;
}

static inline uint64_t fos_ring_align8(uint64_t n) { return (n + 7u) & ~(uint64_t)7u; }

static inline void fos_ring_copy_in(fos_ring *r, uint64_t at, const void *src, uint64_t n) {
    uint64_t off = at & (r->cap - 1u);
    uint64_t first = r->cap - off;
    if (first >= n) {
        memcpy(r->data + off, src, n);
    } else {
        memcpy(r->data + off, src, first);
        memcpy(r->data, (const uint8_t *)src + first, n - first);
    }
}

static inline void fos_ring_copy_out(const fos_ring *r, uint64_t at, void *dst, uint64_t n) {
    uint64_t off = at & (r->cap - 1u);
    uint64_t first = r->cap - off;
    if (first >= n) {
        memcpy(dst, r->data + off, n);
    } else {
        memcpy(dst, r->data + off, first);
        memcpy((uint8_t *)dst + first, r->data, n - first);
    }
}

/* Producer: append one record made of two pieces (header, payload).
 * 0, -EAGAIN (full: wait and retry), -EMSGSIZE, -EPROTO (consumer corrupt). */
static inline int fos_ring_write2(fos_ring *r, const void *a, uint32_t alen, const void *b,
                                  uint32_t blen) {
    uint64_t len = (uint64_t)alen + blen;
    if (len == 0 || len > FOS_RING_MAX_RECORD) return -EMSGSIZE;
    uint64_t need = FOS_RING_RECORD_HDR + fos_ring_align8(len);
    if (r->pos - r->other + need > r->cap) {
        uint64_t head = __atomic_load_n(&r->ctl->head, __ATOMIC_ACQUIRE);
        if (head - r->other > r->pos - r->other) return -EPROTO; /* head ran past tail */
        r->other = head;
        if (r->pos - head + need > r->cap) return -EAGAIN;
    }
    uint32_t rec[2] = {(uint32_t)len, (uint32_t)len ^ FOS_RING_CHECK};
    fos_ring_copy_in(r, r->pos, rec, sizeof rec);
    if (alen) fos_ring_copy_in(r, r->pos + FOS_RING_RECORD_HDR, a, alen);
    if (blen) fos_ring_copy_in(r, r->pos + FOS_RING_RECORD_HDR + alen, b, blen);
    r->pos += need;
    __atomic_store_n(&r->ctl->tail, r->pos, __ATOMIC_RELEASE);
    return 0;
}

/* Producer: after writing, does the consumer need a wake-up? */
static inline int fos_ring_consumer_asleep(fos_ring *r) {
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&r->ctl->consumer_sleeping, __ATOMIC_RELAXED) != 0;
}

/* Producer: after writing, is the consumer waiting on our core for us to
 * give it up (then sched_yield: it cannot run while we spin)? */
static inline int fos_ring_consumer_yielding(fos_ring *r) {
    return __atomic_load_n(&r->ctl->consumer_yielding, __ATOMIC_RELAXED) != 0;
}

/* Consumer: announce (1) or end (0) waiting on the producer's core. */
static inline void fos_ring_set_yielding(fos_ring *r, uint32_t on) {
    __atomic_store_n(&r->ctl->consumer_yielding, on, __ATOMIC_RELAXED);
}

/* Consumer, from its ring's shared control block alone: has the producer
 * published past what the consumer released? A hint: the producer can write
 * head too, so a consumer must also look with fos_ring_readable now and then. */
static inline int fos_ring_ctl_pending(const fos_ring_ctl *c) {
    return __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE) != __atomic_load_n(&c->head, __ATOMIC_RELAXED);
}

/* Consumer: is a record available? 1, 0, or -EPROTO. */
static inline int fos_ring_readable(fos_ring *r) {
    if (r->other != r->pos) return 1;
    uint64_t tail = __atomic_load_n(&r->ctl->tail, __ATOMIC_ACQUIRE);
    if (tail - r->pos > r->cap) return -EPROTO;
    r->other = tail;
    return tail != r->pos;
}

/* Consumer: the length of the next record (> 0), 0 if none, -EPROTO for a
 * corrupt ring. */
static inline int64_t fos_ring_next(fos_ring *r) {
    int ready = fos_ring_readable(r);
    if (ready <= 0) return ready;
    uint64_t avail = r->other - r->pos;
    if (avail < FOS_RING_RECORD_HDR) return -EPROTO;
    uint32_t rec[2];
    fos_ring_copy_out(r, r->pos, rec, sizeof rec);
    uint32_t len = rec[0];
    if ((rec[1] ^ FOS_RING_CHECK) != len || len == 0 || len > FOS_RING_MAX_RECORD)
        return -EPROTO;
    if (FOS_RING_RECORD_HDR + fos_ring_align8(len) > avail) return -EPROTO;
    return (int64_t)len;
}

/* Consumer: copy the next record into out (capacity outcap).
 * Returns its length (> 0), 0 if empty, -EPROTO for a corrupt ring.
 * The slot is freed for the producer at the next fos_ring_release. */
static inline int64_t fos_ring_read(fos_ring *r, void *out, uint32_t outcap) {
    int64_t len = fos_ring_next(r);
    if (len <= 0) return len;
    if ((uint64_t)len > outcap) return -EPROTO;
    fos_ring_copy_out(r, r->pos + FOS_RING_RECORD_HDR, out, (uint32_t)len);
    r->pos += FOS_RING_RECORD_HDR + fos_ring_align8((uint32_t)len);
    return len;
}

/* Consumer: copy the first n bytes of the next record into out without
 * taking it. Returns n, 0 if no record or a shorter one, -EPROTO for a
 * corrupt ring. */
static inline int64_t fos_ring_peek(fos_ring *r, void *out, uint32_t n) {
    int64_t len = fos_ring_next(r);
    if (len <= 0) return len;
    if ((uint64_t)len < n) return 0;
    fos_ring_copy_out(r, r->pos + FOS_RING_RECORD_HDR, out, n);
    return (int64_t)n;
}

/* Consumer: publish the head. Returns 1 if the producer waits for space and
 * should be woken. */
static inline int fos_ring_release(fos_ring *r) {
    if (r->published == r->pos) return 0;
    r->published = r->pos;
    __atomic_store_n(&r->ctl->head, r->pos, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return __atomic_load_n(&r->ctl->producer_waiting, __ATOMIC_RELAXED) != 0;
}

/* Consumer: announce sleep; returns 1 if data arrived meanwhile (do not sleep). */
static inline int fos_ring_prepare_sleep(fos_ring *r) {
    __atomic_store_n(&r->ctl->consumer_sleeping, 1u, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return fos_ring_readable(r) != 0;
}
static inline void fos_ring_wake_done(fos_ring *r) {
    __atomic_store_n(&r->ctl->consumer_sleeping, 0u, __ATOMIC_RELAXED);
}

/* Producer: announce waiting for space; returns 1 if space appeared. */
static inline int fos_ring_prepare_wait_space(fos_ring *r, uint32_t len) {
    __atomic_store_n(&r->ctl->producer_waiting, 1u, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t head = __atomic_load_n(&r->ctl->head, __ATOMIC_ACQUIRE);
    uint64_t need = FOS_RING_RECORD_HDR + fos_ring_align8(len);
    return r->pos - head + need <= r->cap || head - r->other > r->pos - r->other;
}
static inline void fos_ring_space_done(fos_ring *r) {
    __atomic_store_n(&r->ctl->producer_waiting, 0u, __ATOMIC_RELAXED);
}

/* Bytes queued and not yet consumed, as seen by the consumer. */
static inline uint64_t fos_ring_backlog(fos_ring *r) {
    (void)fos_ring_readable(r);
    return r->other - r->pos;
}

/* Spin hint for busy-wait loops. */
static inline void fos_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
