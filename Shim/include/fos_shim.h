/*
 * libfosshim.so: the fos shim, preloaded into unmodified programs by
 * fos-run (LD_PRELOAD). It has no API of its own: it exports the libc
 * calls it redirects. This header records its contract.
 *
 * Environment (set by fos-run, read when each image starts; exec and
 * posix_spawn put them back if a program drops them):
 *   FOS_PREFIX   where the fos file system appears (default /fos)
 *   FOS_RUNTIME  the node's runtime directory (default as libfos:
 *                $XDG_RUNTIME_DIR/fos, /run/fos for root, /tmp/fos-<uid>)
 *   FOS_CWD      a cwd inside the fos tree (virtual: the kernel's cwd is
 *                left alone); kept up to date by chdir, so exec carries it
 *   FOS_SPIN_US  how long a call spins for its reply before it sleeps (50)
 *
 * Errors: a fos call fails with the errno the fs fleet answered; with
 * EHOSTDOWN when no node runs on FOS_RUNTIME or it has no fs fleet; with
 * EIO when a reply breaks the protocol; with EINTR when a signal handler
 * makes a fos call while its thread is inside one.
 *
 * Paths are resolved lexically ("." and ".." by name) before the fs sees
 * them. Not served yet: exec of a program stored under the prefix
 * (ENOEXEC), O_TMPFILE (EOPNOTSUPP), freopen onto a fos file, fos paths in
 * posix_spawn file actions, raw system calls and static binaries (they see
 * the host only), coherent MAP_SHARED mappings between processes.
 */
#ifndef FOS_SHIM_PUBLIC_H
#define FOS_SHIM_PUBLIC_H
#endif
