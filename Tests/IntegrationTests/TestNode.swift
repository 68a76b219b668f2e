import CFosSys
import CFosWire
import FosCore
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Integration test harness: a real fosd (from the build directory) on fresh
// temporary runtime and state directories, real member processes, real
// sockets. Every node is stopped and its directories removed when the test
// ends, whether it passed or not (`TestNode.with`), and as a last resort the
// spawner thread's PR_SET_PDEATHSIG takes fosd (and with it its members) down
// if the test process itself dies.

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

// MARK: - Build products

enum BuildProducts {
    /// The directory holding fosd, fosctl, fos-name and fos-echo: the test
    /// binary's own directory (.build/<triple>/debug), else found by walking up
    /// from the executable or from this source file to `.build/debug`.
    static let directory: String? = {
        let fm = FileManager.default
        var starts: [String] = []
        if let exe = try? fm.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            starts.append((exe as NSString).deletingLastPathComponent)
        }
        if let a0 = CommandLine.arguments.first, a0.hasPrefix("/") {
            starts.append((a0 as NSString).deletingLastPathComponent)
        }
        starts.append((#filePath as NSString).deletingLastPathComponent)
        for start in starts {
            var dir = start
            while !dir.isEmpty {
                for candidate in [dir, dir + "/.build/debug"]
                where fm.isExecutableFile(atPath: candidate + "/fosd") && fm.isExecutableFile(atPath: candidate + "/fosctl") {
                    // Resolved, as /proc/<pid>/exe of the members shows it.
                    return (candidate as NSString).resolvingSymlinksInPath
                }
                if dir == "/" { break }
                dir = (dir as NSString).deletingLastPathComponent
            }
        }
        return nil
    }()

    static func path(_ name: String) throws -> String {
        guard let d = directory else {
            throw TestFailure("cannot find the build products (fosd, fosctl): run `swift build` first")
        }
        let p = d + "/" + name
        guard FileManager.default.isExecutableFile(atPath: p) else { throw TestFailure("\(p) is not built") }
        return p
    }
}

// MARK: - Small system helpers

/// Is `pid` a live process (not gone, not a zombie)?
func processAlive(_ pid: Int32) -> Bool {
    guard pid > 0, let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")")
    else { return false }
    let rest = s[s.index(after: close)...].trimmingCharacters(in: .whitespaces)
    guard let state = rest.first else { return false }
    return state != "Z" && state != "X"
}

/// CPU time a process used so far (user + system), in clock ticks.
func cpuTicks(_ pid: Int32) -> Int {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")")
    else { return 0 }
    let f = s[s.index(after: close)...].split(separator: " ")
    // f[0] is field 3 (state); utime and stime are fields 14 and 15.
    guard f.count > 12, let u = Int(f[11]), let k = Int(f[12]) else { return 0 }
    return u + k
}

/// Executable of a process, "" if unknown.
func processExe(_ pid: Int32) -> String {
    (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? ""
}

/// Number of open descriptors of a process (-1 if unknown).
func openFDCount(_ pid: Int32) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
}

/// Sleeps without hogging a cooperative thread; still sleeps if the task was
/// cancelled (cleanup paths must not become busy loops).
func pause(_ d: Duration) async {
    do {
        try await Task.sleep(for: d)
    } catch {
        let c = d.components
        usleep(UInt32(max(0, min(Int64(c.seconds) * 1_000_000 + c.attoseconds / 1_000_000_000_000, 1_000_000))))
    }
}

func seconds(since t: UInt64) -> Double { Double(monotonicNanos() &- t) / 1e9 }

/// Polls `probe` until it returns a value (errors count as "not yet"); throws
/// after `timeout` with the last error seen.
@discardableResult
func eventually<T>(_ what: String, timeout: Duration = .seconds(10), every: Duration = .milliseconds(10),
                   _ probe: () async throws -> T?) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    var last: Error?
    while true {
        do {
            if let v = try await probe() { return v }
        } catch {
            last = error
        }
        if ContinuousClock.now >= deadline {
            throw TestFailure("timed out after \(timeout) waiting for \(what)" + (last.map { " (last error: \($0))" } ?? ""))
        }
        await pause(every)
    }
}

