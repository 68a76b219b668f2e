import CFosFuseReference
import CFosSys
import CFosWire
import FosCore
import Foundation
import Synchronization

/// fos-bench messaging: fos channels against a Unix-domain socket and a pipe,
/// all between two processes pinned to different cores, in one run.

let usage = """
    usage: fos-bench messaging [--json] [--runs N] [--iterations N] [--runtime DIR]
           fos-bench fs [--json] [--runs N] [--seconds S]
           fos-bench fuse [--json] [--runs N] [--seconds S]
           fos-bench shim [--json] [--runs N] [--calls N]

    messaging: round trip (median, p99) and pipelined throughput at 64 B and
    4 KiB over fos channels, a Unix-domain socket and a pipe, measured in the
    same run; medians over --runs runs (default 5). Without --runtime a private
    fosd is started in a temporary directory and stopped at the end.

    fs: the blk server (4 KiB random read/write at queue depth 1 and 32, 1 MiB
    sequential read/write) against fio --ioengine=io_uring --direct=1 on the
    same image file, in the same run (--seconds per test, default 2; --runs
    default 3). Then the file system through FSClient against the host file
    system (a directory in the same temporary directory), in the same run:
    create, stat, unlink and 4 KiB write+fsync per second (--seconds / 2 per
    test), and 1 GiB sequential write+fsync and cold read in MB/s (host:
    1 MiB requests; fos: 60 KiB requests, 16 in flight). Medians over
    --runs. Always starts private nodes in a temporary directory; the fs
    node's disk image is 3 GiB (sparse): it needs about 2.5 GiB free.

    fuse: 1 MiB sequential write and read, 4 KiB random read, create, stat
    and unlink on the fos FUSE mount (fosctl mount of a private node), on
    /fos through the shim (the same code under fos-run), on the host file
    system and on a reference FUSE mount (a simple in-memory libfuse daemon
    of fos-bench's own with fos-fuse's mount options: how fast FUSE itself
    is here), in the same run (--runs default 3, --seconds per test
    default 2).

    shim: per-call latency (stat of files never looked at, stat, open+close,
    create+unlink, 4 KiB read; --calls per test, default 10000) through the
    shim on /fos against the host file system (and the FUSE mount, once
    `fosctl mount` exists), and workloads under fos-run against the same
    commands on the host (untar of a generated tree, sqlite3 with 10 000
    inserts, make -j2 of 16 C files), plus fos-run's start and exec of a
    program stored in /fos. Needs cc, tar, sqlite3 and make; medians over
    --runs (default 5), on a private node with one fs member.
    """

/// Undone before `die` exits (mounts, nodes), newest first; a section that
/// ends normally takes its own back out.
let onDie = Mutex<[(id: Int, undo: @Sendable () -> Void)]>([])

func die(_ s: String) -> Never {
    FileHandle.standardError.write(Data("fos-bench: \(s)\n".utf8))
    for hook in onDie.withLock({ h in defer { h = [] }; return h }).reversed() { hook.undo() }
    exit(2)
}

let selfPath = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
let selfDir = (selfPath as NSString).deletingLastPathComponent

var args = Array(CommandLine.arguments.dropFirst())
if args.first == "peer" {
    // peer KIND SIZE MODE COUNT [RUNTIME]
    guard args.count >= 5, let size = Int(args[2]), let count = Int(args[4]) else { die("bad peer arguments") }
    switch args[1] {
    case "socket": runFDPeer(size: size, mode: args[3], count: count, inFD: 3, outFD: 3)
    case "pipe": runFDPeer(size: size, mode: args[3], count: count, inFD: 3, outFD: 4)
    case "fos": runFosPeer(runtime: args[5], size: size, mode: args[3], count: count)
    case "rpc": runRPCPeer(runtime: args[5])
    default: die("unknown peer \(args[1])")
    }
}

if args.first == "fuse-reference" {
    // fuse-reference MOUNTPOINT: the fuse bench's in-memory FUSE daemon, until SIGTERM.
    guard args.count == 2 else { die("bad fuse-reference arguments") }
    exit(fosref_fuse_serve(args[1], -1) == 0 ? 0 : 1)
}

if args.first == "fuse-round" {
    // fuse-round DIR SECONDS [unlink]: one round of the fuse bench's tests
    // in DIR (all but unlink; with "unlink", only that, of the files the
    // round made), the numbers on one line (the shim column: under fos-run).
    guard args.count == 3 || (args.count == 4 && args[3] == "unlink"), let secs = Double(args[2]) else {
        die("bad fuse-round arguments")
    }
    do {
        let values = args.count == 4 ? [try await fuseUnlinkRound(args[1], seconds: secs)]
                                     : try await fuseRound(args[1], seconds: secs)
        print(values.map { String($0) }.joined(separator: " "))
        exit(0)
    } catch {
        die("fuse-round: \(error)")
    }
}

