#ifndef FOS_FUSE_REF_H
#define FOS_FUSE_REF_H

// The bench's FUSE reference: a file system kept in one process's memory,
// served on one thread that spins on the device between requests (yielding,
// as fos-fuse's loop does), with fos-fuse's mount options and
// capabilities. What it reaches is the most any FUSE daemon can on this
// kernel and machine; the bench prints it beside the fos mount.

// Mounts on `mountpoint`, writes one byte to `ready_fd` (if >= 0) once the
// mount is up, and serves until SIGTERM, SIGINT or an unmount. Returns 0
// after a clean end, -1 (with a message on stderr) when it could not mount.
int fosref_fuse_serve(const char *mountpoint, int ready_fd);

#endif
