import CFosSys
import FosCore
import FosMounts
import Foundation

// fos-bench fuse: the same POSIX workload on the fos FUSE mount, on /fos
// through the shim (this program's `fuse-round` under fos-run) and on the
// host file system (a temporary directory), in one run: 1 MiB sequential
// write and read, 4 KiB random read, and create, stat and unlink per second.
// A private node (one fs member, fresh disk) is mounted with fosctl mount
// and unmounted at the end.

struct FuseRow: Codable {
    var test: String
    var unit: String
    var host: Double
    var fos: Double
    /// The same on /fos through the shim.
    var shim: Double
    var ratio: Double
    /// The mount with the caller on the fs member's own core (nil: the
    /// member has no core of its own, or there is no other core).
    var fosOnMemberCore: Double?
    var shimRatio: Double
    /// The same on the reference FUSE daemon (everything in its memory): the
    /// most a FUSE mount reaches on this kernel and machine.
    var reference: Double
    var referenceRatio: Double
    /// The fos mount against the reference.
    var mountToReference: Double
    var target: Double
    /// nil (absent from the JSON): not judged, the host's create rate was
    /// no reference (`hostCreateProbe`).
    var met: Bool?
}

/// Bytes of the sequential file: large enough for a steady rate, small
/// enough for the 2 GiB disk and the host's page cache.
let fuseSeqBytes = 256 << 20

/// The cores fosd gave the node's fs members (`fosctl fleets --json`).
func fsMemberCores(runtime: String) throws -> Set<Int32> {
    let c = try command([selfDir + "/fosctl", "fleets", "--runtime", runtime, "--json"])
    guard c.status == 0, let list = try? JSONSerialization.jsonObject(with: Data(c.out.utf8)) as? [[String: Any]] else {
        die("fosctl fleets failed (\(c.status)): \(c.err)")
    }
    return Set(list.filter { $0["fleet"] as? String == "/sys/fs" }.compactMap { ($0["core"] as? Int).map(Int32.init) }
        .filter { $0 >= 0 })
}

/// The lowest core this process may use that is not in `cores`.
func freeCore(avoiding cores: Set<Int32>) -> Int32? {
    let all = allCPUs()
    return withUnsafeBytes(of: all) { b in
        (0..<Int32(b.count * 8)).first { c in b[Int(c) / 8] & (1 << (c % 8)) != 0 && !cores.contains(c) }
    }
}

/// One side's measurements, in the order of `fuseTests`.
func fuseRound(_ dir: String, seconds: Double) async throws -> [Double] {
    mkdir(dir, 0o755)
    let file = dir + "/seq"
    let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 4096)
    defer { chunk.deallocate() }
    for i in 0..<chunk.count { chunk[i] = UInt8(truncatingIfNeeded: i &* 7) }
    func fail(_ what: String) -> Never { die("\(what) \(dir): \(String(cString: strerror(errno)))") }

    // Sequential write: write(2) of 1 MiB at a time, then close.
    var t0 = monotonicNanos()
    var fd = open(file, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
    if fd < 0 { fail("open") }
    for _ in 0..<(fuseSeqBytes >> 20) where write(fd, chunk.baseAddress, chunk.count) != chunk.count { fail("write") }
    close(fd)
    let writeMBs = Double(fuseSeqBytes) / 1e6 / (Double(monotonicNanos() - t0) / 1e9)

    // Sequential read of what was just written.
    t0 = monotonicNanos()
    fd = open(file, O_RDONLY | O_CLOEXEC)
    if fd < 0 { fail("open") }
    var total = 0
    while true {
        let n = read(fd, chunk.baseAddress, chunk.count)
        if n < 0 { fail("read") }
        if n == 0 { break }
        total += n
    }
    close(fd)
    if total != fuseSeqBytes { die("read \(total) bytes of \(fuseSeqBytes) in \(dir)") }
    let readMBs = Double(fuseSeqBytes) / 1e6 / (Double(monotonicNanos() - t0) / 1e9)

    // 4 KiB random reads in that file.
    fd = open(file, O_RDONLY | O_CLOEXEC)
    var rng = SystemRandomNumberGenerator()
    let blocks = UInt64(fuseSeqBytes / 4096)
    let random = try await opsPerSecond(seconds) { _ in
        if pread(fd, chunk.baseAddress, 4096, off_t(rng.next(upperBound: blocks) * 4096)) != 4096 { fail("pread") }
    }
    close(fd)
    unlink(file)

    // Metadata: create (open O_CREAT|O_EXCL, close), stat, unlink.
    var made = 0
    let create = try await opsPerSecond(seconds, limit: createLimit) { i in
        let fd = open(dir + "/f\(i)", O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0o644)
        if fd < 0 { fail("create") }
        close(fd)
        made = i + 1
    }
    var st = stat()
    let statRate = try await opsPerSecond(seconds) { i in
        if lstat(dir + "/f\(i % max(made, 1))", &st) != 0 { fail("stat") }
    }
    return [writeMBs, readMBs, random, create, statRate]
}

