import CFosFuse
import CFosSys
import FosCore
import FosFSClient
import FosMounts
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// fos-fuse: the fos file system as a FUSE mount. `fosctl mount` starts it
/// in a session of its own, with stdout and stderr on a log file and a pipe
/// on --ready-fd that gets "ok" once the mount answers, or one error line.
///
///     fos-fuse [--runtime DIR] [--allow-other] [--read-only] [--ready-fd N]
///              [--timeout SECONDS] [--debug] MOUNTPOINT
///
/// It unmounts and exits on SIGTERM, SIGINT or SIGHUP, when the node stops,
/// and when the file system is unmounted under it.
struct Options {
    var runtime = NodePaths.defaultRuntime()
    var mountpoint = ""
    var allowOther = false
    var readOnly = false
    var readyFD: Int32 = -1
    /// nil: 10 s when the daemon announces others' changes (root), else 1 s.
    var timeout: Double?
    var debug = false

    static func parse(_ args: [String]) -> Options {
        var o = Options()
        var i = 0
        func value() -> String {
            i += 1
            guard i < args.count else { usage("\(args[i - 1]) needs a value") }
            return args[i]
        }
        while i < args.count {
            switch args[i] {
            case "--runtime": o.runtime = value()
            case "--allow-other": o.allowOther = true
            case "--read-only": o.readOnly = true
            case "--ready-fd": o.readyFD = Int32(value()) ?? { usage("--ready-fd needs a number") }()
            case "--timeout":
                guard let t = Double(value()), t >= 0, t <= 3600 else { usage("--timeout needs 0...3600 seconds") }
                o.timeout = t
            case "--debug": o.debug = true
            case let a where a.hasPrefix("-"): usage("unknown option \(a)")
            case let a:
                guard o.mountpoint.isEmpty else { usage("one mount point only") }
                o.mountpoint = a
            }
            i += 1
        }
        guard !o.mountpoint.isEmpty else { usage("no mount point") }
        o.mountpoint = FuseMounts.normalize(o.mountpoint)
        return o
    }
}

func usage(_ why: String) -> Never {
    FileHandle.standardError.write(Data("fos-fuse: \(why)\nusage: fos-fuse [--runtime DIR] [--allow-other] [--read-only] [--ready-fd N] [--timeout S] [--debug] MOUNTPOINT\n".utf8))
    exit(2)
}

func say(_ s: String) {
    let stamp = String(format: "%.3f", Date().timeIntervalSince1970)
    FileHandle.standardError.write(Data("fos-fuse[\(getpid())] \(stamp): \(s)\n".utf8))
}

func fail(_ ready: Ready, _ s: String) -> Never {
    say(s)
    ready.tell("error: " + s)
    exit(1)
}

/// Runs `body` on the fos loop and waits for it (start-up only).
func onLoop<T: Sendable>(_ rt: FosRuntime, _ body: @escaping @Sendable () async throws -> T) throws -> T {
    let done = DispatchSemaphore(value: 0)
    let result = Mutex<Result<T, Error>?>(nil)
    rt.loop.spawn {
        do {
            let v = try await body()
            result.withLock { $0 = .success(v) }
        } catch {
            result.withLock { $0 = .failure(error) }
        }
        done.signal()
    }
    done.wait()
    return try result.withLock { $0! }.get()
}

