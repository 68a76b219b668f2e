/*
 * Syscall edges that Swift cannot express cleanly: ancillary data
 * (SCM_RIGHTS, SO_PEERCRED), packed epoll events, signal sets, and a
 * fork+exec that pins and arms a parent-death signal in the child.
 * Every function returns a non-negative result or -errno, and retries EINTR
 * where retrying is right.
 */
#ifndef FOS_SYS_H
#define FOS_SYS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define FOS_SYS_MAX_FDS 8

/* O_DIRECT, which Swift does not import (its value differs per architecture). */
int fos_sys_o_direct(void);

/* epoll event bits, importable by Swift */
enum { FOS_EPOLLIN = 0x001, FOS_EPOLLOUT = 0x004, FOS_EPOLLERR = 0x008, FOS_EPOLLHUP = 0x010 };

/* Send one datagram with up to FOS_SYS_MAX_FDS descriptors. */
ssize_t fos_sys_send(int sock, const void *buf, size_t len, const int *fds, int nfds);
/* Receive one datagram; descriptors land in fds (close-on-exec), *nfds set.
 * A truncated datagram or truncated ancillary data is -EMSGSIZE, with every
 * received descriptor closed. Returns 0 at end of stream. */
ssize_t fos_sys_recv(int sock, void *buf, size_t cap, int *fds, int maxfds, int *nfds, int dontwait);

/* accept4 with close-on-exec and non-blocking; -EAGAIN when none waits. */
int fos_sys_accept(int listen_fd);

int fos_sys_peercred(int sock, int32_t *pid, uint32_t *uid, uint32_t *gid);

int fos_sys_epoll_create(void);
int fos_sys_epoll_add(int ep, int fd, uint32_t events, uint64_t data);
int fos_sys_epoll_mod(int ep, int fd, uint32_t events, uint64_t data);
int fos_sys_epoll_del(int ep, int fd);
/* Up to max events into data/events; timeout in ms (-1 forever). EINTR -> 0. */
int fos_sys_epoll_wait(int ep, uint64_t *data, uint32_t *events, int max, int timeout_ms);

int fos_sys_memfd(const char *name);
/* Seal a memfd's size for good (shrink, grow, and further sealing): a process
 * holding it can then never make the other side's mapping fault. */
int fos_sys_seal_size(int fd);
/* Seal a memfd against further sealing only (it stays writable and resizable). */
int fos_sys_seal_seals(int fd);
/* 0 if fd is a memfd whose size is sealed against shrinking, else -EPERM. */
int fos_sys_check_sealed(int fd);
int fos_sys_eventfd(void);
int fos_sys_eventfd_signal(int fd);
int fos_sys_eventfd_drain(int fd);

/* Block the given signals in the calling thread (call before threads start,
 * so every thread inherits the mask) and return a signalfd for them. */
int fos_sys_signalfd(const int *signals, int n);
/* Read one signal from a signalfd: signo, 0 if none pending, or -errno. */
int fos_sys_signalfd_read(int fd);

int fos_sys_pidfd_open(pid_t pid);
int fos_sys_pidfd_kill(int pidfd, int sig);

/* fork+exec: in the child, descriptors keep[i] are moved to 3+i and every
 * other descriptor above 2 is closed on exec; the signal mask is cleared;
 * the child gets SIGKILL when the calling thread dies; it is pinned to `cpu`
 * unless cpu < 0; it gets its own process group. Returns the pid and stores a
 * pidfd in *pidfd. */
pid_t fos_sys_spawn(const char *path, char *const argv[], char *const envp[], int cpu,
                    const int *keep, int nkeep, int *pidfd);

/* posix_spawn_file_actions_addclosefrom_np (glibc 2.34; not visible to
 * Swift): the child closes every descriptor from `from` on. 0 or an errno. */
#include <spawn.h>
int fos_sys_spawn_actions_closefrom(posix_spawn_file_actions_t *actions, int from);

/* fork with a close-on-exec pipe for the child's exec error: pid (0 in the
 * child) or -errno. */
pid_t fos_sys_fork_reporting(int errpipe[2]);
/* In a fresh child: empty signal mask, default dispositions. */
void fos_sys_child_clean_signals(void);
/* The parent's half of a fork+exec: the exec error the child wrote to
 * `errfd` (closed here) as -errno, else the pid with *pidfd set. */
