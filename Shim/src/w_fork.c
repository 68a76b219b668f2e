/*
 * Children that run without our fork handler: a child of vfork shares the
 * parent's memory under another pid, and one of clone or _Fork has a copy
 * of it that no pthread_atfork handler updated. fos_shim_in_vfork_child
 * tells them apart by asking the kernel for the pid, which the shim did
 * some ten times per file tar extracted. Until a process calls one of
 * these, no such child can exist, so it need not ask: these wrappers note
 * the first call, and only then do the checks call getpid.
 *
 * vfork's child returns through its caller's frame, so its wrapper may
 * not have one: it stores the mark and jumps to libc's __vfork. On an
 * architecture without that code the mark is set from the start.
 *
 * Each also first sends the request held back (ahead.c, w_tell.c): the
 * child may look at the file. A child made by a raw clone system call
 * (not through libc) is not told apart: like any program that makes its own system calls, it is outside
 * what the shim can see.
 */
#include "shim.h"

#include <sched.h>
#include <stdarg.h>

#if defined(__x86_64__)
int fos_shim_raw_children;
__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork, @function\n"
        "vfork:\n"
        "    endbr64\n"
        "    movl $1, fos_shim_raw_children(%rip)\n"
        "    cmpl $0, fos_shim_ahead_held(%rip)\n"
        "    je 1f\n"
        "    subq $8, %rsp\n"
        "    call fos_shim_fs_flush@PLT\n"
        "    addq $8, %rsp\n"
        "1:  jmp __vfork@PLT\n"
        ".size vfork, .-vfork\n");
#elif defined(__aarch64__)
int fos_shim_raw_children;
__asm__(".text\n"
        ".globl vfork\n"
        ".type vfork, %function\n"
        "vfork:\n"
        "    hint 34\n" /* bti c */
        "    adrp x16, fos_shim_raw_children\n"
        "    mov w17, #1\n"
        "    str w17, [x16, :lo12:fos_shim_raw_children]\n"
        "    adrp x16, fos_shim_ahead_held\n"
        "    ldr w17, [x16, :lo12:fos_shim_ahead_held]\n"
        "    cbz w17, 1f\n"
        "    stp x29, x30, [sp, #-16]!\n"
        "    bl fos_shim_fs_flush\n"
        "    ldp x29, x30, [sp], #16\n"
        "1:  b __vfork\n"
        ".size vfork, .-vfork\n");
#else
int fos_shim_raw_children = 1;
#endif

FOS_SHIM_EXPORT int clone(int (*fn)(void *), void *stack, int flags, void *arg, ...) {
    /* The optional arguments are read only for the flags that name them. */
    va_list ap;
    va_start(ap, arg);
    pid_t *ptid = va_arg(ap, pid_t *);
    void *tls = va_arg(ap, void *);
    pid_t *ctid = va_arg(ap, pid_t *);
    va_end(ap);
    __atomic_store_n(&fos_shim_raw_children, 1, __ATOMIC_SEQ_CST);
    FOS_SHIM_FLUSH_HELD(); /* the child may look (w_tell.c) */
    return FOS_REAL(clone)(fn, stack, flags, arg, ptid, tls, ctid);
}

FOS_SHIM_EXPORT pid_t _Fork(void) {
    __atomic_store_n(&fos_shim_raw_children, 1, __ATOMIC_SEQ_CST);
    FOS_SHIM_FLUSH_HELD(); /* the child may look (w_tell.c) */
    return FOS_REAL(_Fork)();
}
