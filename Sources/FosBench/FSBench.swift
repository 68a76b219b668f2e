import CFosSys
import CFosWire
import FosCore
import FosFS
import FosFSClient
import Foundation
import Synchronization

// fos-bench fs, file system section: create, stat and unlink per second,
// 4 KiB write+fsync per second, and 1 GiB sequential write (+ fsync) and
// read in MB/s, through FSClient (the fs fleet over the blk server) against
// the same operations on the host file system (a temporary directory on the
// file system that holds the node's disk image), in the same run. Runs on a
// private node of its own (one fs member, fresh disk image): the blk
// section's node has no fs fleet, since fio writes over its disk image.

struct FSOpRow: Codable {
    var test: String
    var hostOpsPerSecond: Double
    var fosOpsPerSecond: Double
    var ratio: Double
}

struct FSSeqRow: Codable {
    var test: String
    var hostMBps: Double
    var fosMBps: Double
    var ratio: Double
    /// What the device (the disk under the temporary directory) read while
    /// the test ran, medians; nil where unknown or not a read test.
    var hostDeviceReadMiB: Double?
    var fosDeviceReadMiB: Double?
}

struct FSResults: Codable {
    var ops: [FSOpRow] = []
    var sequential: [FSSeqRow] = []
}

/// Size of the sequential tests, and of the host's reads and writes.
let seqBytes = 1 << 30
let hostChunk = 1 << 20
/// The fos side's requests: the most one FSClient message carries (a
/// larger FSClient call sends its messages one after the other), and how
/// many are kept in flight so that the test measures the fleet, not one
/// round trip at a time. Issued in file order, so the member allocates the
/// file in order (requests to far-apart offsets at once would fragment it).
let fosChunk = FSClient.maxIO
let seqWindow = 16

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

/// Chunk `i` of a sequential file cut in chunks of `size`: filler bytes but
/// for the chunk's number in its first 8, which reads check (cheap, and it
/// proves the chunk came from its own place).
func seqChunkData(_ i: Int, size: Int) -> [UInt8] {
    var b = [UInt8](repeating: 0xa5, count: min(size, seqBytes - i * size))
    b.withUnsafeMutableBytes { $0.storeBytes(of: UInt64(i), as: UInt64.self) }
    return b
}

func checkSeqChunk(_ b: [UInt8], _ i: Int, size: Int, _ who: String) throws {
    let stamp = b.count >= 8 ? b.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } : UInt64.max
    guard b.count == min(size, seqBytes - i * size), stamp == UInt64(i) else {
        throw FosError.badMessage("\(who): chunk \(i) read back as \(b.count) bytes stamped \(stamp)")
    }
}

/// Runs `body(0..<count)` with at most `window` of them running at once.
func windowed(_ count: Int, window: Int, _ body: @escaping @Sendable (Int) async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { g in
        var next = 0
        while next < min(window, count) {
            let i = next
            g.addTask { try await body(i) }
            next += 1
        }
        while try await g.next() != nil, next < count {
            let i = next
            g.addTask { try await body(i) }
            next += 1
        }
        try await g.waitForAll()
    }
}

/// Sectors the block device under `path` has read so far (/proc/diskstats),
/// as bytes; nil if the device is not found there (overlay, tmpfs, ...).
func deviceReadBytes(under path: String) -> UInt64? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    let dev = UInt64(st.st_dev)
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
    let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
    guard let text = try? String(contentsOfFile: "/proc/diskstats", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") {
        let f = line.split(separator: " ", omittingEmptySubsequences: true)
        if f.count > 5, UInt64(f[0]) == major, UInt64(f[1]) == minor, let sectors = UInt64(f[5]) { return sectors * 512 }
    }
    return nil
}

struct SeqResult {
    var writeSeconds: Double
    var readSeconds: Double
    var deviceRead: UInt64?
}