guard let first = args.first, ["messaging", "fs", "fuse", "shim"].contains(first) else {
    print(usage)
    exit(args.first == "--help" || args.first == "-h" ? 0 : 2)
}
let mode = args.removeFirst()
// Globals of a single-threaded driver, set before any measurement starts.
var json = false
var runs = mode == "messaging" ? 5 : 3
nonisolated(unsafe) var iterations = 20_000
var seconds = 2.0
var calls = 10_000
var runtimeDir: String?
while !args.isEmpty {
    let a = args.removeFirst()
    switch a {
    case "--json": json = true
    case "--runs": runs = args.isEmpty ? 0 : Int(args.removeFirst()) ?? 0
    case "--iterations": iterations = args.isEmpty ? 0 : Int(args.removeFirst()) ?? 0
    case "--runtime" where mode == "messaging": runtimeDir = args.isEmpty ? nil : args.removeFirst()
    case "--seconds" where mode != "messaging": seconds = args.isEmpty ? 0 : Double(args.removeFirst()) ?? 0
    case "--calls" where mode == "shim": calls = args.isEmpty ? 0 : Int(args.removeFirst()) ?? 0
    case "--help", "-h":
        print(usage)
        exit(0)
    default: die("unknown option \(a)\n\(usage)")
    }
}
guard runs >= 1, iterations >= 100, seconds >= 0.2, calls >= 100 else {
    die("--runs must be ≥ 1, --iterations ≥ 100, --seconds ≥ 0.2, --calls ≥ 100")
}

// MARK: Processes

let cores = Int(fos_sys_cpu_count())
let clientCore: Int32 = 0
let peerCore: Int32 = cores > 1 ? 1 : 0

struct Child {
    var pid: pid_t
    var pidfd: CInt
    func stop() {
        _ = fos_sys_pidfd_kill(pidfd, SIGKILL)
        _ = fos_sys_reap(pid, 0)
        close(pidfd)
    }
}

@Sendable func spawn(_ argv: [String], keep: [CInt], core: Int32) -> Child {
    var pidfd: CInt = -1
    var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
    var env: [UnsafeMutablePointer<CChar>?] = ProcessInfo.processInfo.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
    defer { (cargs + env).forEach { free($0) } }
    let pid = keep.withUnsafeBufferPointer { k in
        fos_sys_spawn(argv[0], &cargs, &env, core, k.baseAddress, Int32(k.count), &pidfd)
    }
    if pid < 0 { die("cannot start \(argv[0]): \(String(cString: strerror(-pid)))") }
    return Child(pid: pid, pidfd: pidfd)
}

// The FUSE section starts its own node and mount (FuseBench.swift).
if mode == "fuse" {
    _ = fos_sys_pin_self(clientCore)
    do {
        try await fuseBench(runs: runs, seconds: seconds, json: json)
    } catch {
        die("fuse: \(error)")
    }
    exit(0)
}

if mode == "shim" {
    // Its own node, with an fs fleet (ShimBench.swift).
    let r = try await shimBench(runs: runs, calls: calls, json: json)
    if json {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try enc.encode(r), as: UTF8.self))
    }
    exit(0)
}

/// A private node unless --runtime names one.
nonisolated(unsafe) var nodeChild: Child?
nonisolated(unsafe) var tempDir: String?
nonisolated(unsafe) var runtime = ""
if let r = runtimeDir {
    runtime = r
} else {
    let t = FileManager.default.temporaryDirectory.appendingPathComponent("fos-bench-\(getpid())").path
    tempDir = t
    runtime = t + "/run"
    nodeChild = spawn([selfDir + "/fosd", "--runtime", runtime, "--state", t + "/state", "--disk-size", "2G", "--no-fs"], keep: [], core: -1)
}
// Pin the driver only now: fosd inherits the driver's affinity and spreads its
// members over the cores it may use, so pinning first would put every member
// (fos-blk included) on the client's core, where the spinning client starves it.
_ = fos_sys_pin_self(clientCore)
func cleanup() {
    if let n = nodeChild {
        _ = fos_sys_pidfd_kill(n.pidfd, SIGTERM)
        _ = fos_sys_reap(n.pid, 0)
    }
    if let t = tempDir { try? FileManager.default.removeItem(atPath: t) }
}
atexit { cleanup() }