/// The errno of a `FosError.remote`, nil for anything else.
func remoteErrno(_ e: Error) -> Int32? {
    if case FosError.remote(let x) = e { return x.rawValue }
    return nil
}

func u32(_ v: UInt32) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

func whoami(_ bytes: [UInt8]) -> fos_echo_whoami? {
    guard bytes.count == MemoryLayout<fos_echo_whoami>.size else { return nil }
    return bytes.withUnsafeBytes { loadStruct(fos_echo_whoami.self, from: $0) }
}

let opEcho = UInt16(FOS_OP_ECHO)
let opSlow = UInt16(FOS_OP_ECHO_SLOW)
let opRelay = UInt16(FOS_OP_ECHO_RELAY)
let opWhoami = UInt16(FOS_OP_ECHO_WHOAMI)

// MARK: - Spawning with a parent-death signal

/// Runs fos_sys_spawn on one thread that lives as long as the test process:
/// the child's PR_SET_PDEATHSIG is tied to the spawning thread, so spawning
/// from a pool thread (which may exit when idle) would kill fosd at random,
/// while this thread only ends with the process.
final class Spawner: @unchecked Sendable {
    // `@unchecked Sendable`: `jobs` is only touched under `cond`.
    static let shared = Spawner()
    private let cond = NSCondition()
    private var jobs: [() -> Void] = []

    private init() {
        let t = Thread { [self] in serve() }
        t.name = "fos-test-spawner"
        t.start()
    }

    private func serve() {
        while true {
            cond.lock()
            while jobs.isEmpty { cond.wait() }
            let job = jobs.removeFirst()
            cond.unlock()
            job()
        }
    }

    /// Starts `argv[0]` with `env`; returns its pid and a pidfd.
    func spawn(_ argv: [String], env: [String: String]) throws -> (pid: Int32, pidfd: CInt) {
        let done = DispatchSemaphore(value: 0)
        let result = Mutex<(Int32, CInt)>((0, -1))
        cond.lock()
        jobs.append {
            var pidfd: CInt = -1
            let envp = env.map { "\($0.key)=\($0.value)" }
            let pid = withCStringArray(argv) { a in
                withCStringArray(envp) { e in fos_sys_spawn(argv[0], a, e, -1, nil, 0, &pidfd) }
            }
            result.withLock { $0 = (pid, pidfd) }
            done.signal()
        }
        cond.signal()
        cond.unlock()
        done.wait()
        let (pid, fd) = result.withLock { $0 }
        if pid < 0 { throw TestFailure("cannot start \(argv[0]): errno \(-pid)") }
        return (pid, fd)
    }
}

func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}

// MARK: - Subprocesses (fosctl)

struct CLIResult: Sendable {
    var status: Int32
    var signaled: Bool
    var stdout: String
    var stderr: String
}

/// A subprocess whose output goes to files (no pipe can fill up and stall it).
/// posix_spawn, not Foundation.Process: Process.run crashed (reading past a
/// buffer) when the test process had some thousand descriptors open, which
/// the parallel node tests do.
final class Subprocess: Sendable {
    let pid: pid_t
    let outPath: String
    let errPath: String
    /// The node it runs on (`--runtime DIR` among its arguments), whose
    /// processes a timeout describes.
    let runtimeDir: String?
    /// Set once reaped: (exit status, killed by a signal).
    private let exit = Mutex<(Int32, Bool)?>(nil)