/// The unlink test of a round: the files `fuseRound` created in `dir`,
/// then the directory. Done for every round only after all of them have
/// created theirs: ext4 without a journal (this machine's host) passes
/// over inodes freed in the last minutes when it allocates one, and the
/// host's creates after an earlier round's unlinks ran 40 times slower
/// (1 500 a second instead of 60 000), which made the mount look faster
/// than the host.
func fuseUnlinkRound(_ dir: String, seconds: Double) async throws -> Double {
    var made = 0
    while access(dir + "/f\(made)", F_OK) == 0 { made += 1 }
    if made == 0 { die("no files to unlink in \(dir): its round did not run there") }
    let rate = try await opsPerSecond(seconds, limit: made) { i in
        if unlink(dir + "/f\(i)") != 0 { die("unlink \(dir)/f\(i): \(String(cString: strerror(errno)))") }
    }
    rmdir(dir)
    return rate
}

let fuseTests: [(name: String, unit: String, target: Double)] = [
    ("1 MiB sequential write", "MB/s", 0.9), ("1 MiB sequential read", "MB/s", 0.9), ("4 KiB random read", "ops/s", 0.9),
    ("create (empty file)", "ops/s", 0.5), ("stat", "ops/s", 0.5), ("unlink", "ops/s", 0.5),
]

