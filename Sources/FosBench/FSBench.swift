import CFosSys
import CFosWire
import FosCore
import FosFS
import FosFSClient
import Foundation

// fos-bench fs, file system section: create, stat and unlink per second and
// 4 KiB write+fsync per second through FSClient (the fs fleet over the blk
// server) against the same operations on the host file system (a temporary
// directory), in the same run. Runs on a private node of its own (one fs
// member, fresh disk image): the blk section's node has no fs fleet, since
// fio writes over its disk image.

struct FSOpRow: Codable {
    var test: String
    var hostOpsPerSecond: Double
    var fosOpsPerSecond: Double
    var ratio: Double
}

/// Runs `op` repeatedly for `seconds` (at most `limit` times); returns
/// operations per second.
func opsPerSecond(_ seconds: Double, limit: Int = .max, _ op: (Int) async throws -> Void) async throws -> Double {
    let start = monotonicNanos()
    let end = start + UInt64(seconds * 1e9)
    var n = 0
    while monotonicNanos() < end && n < limit {
        try await op(n)
        n += 1
    }
    return Double(n) / (Double(monotonicNanos() - start) / 1e9)
}

/// Files one create round makes at most (on both sides): bounds the
/// directory and the journal a round builds, whatever --seconds says.
let createLimit = 20_000

@discardableResult
func fsBench(runs: Int, seconds: Double, json: Bool) async throws -> [FSOpRow] {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fos-bench-fs-\(getpid())").path
    try FileManager.default.createDirectory(atPath: dir + "/host", withIntermediateDirectories: true)
    // The driver is pinned to one core by now and fosd spreads its members
    // over the cores it inherits: started from here as is, every member of
    // the node (fs and blk included) would share the client's core, where
    // spinning loops starve each other and every operation waits for the
    // scheduler. So fosd gets every core, and the client's loop goes to a
    // core the fs member is not on (below).
    let pinned = threadAffinity()
    setThreadAffinity(allCPUs())
    let node = spawn([selfDir + "/fosd", "--runtime", dir + "/run", "--state", dir + "/state", "--disk-size", "1G",
                      "--fs-members", "1"], keep: [], core: -1)
    setThreadAffinity(pinned)
    defer {
        _ = fos_sys_pidfd_kill(node.pidfd, SIGTERM)
        _ = fos_sys_reap(node.pid, 0)
        try? FileManager.default.removeItem(atPath: dir)
    }
    var frt: FosRuntime?
    for _ in 0..<200 {
        if let r = try? FosRuntime.connect(runtime: dir + "/run") {
            frt = r
            break
        }
        usleep(20_000)
    }
    guard let frt else { die("no node on \(dir)/run") }
    let fs = try await FSClient.connect(frt, wait: .seconds(30))
    if let fsCore = memberCore(frt, fleet: "/sys/fs"), let core = clientCore(avoiding: fsCore, preferred: pinned) {
        _ = try await frt.loop.onLoop { fos_sys_pin_self(core) }
    }
    let host = dir + "/host"
    let block = [UInt8](repeating: 0x5a, count: 4096)
    let secs = max(0.2, seconds / 2)

    @Sendable func fosRound(_ r: Int) async throws -> [Double] {
        let d = try await fs.mkdir(parent: FSClient.rootIno, name: "r\(r)")
        var made = 0
        let create = try await opsPerSecond(secs, limit: createLimit) { i in
            _ = try await fs.create(parent: d.ino, name: "f\(i)")
            made = i + 1
        }
        let stat = try await opsPerSecond(secs) { i in _ = try await fs.lookup(parent: d.ino, name: "f\(i % max(made, 1))") }
        let unlink = try await opsPerSecond(secs, limit: made) { i in try await fs.unlink(parent: d.ino, name: "f\(i)") }
        let f = try await fs.create(parent: d.ino, name: "sync")
        let wsync = try await opsPerSecond(secs) { i in
            try await fs.write(ino: f.ino, offset: UInt64(i % 256) * 4096, data: block)
            try await fs.fsync(ino: f.ino)
        }
        return [create, stat, unlink, wsync]
    }

    // Measured from a task on the fos event loop, as `rpcRoundTrip` does and as
    // a server calling the fs fleet would: a call from a task elsewhere would
    // also pay two thread hops (onto the loop and back) per operation.
    func fosOnLoop(_ r: Int) async throws -> [Double] {
        try await frt.loop.onLoop { try await fosRound(r) }
    }

    func hostRound(_ r: Int) async throws -> [Double] {
        let d = host + "/r\(r)"
        mkdir(d, 0o755)
        var made = 0
        let create = try await opsPerSecond(secs, limit: createLimit) { i in
            let fd = open(d + "/f\(i)", O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o644)
            guard fd >= 0 else { die("host create: \(String(cString: strerror(errno)))") }
            close(fd)
            made = i + 1
        }
        var st = stat()
        let statRate = try await opsPerSecond(secs) { i in _ = lstat(d + "/f\(i % max(made, 1))", &st) }
        let unlinkRate = try await opsPerSecond(secs, limit: made) { i in unlink(d + "/f\(i)") }
        let fd = open(d + "/sync", O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        defer { close(fd) }
        let wsync = try await opsPerSecond(secs) { i in
            _ = block.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(i % 256) * 4096) }
            fsync(fd)
        }
        return [create, statRate, unlinkRate, wsync]
    }

    let names = ["create (empty file)", "stat (lookup)", "unlink", "4 KiB write + fsync"]
    var fosRuns: [[Double]] = Array(repeating: [], count: names.count)
    var hostRuns: [[Double]] = Array(repeating: [], count: names.count)
    for r in 0..<runs {
        // Alternate who goes first, as the blk section does.
        if r % 2 == 1 { for (i, v) in try await fosOnLoop(r).enumerated() { fosRuns[i].append(v) } }
        for (i, v) in try await hostRound(r).enumerated() { hostRuns[i].append(v) }
        if r % 2 == 0 { for (i, v) in try await fosOnLoop(r).enumerated() { fosRuns[i].append(v) } }
    }
    let rows = names.indices.map { i in
        FSOpRow(test: names[i], hostOpsPerSecond: median(hostRuns[i]), fosOpsPerSecond: median(fosRuns[i]),
                ratio: median(fosRuns[i]) / max(median(hostRuns[i]), 1e-9))
    }
    if !json {
        print("")
        print("fos file system (FSClient → fs fleet → blk server) vs the host file system (\(host)): medians of \(runs) runs, \(secs) s per test")
        print("")
        var table = [["test", "host ops/s", "fos ops/s", "fos/host"]]
        for r in rows {
            table.append([r.test, String(format: "%.0f", r.hostOpsPerSecond), String(format: "%.0f", r.fosOpsPerSecond),
                          String(format: "%.2f", r.ratio)])
        }
        printTable(table, leftColumns: 1)
    }
    frt.shutdown()
    return rows
}

