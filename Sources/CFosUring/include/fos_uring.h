/*
 * io_uring (liburing) behind an opaque handle with prefixed names, so that
 * liburing's headers stay inside this target (they clash with libfuse3's when
 * two Clang modules import both).
 * Every function returns >= 0 or -errno.
 */
#ifndef FOS_URING_H
#define FOS_URING_H

#include <stddef.h>
#include <stdint.h>

typedef struct fos_uring fos_uring;

/* A ring with `entries` submission slots and a sparse table of `buffer_slots`
 * registered buffers. NULL with *err set on failure. */
fos_uring *fos_uring_open(unsigned entries, unsigned buffer_slots, int *err);
void fos_uring_close(fos_uring *u);

/* Starts the ring; the calling thread becomes the only one that may submit
 * and reap. Registrations may come before, I/O only after. */
int fos_uring_enable(fos_uring *u);

/* The file this ring does I/O on, and the same file opened without
 * O_DIRECT (registered: fixed files 0 and 1). */
int fos_uring_register_files(fos_uring *u, int direct, int cached);
/* Install (len > 0) or remove (base NULL) a registered buffer. */
int fos_uring_set_buffer(fos_uring *u, unsigned slot, void *base, size_t len);
/* Completions signal this eventfd. */
int fos_uring_register_eventfd(fos_uring *u, int efd);

/* Queue operations; -EBUSY when the submission queue is full. buf_slot is a
 * registered buffer containing [buf, buf+len). */
int fos_uring_read(fos_uring *u, void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user);
int fos_uring_write(fos_uring *u, const void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user);
/* A read of fixed file 1 (the page cache): a miss is read by the kernel
 * with the file's readahead (started while this ring submits, completed
 * asynchronously), and the pages stay cached. */
int fos_uring_read_cached(fos_uring *u, void *buf, unsigned len, uint64_t off, unsigned buf_slot, uint64_t user);
/* fdatasync of the file, ordered after nothing: issue it once the writes it
 * must cover have completed. */
int fos_uring_flush(fos_uring *u, uint64_t user);
/* Punch a hole (the blocks read back as zeros; space is freed). */
int fos_uring_discard(fos_uring *u, uint64_t off, uint64_t len, uint64_t user);

/* Submit everything queued: one syscall for the whole batch. */
int fos_uring_submit(fos_uring *u);
/* Harvest up to max completions without blocking. */
int fos_uring_reap(fos_uring *u, uint64_t *user, int32_t *res, int max);
/* Block until at least one completion is there. */
int fos_uring_wait(fos_uring *u);

#endif
