import FosCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The child's pid, for the signal handlers that pass SIGTERM and SIGHUP on.
let childPID = Atomic<Int32>(0)

func fail(_ message: String, code: Int32 = 1) -> Never {
    var line = Array("fos-run: \(message)\n".utf8)[...]
    while !line.isEmpty {
        let n = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
        if n < 0 && errno == EINTR { continue }
        guard n > 0 else { break }
        line = line.dropFirst(n)
    }
    exit(code)
}

// fos-run uses libc, not Foundation: it starts before every program run on
// fos, and loading Foundation alone took most of its 10 ms start.

/// The process's environment as a dictionary (the first of duplicate names wins, as getenv's does).
func environment() -> [String: String] {
    var env: [String: String] = [:]
    var p = environ
    while let entry = p.pointee {
        let s = String(cString: entry)
        if let eq = s.firstIndex(of: "=") {
            let name = String(s[..<eq])
            if env[name] == nil { env[name] = String(s[s.index(after: eq)...]) }
        }
        p += 1
    }
    return env
}

/// The current directory (getcwd); fos-run fails if it cannot be named
/// (removed, or too long), as relative paths would then mean nothing.
func currentDirectory() -> String {
    guard let p = getcwd(nil, 0) else { fail("cannot name the current directory: \(String(cString: strerror(errno)))") }
    defer { free(p) }
    return String(cString: p)
}

/// `path` without its last component ("/a/b" → "/a", "b" → ".").
func directory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
}

struct FosRun {
    var prefix = "/fos"
    var cwd: String?
    var runtime: String?
    var command: [String] = []

    func run() -> Never {
        let argv = command
        guard let program = argv.first else { fail("no command given (fos-run -- CMD ARGS...)", code: 2) }
        guard let pfx = FosRun.normalise(prefix), pfx != "/" else {
            fail("--prefix must be an absolute directory other than /", code: 2)
        }
        let shim = FosRun.shimPath()
        guard access(shim, R_OK) == 0 else { fail("\(shim) is missing: build it with `swift build`") }
        let rt = runtime ?? NodePaths.defaultRuntime()
        do {
            _ = try ControlConnection.connect(runtime: rt)
        } catch {
            fail("no fos node is running on \(rt) (start fosd, or give --runtime or FOS_RUNTIME)")
        }

        var env = environment()
        env["LD_PRELOAD"] = [shim, env["LD_PRELOAD"]].compactMap { $0 }.filter { !$0.isEmpty }.joined(separator: " ")
        env["FOS_PREFIX"] = pfx
        env["FOS_RUNTIME"] = rt
        var hostCwd: String?
        if let c = cwd {
            let absolute = c.utf8.first == UInt8(ascii: "/") ? c : currentDirectory() + "/" + c
            guard let n = FosRun.normalise(absolute) else { fail("bad --cwd \(c)", code: 2) }
            if FosRun.isUnder(n, pfx) {
                env["FOS_CWD"] = n
            } else {
                env["FOS_CWD"] = nil
                hostCwd = n
            }
        }
        if let d = hostCwd, chdir(d) != 0 { fail("--cwd \(d): \(String(cString: strerror(errno)))") }
        var run = argv
        if FosRun.onFos(program, prefix: pfx, fosCwd: env["FOS_CWD"], path: env["PATH"]) {
            // fos-exec (beside the shim) execs it under the shim, which asks
            // the spawn service to start it and makes fos-exec its stand-in.
            env["FOS_EXEC_STANDIN"] = "1"
            run = [directory(of: shim) + "/fos-exec", program] + argv
        } else if let line = Reach.refusal(argv, env: env, prefix: pfx, fosCwd: env["FOS_CWD"] != nil,
                                           runtime: runtime ?? NodePaths.defaultRuntime()) {
            fail(line, code: 126)
        }
        Glibc.exit(FosRun.spawnAndWait(program: run[0], argv: run, env: env))
    }

