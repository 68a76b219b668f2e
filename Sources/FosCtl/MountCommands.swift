import ArgumentParser
import FosCore
import FosMounts
import Foundation

#if canImport(Glibc)
import Glibc
#endif

// fosctl mount and umount: the node's file system as a FUSE mount, served by
// a fos-fuse daemon per mount point (Sources/FosFuse).

struct Mount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount the node's file system on DIR (a FUSE mount served by fos-fuse).",
        discussion: "Returns once the mount answers; prints nothing on success. As root, every user's requests are served as that user (permissions, owners); without --allow-other only the user who mounted may enter.")
    @OptionGroup var common: Common
    @Argument(help: "An existing directory.")
    var dir: String
    @Flag(help: "Let every user use the mount (root only, or user_allow_other in /etc/fuse.conf).")
    var allowOther = false
    @Flag(help: "Mount read-only.")
    var readOnly = false
    @Option(help: "How long the kernel may cache names and attributes, in seconds, 0 to 3600 (default: 10 as root, where others' changes are announced; 1 otherwise).")
    var cacheTimeout: Double?

    func validate() throws {
        if let t = cacheTimeout, !(0...3600).contains(t) {
            throw ValidationError("--cache-timeout must be between 0 and 3600 seconds")
        }
    }

    func run() throws {
        let runtime = common.runtime ?? NodePaths.defaultRuntime()
        let mp = FuseMounts.normalize(dir)
        guard FileManager.default.fileExists(atPath: NodePaths.controlSocket(runtime: runtime)) else {
            fail(FosError.noNode(runtimeDir: runtime).description)
        }
        if FuseMounts.isMounted(mp) {
            if let r = FuseMounts.read(runtime: runtime, mountpoint: mp), FuseMounts.daemonAlive(r.pid) {
                fail("mount: \(mp) is a fos mount already (fos-fuse pid \(r.pid))")
            }
            fail("mount: \(mp) holds a fos mount whose daemon is gone: run `fosctl umount \(dir)` first")
        }
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: mp, isDirectory: &isDir) else { fail("mount: \(mp): no such directory") }
        guard isDir.boolValue else { fail("mount: \(mp): not a directory") }
        guard let exe = daemonExecutable() else { fail("mount: cannot find fos-fuse (beside fosctl or on PATH)") }

        var args = ["--runtime", runtime]
        if allowOther { args.append("--allow-other") }
        if readOnly { args.append("--read-only") }
        if let t = cacheTimeout { args += ["--timeout", String(t)] }
        let log = FuseMounts.logPath(runtime: runtime, mountpoint: mp)
        try? FileManager.default.createDirectory(atPath: FuseMounts.directory(runtime: runtime),
                                                 withIntermediateDirectories: true)
        let answer = startDaemon(exe, args + ["--ready-fd", "3", mp], log: log)
        switch answer {
        case "ok":
            return
        case let a where a.hasPrefix("error: "):
            fail("mount: " + a.dropFirst("error: ".count))
        default:
            let tail = ((try? String(contentsOfFile: log, encoding: .utf8)) ?? "").split(separator: "\n").last.map(String.init)
            fail("mount: fos-fuse \(answer)" + (tail.map { " (\($0))" } ?? ""))
        }
    }

    /// fos-fuse beside this fosctl, else on PATH.
    func daemonExecutable() -> String? {
        if let me = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            let p = (me as NSString).deletingLastPathComponent + "/" + FuseMounts.daemonName
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        for d in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let p = "\(d)/\(FuseMounts.daemonName)"
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        return nil
    }

    /// Starts the daemon in a session of its own (it outlives us), with its
    /// output on `log` and a pipe on descriptor 3; returns the line it
    /// writes there, or what happened instead.
    func startDaemon(_ exe: String, _ args: [String], log: String) -> String {
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { fail("mount: pipe: \(String(cString: strerror(errno)))") }
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        let logFD = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        if logFD >= 0 {
            posix_spawn_file_actions_adddup2(&actions, logFD, 1)
            posix_spawn_file_actions_adddup2(&actions, logFD, 2)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, fds[1], 3)
        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        // Its own session: a terminal's signals are not for it. Signals
        // blocked or ignored here are not its business either.
        var none = sigset_t()
        sigemptyset(&none)
        posix_spawnattr_setsigmask(&attr, &none)
        var all = sigset_t()
        sigfillset(&all)
        posix_spawnattr_setsigdefault(&attr, &all)
        posix_spawnattr_setflags(&attr, Int16(posixSpawnSetsid | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let argv = [exe] + args
        let env = ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        let rc = withCStrings(argv) { a in withCStrings(env) { e in posix_spawn(&pid, exe, &actions, &attr, a, e) } }
        close(fds[1])
        if logFD >= 0 { close(logFD) }
        guard rc == 0 else {
            close(fds[0])
            fail("mount: cannot start \(exe): \(String(cString: strerror(rc)))")
        }
        defer { close(fds[0]) }
        // The daemon lives on in its own session; reaping it is init's job
        // once we exit. Until then: its line, or its end.
        var line = [UInt8]()
        let deadline = monotonicNanos() + 30_000_000_000
        while monotonicNanos() < deadline {
            var p = pollfd(fd: fds[0], events: Int16(POLLIN), revents: 0)
            let n = poll(&p, 1, 100)
            if n < 0 && errno != EINTR { break }
            if n <= 0 { continue }
            var b = [UInt8](repeating: 0, count: 512)
            let got = read(fds[0], &b, b.count)
            if got <= 0 {
                if got < 0 && errno == EINTR { continue }
                var status: Int32 = 0
                let dead = waitpid(pid, &status, WNOHANG) == pid
                return line.isEmpty ? (dead ? "exited (status \(status >> 8))" : "closed its pipe") : String(decoding: line, as: UTF8.self)
            }
            line += b[0..<got]
            if let nl = line.firstIndex(of: 0x0A) { return String(decoding: line[..<nl], as: UTF8.self) }
            if line.count > 4096 { break }
        }
        kill(pid, SIGTERM)
        return "did not answer within 30 s"
    }
}

struct Umount: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Unmount a fos mount: stops its fos-fuse daemon, or cleans up after one that was killed.",
        discussion: "As umount(8), refused while a process has a file or its working directory in the mount; --lazy detaches it at once and its daemon serves those processes until the last is done. A mount whose daemon was killed is detached at once (its users get ENOTCONN until they leave).")
    @OptionGroup var common: Common
    @Argument(help: "The mount point.")
    var dir: String
    @Flag(help: "Detach the mount even while it is in use (as umount -l); its daemon leaves when the last process using it is done.")
    var lazy = false

    func run() throws {
        let runtime = common.runtime ?? NodePaths.defaultRuntime()
        let mp = FuseMounts.normalize(dir)
        let record = FuseMounts.read(runtime: runtime, mountpoint: mp)
        guard record != nil || FuseMounts.isMounted(mp) else {
            var st = stat()
            if lstat(mp, &st) != 0 && errno == ENOENT { fail("umount: \(mp): no such file or directory") }
            fail("umount: \(mp) is not a fos mount")
        }
        if let r = record, FuseMounts.daemonAlive(r.pid) {
            // The kernel's unmount first: refused while in use, where a
            // stopped daemon would leave its users with ENOTCONN and their
            // last writes lost. The daemon then sees its session end and exits.
            if FuseMounts.isMounted(mp) { unmount(mp) }
            if lazy { return }
            // A daemon stuck on a request gets stopped, then killed.
            if !waitGone(r.pid, seconds: 5) {
                kill(r.pid, SIGTERM)
                if !waitGone(r.pid, seconds: 5) {
                    kill(r.pid, SIGKILL)
                    _ = waitGone(r.pid, seconds: 2)
                }
            }
        }
        if FuseMounts.isMounted(mp) { detach(mp) }
        if FuseMounts.isMounted(mp) { fail("umount: \(mp) is still mounted") }
        FuseMounts.remove(runtime: runtime, mountpoint: mp)
    }

    /// Unmounts a live mount, lazily with --lazy.
    func unmount(_ mp: String) {
        if geteuid() == 0 {
            if umount2(mp, lazy ? Int32(MNT_DETACH) : 0) == 0 { return }
            if errno == EBUSY { busy(mp) }
            fail("umount: \(mp): \(String(cString: strerror(errno)))")
        }
        let (status, err) = fusermount(lazy ? ["-u", "-z", mp] : ["-u", mp])
        if status == 0 { return }
        if err.contains("busy") { busy(mp) }
        fail("umount: fusermount3 -u \(mp) failed: \(err.trimmingCharacters(in: .whitespacesAndNewlines))")
    }

    func busy(_ mp: String) -> Never {
        fail("umount: \(mp): target is busy (a process has a file or its working directory there); "
             + "`fosctl umount --lazy \(mp)` detaches it now and lets its daemon serve them until they are done")
    }

    func waitGone(_ pid: Int32, seconds: Int) -> Bool {
        for _ in 0..<(seconds * 100) {
            if !FuseMounts.daemonAlive(pid) { return true }
            usleep(10_000)
        }
        return !FuseMounts.daemonAlive(pid)
    }

    /// A mount whose daemon is gone: detached lazily (processes inside it
    /// keep their ENOTCONN until they leave).
    func detach(_ mp: String) {
        if geteuid() == 0 {
            if umount2(mp, Int32(MNT_DETACH)) != 0 { fail("umount: \(mp): \(String(cString: strerror(errno)))") }
            return
        }
        let (status, err) = fusermount(["-u", "-z", mp])
        if status != 0 { fail("umount: fusermount3 -u -z \(mp) failed: \(err.trimmingCharacters(in: .whitespacesAndNewlines))") }
    }

    func fusermount(_ args: [String]) -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/fusermount3")
        p.arguments = args
        let err = Pipe()
        p.standardError = err
        do {
            try p.run()
        } catch {
            fail("umount: cannot run fusermount3: \(error)")
        }
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: e, as: UTF8.self))
    }
}

