/*
 * libfosshim.so: the fos shim, preloaded into unmodified programs by
 * fos-run (LD_PRELOAD). It has no API of its own: it exports the libc
 * file calls it redirects. This header records its contract.
 *
 * Environment (set by fos-run, read when each image starts):
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
 */
#ifndef FOS_SHIM_PUBLIC_H
#define FOS_SHIM_PUBLIC_H
#endif