    /// Is `program` stored under the prefix, or may a PATH search find it there?
    static func onFos(_ program: String, prefix: String, fosCwd: String?, path: String?) -> Bool {
        func under(_ p: String) -> Bool {
            guard let n = normalise(p.utf8.first == UInt8(ascii: "/") ? p : (fosCwd ?? currentDirectory()) + "/" + p)
            else { return false }
            return isUnder(n, prefix)
        }
        if program.contains("/") { return under(program) }
        return (path ?? "").split(separator: ":", omittingEmptySubsequences: false).contains { d in
            d.isEmpty ? fosCwd != nil : under(String(d))
        }
    }

    /// libfosshim.so from the directory fos-run runs from (the build directory).
    static func shimPath() -> String {
        var buf = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buf, buf.count - 1)
        if n > 0 { return directory(of: String(decoding: buf[..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)) + "/libfosshim.so" }
        // No /proc: the path we were started by, made absolute (the shim's
        // path must mean the same in every directory the program goes to).
        guard CommandLine.arguments[0].contains("/"), let real = realpath(CommandLine.arguments[0], nil) else {
            fail("cannot find fos-run's own directory (no /proc/self/exe): start it by its path")
        }
        defer { free(real) }
        return directory(of: String(cString: real)) + "/libfosshim.so"
    }

    /// An absolute path with ".", ".." and repeated slashes resolved by name.
    /// Paths are bytes, split at every '/' byte as the kernel splits them
    /// (String's split and hasPrefix go by Character, and a '/' followed by
    /// a combining mark is none).
    static func normalise(_ p: String) -> String? {
        guard p.utf8.first == UInt8(ascii: "/") else { return nil }
        var out: [String] = []
        for c in p.utf8.split(separator: UInt8(ascii: "/")) {
            if c.elementsEqual(".".utf8) { continue }
            if c.elementsEqual("..".utf8) { _ = out.popLast() } else { out.append(String(decoding: c, as: UTF8.self)) }
        }
        return "/" + out.joined(separator: "/")
    }

    /// Whether path `p` is `prefix` or lies below it, byte by byte.
    static func isUnder(_ p: some StringProtocol, _ prefix: String) -> Bool {
        p.utf8.elementsEqual(prefix.utf8) || p.utf8.starts(with: (prefix + "/").utf8)
    }

    /// posix_spawnp with the signals fos-run ignores back at their defaults
    /// in the child; returns the exit status fos-run should give.
    static func spawnAndWait(program: String, argv: [String], env: [String: String]) -> Int32 {
        var attr = posix_spawnattr_t()
        var actions = posix_spawn_file_actions_t()
        posix_spawnattr_init(&attr)
        posix_spawn_file_actions_init(&actions)
        defer {
            posix_spawnattr_destroy(&attr)
            posix_spawn_file_actions_destroy(&actions)
        }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGINT, SIGQUIT, SIGTERM, SIGHUP, SIGPIPE] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK))

        // The terminal's ^C and ^\ reach the child too: its fate decides ours.
        signal(SIGINT, SIG_IGN)
        signal(SIGQUIT, SIG_IGN)
        let forward: @convention(c) (Int32) -> Void = { sig in
            let pid = childPID.load(ordering: .relaxed)
            if pid > 0 { kill(pid, sig) }
        }
        signal(SIGTERM, forward)
        signal(SIGHUP, forward)

        let envp = env.map { "\($0.key)=\($0.value)" }
        var pid: pid_t = 0
        let r = withCStrings(argv) { a in
            withCStrings(envp) { e in posix_spawnp(&pid, program, &actions, &attr, a, e) }
        }
        if r != 0 { fail("\(program): \(String(cString: strerror(r)))", code: r == ENOENT ? 127 : 126) }
        childPID.store(pid, ordering: .relaxed)
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 {
            if errno != EINTR { fail("waitpid: \(String(cString: strerror(errno)))") }
        }
        let sig = status & 0x7f
        if sig == 0 { return (status >> 8) & 0xff }
        return 128 + sig
    }
}

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { ptrs.forEach { free($0) } }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}

FosRun.parse(Array(CommandLine.arguments.dropFirst())).run()