// MARK: placement

// sched_[gs]etaffinity are _GNU_SOURCE declarations Glibc's module does not
// export; libc has them all the same.
private typealias AffinityCall = @convention(c) (pid_t, Int, UnsafeMutableRawPointer) -> Int32
nonisolated(unsafe) private let libc = dlopen(nil, RTLD_NOW)
private let getAffinity = dlsym(libc, "sched_getaffinity").map { unsafeBitCast($0, to: AffinityCall.self) }
private let setAffinity = dlsym(libc, "sched_setaffinity").map { unsafeBitCast($0, to: AffinityCall.self) }

/// The calling thread's CPU affinity.
func threadAffinity() -> cpu_set_t {
    var set = cpu_set_t()
    _ = withUnsafeMutableBytes(of: &set) { getAffinity?(0, $0.count, $0.baseAddress!) }
    return set
}

func setThreadAffinity(_ set: cpu_set_t) {
    var s = set
    _ = withUnsafeMutableBytes(of: &s) { setAffinity?(0, $0.count, $0.baseAddress!) }
}

/// Every online CPU (the kernel keeps a cpuset's limits).
func allCPUs() -> cpu_set_t {
    var set = cpu_set_t()
    let n = min(Int(sysconf(Int32(_SC_NPROCESSORS_CONF))), MemoryLayout<cpu_set_t>.size * 8)
    withUnsafeMutableBytes(of: &set) { b in
        for c in 0..<max(n, 1) { b[c / 8] |= UInt8(1) << UInt8(c % 8) }
    }
    return set
}

/// The core fosd pinned the first member of `fleet` to, if any.
func memberCore(_ rt: FosRuntime, fleet: String) -> Int32? {
    guard let text = try? rt.query(Int32(FOS_CTL_FLEETS)),
          let ms = try? JSONDecoder().decode([MemberInfo].self, from: Data(text.utf8)),
          let m = ms.first(where: { $0.fleet == fleet }), m.core >= 0 else { return nil }
    return m.core
}

/// A core other than `core`: the first of `preferred`, else the first online one.
func clientCore(avoiding core: Int32, preferred: cpu_set_t) -> Int32? {
    func cpus(_ set: cpu_set_t) -> [Int32] {
        withUnsafeBytes(of: set) { b in
            (0..<(b.count * 8)).filter { b[$0 / 8] & (UInt8(1) << UInt8($0 % 8)) != 0 }.map { Int32($0) }
        }
    }
    return (cpus(preferred) + cpus(allCPUs())).first { $0 != core }
}
