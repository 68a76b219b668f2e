import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The shim (libfosshim.so) and fos-run on real nodes: the C tests of
// Shim/tests, compiled here with cc.

enum Shim {
    static var library: String { get throws { try BuildProducts.path("libfosshim.so") } }
    static var fosRun: String { get throws { try BuildProducts.path("fos-run") } }
    static let sources = ((#filePath as NSString).deletingLastPathComponent as NSString)
        .appendingPathComponent("../../Shim/tests")

    /// Compiles Shim/tests/<name>.c into dir; returns the executable.
    static func compile(_ name: String, into dir: String) async throws -> String {
        let out = dir + "/" + name
        let r = try await runCommand("/usr/bin/cc", ["-std=c11", "-O1", "-Wall", "-o", out,
                                                     sources + "/" + name + ".c", "-lpthread"], outputIn: dir,
                                     timeout: .seconds(60))
        guard r.status == 0 else { throw TestFailure("cc \(name).c failed:\n\(r.stderr)") }
        return out
    }

    /// `fos-run --runtime <node> -- argv`.
    static func run(_ node: TestNode, _ argv: [String], timeout: Duration = .seconds(60)) async throws -> CLIResult {
        try await runCommand(try fosRun, ["--runtime", node.runtimeDir, "--"] + argv, outputIn: node.root,
                             timeout: timeout)
    }

    /// A shell command line under fos-run.
    static func sh(_ node: TestNode, _ script: String) async throws -> CLIResult {
        try await run(node, ["/bin/sh", "-c", script])
    }

    /// A process with exactly `env`, its output collected (for the shim without fos-run).
    static func runWithEnv(_ exe: String, _ args: [String], env: [String: String]) throws -> CLIResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.environment = env
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return CLIResult(status: p.terminationStatus, signaled: p.terminationReason == .uncaughtSignal,
                         stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }
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

    @Test("C tests of Shim/tests under fos-run: files, descriptors, fork, exec, cwd, threads, signals, credentials")
    func cTests() async throws {
        try await TestNode.with(members: 1) { node in
            chmod(node.root, 0o755)  // t_threads drops to nobody, who must reach the socket
            for name in ["t_files", "t_fds", "t_exec", "t_cwd", "t_threads"] {
                let exe = try await Shim.compile(name, into: node.root)
                let r = try await Shim.run(node, [exe, "/fos/" + name])
                #expect(r.status == 0 && r.stdout.hasSuffix("ok\n"), "\(name): \(r.status)\n\(r.stdout)\n\(r.stderr)")
            }
        }
    }

    @Test("no node: fos-run says so in one line; the shim fails fos calls with EHOSTDOWN")
    func noNode() async throws {
        let dir = NSTemporaryDirectory() + "fos-shim-nonode-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try await runCommand(try Shim.fosRun, ["--runtime", dir, "--", "/bin/true"], outputIn: dir)
        #expect(r.status == 1)
        #expect(r.stderr == "fos-run: no fos node is running on \(dir) (start fosd, or give --runtime or FOS_RUNTIME)\n",
                "\(r.stderr)")
        let exe = try await Shim.compile("t_nonode", into: dir)
        let direct = try Shim.runWithEnv(exe, [], env: ["LD_PRELOAD": try Shim.library, "FOS_RUNTIME": dir,
                                                         "PATH": "/usr/bin:/bin"])
        #expect(direct.status == 0 && direct.stdout == "ok\n", "\(direct.stdout)\(direct.stderr)")
    }

    @Test("fos-run passes stdin, stdout, stderr, the environment and the exit status; a signal gives 128+N")
    func passThrough() async throws {
        try await TestNode.with(members: 1) { node in
            let r = try await Shim.sh(node, "echo out; echo err >&2; echo \"$FOS_PREFIX $SHIM_T\"; exit 7")
            #expect(r.status == 7 && r.stdout == "out\n/fos \n" && r.stderr == "err\n", "\(r)")
            let k = try await Shim.sh(node, "kill -TERM $$")
            #expect(k.status == 128 + SIGTERM, "\(k)")
            let missing = try await Shim.run(node, ["/no/such/program"])
            #expect(missing.status == 127 && missing.stderr.hasPrefix("fos-run: /no/such/program:"))
            let prefix = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "--prefix", "/data",
                                                                 "--cwd", "/data", "--", "/bin/sh", "-c",
                                                                 "mkdir sub && cd sub && pwd && ls -d /data/sub"],
                                              outputIn: node.root)
            #expect(prefix.status == 0 && prefix.stdout == "/data/sub\n/data/sub\n", "\(prefix)")
            let help = try await runCommand(try Shim.fosRun, ["--help"], outputIn: node.root)
            #expect(help.status == 0 && help.stdout.contains("--prefix") && help.stdout.contains("128+N"))
        }
    }
}
