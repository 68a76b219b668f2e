/*
 * Which programs the shim can reach, decided from their ELF headers before
 * they run. Shared by the shim (exec of a program from a shimmed process)
 * and fos-run (the program it starts), so both apply one rule.
 *
 * The shim reaches a program only through the dynamic loader (LD_PRELOAD)
 * and only where the program calls libc. A static binary has no loader; a
 * Go program's runtime makes its own system calls, with or without cgo
 * (the Go linker puts a "Go" build-id note in a PT_NOTE segment); a
 * program of another class or machine cannot load this shim at all (the
 * loader skips it with a warning).
 */
#ifndef FOS_ELF_H
#define FOS_ELF_H

#include <elf.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum {
    FOS_ELF_OTHER = 0,   /* not an ELF file of ours to judge (a script, another format) */
    FOS_ELF_DYNAMIC = 1, /* loaded by the dynamic loader: sees the shim */
    FOS_ELF_STATIC = 2,  /* no PT_INTERP */
    FOS_ELF_GO = 3,      /* the Go runtime: raw system calls */
    FOS_ELF_FOREIGN = 4, /* another word size or machine than the shim's */
};

/* Reads n bytes at off into buf: the count read (short at end of file) or < 0. */
typedef long (*fos_elf_read_fn)(void *ctx, void *buf, size_t n, uint64_t off);

#if defined(__x86_64__)
#define FOS_ELF_MACHINE EM_X86_64
#elif defined(__aarch64__)
#define FOS_ELF_MACHINE EM_AARCH64
#else
#define FOS_ELF_MACHINE 0 /* unknown here: machines are not compared */
#endif

#define FOS_ELF_MAX_PHDRS 64
#define FOS_ELF_NOTE_BYTES 4096

/* Does a PT_NOTE segment hold the Go build id (owner "Go", type 4)? The
 * Go linker pads the owner to 4 bytes and counts the padding (namesz 4). */
static inline int fos_elf_go_note(const uint8_t *b, size_t n, size_t align) {
    size_t at = 0;
    while (n - at >= 12) {
        uint32_t w[3];
        memcpy(w, b + at, sizeof w);
        size_t name = at + 12;
        size_t desc = name + ((w[0] + align - 1) & ~(align - 1));
        size_t next = desc + ((w[1] + align - 1) & ~(align - 1));
        if (w[0] > n || w[1] > n || desc > n || next > n || next <= at) return 0;
        if ((w[0] == 3 || w[0] == 4) && w[2] == 4 && memcmp(b + name, "Go", 3) == 0) return 1;
        at = next;
    }
    return 0;
}

static inline int fos_elf_kind(fos_elf_read_fn rd, void *ctx) {
    Elf64_Ehdr h;
    if (rd(ctx, &h, sizeof h, 0) != (long)sizeof h || memcmp(h.e_ident, ELFMAG, SELFMAG) != 0) return FOS_ELF_OTHER;
    if (h.e_type != ET_EXEC && h.e_type != ET_DYN) return FOS_ELF_OTHER;
    if (h.e_ident[EI_CLASS] != ELFCLASS64 || h.e_ident[EI_DATA] != ELFDATA2LSB) return FOS_ELF_FOREIGN;
    if (FOS_ELF_MACHINE != 0 && h.e_machine != FOS_ELF_MACHINE) return FOS_ELF_FOREIGN;
    if (h.e_phentsize != sizeof(Elf64_Phdr)) return FOS_ELF_OTHER;
    int interp = 0;
    for (unsigned i = 0; i < h.e_phnum && i < FOS_ELF_MAX_PHDRS; i++) {
        Elf64_Phdr p;
        if (rd(ctx, &p, sizeof p, h.e_phoff + (uint64_t)i * sizeof p) != (long)sizeof p) return FOS_ELF_OTHER;
        if (p.p_type == PT_INTERP) interp = 1;
        if (p.p_type != PT_NOTE) continue;
        uint8_t notes[FOS_ELF_NOTE_BYTES];
        size_t want = p.p_filesz < sizeof notes ? (size_t)p.p_filesz : sizeof notes;
        long got = rd(ctx, notes, want, p.p_offset);
        if (got > 0 && fos_elf_go_note(notes, (size_t)got, p.p_align == 8 ? 8 : 4)) return FOS_ELF_GO;
    }
    return interp ? FOS_ELF_DYNAMIC : FOS_ELF_STATIC;
}

/* What a refusal says about a program of that kind. */
static inline const char *fos_elf_why(int kind) {
    switch (kind) {
    case FOS_ELF_STATIC: return "is statically linked";
    case FOS_ELF_GO: return "is a Go program (it makes its own system calls)";
    case FOS_ELF_FOREIGN: return "is built for another word size or machine";
    default: return "cannot load the shim";
    }
}

#endif
