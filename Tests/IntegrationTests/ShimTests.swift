import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The shim (libfosshim.so): how it is linked.

enum Shim {
    static var library: String { get throws { try BuildProducts.path("libfosshim.so") } }
}

@Suite("shim and fos-run", .serialized)
struct ShimTests {
    @Test("libfosshim.so needs only libc: no Swift runtime, only the wrappers exported")
    func linkage() async throws {
        let lib = try Shim.library
        // -r: every symbol it uses resolves, too.
        let ldd = try await runCommand("/usr/bin/ldd", ["-r", lib], outputIn: NSTemporaryDirectory())
        #expect(ldd.status == 0 && !ldd.stderr.contains("undefined"), "\(ldd.stderr)")
        let deps = ldd.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .compactMap { $0.split(separator: " ").first.map(String.init) }
        let libcFamily: Set<String> = ["linux-vdso.so.1", "libc.so.6", "/lib64/ld-linux-x86-64.so.2",
                                       "libdl.so.2", "libpthread.so.0", "/lib/ld-linux-aarch64.so.1"]
        for d in deps {
            #expect(libcFamily.contains(d) || d.hasPrefix("/lib/ld-linux"), "unexpected dependency: \(d)")
        }
        #expect(!ldd.stdout.contains("swift"))
        let nm = try await runCommand("/usr/bin/nm", ["-D", "--defined-only", lib], outputIn: NSTemporaryDirectory())
        let exported = nm.stdout.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            return f.count == 3 && f[1] == "T" ? String(f[2]) : nil
        }
        #expect(exported.contains("open") && exported.contains("__xstat") && exported.contains("statx"))
        #expect(!exported.contains { $0.hasPrefix("fos_") }, "internal symbols exported")
    }
}
