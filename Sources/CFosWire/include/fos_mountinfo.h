#ifndef FOS_MOUNTINFO_H
#define FOS_MOUNTINFO_H

/*
 * A node's FUSE mount, found in /proc/self/mountinfo and the node's record
 * of it: where fos-run and the shim send a program that cannot see /fos
 * through the shim (fos_elf.h).
 * A line reads "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] -
 * TYPE SOURCE SUPEROPTIONS"; a fos mount's type is fuse.fos and its source
 * "fos@<node in hex>" (FosMounts). Spaces and other odd bytes in the mount
 * point are escaped as \ooo.
 *
 * Raw system calls and 8 KiB of stack only: the shim calls it in the
 * child of a vfork.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* What strict C11 leaves out of the system headers (their Linux values on
 * x86_64 and aarch64). */
long syscall(long number, ...);
#define FOS_MOUNTINFO_AT_FDCWD (-100)
#define FOS_MOUNTINFO_O_CLOEXEC 02000000

/* The MOUNTPOINT field of a mountinfo line, unescaped into out; 0 if it
 * does not fit. */
static inline int fos_mountinfo_point(const char *line, char *out, size_t cap) {
    const char *p = line;
    for (int f = 0; f < 4; f++) {
        p = strchr(p, ' ');
        if (p == NULL) return 0;
        p++;
    }
    size_t o = 0;
    while (*p != '\0' && *p != ' ') {
        char c = *p++;
        if (c == '\\' && p[0] >= '0' && p[0] <= '3' && p[1] >= '0' && p[1] <= '7' && p[2] >= '0' && p[2] <= '7') {
            c = (char)((p[0] - '0') * 64 + (p[1] - '0') * 8 + (p[2] - '0'));
            p += 3;
        }
        if (o + 1 >= cap) return 0;
        out[o++] = c;
    }
    out[o] = '\0';
    return o > 0;
}

/* The mount point of the last fos mount of the node whose runtime
 * directory is `runtime`, into out: a fuse.fos mount that the directory
 * holds a record of (FosMounts: <runtime>/mounts/<the mount point's bytes
 * in hex, at most 240 digits>.mount). 0 if there is none (or its mount
 * point does not fit). errno is kept. */
static inline int fos_mountinfo_fos_mount(const char *runtime, char *out, size_t cap) {
    int saved = errno, found = 0, skipping = 0;
    int fd = (int)syscall(SYS_openat, FOS_MOUNTINFO_AT_FDCWD, "/proc/self/mountinfo",
                          O_RDONLY | FOS_MOUNTINFO_O_CLOEXEC);
    if (fd < 0) {
        errno = saved;
        return 0;
    }
    /* Longer lines (mount points over a kilobyte or so) are passed over. */
    char buf[1024], line[1536], mp[1024], rec[4096 + 256];
    size_t len = 0, rlen = strlen(runtime);
    for (;;) {
        long n = syscall(SYS_read, fd, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        for (long i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (len + 1 < sizeof line) {
                    line[len++] = buf[i];
                } else {
                    skipping = 1;
                }
                continue;
            }
            line[len] = '\0';
            len = 0;
            if (skipping) {
                skipping = 0;
                continue;
            }
            if (strstr(line, " - fuse.fos fos@") == NULL || !fos_mountinfo_point(line, mp, sizeof mp)) continue;
            size_t mlen = strlen(mp), k = 0;
            if (rlen + 8 + 240 + 7 > sizeof rec || mlen + 1 > cap) continue;
            memcpy(rec, runtime, rlen);
            memcpy(rec + rlen, "/mounts/", 8);
            k = rlen + 8;
            for (size_t j = 0; j < mlen && j < 120; j++) {
                rec[k++] = "0123456789abcdef"[(unsigned char)mp[j] >> 4];
                rec[k++] = "0123456789abcdef"[(unsigned char)mp[j] & 15];
            }
            memcpy(rec + k, ".mount", 7);
            if (syscall(SYS_faccessat, FOS_MOUNTINFO_AT_FDCWD, rec, 0 /* F_OK */, 0) == 0) {
                memcpy(out, mp, mlen + 1);
                found = 1;
            }
        }
    }
    syscall(SYS_close, fd);
    errno = saved;
    return found;
}

#endif
