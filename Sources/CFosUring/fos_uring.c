#define _GNU_SOURCE
#include "fos_uring.h"

#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

struct fos_uring {
    struct io_uring ring;
    unsigned buffer_slots;
};

fos_uring *fos_uring_open(unsigned entries, unsigned buffer_slots, int *err) {
    fos_uring *u = calloc(1, sizeof *u);
    if (!u) {
        *err = ENOMEM;
        return NULL;
    }
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    /* One thread submits and reaps. DEFER_TASKRUN: completions are not posted
     * by interrupting the (spinning) server with task work (an IPI when the
     * device interrupt lands on another core) but when it asks; TASKRUN_FLAG
     * makes the kernel say so in the SQ ring flags, which the reap reads in
     * user space, so the server enters the kernel only when completions wait.
     * R_DISABLED: the one issuer is the thread that enables the ring
     * (fos_uring_enable, from the event loop), not the one that made it. */
    p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_TASKRUN_FLAG |
              IORING_SETUP_R_DISABLED;
    int r = io_uring_queue_init_params(entries, &u->ring, &p);
    if (r == -EINVAL) {
        /* Older kernels: plain task work, posted without a syscall. */
        memset(&p, 0, sizeof p);
        r = io_uring_queue_init_params(entries, &u->ring, &p);
    }
    if (r < 0) {
        free(u);
        *err = -r;
        return NULL;
    }
    r = io_uring_register_buffers_sparse(&u->ring, buffer_slots);
    if (r < 0) {
        io_uring_queue_exit(&u->ring);
        free(u);
        *err = -r;
        return NULL;
    }
    u->buffer_slots = buffer_slots;
    return u;
}

void fos_uring_close(fos_uring *u) {
    if (!u) return;
    io_uring_queue_exit(&u->ring);
    free(u);
}

int fos_uring_enable(fos_uring *u) {
    /* The raw register call: liburing 2.3 declares io_uring_enable_rings
     * but its shared library does not export it. */
    long r = syscall(__NR_io_uring_register, u->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    if (r < 0) r = -errno;
    return r == -EBADFD ? 0 : (int)r; /* not disabled (the fallback ring): fine */
}

int fos_uring_register_files(fos_uring *u, int direct, int cached) {
    int fds[2] = {direct, cached};
    return io_uring_register_files(&u->ring, fds, 2);
}

int fos_uring_set_buffer(fos_uring *u, unsigned slot, void *base, size_t len) {
    if (slot >= u->buffer_slots) return -EINVAL;
    struct iovec iov = {.iov_base = base, .iov_len = base ? len : 0};
    __u64 tag = 0;
    int r = io_uring_register_buffers_update_tag(&u->ring, slot, &iov, &tag, 1);
    return r < 0 ? r : 0;
}

int fos_uring_register_eventfd(fos_uring *u, int efd) { return io_uring_register_eventfd(&u->ring, efd); }

static struct io_uring_sqe *sqe_for(fos_uring *u) { return io_uring_get_sqe(&u->ring); }

static int read_fixed(fos_uring *u, int file, void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user) {
    struct io_uring_sqe *s = sqe_for(u);
    if (!s) return -EBUSY;
    io_uring_prep_read_fixed(s, file, buf, len, off, (int)buf_slot);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, user);
    return 0;
}

int fos_uring_read(fos_uring *u, void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user) {
    return read_fixed(u, 0, buf, len, off, buf_slot, user);
}

int fos_uring_read_cached(fos_uring *u, void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user) {
    return read_fixed(u, 1, buf, len, off, buf_slot, user);
}

int fos_uring_write(fos_uring *u, const void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user) {
    struct io_uring_sqe *s = sqe_for(u);
    if (!s) return -EBUSY;
    io_uring_prep_write_fixed(s, 0, buf, len, off, (int)buf_slot);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, user);
    return 0;
}

int fos_uring_flush(fos_uring *u, uint64_t user) {
    struct io_uring_sqe *s = sqe_for(u);
    if (!s) return -EBUSY;
    io_uring_prep_fsync(s, 0, IORING_FSYNC_DATASYNC);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, user);
    return 0;
}

int fos_uring_discard(fos_uring *u, uint64_t off, uint64_t len, uint64_t user) {
    struct io_uring_sqe *s = sqe_for(u);
    if (!s) return -EBUSY;
    io_uring_prep_fallocate(s, 0, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    s->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(s, user);
    return 0;
}

int fos_uring_submit(fos_uring *u) {
    for (;;) {
        /* Submits and, with deferred task running, posts what completed. */
        int r = io_uring_submit_and_get_events(&u->ring);
        if (r != -EINTR) return r;
    }
}

int fos_uring_reap(fos_uring *u, uint64_t *user, int32_t *res, int max) {
    struct io_uring_cqe *cqes[64];
    if (max > 64) max = 64;
    unsigned n = io_uring_peek_batch_cqe(&u->ring, cqes, (unsigned)max);
    for (unsigned i = 0; i < n; i++) {
        user[i] = io_uring_cqe_get_data64(cqes[i]);
        res[i] = cqes[i]->res;
    }
    io_uring_cq_advance(&u->ring, n);
    return (int)n;
}

int fos_uring_wait(fos_uring *u) {
    struct io_uring_cqe *cqe;
    for (;;) {
        int r = io_uring_wait_cqe(&u->ring, &cqe);
        if (r != -EINTR) return r;
    }
}
