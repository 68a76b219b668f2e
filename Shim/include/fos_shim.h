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
 *   FOS_ALLOW_UNREACHABLE=1  in a new program's environment: start it even
 *                if the shim cannot reach it (below)
 *
 * Exec: a program whose file, or whose "#!" interpreter (four levels, as
 * the kernel allows), is under the prefix is started by the node's spawn
 * service as the caller, with its non-close-on-exec descriptors (fos ones
 * included), cwd (virtual too), environment, signal mask, ignored signals,
 * umask and resource limits; a fos binary goes as a sealed memfd. exec
 * checks it first (the errors exec gives: ENOENT, EACCES, ENOEXEC, ELOOP,
 * E2BIG; EMFILE past 256 descriptors or one above 65535) and then execs
 * fos-exec (beside this
 * library), which stands in for the program: same pid to the parent,
 * signals passed on, a stop as SIGSTOP, kill -9 of it kills the program,
 * and it ends with the program's exit code or by its signal. posix_spawn,
 * system and popen spawn fos-exec the same way, so the pid they return is
 * a real child. The program runs in a session of its own (no job control
 * of its own, no controlling terminal).
 *
 * Programs the shim cannot reach — static (no PT_INTERP), Go (its runtime
 * makes its own system calls), another word size or machine — are refused
 * at exec with EPERM and one line on stderr naming the FUSE mount (fosctl
 * mount) when the prefix is in view of them: the cwd is under it, an
 * argument (or the part after "=" of one) names a path under it, or a fos
 * descriptor is passed on. Elsewhere they run (they see the host, as they
 * were told to). Environment variables and files a program finds by itself
 * are not looked at.
 *
 * Errors: a fos call fails with the errno the fs fleet answered; with
 * EHOSTDOWN when no node runs on FOS_RUNTIME or it has no fs fleet; with
 * EIO when a reply breaks the protocol; with EINTR when a signal handler
 * makes a fos call while its thread is inside one.
 *
 * Paths are resolved lexically ("." and ".." by name) before the fs sees
 * them. Not served yet: O_TMPFILE (EOPNOTSUPP), freopen onto a fos file,
 * fos paths in posix_spawn file actions, fexecve of a fos "#!" script
 * (ENOEXEC), raw system calls (only the programs above are detected),
 * coherent MAP_SHARED mappings between processes.
 */
#ifndef FOS_SHIM_PUBLIC_H
#define FOS_SHIM_PUBLIC_H

/* What exec fails with inside fos-exec (never elsewhere) when the shim
 * refused the program and has said why on stderr: fos-exec then ends with
 * 126 without a second line. */
#define FOS_SHIM_ERR_REFUSED 0x4f53

#endif