pid_t fos_sys_spawn_collect(pid_t pid, int errfd, int *pidfd);

/* For the spawn fleet (fos_spawn.c). */
#define FOS_SYS_MAX_SPAWN_FDS 256
#define FOS_SYS_SPAWN_FD_LIMIT 65536
#define FOS_SYS_MAX_GROUPS 64
struct fos_sys_identity {
    uint32_t uid;
    uint32_t gid;
    int ngroups;
    uint32_t groups[FOS_SYS_MAX_GROUPS];
};
/* What exec would carry over that a fresh child lacks (fos_sys_spawn_as). */
struct fos_sys_spawn_extra {
    int exec_fd;       /* >= 0: exec this descriptor (execveat AT_EMPTY_PATH) instead of path */
    uint64_t sigmask;  /* blocked signals, bit n-1 for signal n */
    uint64_t sigign;   /* ignored signals */
    int umask;         /* >= 0: the child's umask */
    pid_t limits_from; /* > 0: the child gets this process's resource limits */
};
/* A copy of descriptor `fd` of the process behind `pidfd` (pidfd_getfd). */
int fos_sys_pidfd_getfd(int pidfd, int fd);
/* fork+exec as `id` (NULL: as the caller): own session, descriptors src[i]
 * at dst[i] (0..2 not given: /dev/null), all others closed, cwd, clean
 * signals (or those of `extra`), pinned to `cpu` unless < 0. Returns the
 * pid, *pidfd, or -errno (also exec and chdir failures). */
pid_t fos_sys_spawn_as(const char *path, char *const argv[], char *const envp[], const char *cwd,
                       const struct fos_sys_identity *id, const int *src, const int *dst, int nfds,
                       int cpu, const struct fos_sys_spawn_extra *extra, int *pidfd);
/* Reaps the process of a pidfd if it ended: 1 (and *code, *signaled), 0 if
 * it still runs, or -errno. */
int fos_sys_pidfd_wait(int pidfd, int *code, int *signaled);

int fos_sys_pin_self(int cpu);
int fos_sys_current_cpu(void);
int fos_sys_cpu_count(void);
/* The (k mod count)-th CPU this process may run on (its affinity mask). */
int fos_sys_nth_allowed_cpu(int k);
/* Raise the soft RLIMIT_NOFILE to the hard limit; returns the new limit. */
long fos_sys_raise_nofile(void);
int fos_sys_random(void *buf, size_t len);

/* wait(2) for a pid: exit status as in waitpid, or -errno. */
int fos_sys_reap(pid_t pid, int nohang);

void *fos_sys_map_shared(int fd, size_t len, int writable);
int fos_sys_unmap(void *addr, size_t len);

/* Constant-time comparison of capability keys. */
int fos_sys_key_equal(const uint8_t *a, const uint8_t *b, size_t len);

/* Lock a file exclusively without blocking: 0, -EWOULDBLOCK, or -errno. */
int fos_sys_flock_exclusive(int fd);

uint64_t fos_sys_now_ns(void);

/* Size in bytes of a block device (BLKGETSIZE64). */
int fos_sys_blockdev_bytes(int fd, uint64_t *bytes);
/* Names the calling thread (at most 15 bytes are kept), for ps and gdb. */
void fos_sys_name_thread(const char *name);

/* Keeps freed heap memory for reuse instead of returning it to the kernel
 * (malloc trim and mmap thresholds): a server that allocates and frees
 * message-sized buffers at a high rate otherwise takes page faults and
 * zeroes fresh pages for every one. */
void fos_sys_keep_heap(void);

/* pread of a range the page cache holds whole (cachestat, then preadv2
 * RWF_NOWAIT), never waiting for or starting device I/O: the bytes read
 * (fewer than n if pages went meanwhile), -EAGAIN if the range is not all
 * cached, or -errno (-ENOSYS: no cachestat in this kernel). */
ssize_t fos_sys_pread_cached(int fd, void *buf, size_t n, uint64_t off);

/* The f_type of the file system fd is on (fstatfs), or -errno. */
int64_t fos_sys_fs_type(int fd);

/* fallocate(fd, FALLOC_FL_KEEP_SIZE, off, len), retried on EINTR: 0 or -errno. */
int fos_sys_allocate(int fd, uint64_t off, uint64_t len);

#endif
