/*
 * fos-exec: the stand-in for a program the kernel cannot exec (stored under
 * the fos prefix). The shim never runs a fos program in the caller's image:
 * it checks what it can, then execs this (so the kernel does what exec
 * does: other threads end, close-on-exec descriptors close, the caller's
 * memory goes) as `fos-exec PATH ARGV0 ARGS...`. Here, with the shim
 * preloaded, exec of PATH goes to the node's spawn service, and this
 * process stays as the program's stand-in: same pid to its parent,
 * signals forwarded, exit status passed on (Shim/src/w_spawn.c). It only
 * returns if that failed. fos-run starts it the same way for a program
 * under the prefix, by path or by a name PATH may find there (execvp).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "fos_shim.h"

extern char **environ;

int main(int argc, char **argv) {
    if (argc < 3) {
        fputs("fos-exec: started by the fos shim only (fos-exec PATH ARGV0 ARGS...)\n", stderr);
        return 127;
    }
    if (strchr(argv[1], '/')) execve(argv[1], argv + 2, environ);
    else execvp(argv[1], argv + 2);
    int e = errno;
    if (e == FOS_SHIM_ERR_REFUSED) return 126;
    fprintf(stderr, "fos: %s: %s\n", argv[1], strerror(e));
    return e == ENOENT ? 127 : 126;
}