    init(_ exe: String, _ args: [String], outputIn dir: String, env: [String: String]? = nil) throws {
        let tag = UUID().uuidString.prefix(8)
        outPath = "\(dir)/cmd-\(tag).out"
        errPath = "\(dir)/cmd-\(tag).err"
        var environment = env ?? ProcessInfo.processInfo.environment
        if env == nil { environment["FOS_SPIN_US"] = "20" }
        var fa = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&fa)
        defer { posix_spawn_file_actions_destroy(&fa) }
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&fa, 1, outPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&fa, 2, errPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        _ = fos_sys_spawn_actions_closefrom(&fa, 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attr, &none)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var child: pid_t = 0
        let envp = environment.map { "\($0.key)=\($0.value)" }
        let r = withCStringArray([exe] + args) { a in
            withCStringArray(envp) { e in
                posix_spawn(&child, exe, &fa, &attr, a, e)
            }
        }
        guard r == 0 else { throw TestFailure("cannot start \(exe): \(String(cString: strerror(r)))") }
        pid = child
        runtimeDir = args.firstIndex(of: "--runtime").flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil }
    }

    func kill(_ sig: Int32 = SIGKILL) {
        if exit.withLock({ $0 == nil }) { _ = Glibc.kill(pid, sig) }
    }

    /// Reaps the child if it has exited; true once it has.
    private func reap() -> Bool {
        if exit.withLock({ $0 != nil }) { return true }
        var status: Int32 = 0
        let r = waitpid(pid, &status, WNOHANG)
        guard r == pid else { return r < 0 && errno == ECHILD }
        // WIFSIGNALED / WEXITSTATUS, spelled out (macros do not import);
        // a signal's number as the status, as Foundation.Process gave it.
        let sig = status & 0x7f
        exit.withLock { $0 = sig != 0 && sig != 0x7f ? (sig, true) : ((status >> 8) & 0xff, false) }
        return true
    }

    /// Waits for the exit (killing it after `timeout`) and collects the output.
    func wait(timeout: Duration = .seconds(15)) async -> CLIResult {
        let deadline = ContinuousClock.now + timeout
        var killed = false
        var hung = ""
        while !reap() {
            if !killed && ContinuousClock.now > deadline {
                // What hung, before the kill changes it: the child and, if
                // it ran on a node, every process of that node.
                hung = await processSnapshot(pid: pid, runtimeDir: runtimeDir)
                kill()
                killed = true
            }
            await pause(.milliseconds(2))
        }
        let out = (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? ""
        let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: outPath)
        try? FileManager.default.removeItem(atPath: errPath)
        let (status, signaled) = exit.withLock { $0 } ?? (-1, false)
        return CLIResult(status: status, signaled: signaled || killed,
                         stdout: out, stderr: err + (killed ? "\n[killed by the test after \(timeout)]\n" + hung : ""))
    }
}