/// A fos mount as `fosctl status` shows it.
struct MountRow: Codable {
    var mountpoint: String
    var pid: Int32?
    var state: String
}

/// The node's mounts: live ones, and stale ones (the daemon is gone but the
/// kernel still has the mount, or a record outlived both).
func mountRows(runtime: String, node: UInt64) -> [MountRow] {
    let source = FuseMounts.source(node: node)
    let records = FuseMounts.records(runtime: runtime)
    var rows: [MountRow] = []
    var seen = Set<String>()
    for m in FuseMounts.mounted() where m.source == source {
        seen.insert(m.mountpoint)
        let r = records.first { $0.mountpoint == m.mountpoint }
        let live = r.map { FuseMounts.daemonAlive($0.pid) } ?? false
        rows.append(MountRow(mountpoint: m.mountpoint, pid: r?.pid, state: live ? "live" : "stale"))
    }
    for r in records where !seen.contains(r.mountpoint) && r.node == String(node, radix: 16) {
        // Detached lazily: its daemon serves the processes still in it.
        let detached = FuseMounts.daemonAlive(r.pid)
        rows.append(MountRow(mountpoint: r.mountpoint, pid: r.pid, state: detached ? "detached" : "stale"))
    }
    return rows
}

/// glibc's POSIX_SPAWN_SETSID (a GNU extension the Glibc module leaves out).
let posixSpawnSetsid: Int32 = 0x80

func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}