func fuseBench(runs: Int, seconds: Double, json: Bool) async throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fos-bench-fuse-\(getpid())").path
    let mp = dir + "/mnt", host = dir + "/host", refMP = dir + "/ref"
    for d in [mp, host, refMP] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
    // fosd and the daemon get every core (the driver is pinned to one).
    let pinned = threadAffinity()
    setThreadAffinity(allCPUs())
    let node = spawn([selfDir + "/fosd", "--runtime", dir + "/run", "--state", dir + "/state", "--disk-size", "2G",
                      "--fs-members", "1"], keep: [], core: -1)
    let reference = spawn([selfPath, "fuse-reference", refMP], keep: [], core: -1)
    // Both mounts go, the daemons and the node stop, also when a round dies.
    @Sendable func cleanUp() {
        _ = fos_sys_pidfd_kill(reference.pidfd, SIGTERM)
        _ = fos_sys_reap(reference.pid, 0)
        umount2(refMP, Int32(MNT_DETACH))
        if FuseMounts.isMounted(FuseMounts.normalize(mp)) {
            let u = spawn([selfDir + "/fosctl", "umount", "--runtime", dir + "/run", mp], keep: [], core: -1)
            _ = fos_sys_reap(u.pid, 0)
        }
        _ = fos_sys_pidfd_kill(node.pidfd, SIGTERM)
        _ = fos_sys_reap(node.pid, 0)
        try? FileManager.default.removeItem(atPath: dir)
    }
    let hookID = Int(getpid())
    onDie.withLock { $0.append((hookID, cleanUp)) }
    var mounted = false
    defer {
        onDie.withLock { $0.removeAll { $0.id == hookID } }
        cleanUp()
    }
    // fosctl mount fails until the node's fs fleet answers.
    for _ in 0..<300 where !mounted {
        let m = spawn([selfDir + "/fosctl", "mount", "--runtime", dir + "/run", mp], keep: [], core: -1)
        mounted = fos_sys_reap(m.pid, 0) == 0
        if !mounted { usleep(100_000) }
    }
    setThreadAffinity(pinned)
    guard mounted else { die("cannot mount the fos file system on \(mp)") }
    // The driver runs on a core fosd gave no fs member, as fos places
    // programs: the shim moves a caller off its server's core, and a program
    // left to the scheduler mostly lands there too. On the member's core the
    // member, spinning for its next request after answering, keeps the woken
    // caller waiting now and then (create and unlink through the mount take
    // about twice as long): measured as well, in a column of its own.
    let memberCores = try fsMemberCores(runtime: dir + "/run")
    let driverCore = freeCore(avoiding: memberCores) ?? clientCore
    let memberCore = memberCores.sorted().first.flatMap { $0 == driverCore ? nil : $0 }
    pinProcess(to: driverCore)
    func referenceUp() -> Bool {
        FuseMounts.mounted(fsType: "fuse.fosref").contains { $0.mountpoint == FuseMounts.normalize(refMP) }
    }
    for _ in 0..<100 where !referenceUp() { usleep(50_000) }
    guard referenceUp() else { die("the reference FUSE daemon did not mount \(refMP)") }
    // Let the daemon watch the fleet, so that open files keep their pages.
    usleep(500_000)

    let secs = max(0.2, seconds / 2)
    var fos: [[Double]] = Array(repeating: [], count: fuseTests.count)
    var hostRuns = fos, shimRuns = fos, refRuns = fos, memberCoreRuns = fos
    // The shim path: the same round in a process of its own under fos-run.
    func shimRound(_ r: Int, unlinks: Bool = false) throws -> [Double] {
        let c = try command([selfDir + "/fos-run", "--runtime", dir + "/run", "--", selfPath, "fuse-round",
                             "/fos/s\(r)", String(secs)] + (unlinks ? ["unlink"] : []))
        let v = c.out.split(separator: " ").compactMap { Double($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
        guard c.status == 0, v.count == (unlinks ? 1 : fuseTests.count - 1) else {
            die("the shim round failed (\(c.status)): \(c.err)")
        }
        return v
    }
    let hostCreate = try hostCreateProbe(host + "/probe", count: 500)
    let memoryTouch = memoryTouchProbe(mib: 64)
    for r in 0..<runs {
        // Alternate who goes first.
        if r % 2 == 1 { for (i, v) in try await fuseRound(mp + "/r\(r)", seconds: secs).enumerated() { fos[i].append(v) } }
        for (i, v) in try await fuseRound(host + "/r\(r)", seconds: secs).enumerated() { hostRuns[i].append(v) }
        if r % 2 == 0 { for (i, v) in try await fuseRound(mp + "/r\(r)", seconds: secs).enumerated() { fos[i].append(v) } }
        for (i, v) in try shimRound(r).enumerated() { shimRuns[i].append(v) }
        for (i, v) in try await fuseRound(refMP + "/r\(r)", seconds: secs).enumerated() { refRuns[i].append(v) }
        if let core = memberCore {
            pinProcess(to: core)
            for (i, v) in try await fuseRound(mp + "/c\(r)", seconds: secs).enumerated() { memberCoreRuns[i].append(v) }
            pinProcess(to: driverCore)
        }
    }
    let u = fuseTests.count - 1
    for r in 0..<runs {
        hostRuns[u].append(try await fuseUnlinkRound(host + "/r\(r)", seconds: secs))
        fos[u].append(try await fuseUnlinkRound(mp + "/r\(r)", seconds: secs))
        shimRuns[u].append(try shimRound(r, unlinks: true)[0])
        refRuns[u].append(try await fuseUnlinkRound(refMP + "/r\(r)", seconds: secs))
        if let core = memberCore {
            pinProcess(to: core)
            memberCoreRuns[u].append(try await fuseUnlinkRound(mp + "/c\(r)", seconds: secs))
            pinProcess(to: driverCore)
        }
    }
    // A host slow to create files before the runs (deletes of the last
    // minutes, `hostCreateProbe`) makes its create rate no reference.
    let hostNote = hostSlowNote(hostCreate, unjudged: "its create rate is not representative and that target is not judged")
    let hostSlow = hostNote != nil
    let rows = fuseTests.indices.map { i in
        let h = median(hostRuns[i]), f = median(fos[i]), s = median(shimRuns[i]), ref = median(refRuns[i])
        let ratio = f / max(h, 1e-9)
        let judged = !(hostSlow && fuseTests[i].name.hasPrefix("create"))
        return FuseRow(test: fuseTests[i].name, unit: fuseTests[i].unit, host: h, fos: f, shim: s, ratio: ratio,
                       fosOnMemberCore: memberCore == nil ? nil : median(memberCoreRuns[i]), shimRatio: s / max(h, 1e-9), reference: ref, referenceRatio: ref / max(h, 1e-9),
                       mountToReference: f / max(ref, 1e-9), target: fuseTests[i].target,
                       met: judged ? ratio >= fuseTests[i].target : nil)
    }
    if json {
        struct Out: Codable {
            var benchmark: String
            var runs: Int
            var secondsPerTest: Double
            var sequentialBytes: Int
            /// The driver's core, and the fs member's.
            var driverCore: Int32
            var fsMemberCores: [Int32]
            /// Microseconds per host file created before the runs.
            var hostCreateMicros: Double
            /// Microseconds per first touch of a new page of memory before the runs.
            var memoryTouchMicros: Double
            var memoryNote: String?
            var rows: [FuseRow]
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        print(String(decoding: try enc.encode(Out(benchmark: "fuse", runs: runs, secondsPerTest: secs,
                                                  sequentialBytes: fuseSeqBytes, driverCore: driverCore,
                                                  fsMemberCores: memberCores.sorted(), hostCreateMicros: hostCreate,
                                                  memoryTouchMicros: memoryTouch, memoryNote: memoryNote(memoryTouch),
                                                  rows: rows)), as: UTF8.self))
        return
    }
    print("fos FUSE mount (\(mp)) and /fos through the shim vs the host file system (\(host)): medians of \(runs) runs; "
          + "\(fuseSeqBytes >> 20) MiB sequential, \(secs) s per other test; the driver on core \(driverCore), "
          + "the fs member on \(memberCores.isEmpty ? "none" : memberCores.sorted().map(String.init).joined(separator: ", "))")
    print("")
    var table = [["test", "unit", "host", "fos mount", "on fs core", "shim", "FUSE ref", "mount/host", "target", "shim/host",
                  "ref/host", "mount/ref"]]
    for r in rows {
        table.append([r.test, r.unit, String(format: "%.0f", r.host), String(format: "%.0f", r.fos),
                      r.fosOnMemberCore.map { String(format: "%.0f", $0) } ?? "-", String(format: "%.0f", r.shim),
                      String(format: "%.0f", r.reference), String(format: "%.2f", r.ratio),
                      String(format: "≥ %.1f ", r.target) + (r.met.map { $0 ? "met" : "missed" } ?? "not judged"),
                      String(format: "%.2f", r.shimRatio),
                      String(format: "%.2f", r.referenceRatio), String(format: "%.2f", r.mountToReference)])
    }
    printTable(table, leftColumns: 2)
    printProbes(hostCreate: hostCreate, hostNote: hostNote, memoryTouch: memoryTouch)
    print("")
    print("on fs core: the mount again, with the driver on the fs member's core.")
    print("FUSE ref: a simple in-memory libfuse daemon (fos-bench's own: one thread that spins on the device between")
    print("requests as fos-fuse does, fos-fuse's mount options), answering every request from its memory: FUSE at its")
    print("fastest here, the ceiling of any daemon, next to the host and the mount.")
}
