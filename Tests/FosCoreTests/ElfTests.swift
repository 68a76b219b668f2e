import CFosWire
import Foundation
import Testing

/// fos_elf.h: which programs the shim can reach, judged from their headers
/// (the shim and fos-run refuse the others when /fos is in view).
@Suite("ELF kinds")
struct ElfTests {
    /// fos_elf_kind of an in-memory file.
    static func kind(_ bytes: [UInt8]) -> Int32 {
        var file = bytes
        return file.withUnsafeMutableBytes { b in
            var span = (b.baseAddress!, b.count)
            return withUnsafeMutablePointer(to: &span) { ctx in
                fos_elf_kind({ ctx, buf, n, off in
                    let (base, count) = ctx!.load(as: (UnsafeMutableRawPointer, Int).self)
                    guard off < UInt64(count) else { return 0 }
                    let k = min(n, count - Int(off))
                    buf!.copyMemory(from: base + Int(off), byteCount: k)
                    return k
                }, ctx)
            }
        }
    }

    /// An ELF header (64 bytes) and program headers of the given types.
    static func elf(class c: UInt8 = 2, machine: UInt16 = UInt16(FOS_ELF_MACHINE), phdrs: [Int32],
                    notes: [UInt8] = []) -> [UInt8] {
        var b = [UInt8](repeating: 0, count: 64 + 56 * phdrs.count)
        b[0..<4] = [0x7f, 0x45, 0x4c, 0x46]
        b[4] = c
        b[5] = 1
        b.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt16(ET_DYN), toByteOffset: 16, as: UInt16.self)
            p.storeBytes(of: machine, toByteOffset: 18, as: UInt16.self)
            p.storeBytes(of: UInt64(64), toByteOffset: 32, as: UInt64.self)
            p.storeBytes(of: UInt16(56), toByteOffset: 54, as: UInt16.self)
            p.storeBytes(of: UInt16(phdrs.count), toByteOffset: 56, as: UInt16.self)
            for (i, t) in phdrs.enumerated() {
                let at = 64 + 56 * i
                p.storeBytes(of: UInt32(t), toByteOffset: at, as: UInt32.self)
                p.storeBytes(of: UInt64(64 + 56 * phdrs.count), toByteOffset: at + 8, as: UInt64.self) // p_offset
                p.storeBytes(of: UInt64(notes.count), toByteOffset: at + 32, as: UInt64.self)        // p_filesz
                p.storeBytes(of: UInt64(4), toByteOffset: at + 48, as: UInt64.self)                  // p_align
            }
        }
        return b + notes
    }

    /// A Go build-id note as the Go linker writes it: owner "Go\0\0", namesz 4.
    static let goNote: [UInt8] = [4, 0, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0] + Array("Go\0\0".utf8) + Array("abcd".utf8)

    @Test func kinds() {
        #expect(Self.kind(Self.elf(phdrs: [PT_INTERP, PT_LOAD])) == FOS_ELF_DYNAMIC)
        #expect(Self.kind(Self.elf(phdrs: [PT_LOAD])) == FOS_ELF_STATIC)
        #expect(Self.kind(Self.elf(phdrs: [PT_LOAD, PT_NOTE], notes: Self.goNote)) == FOS_ELF_GO)
        // cgo: dynamically linked, still Go.
        #expect(Self.kind(Self.elf(phdrs: [PT_INTERP, PT_NOTE], notes: Self.goNote)) == FOS_ELF_GO)
        // A GNU note is no Go note.
        let gnu: [UInt8] = [4, 0, 0, 0, 4, 0, 0, 0, 3, 0, 0, 0] + Array("GNU\0".utf8) + [1, 2, 3, 4]
        #expect(Self.kind(Self.elf(phdrs: [PT_INTERP, PT_NOTE], notes: gnu)) == FOS_ELF_DYNAMIC)
        #expect(Self.kind(Self.elf(class: 1, phdrs: [PT_INTERP])) == FOS_ELF_FOREIGN)
        #expect(Self.kind(Self.elf(machine: UInt16(EM_S390), phdrs: [PT_INTERP])) == FOS_ELF_FOREIGN)
        #expect(Self.kind(Array("#!/bin/sh\necho hi\n".utf8)) == FOS_ELF_OTHER)
        #expect(Self.kind(Array(Self.elf(phdrs: [PT_INTERP]).prefix(40))) == FOS_ELF_OTHER)
        // A note whose sizes run past the segment is not trusted.
        let bad: [UInt8] = [0xff, 0xff, 0, 0, 4, 0, 0, 0, 4, 0, 0, 0] + Array("Go\0\0".utf8)
        #expect(Self.kind(Self.elf(phdrs: [PT_NOTE], notes: bad)) == FOS_ELF_STATIC)
    }

    @Test func realPrograms() {
        func kindOf(_ path: String) -> Int32? {
            guard let d = FileManager.default.contents(atPath: path) else { return nil }
            return Self.kind(Array(d))
        }
        #expect(kindOf("/bin/sh") == Int32(FOS_ELF_DYNAMIC))
        if let k = kindOf("/usr/bin/busybox") { #expect(k == FOS_ELF_STATIC) }
    }
}
