import CFosWire

#if canImport(Glibc)
import Glibc
#endif

/// The rule the shim applies at exec (fos_elf.h, Shim/src/exec_prog.c),
/// applied by fos-run to the program it starts: a program the shim cannot
/// reach (static, Go, another machine) is refused when fos is in view of
/// it — its cwd or an argument under the prefix — unless
/// FOS_ALLOW_UNREACHABLE=1.
enum Reach {
    /// The host file exec would run for `program`, following "#!" lines as
    /// the kernel does (nil: not found or not a file fos-run can judge).
    static func binary(_ program: String, path: String?) -> String? {
        var file = program.contains("/") ? program : search(program, path: path)
        for _ in 0..<4 {
            guard let f = file, let head = head(of: f) else { return nil }
            guard head.starts(with: Array("#!".utf8)) else { return f }
            let line = String(decoding: head.dropFirst(2).prefix { $0 != 10 }, as: UTF8.self)
            guard let interp = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).first else { return nil }
            file = String(interp)
        }
        return nil
    }

    /// The first 256 bytes of a file (fewer if it is shorter), nil if it cannot be read.
    static func head(of file: String) -> [UInt8]? {
        let fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buf = [UInt8](repeating: 0, count: 256)
        var n = 0
        while n < buf.count {
            let r = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress! + n, $0.count - n) }
            if r < 0 && errno == EINTR { continue }
            guard r >= 0 else { return nil }
            if r == 0 { break }
            n += r
        }
        return Array(buf[..<n])
    }

    /// execvp's search: the first executable regular file on PATH.
    static func search(_ name: String, path: String?) -> String? {
        for dir in (path ?? "/bin:/usr/bin").split(separator: ":", omittingEmptySubsequences: false) {
            let f = (dir.isEmpty ? "." : String(dir)) + "/" + name
            var st = stat()
            if stat(f, &st) == 0, st.st_mode & S_IFMT == S_IFREG, access(f, X_OK) == 0 { return f }
        }
        return nil
    }

    /// Whether `file` is this fos-run (static, but it knows fos: the shim
    /// does not refuse it either).
    static func isSelf(_ file: String) -> Bool {
        var a = stat(), b = stat()
        return stat(file, &a) == 0 && stat("/proc/self/exe", &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino
    }

    /// FOS_ELF_* of a host file.
    static func kind(_ file: String) -> Int32 {
        var fd = open(file, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return Int32(FOS_ELF_OTHER) }
        defer { close(fd) }
        return fos_elf_kind({ ctx, buf, n, off in
            let r = pread(ctx!.load(as: Int32.self), buf, n, off_t(off))
            return r < 0 ? -Int(errno) : r
        }, &fd)
    }

    /// The one line that refuses `argv` (nil: it may run).
    static func refusal(_ argv: [String], env: [String: String], prefix: String, fosCwd: Bool,
                        runtime: String) -> String? {
        guard env["FOS_ALLOW_UNREACHABLE"] != "1" else { return nil }
        func isFos(_ a: Substring) -> Bool { FosRun.isUnder(a, prefix) }
        let fosArg = argv.dropFirst().contains { a in
            isFos(Substring(a)) || a.split(separator: "=", maxSplits: 1).dropFirst().first.map(isFos) == true
        }
        // The program's file is read only when fos is in view of it.
        guard fosCwd || fosArg, let file = binary(argv[0], path: env["PATH"]), !isSelf(file) else { return nil }
        let k = kind(file)
        guard k == FOS_ELF_STATIC || k == FOS_ELF_GO || k == FOS_ELF_FOREIGN else { return nil }
        return "\(file) \(String(cString: fos_elf_why(k))), so it cannot see \(prefix) through the shim, and "
            + (fosCwd ? "its cwd is" : "its arguments are") + " in it: run it on the FUSE mount \(fuseMount(runtime)), "
            + "or set FOS_ALLOW_UNREACHABLE=1 if it does not use \(prefix)"
    }

    /// Where the node's FUSE mount is (fos_mountinfo.h), or how to make one.
    static func fuseMount(_ runtime: String) -> String {
        var buf = [CChar](repeating: 0, count: 1024)
        guard fos_mountinfo_fos_mount(runtime, &buf, buf.count) != 0 else { return "(fosctl mount DIR)" }
        return "at " + String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