func main() -> Never {
    fos_sys_keep_heap()
    let opts = Options.parse(Array(CommandLine.arguments.dropFirst()))
    // A daemon keeps none of its starter's descriptors (a pipe someone
    // waits on for EOF, say) but stdio and the ready pipe.
    let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd"))?.compactMap { Int32($0) } ?? []
    for fd in fds where fd > 2 && fd != opts.readyFD { close(fd) }
    let ready = Ready(opts.readyFD)

    // Termination signals go to a thread of ours (sigwait). Blocked before
    // any thread starts, so that every thread inherits the mask.
    var sigs = sigset_t()
    sigemptyset(&sigs)
    for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&sigs, s) }
    pthread_sigmask(SIG_BLOCK, &sigs, nil)
    signal(SIGPIPE, SIG_IGN)
    // Hold no directory of whoever started us.
    _ = chdir("/")

    var st = stat()
    if stat(opts.mountpoint, &st) != 0 { fail(ready, "\(opts.mountpoint): \(String(cString: strerror(errno)))") }
    if st.st_mode & S_IFMT != S_IFDIR { fail(ready, "\(opts.mountpoint): not a directory") }
    // libfuse mounts through fusermount3 for others than root, but only
    // after opening /dev/fuse itself (0666 on most systems, not on all).
    if geteuid() != 0 && access("/dev/fuse", R_OK | W_OK) != 0 {
        fail(ready, "/dev/fuse is not open to uid \(geteuid()) (\(String(cString: strerror(errno)))): only root can mount here")
    }

    let rt: FosRuntime
    do {
        // Requests come as a stream of round trips, each waiting for the last:
        // a loop that spins 200 µs between them is awake for the next one
        // (waking a sleeping thread costs tens of µs, more on a VM). It
        // spins yielding: the caller, woken by the answer, is often on the
        // same core, and the scheduler would let a plain spin finish first
        // (a create through the mount took 100-110 µs instead of 70-77).
        let spin: UInt64? = ProcessInfo.processInfo.environment["FOS_SPIN_US"] == nil ? 200 : nil
        rt = try FosRuntime.connect(runtime: opts.runtime, ownThread: false, spinMicros: spin, spinYields: true)
    } catch {
        fail(ready, "\(error)")
    }
    let shutdown = Shutdown()
    // The loop's thread; `run` returns when the node goes away.
    let loopThread = Thread {
        rt.run()
        shutdown.begin("the node stopped")
    }
    loopThread.name = "fos-loop"
    loopThread.stackSize = 1 << 20
    loopThread.start()

    let fs: FSClient, lockClient: FSClient
    do {
        (fs, lockClient) = try onLoop(rt) {
            let fs = try await FSClient.connect(rt)
            // Requests go to their inode's home member (a restarted member
            // is found again within two seconds).
            await fs.routeByInode()
            rt.loop.spawn {
                while true {
                    try? await Task.sleep(for: .seconds(2))
                    await fs.routeByInode()
                }
            }
            return (fs, try await FSClient.connect(rt, timeout: .seconds(2)))
        }
    } catch {
        fail(ready, "the file system fleet /sys/fs does not answer: \(error)")
    }

    let node = String(rt.node, radix: 16)
    let mountpoint = opts.mountpoint
    let runtime = opts.runtime
    // Names and attributes are cached long when every change by others is
    // announced; without that (not root: no change log), for a second.
    let timeout = opts.timeout ?? (geteuid() == 0 ? 10 : 1)
    let daemon = Daemon(rt: rt, fs: fs, lockClient: lockClient, timeout: timeout) { conn in
        say("mounted \(mountpoint) for node \(node): protocol \(conn.proto_major).\(conn.proto_minor), max_write \(conn.max_write), "
            + "max_readahead \(conn.max_readahead), max_background \(conn.max_background), want 0x\(String(conn.want, radix: 16))")
        // The kernel waits for INIT's answer, which follows this call: the
        // rest (which uses the mount) happens on another thread.
        let t = Thread { announce(mountpoint: mountpoint, runtime: runtime, node: node, maxWrite: conn.max_write, ready: ready) }
        t.start()
    }
    if daemon.actsForCallers {
        try? onLoop(rt) { await daemon.orphans.sweep(alive: FuseMounts.daemonAlive) }
    }
    var ops = makeOps()
    var err = [CChar](repeating: 0, count: 256)
    let fsname = FuseMounts.source(node: rt.node)
    let started = mountpoint.withCString { mp in
        fsname.withCString { name in
            var cfg = fosfuse_config(mountpoint: mp, fsname: name, allow_other: opts.allowOther ? 1 : 0,
                                     read_only: opts.readOnly ? 1 : 0, debug: opts.debug ? 1 : 0,
                                     max_background: 64, changes_announced: daemon.invalidator != nil ? 1 : 0)
            return fosfuse_session(&cfg, &ops, Unmanaged.passRetained(daemon).toOpaque(), &err, err.count)
        }
    }
    if started != 0 {
        fail(ready, String(decoding: err.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) + (geteuid() == 0 ? "" : " (see the log; is fusermount3 installed?)"))
    }

    // The loop reads the device itself (fos_fuse.c says why).
    let device = fosfuse_device_fd()
    if device < 0 {
        let why = String(cString: strerror(errno))
        fosfuse_unmount()
        fail(ready, "cannot make the FUSE device non-blocking: \(why)")
    }
    rt.loop.spawn {
        rt.loop.addPoller(wakeFD: device, drains: false) { fosfuse_poll(64) > 0 }
    }
    daemon.invalidator?.start()

    let signalThread = Thread {
        var set = sigset_t()
        sigemptyset(&set)
        for s in [SIGTERM, SIGINT, SIGHUP] { sigaddset(&set, s) }
        var sig: Int32 = 0
        sigwait(&set, &sig)
        shutdown.begin("signal \(sig)")
    }
    signalThread.start()
    shutdown.armed()

    fosfuse_loop()

    // The device stays readable now (waiting requests, or an error): out of
    // the loop's epoll, or the loop spins; before the unmount closes it, so
    // that the number is still the device's.
    rt.loop.removePollerFD(device)
    FuseMounts.remove(runtime: runtime, mountpoint: mountpoint)
    fosfuse_unmount()
    ready.tell("error: the mount ended before it answered (see the log)")
    say("unmounted \(mountpoint) (\(shutdown.reason ?? "unmounted from outside")); largest write \(daemon.stats.largestWrite.load(ordering: .relaxed)) B, "
        + "largest read \(daemon.stats.largestRead.load(ordering: .relaxed)) B")
    exit(0)
}

main()