/// The processes a hung command leaves to look at: `pid`, the node's fosd
/// (its lock file in `runtimeDir` names it) and every descendant of either
/// (members, and the programs fos-run or the spawn service started), with
/// the state, kernel wait channel and kernel stack of each thread; and
/// gdb's backtrace of a few programs (not fos's own processes) where gdb
/// is installed and may attach.
///
/// The tree comes from /proc/PID/stat, which takes no lock of the process's
/// memory: a command line is read only of a process not in uninterruptible
/// sleep (one stuck in a FUSE page fault may hold that lock, and reading
/// its command line would hang the test process too).
func processSnapshot(pid: pid_t, runtimeDir: String?) async -> String {
    func read(_ path: String) -> [UInt8] { FileManager.default.contents(atPath: path).map { [UInt8]($0) } ?? [] }
    func text(_ bytes: [UInt8]) -> String {
        String(decoding: bytes.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
    /// State and parent from a stat line: the fields after the
    /// parenthesised name (found from the end: a name may hold ") ").
    func stateAndParent(_ stat: String) -> (String, Int32)? {
        guard let r = stat.range(of: ") ", options: .backwards) else { return nil }
        let f = stat[r.upperBound...].split(separator: " ")
        guard f.count > 1, let pp = Int32(f[1]) else { return nil }
        return (String(f[0]), pp)
    }
    var parent: [Int32: Int32] = [:]
    var state: [Int32: String] = [:]
    for p in ((try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []).compactMap({ Int32($0) }) {
        if let (st, pp) = stateAndParent(text(read("/proc/\(p)/stat"))) {
            parent[p] = pp
            state[p] = st
        }
    }
    var roots: Set<Int32> = [pid]
    if let dir = runtimeDir, let fosd = Int32(text(read(dir + "/fosd.lock"))) { roots.insert(fosd) }
    func underRoot(_ p: Int32) -> Bool {
        var q = p, steps = 0
        while steps < 64, q > 1 {
            if roots.contains(q) { return true }
            q = parent[q] ?? 0
            steps += 1
        }
        return false
    }
    var out = "processes at the timeout:\n"
    var traced = 0
    for p in parent.keys.sorted() where underRoot(p) {
        let stuck = state[p] == "D"
        let cmd = stuck ? "[" + text(read("/proc/\(p)/comm")) + ", in uninterruptible sleep]" : text(read("/proc/\(p)/cmdline"))
        out += "  \(p) (parent \(parent[p] ?? 0)) \(cmd.prefix(160))\n"
        for t in ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/task")) ?? []).sorted() {
            let st = stateAndParent(text(read("/proc/\(p)/task/\(t)/stat")))?.0 ?? "?"
            // "[<0>] do_wait+0x53/0x120": the names, up to the syscall entry
            // (empty without the privilege to read kernel stacks).
            let stack = text(read("/proc/\(p)/task/\(t)/stack")).split(separator: "\n")
                .compactMap { $0.split(separator: " ").last?.split(separator: "+").first.map(String.init) }
                .prefix { !$0.hasPrefix("do_syscall") && !$0.hasPrefix("entry_SYSCALL") }.prefix(6)
                .joined(separator: " < ")
            out += "    thread \(t) \(st) \(text(read("/proc/\(p)/task/\(t)/wchan"))) [\(stack)]\n"
        }
        // A program, not one of fos's own (fosd, members, fos-exec, fos-run).
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p)/exe")) ?? ""
        let ours = BuildProducts.directory.map { exe.hasPrefix($0 + "/") } ?? true
        if !ours, !stuck, traced < 4, FileManager.default.isExecutableFile(atPath: "/usr/bin/gdb"),
           let gdb = try? Subprocess("/usr/bin/gdb", ["-batch", "-nx", "-iex", "set debuginfod enabled off", "-p", String(p),
                                                      "-ex", "thread apply all bt 12"], outputIn: NSTemporaryDirectory()) {
            traced += 1
            let r = await gdb.wait(timeout: .seconds(15))
            // Frames, and why there are none (ptrace refused, say).
            out += (r.stdout + "\n" + r.stderr).split(separator: "\n")
                .filter { $0.hasPrefix("#") || $0.hasPrefix("Thread") || $0.hasPrefix("ptrace") || $0.contains("ould not attach") }
                .map { "      " + $0.prefix(200) }.joined(separator: "\n") + "\n"
        }
    }
    return out
}

func runCommand(_ exe: String, _ args: [String], outputIn dir: String, timeout: Duration = .seconds(15)) async throws -> CLIResult {
    try await Subprocess(exe, args, outputIn: dir).wait(timeout: timeout)
}

/// A row of `fosctl names --json` (accepts both the `internal` and `kind` forms).
struct NameRow: Decodable {
    var name: String
    var mailbox: String
    var policy: String
    var `internal`: Bool?
    var kind: String?
    var pid: Int32
    var core: Int32
    var queueLength: UInt64
    var handled: UInt64
    var isInternal: Bool { `internal` ?? (kind == "internal") }
    var isExternal: Bool { kind.map { $0 == "external" } ?? !(`internal` ?? false) }
}

// MARK: - Limiting how many nodes run at once

/// Tests run in parallel, on two cores: at most `limit` units of nodes at a
/// time (a load test takes two), so that timing checks see a sane machine.
actor NodeSlots {
    static let shared = NodeSlots(limit: 3)
    private var free: Int
    private var waiters: [(Int, CheckedContinuation<Void, Never>)] = []
    init(limit: Int) { free = limit }

    func acquire(_ n: Int) async {
        if waiters.isEmpty && free >= n {
            free -= n
            return
        }
        await withCheckedContinuation { waiters.append((n, $0)) }
    }

    func release(_ n: Int) {
        free += n
        while let (k, c) = waiters.first, free >= k {
            waiters.removeFirst()
            free -= k
            c.resume()
        }
    }
}

// MARK: - The node

final class TestNode: Sendable {
    let echoMembers: Int
    /// Members of the file system fleet /sys/fs (`fosd --fs-members`), from
    /// the next `launch` on.
    var fsMembers: Int {
        get { fsMembersNow.load(ordering: .relaxed) }
        set { fsMembersNow.store(newValue, ordering: .relaxed) }
    }
    private let fsMembersNow: Atomic<Int>
    /// Size of the sparse disk image (`fosd --disk-size`).
    let diskSize: String
    /// More environment for fosd (and so its members).
    let extraEnv: [String: String]
    let root: String
    let runtimeDir: String
    let stateDir: String
    let logPath: String
    let fosdPath: String
    let fosctlPath: String
    let slots: Int

    private struct State {
        var pid: Int32 = 0
        var pidfd: CInt = -1
        var exitStatus: Int32?
        var runtimes: [FosRuntime] = []
        var probe: FosRuntime?
        var memberPids: Set<Int32> = []
        var finished = false
    }
    private let state = Mutex(State())

    private init(members: Int, slots: Int, fsMembers: Int, diskSize: String, env: [String: String]) throws {
        extraEnv = env
        echoMembers = members
        fsMembersNow = Atomic(fsMembers)
        self.diskSize = diskSize
        self.slots = slots
        fosdPath = try BuildProducts.path("fosd")
        fosctlPath = try BuildProducts.path("fosctl")
        _ = try BuildProducts.path("fos-echo")
        _ = try BuildProducts.path("fos-name")
        var template = Array("/tmp/fos-it-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
        root = String(cString: p)
        runtimeDir = root + "/run"
        stateDir = root + "/state"
        logPath = root + "/fosd.log"
    }

    /// Starts a node, runs `body`, and stops the node whatever happens.
    static func with<T>(members: Int = 3, slots: Int = 1, fsMembers: Int = 1, diskSize: String = "256M",
                        env: [String: String] = [:],
                        _ body: (TestNode) async throws -> T) async throws -> T {
        await NodeSlots.shared.acquire(slots)
        let node: TestNode
        do {
            node = try TestNode(members: members, slots: slots, fsMembers: fsMembers, diskSize: diskSize, env: env)
        } catch {
            await NodeSlots.shared.release(slots)
            throw error
        }
        do {
            try node.launch()
            try await node.waitReady()
            let r = try await body(node)
            await node.finish()
            return r
        } catch {
            await node.finish()
            throw error
        }
    }

    deinit {
        // Last resort if `finish` never ran: no process may outlive the test.
        let s = state.withLock { $0 }
        if !s.finished {
            for rt in s.runtimes { TestNode.retire(rt) }
            if s.pid > 0 && s.exitStatus == nil {
                _ = fos_sys_pidfd_kill(s.pidfd, SIGKILL)
                _ = fos_sys_reap(s.pid, 0)
            }
            closeFD(s.pidfd)
            for p in s.memberPids where processAlive(p) { kill(p, SIGKILL) }
            try? FileManager.default.removeItem(atPath: root)
        }
    }

    var pid: Int32 { state.withLock { $0.pid } }
    var socketPath: String { runtimeDir + "/" + FOS_CTL_SOCKET }
    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Starts fosd (stderr appended to fosd.log) on this node's directories.
    func launch() throws {
        var env = ProcessInfo.processInfo.environment
        env["FOS_SPIN_US"] = "20"
        env["FOS_RUNTIME"] = nil
        env["FOS_STATE"] = nil
        env.merge(extraEnv) { _, new in new }
        let argv = ["/bin/sh", "-c", "exec 2>>\"$0\"; exec \"$@\"", logPath,
                    fosdPath, "--runtime", runtimeDir, "--state", stateDir, "--disk-size", diskSize,
                    "--fs-members", String(fsMembers), "--fleet", "/app/echo=fos-echo:\(echoMembers)"]
        let (pid, pidfd) = try Spawner.shared.spawn(argv, env: env)
        state.withLock {
            $0.pid = pid
            $0.pidfd = pidfd
            $0.exitStatus = nil
        }
    }

    /// Has fosd exited? Reaps it if so (keeps its wait status).
    func fosdExited() -> Bool {
        state.withLock { s in
            if s.exitStatus != nil { return true }
            guard s.pid > 0 else { return true }
            var pfd = pollfd(fd: s.pidfd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 0) > 0 else { return false }
            let st = fos_sys_reap(s.pid, 0)
            s.exitStatus = st >= 0 ? st : -1
            closeFD(s.pidfd)
            s.pidfd = -1
            return true
        }
    }

    var exitStatus: Int32? { state.withLock { $0.exitStatus } }

    /// Waits until the name service is up, `/app/echo` has all its external
    /// members, every /sys/fs member has mounted the disk and registered, and
    /// /sys/spawn is there.
    func waitReady(timeout: Duration = .seconds(10)) async throws {
        let deadline = ContinuousClock.now + timeout
        var probe: FosRuntime?
        var last: Error?
        while true {
            if fosdExited() {
                throw TestFailure("fosd exited during start-up (status \(exitStatus ?? -1)); log:\n\(log)")
            }
            do {
                if probe == nil, FileManager.default.fileExists(atPath: socketPath) {
                    probe = try runtime()
                }
                if let p = probe {
                    let entries = try await p.listNames(prefix: "/app/echo").filter { $0.name == "/app/echo" }
                    let ext = entries.filter { !$0.isInternal && $0.flags & UInt32(FOS_NAME_POLICY) == 0 }
                    // Every fs member mounted and registered (/sys/fs/<i> comes last).
                    let fs = try await p.listNames(prefix: "/sys/fs/").count
                    let spawn = try await p.listNames(prefix: "/sys/spawn").count
                    if ext.count == echoMembers && fs == fsMembers && spawn > 0 {
                        state.withLock {
                            $0.probe = p
                            $0.memberPids.formUnion(entries.map(\.pid))
                        }
                        return
                    }
                }
            } catch {
                last = error
            }
            if ContinuousClock.now >= deadline {
                throw TestFailure("node not ready after \(timeout)\(last.map { " (last error: \($0))" } ?? ""); log:\n\(log)")
            }
            await pause(.milliseconds(10))
        }
    }

    /// A runtime connected to this node (a client, not a member), retired at the end.
    func runtime() throws -> FosRuntime {
        let rt = try FosRuntime.connect(runtime: runtimeDir, spinMicros: 20)
        state.withLock { $0.runtimes.append(rt) }
        return rt
    }

    /// The runtime the harness polls the name service with.
    var probe: FosRuntime {
        get throws {
            if let p = state.withLock({ $0.probe }) { return p }
            throw TestFailure("node has no probe runtime")
        }
    }

    /// Leaves the node, so fosd forgets the process's channels.
    static func retire(_ rt: FosRuntime) {
        rt.shutdown()
    }

    func retire(_ rt: FosRuntime) {
        TestNode.retire(rt)
        state.withLock { s in
            s.runtimes.removeAll { $0 === rt }
            if s.probe === rt { s.probe = nil }
        }
    }

    private func retireAllRuntimes() {
        let rts = state.withLock { s -> [FosRuntime] in
            let r = s.runtimes
            s.runtimes = []
            s.probe = nil
            return r
        }
        rts.forEach(TestNode.retire)
    }

    /// Members the harness saw; they are ended at cleanup if still alive.
    func noteMembers(_ pids: [Int32]) { state.withLock { $0.memberPids.formUnion(pids.filter { $0 > 0 }) } }

    // MARK: fosctl

    func fosctl(_ args: [String], timeout: Duration = .seconds(15)) async throws -> CLIResult {
        try await runCommand(fosctlPath, args + ["--runtime", runtimeDir], outputIn: root, timeout: timeout)
    }

    /// Starts fosctl without waiting for it.
    func startFosctl(_ args: [String]) throws -> Subprocess {
        try Subprocess(fosctlPath, args + ["--runtime", runtimeDir], outputIn: root)
    }

    func fosctlJSON<T: Decodable>(_ type: T.Type, _ args: [String]) async throws -> T {
        let r = try await fosctl(args + ["--json"])
        guard r.status == 0 else {
            throw TestFailure("fosctl \(args.joined(separator: " ")) failed (\(r.status)): \(r.stderr)")
        }
        do {
            return try JSONDecoder().decode(T.self, from: Data(r.stdout.utf8))
        } catch {
            throw TestFailure("fosctl \(args.joined(separator: " ")) --json: undecodable output (\(error)):\n\(r.stdout)")
        }
    }

    func status() async throws -> NodeStatus { try await fosctlJSON(NodeStatus.self, ["status"]) }

    func fleets() async throws -> [MemberInfo] {
        let ms = try await fosctlJSON([MemberInfo].self, ["fleets"])
        noteMembers(ms.map(\.pid))
        return ms
    }

    func names() async throws -> [NameRow] { try await fosctlJSON([NameRow].self, ["names"]) }

    /// Node status straight from the control socket (no subprocess), for polling.
    func quickStatus(_ rt: FosRuntime) throws -> NodeStatus {
        try JSONDecoder().decode(NodeStatus.self, from: Data(try rt.query(Int32(FOS_CTL_STATUS)).utf8))
    }

    func quickFleets(_ rt: FosRuntime) throws -> [MemberInfo] {
        let ms = try JSONDecoder().decode([MemberInfo].self, from: Data(try rt.query(Int32(FOS_CTL_FLEETS)).utf8))
        noteMembers(ms.map(\.pid))
        return ms
    }

    /// The /app/echo registrations as the name service lists them.
    func echoEntries(_ rt: FosRuntime) async throws -> [NameEntry] {
        let es = try await rt.listNames(prefix: "/app/echo").filter { $0.name == "/app/echo" }
        noteMembers(es.map(\.pid))
        return es
    }

    // MARK: Stopping

    /// SIGKILL to fosd (nothing of it runs afterwards); waits for it.
    func killHard() async {
        retireAllRuntimes()
        let (pid, fd) = state.withLock { ($0.pid, $0.pidfd) }
        guard pid > 0, !fosdExited() else { return }
        _ = fos_sys_pidfd_kill(fd, SIGKILL)
        while !fosdExited() { await pause(.milliseconds(2)) }
    }

    /// SIGTERM, then SIGKILL after `grace`; returns fosd's wait status.
    @discardableResult
    func terminate(grace: Duration = .seconds(5)) async -> Int32? {
        retireAllRuntimes()
        if !fosdExited() {
            let fd = state.withLock { $0.pidfd }
            _ = fos_sys_pidfd_kill(fd, SIGTERM)
            let deadline = ContinuousClock.now + grace
            while !fosdExited() {
                if ContinuousClock.now > deadline {
                    let fd = state.withLock { $0.pidfd }
                    _ = fos_sys_pidfd_kill(fd, SIGKILL)
                }
                await pause(.milliseconds(2))
            }
        }
        return exitStatus
    }

    /// Members the harness saw that are still alive and run one of our binaries.
    func survivingMembers() -> [Int32] {
        let dir = BuildProducts.directory ?? "/nonexistent"
        let pids = state.withLock { $0.memberPids }
        return pids.filter { processAlive($0) && processExe($0).hasPrefix(dir + "/fos-") }.sorted()
    }

    /// Stops everything this node started and removes its directories.
    func finish() async {
        if state.withLock({ $0.finished }) { return }
        // Learn the current members first, so that none can be missed.
        if !fosdExited(), let rt = try? probe, let ms = try? quickFleets(rt) { noteMembers(ms.map(\.pid)) }
        await terminate()
        // Members die with fosd; give stragglers a moment, then end them.
        let deadline = ContinuousClock.now + .seconds(3)
        while !survivingMembers().isEmpty && ContinuousClock.now < deadline { await pause(.milliseconds(5)) }
        for p in survivingMembers() { kill(p, SIGKILL) }
        state.withLock { $0.finished = true }
        if ProcessInfo.processInfo.environment["FOS_IT_LOG"] != nil {
            print("---- fosd log of \(root):\n\(log)----")
        }
        try? FileManager.default.removeItem(atPath: root)
        await NodeSlots.shared.release(slots)
    }
}