/// The host's side: 1 MiB pwrite()s, fsync, then the file's cached pages
/// dropped (POSIX_FADV_DONTNEED; they are clean after the fsync) and 1 MiB
/// read()s from the start.
func hostSequential(_ path: String) throws -> SeqResult {
    let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
    guard fd >= 0 else { die("host sequential: \(String(cString: strerror(errno)))") }
    let t0 = monotonicNanos()
    for i in 0..<(seqBytes / hostChunk) {
        let n = seqChunkData(i, size: hostChunk).withUnsafeBytes { pwrite(fd, $0.baseAddress, hostChunk, off_t(i * hostChunk)) }
        guard n == hostChunk else { die("host sequential write: \(n < 0 ? String(cString: strerror(errno)) : "short")") }
    }
    guard fsync(fd) == 0 else { die("host fsync: \(String(cString: strerror(errno)))") }
    let write = Double(monotonicNanos() - t0) / 1e9
    _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
    close(fd)
    let rfd = open(path, O_RDONLY | O_CLOEXEC)
    guard rfd >= 0 else { die("host sequential: \(String(cString: strerror(errno)))") }
    defer {
        close(rfd)
        unlink(path)
    }
    _ = posix_fadvise(rfd, 0, 0, POSIX_FADV_DONTNEED)
    let dev0 = deviceReadBytes(under: path)
    let t1 = monotonicNanos()
    var buf = [UInt8](repeating: 0, count: hostChunk)
    for i in 0..<(seqBytes / hostChunk) {
        var got = 0
        while got < hostChunk {
            let n = buf.withUnsafeMutableBytes { read(rfd, $0.baseAddress! + got, hostChunk - got) }
            guard n > 0 else { die("host sequential read: \(n < 0 ? String(cString: strerror(errno)) : "end of file")") }
            got += n
        }
        try checkSeqChunk(buf, i, size: hostChunk, "host")
    }
    let readTime = Double(monotonicNanos() - t1) / 1e9
    let dev1 = deviceReadBytes(under: path)
    return SeqResult(writeSeconds: write, readSeconds: readTime, deviceRead: dev0.flatMap { a in dev1.map { $0 - a } })
}