nonisolated(unsafe) var rt: FosRuntime!
for _ in 0..<200 {
    if let r = try? FosRuntime.connect(runtime: runtime) {
        rt = r
        break
    }
    usleep(20_000)
}
if rt == nil { die("no node on \(runtime)") }
if mode == "fs" {
    let blk = try await blockBench(image: tempDir! + "/state/disk.img")
    fflush(nil)  // the blk table is out even if what follows fails
    // File system operations vs the host's (FSBench.swift). A failure there
    // is reported, and the blk results above still stand.
    var ops = FSResults()
    do {
        ops = try await fsBench(runs: runs, seconds: seconds, json: json)
    } catch {
        FileHandle.standardError.write(Data("fos-bench: file-system section failed: \(error)\n".utf8))
    }
    if json {
        struct Out: Codable {
            var benchmark: String
            var runs: Int
            var secondsPerTest: Double
            var blk: [BlkRow]
            var fsOps: [FSOpRow]
            var fsSequential: [FSSeqRow]
            var targetBlkAtLeast09xFio: Bool
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        print(String(decoding: try enc.encode(Out(benchmark: "fs", runs: runs, secondsPerTest: seconds, blk: blk.rows,
                                                  fsOps: ops.ops, fsSequential: ops.sequential,
                                                  targetBlkAtLeast09xFio: blk.met)), as: UTF8.self))
    }
    exit(0)
}

// MARK: Measurements

struct RoundTrip {
    var median: Double
    var p99: Double
}

func percentile(_ xs: [UInt64], _ p: Double) -> Double {
    let s = xs.sorted()
    return Double(s[min(s.count - 1, Int(Double(s.count) * p))]) / 1000
}

func median(_ xs: [Double]) -> Double {
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Starts a fos peer and returns it with a detached channel to it.
func fosPeer(_ kind: String, size: Int, mode: String, count: Int) -> (Child, MailboxAddress, Capability) {
    var p: [CInt] = [0, 0]
    guard pipe(&p) == 0 else { die("pipe") }
    let c = spawn([selfPath, "peer", kind, String(size), mode, String(count), runtime], keep: [p[1]], core: peerCore)
    close(p[1])
    var line = [UInt8]()
    var b: UInt8 = 0
    while read(p[0], &b, 1) == 1, b != 10 { line.append(b) }
    close(p[0])
    let parts = String(decoding: line, as: UTF8.self).split(separator: " ")
    guard parts.count == 3, let mb = UInt64(parts[0]), let k0 = UInt64(parts[1], radix: 16),
          let k1 = UInt64(parts[2], radix: 16) else { die("fos peer did not start") }
    return (c, MailboxAddress(node: rt.node, mailbox: mb), Capability(bytes: (k0, k1)))
}

func fosRoundTrip(size: Int, sleeping: Bool = false) throws -> RoundTrip {
    let (child, addr, key) = fosPeer("fos", size: size, mode: sleeping ? "echo-sleep" : "echo", count: 0)
    defer { child.stop() }
    let ch = try rt.connectDetached(addr, key: key)
    let payload = [UInt8](repeating: 7, count: size)
    let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(FOS_MAX_PAYLOAD) + 64, alignment: 16)
    defer { buf.deallocate() }
    var samples = [UInt64]()
    samples.reserveCapacity(iterations)
    try payload.withUnsafeBytes { pb in
        for i in 0..<(iterations + iterations / 10) {
            let h = fos_msg_hdr(opcode: UInt16(FOS_OP_ECHO), requestID: UInt64(i), payloadLength: size)
            let t0 = monotonicNanos()
            try ch.send(h, pb)
            let n = try ch.receiveBlocking(into: buf, spinNanos: sleeping ? 0 : 1_000_000_000, deadline: t0 + 5_000_000_000)
            ch.release()
            let t1 = monotonicNanos()
            guard n == size + MemoryLayout<fos_msg_hdr>.size else { die("fos echo returned \(n) bytes") }
            if i >= iterations / 10 { samples.append(t1 - t0) }
        }
    }
    return RoundTrip(median: percentile(samples, 0.5), p99: percentile(samples, 0.99))
}

func fosStream(size: Int, count: Int) throws -> Double {
    let (child, addr, key) = fosPeer("fos", size: size, mode: "stream", count: count)
    defer { child.stop() }
    let ch = try rt.connectDetached(addr, key: key)
    let payload = [UInt8](repeating: 7, count: size)
    let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    defer { buf.deallocate() }
    let h = fos_msg_hdr(opcode: UInt16(FOS_OP_ECHO), requestID: 0, payloadLength: size, flags: UInt32(FOS_MSG_ONEWAY))
    var best = 0.0
    // Warm-up round, then the measured one.
    for round in 0..<2 {
        let t0 = monotonicNanos()
        try payload.withUnsafeBytes { pb in
            for _ in 0..<count {
                try ch.send(h, pb)
            }
        }
        _ = try ch.receiveBlocking(into: buf, spinNanos: 1_000_000_000, deadline: t0 + 30_000_000_000)
        ch.release()
        let dt = Double(monotonicNanos() - t0) / 1e9
        if round == 1 { best = Double(count) / dt }
    }
    return best
}

func rpcRoundTrip(size: Int, n: Int) async throws -> RoundTrip {
    let (child, addr, key) = fosPeer("rpc", size: size, mode: "echo", count: 0)
    defer { child.stop() }
    let ch = try await rt.connect(addr, key: key)
    let payload = [UInt8](repeating: 7, count: size)
    // Measured from a task on the fos event loop, as a server calling another
    // server would: the call suspends, the loop polls, the reply resumes it.
    let samples = try await rt.loop.onLoop {
        var samples = [UInt64]()
        for i in 0..<(n + n / 10) {
            let t0 = monotonicNanos()
            let r = try await rt.call(ch, opcode: UInt16(FOS_OP_ECHO), payload: payload)
            let t1 = monotonicNanos()
            guard r.payload.count == size else { die("rpc echo returned \(r.payload.count) bytes") }
            if i >= n / 10 { samples.append(t1 - t0) }
        }
        return samples
    }
    try await rt.close(ch)
    return RoundTrip(median: percentile(samples, 0.5), p99: percentile(samples, 0.99))
}

/// Reference transports: "socket" (AF_UNIX stream socketpair) or "pipe".
func fdPeer(_ kind: String, size: Int, mode: String, count: Int) -> (Child, CInt, CInt) {
    if kind == "socket" {
        var sv: [CInt] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else { die("socketpair") }
        let c = spawn([selfPath, "peer", kind, String(size), mode, String(count)], keep: [sv[1]], core: peerCore)
        close(sv[1])
        return (c, sv[0], sv[0])
    }
    var toPeer: [CInt] = [0, 0], fromPeer: [CInt] = [0, 0]
    guard pipe(&toPeer) == 0, pipe(&fromPeer) == 0 else { die("pipe") }
    for fd in toPeer + fromPeer { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
    let c = spawn([selfPath, "peer", kind, String(size), mode, String(count)], keep: [toPeer[0], fromPeer[1]], core: peerCore)
    close(toPeer[0])
    close(fromPeer[1])
    return (c, fromPeer[0], toPeer[1])
}

func ioFull(_ fd: CInt, _ p: UnsafeMutableRawPointer, _ n: Int, write w: Bool) {
    var done = 0
    while done < n {
        let r = w ? write(fd, p + done, n - done) : read(fd, p + done, n - done)
        if r < 0 && errno == EINTR { continue }
        if r <= 0 { die("reference transport failed") }
        done += r
    }
}

func fdRoundTrip(_ kind: String, size: Int) -> RoundTrip {
    let (child, rfd, wfd) = fdPeer(kind, size: size, mode: "echo", count: 0)
    defer {
        close(rfd)
        if wfd != rfd { close(wfd) }
        child.stop()
    }
    let buf = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
    defer { buf.deallocate() }
    var samples = [UInt64]()
    samples.reserveCapacity(iterations)
    for i in 0..<(iterations + iterations / 10) {
        let t0 = monotonicNanos()
        ioFull(wfd, buf, size, write: true)
        ioFull(rfd, buf, size, write: false)
        let t1 = monotonicNanos()
        if i >= iterations / 10 { samples.append(t1 - t0) }
    }
    return RoundTrip(median: percentile(samples, 0.5), p99: percentile(samples, 0.99))
}

func fdStream(_ kind: String, size: Int, count: Int) -> Double {
    let (child, rfd, wfd) = fdPeer(kind, size: size, mode: "stream", count: count)
    defer {
        close(rfd)
        if wfd != rfd { close(wfd) }
        child.stop()
    }
    let buf = UnsafeMutableRawPointer.allocate(byteCount: max(size, 8), alignment: 16)
    defer { buf.deallocate() }
    var rate = 0.0
    for round in 0..<2 {
        let t0 = monotonicNanos()
        for _ in 0..<count { ioFull(wfd, buf, size, write: true) }
        ioFull(rfd, buf, 8, write: false)
        if round == 1 { rate = Double(count) / (Double(monotonicNanos() - t0) / 1e9) }
    }
    return rate
}

// MARK: Run

struct Row: Codable {
    var test: String
    var size: Int
    var unit: String
    var fos: Double
    var unixSocket: Double
    var pipe: Double
    var rpc: Double?
}

var rows: [Row] = []
var checks: [(String, Bool)] = []
for size in [64, 4096] {
    var rtF: [RoundTrip] = [], rtU: [RoundTrip] = [], rtP: [RoundTrip] = [], rtR: [RoundTrip] = []
    var rtS: [RoundTrip] = []
    var stF: [Double] = [], stU: [Double] = [], stP: [Double] = []
    let fosCount = size <= 64 ? 2_000_000 : 400_000
    let refCount = size <= 64 ? 200_000 : 100_000
    for _ in 0..<runs {
        // Interleave transports so drift of a noisy machine hits all alike.
        rtF.append(try fosRoundTrip(size: size))
        rtS.append(try fosRoundTrip(size: size, sleeping: true))
        rtU.append(fdRoundTrip("socket", size: size))
        rtP.append(fdRoundTrip("pipe", size: size))
        rtR.append(try await rpcRoundTrip(size: size, n: max(1000, iterations / 4)))
        stF.append(try fosStream(size: size, count: fosCount))
        stU.append(fdStream("socket", size: size, count: refCount))
        stP.append(fdStream("pipe", size: size, count: refCount))
    }
    let rtMed = Row(test: "round trip median", size: size, unit: "µs", fos: median(rtF.map(\.median)),
                    unixSocket: median(rtU.map(\.median)), pipe: median(rtP.map(\.median)), rpc: median(rtR.map(\.median)))
    let rtP99 = Row(test: "round trip p99", size: size, unit: "µs", fos: median(rtF.map(\.p99)),
                    unixSocket: median(rtU.map(\.p99)), pipe: median(rtP.map(\.p99)), rpc: median(rtR.map(\.p99)))
    let st = Row(test: "pipelined", size: size, unit: "M msg/s", fos: median(stF) / 1e6, unixSocket: median(stU) / 1e6,
                 pipe: median(stP) / 1e6)
    // Both sides sleep on their eventfd after every message: the wake-up path.
    let rtSleep = Row(test: "round trip, no spinning", size: size, unit: "µs", fos: median(rtS.map(\.median)),
                      unixSocket: rtMed.unixSocket, pipe: rtMed.pipe)
    rows += [rtMed, rtP99, rtSleep, st]
    if size == 64 {
        checks.append(("round trip ≥ 5× faster than Unix socket (64 B)", rtMed.unixSocket / rtMed.fos >= 5))
        checks.append(("pipelined ≥ 10 M msg/s (64 B)", st.fos >= 10))
    }
}

if json {
    struct Out: Codable {
        var benchmark: String
        var runs: Int
        var iterations: Int
        var cores: Int
        var rows: [Row]
        var targets: [String: Bool]
    }
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    let out = Out(benchmark: "messaging", runs: runs, iterations: iterations, cores: cores, rows: rows,
                  targets: Dictionary(uniqueKeysWithValues: checks))
    print(String(decoding: try enc.encode(out), as: UTF8.self))
} else {
    func f(_ x: Double) -> String { x >= 100 ? String(format: "%.0f", x) : String(format: "%.2f", x) }
    print("fos messaging benchmark: medians of \(runs) runs, \(iterations) round trips each, client on core \(clientCore), peer on core \(peerCore)")
    print("")
    let header = ["test", "size", "unit", "fos channel", "fos rpc", "unix socket", "pipe", "unix/fos", "pipe/fos"]
    var table: [[String]] = [header]
    for r in rows {
        let better = r.unit == "µs" ? r.unixSocket / r.fos : r.fos / r.unixSocket
        let betterP = r.unit == "µs" ? r.pipe / r.fos : r.fos / r.pipe
        table.append([r.test, r.size == 64 ? "64 B" : "4 KiB", r.unit, f(r.fos), r.rpc.map(f) ?? "-", f(r.unixSocket),
                      f(r.pipe), String(format: "%.1f×", better), String(format: "%.1f×", betterP)])
    }
    printTable(table, leftColumns: 3)
    print("")
    print("(×: how many times better fos is; for throughput rows, fos rate / reference rate)")
    for (name, ok) in checks { print("target: \(name): \(ok ? "met" : "NOT met")") }
}
exit(0)