@discardableResult
func fsBench(runs: Int, seconds: Double, json: Bool) async throws -> FSResults {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("fos-bench-fs-\(getpid())").path
    try FileManager.default.createDirectory(atPath: dir + "/host", withIntermediateDirectories: true)
    // The driver is pinned to one core by now and fosd spreads its members
    // over the cores it inherits: started from here as is, every member of
    // the node (fs and blk included) would share the client's core, where
    // spinning loops starve each other and every operation waits for the
    // scheduler. So fosd gets every core, and the client's loop goes to a
    // core the fs member is not on (below).
    let pinned = threadAffinity()
    // 1 GiB for the sequential file with room to spare (freed blocks wait for
    // a journal checkpoint before they are reused); the image is sparse.
    let node = spawnFromLastingThread([selfDir + "/fosd", "--runtime", dir + "/run", "--state", dir + "/state",
                                       "--disk-size", "3G", "--fs-members", "1"])
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

    // The sequential file: `fosChunk` writes, `seqWindow` in flight, fsync;
    // then reads of the same size from the start. The fs member's buffer
    // cache keeps none of it: whole blocks of large writes go home past it
    // (FileData.homeRun), and a large file's reads are not cached there.
    // With the disk image's cached pages dropped too (below), every block
    // read comes from the disk.
    let fosChunks = (seqBytes + fosChunk - 1) / fosChunk
    @Sendable func fosSequential(_ r: Int) async throws -> SeqResult {
        let f = try await fs.create(parent: FSClient.rootIno, name: "seq\(r)")
        let t0 = monotonicNanos()
        try await windowed(fosChunks, window: seqWindow) { i in
            let data = seqChunkData(i, size: fosChunk)
            let n = try await fs.write(ino: f.ino, offset: UInt64(i * fosChunk), data: data)
            guard n == data.count else { throw FosError.badMessage("fos sequential write: \(n) of \(data.count) bytes") }
        }
        try await fs.fsync(ino: f.ino)
        let write = Double(monotonicNanos() - t0) / 1e9
        // Cold as the host's: the members read what the kernel caches of
        // the disk image before asking the blk server (LocalCommitDevice),
        // so its pages, clean after the fsync, are dropped too.
        let img = open(dir + "/state/disk.img", O_RDONLY | O_CLOEXEC)
        guard img >= 0 else { die("cannot open the disk image to drop its pages: \(String(cString: strerror(errno)))") }
        let dropped = posix_fadvise(img, 0, 0, POSIX_FADV_DONTNEED)
        close(img)
        guard dropped == 0 else { die("cannot drop the disk image's pages: \(String(cString: strerror(dropped)))") }
        let dev0 = deviceReadBytes(under: dir)
        let t1 = monotonicNanos()
        try await windowed(fosChunks, window: seqWindow) { i in
            try checkSeqChunk(try await fs.read(ino: f.ino, offset: UInt64(i * fosChunk), count: fosChunk), i, size: fosChunk, "fos")
        }
        let read = Double(monotonicNanos() - t1) / 1e9
        let dev1 = deviceReadBytes(under: dir)
        try await fs.unlink(parent: FSClient.rootIno, name: "seq\(r)")
        return SeqResult(writeSeconds: write, readSeconds: read, deviceRead: dev0.flatMap { a in dev1.map { $0 - a } })
    }

    let names = ["create (empty file)", "stat (lookup)", "unlink", "4 KiB write + fsync"]
    var fosRuns: [[Double]] = Array(repeating: [], count: names.count)
    var hostRuns: [[Double]] = Array(repeating: [], count: names.count)
    var fosSeq: [SeqResult] = []
    var hostSeq: [SeqResult] = []
    for r in 0..<runs {
        // Alternate who goes first, as the blk section does.
        if r % 2 == 1 {
            for (i, v) in try await fosOnLoop(r).enumerated() { fosRuns[i].append(v) }
            fosSeq.append(try await frt.loop.onLoop { try await fosSequential(r) })
        }
        for (i, v) in try await hostRound(r).enumerated() { hostRuns[i].append(v) }
        hostSeq.append(try hostSequential(host + "/seq\(r)"))
        if r % 2 == 0 {
            for (i, v) in try await fosOnLoop(r).enumerated() { fosRuns[i].append(v) }
            fosSeq.append(try await frt.loop.onLoop { try await fosSequential(r) })
        }
    }
    let rows = names.indices.map { i in
        FSOpRow(test: names[i], hostOpsPerSecond: median(hostRuns[i]), fosOpsPerSecond: median(fosRuns[i]),
                ratio: median(fosRuns[i]) / max(median(hostRuns[i]), 1e-9))
    }
    func mbps(_ rs: [SeqResult], _ t: KeyPath<SeqResult, Double>) -> Double { median(rs.map { Double(seqBytes) / 1e6 / $0[keyPath: t] }) }
    func deviceMiB(_ rs: [SeqResult]) -> Double? {
        let known = rs.compactMap(\.deviceRead)
        return known.count == rs.count ? median(known.map { Double($0) / 1048576 }) : nil
    }
    let seqRows = [
        FSSeqRow(test: "1 GiB sequential write + fsync", hostMBps: mbps(hostSeq, \.writeSeconds), fosMBps: mbps(fosSeq, \.writeSeconds),
                 ratio: mbps(fosSeq, \.writeSeconds) / mbps(hostSeq, \.writeSeconds)),
        FSSeqRow(test: "1 GiB sequential read (cold)", hostMBps: mbps(hostSeq, \.readSeconds), fosMBps: mbps(fosSeq, \.readSeconds),
                 ratio: mbps(fosSeq, \.readSeconds) / mbps(hostSeq, \.readSeconds),
                 hostDeviceReadMiB: deviceMiB(hostSeq), fosDeviceReadMiB: deviceMiB(fosSeq)),
    ]
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
        print("")
        print("host: 1 MiB write()s and read()s; fos: requests of \(fosChunk / 1024) KiB (one FSClient message, the largest), \(seqWindow) in flight")
        print("")
        var seq = [["test", "host MB/s", "fos MB/s", "fos/host"]]
        for r in seqRows {
            seq.append([r.test, String(format: "%.0f", r.hostMBps), String(format: "%.0f", r.fosMBps), String(format: "%.2f", r.ratio)])
        }
        printTable(seq, leftColumns: 1)
        let cacheMiB = (MountOptions().cacheBlocks * 4096) >> 20
        func mib(_ v: Double?) -> String { v.map { String(format: "%.0f MiB", $0) } ?? "unknown" }
        print("")
        print("cold reads: the host file's pages, and the disk image's, were dropped after the fsync (POSIX_FADV_DONTNEED); the fs member's")
        print("buffer cache (\(cacheMiB) MiB) holds none of the file (large writes go home past it, large reads do not fill it); what the")
        print("page cache lacks the blk server reads through it (kernel readahead). Read from the disk")
        print("under \(dir) during the read test (median; other processes count too): host \(mib(seqRows[1].hostDeviceReadMiB)),")
        print("fos \(mib(seqRows[1].fosDeviceReadMiB)).")
    }
    frt.shutdown()
    return FSResults(ops: rows, sequential: seqRows)
}

// MARK: placement

/// Starts `argv` on every core from a thread that lives as long as the
/// bench. A child dies with the thread that started it (PR_SET_PDEATHSIG),
/// and this code runs on pool threads, which exit when idle for a few
/// seconds: started from one, fosd was killed in the middle of the
/// sequential tests, which keep the pool idle while the fos loop works.
func spawnFromLastingThread(_ argv: [String]) -> Child {
    let started = DispatchSemaphore(value: 0)
    let child = Mutex<Child?>(nil)
    Thread {
        setThreadAffinity(allCPUs())
        child.withLock { $0 = spawn(argv, keep: [], core: -1) }
        started.signal()
        while true { sleep(3600) }
    }.start()
    started.wait()
    return child.withLock { $0! }
}

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

/// Every thread of this process on `core` only: the driver's async code
/// runs on whichever pool thread is free.
func pinProcess(to core: Int32) {
    var set = cpu_set_t()
    withUnsafeMutableBytes(of: &set) { $0[Int(core) / 8] |= UInt8(1) << UInt8(core % 8) }
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? [] {
        guard let tid = pid_t(name) else { continue }
        _ = withUnsafeMutableBytes(of: &set) { setAffinity?(tid, $0.count, $0.baseAddress!) }
    }
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
