import CFosSys
import CFosWire
import FosBlock
import FosCore
import Foundation

/// fos-bench fs, blk part: the blk server against fio on the same image file.

struct IOTest {
    var name: String
    var fioRW: String
    var blockSize: Int
    var depth: Int
    var random: Bool { fioRW.hasPrefix("rand") }
    var write: Bool { fioRW.hasSuffix("write") }
}

struct IOResult {
    var iops: Double
    var mbps: Double
}

/// The first GiB of the image is where every test does its I/O; it is
/// written once first so that no test reads holes.
let workingSet: UInt64 = 1 << 30

/// Fairness, both ways. Same image file and working set (the first GiB) for
/// both; random offsets drawn with replacement (fio: --norandommap
/// --randrepeat=0). Same CPUs: fos uses the client's core (where this driver
/// runs) and the server's core, so fio may run on both of them too rather
/// than on one (--cpus_allowed); one fio job, since fos has one client
/// thread. fio gets the features the blk server uses (registered buffers,
/// registered file); not --sqthread_poll, which measured no better for fio
/// at QD 1 and worse at QD 32 on this machine.
func runFio(_ image: String, _ t: IOTest, seconds: Double, cpus: String) -> IOResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    p.arguments = ["fio", "--name=ref", "--filename=\(image)", "--ioengine=io_uring", "--direct=1",
                   "--rw=\(t.fioRW)", "--bs=\(t.blockSize)", "--iodepth=\(t.depth)", "--size=\(workingSet)",
                   "--time_based", "--runtime=\(seconds)s", "--ramp_time=0", "--cpus_allowed=\(cpus)",
                   "--fixedbufs", "--registerfiles",
                   "--randrepeat=0", "--norandommap", "--output-format=json"]
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    do { try p.run() } catch { die("cannot run fio (install it: Tools/setup does): \(error)") }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    guard p.terminationStatus == 0,
          let j = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
          let jobs = j["jobs"] as? [[String: Any]], let job = jobs.first,
          let side = job[t.write ? "write" : "read"] as? [String: Any],
          let iops = (side["iops"] as? NSNumber)?.doubleValue,
          let bw = (side["bw"] as? NSNumber)?.doubleValue
    else { die("fio failed for \(t.name)") }
    return IOResult(iops: iops, mbps: bw * 1024 / 1e6)
}

/// The client side of the blk tests: one detached channel and one region big
/// enough for every test, for the whole benchmark (the channel used to be
/// opened per test and never closed, piling up channels and registered
/// buffers in the server).
struct BlkConnection {
    var channel: Channel
    var region: Region
    /// Core fosd pinned the server to (-1 if unknown).
    var serverCore: Int32
}

func connectBlk(regionBytes: Int) throws -> BlkConnection {
    let e = try awaitBlocking { try await rt.lookup("/sys/blk/0") }
    let ch = try rt.connectDetached(e.addr, key: e.key)
    let region = try rt.attach(ch, bytes: regionBytes)
    return BlkConnection(channel: ch, region: region, serverCore: ch.peer.core)
}

/// The same pattern through the blk server: `depth` requests kept in flight
/// for `seconds`; each reply is answered at once with the next request into
/// the region slot it freed.
func runFos(_ c: BlkConnection, _ t: IOTest, seconds: Double) throws -> IOResult {
    let ch = c.channel
    precondition(t.blockSize * t.depth <= c.region.size)
    let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 65536 + 64, alignment: 16)
    defer { buf.deallocate() }
    let count = UInt32(t.blockSize / Int(FOS_BLK_BLOCK))
    let span = workingSet / UInt64(t.blockSize)
    var rng = SystemRandomNumberGenerator()
    var next: UInt64 = 0
    let op = UInt16(t.write ? FOS_OP_BLK_WRITE : FOS_OP_BLK_READ)
    func issue(_ slot: Int) throws {
        let unit: UInt64
        if t.random {
            unit = UInt64.random(in: 0..<span, using: &rng)
        } else {
            unit = next
            next = (next + 1) % span
        }
        var io = fos_blk_io(block: unit * UInt64(count), count: count, slot: c.region.slot, offset: UInt64(slot * t.blockSize))
        let h = fos_msg_hdr(opcode: op, requestID: UInt64(slot), payloadLength: MemoryLayout<fos_blk_io>.size)
        try withUnsafeBytes(of: &io) { try ch.send(h, $0) }
    }
    let start = monotonicNanos()
    let end = start + UInt64(seconds * 1e9)
    for s in 0..<t.depth { try issue(s) }
    var done = 0
    var inflight = t.depth
    while inflight > 0 {
        _ = try ch.receiveBlocking(into: buf, spinNanos: 1_000_000_000, deadline: monotonicNanos() + 10_000_000_000)
        let h = buf.loadUnaligned(as: fos_msg_hdr.self)
        ch.release()
        guard h.status == 0 else { die("blk \(t.name) failed: \(String(cString: strerror(h.status)))") }
        done += 1
        inflight -= 1
        if monotonicNanos() < end {
            try issue(Int(h.request_id))
            inflight += 1
        }
    }
    let dt = Double(monotonicNanos() - start) / 1e9
    let iops = Double(done) / dt
    return IOResult(iops: iops, mbps: iops * Double(t.blockSize) / 1e6)
}

/// Runs an async call from this synchronous driver.
func awaitBlocking<T: Sendable>(_ f: @escaping @Sendable () async throws -> T) throws -> T {
    let box = ResultBox<T>()
    let sem = DispatchSemaphore(value: 0)
    Task {
        do { box.set(.success(try await f())) } catch { box.set(.failure(error)) }
        sem.signal()
    }
    sem.wait()
    return try box.get()!.get()
}

final class ResultBox<T: Sendable>: @unchecked Sendable {
    // `@unchecked Sendable`: guarded by the lock.
    private let lock = NSLock()
    private var value: Result<T, Error>?
    func set(_ v: Result<T, Error>) { lock.withLock { value = v } }
    func get() -> Result<T, Error>? { lock.withLock { value } }
}

@MainActor
func blockBench(image: String) async throws -> (rows: [BlkRow], met: Bool) {
    let allTests = [
        IOTest(name: "4 KiB random read, QD 1", fioRW: "randread", blockSize: 4096, depth: 1),
        IOTest(name: "4 KiB random read, QD 32", fioRW: "randread", blockSize: 4096, depth: 32),
        IOTest(name: "4 KiB random write, QD 1", fioRW: "randwrite", blockSize: 4096, depth: 1),
        IOTest(name: "4 KiB random write, QD 32", fioRW: "randwrite", blockSize: 4096, depth: 32),
        IOTest(name: "1 MiB sequential read, QD 4", fioRW: "read", blockSize: 1 << 20, depth: 4),
        IOTest(name: "1 MiB sequential write, QD 4", fioRW: "write", blockSize: 1 << 20, depth: 4),
    ]
    // Knobs for experiments (profiling one test): FOS_BENCH_ONLY=TEXT runs the
    // tests whose name contains TEXT, FOS_BENCH_NOFIO=1 skips fio (ratios are
    // then meaningless).
    let only = ProcessInfo.processInfo.environment["FOS_BENCH_ONLY"]
    let skipFio = ProcessInfo.processInfo.environment["FOS_BENCH_NOFIO"] != nil
    let tests = only.map { o in allTests.filter { $0.name.contains(o) } } ?? allTests
    // Fill the working set once so that reads hit allocated blocks.
    _ = runFio(image, IOTest(name: "fill", fioRW: "write", blockSize: 1 << 20, depth: 8), seconds: 0, cpus: "\(clientCore)")
    let blk = try connectBlk(regionBytes: tests.map { $0.blockSize * $0.depth }.max() ?? 4096)
    // The client must not share a core with the server it spins waiting for.
    if blk.serverCore == clientCore && cores > 1 {
        die("the blk server runs on the client's core \(clientCore): the comparison would be meaningless")
    }
    let fioCPUs = blk.serverCore >= 0 && blk.serverCore != clientCore ? "\(clientCore),\(blk.serverCore)" : "\(clientCore)"
    var fio: [[IOResult]] = Array(repeating: [], count: tests.count)
    var fos: [[IOResult]] = Array(repeating: [], count: tests.count)
    for r in 0..<runs {
        for (i, t) in tests.enumerated() {
            // Alternate who goes first: the device's speed drifts (host cache,
            // neighbours), and a fixed order would bias every ratio one way.
            if r % 2 == 1 { fos[i].append(try runFos(blk, t, seconds: seconds)) }
            fio[i].append(skipFio ? IOResult(iops: 1, mbps: 1) : runFio(image, t, seconds: seconds, cpus: fioCPUs))
            if r % 2 == 0 { fos[i].append(try runFos(blk, t, seconds: seconds)) }
        }
    }
    rt.closeDetached(blk.channel)
    withExtendedLifetime(blk) {}
    var rows: [BlkRow] = []
    for (i, t) in tests.enumerated() {
        let a = median(fio[i].map(\.iops)), b = median(fos[i].map(\.iops))
        rows.append(BlkRow(test: t.name, fioIOPS: a, fosIOPS: b, fioMBps: median(fio[i].map(\.mbps)),
                        fosMBps: median(fos[i].map(\.mbps)), ratio: b / a))
    }
    let met = rows.allSatisfy { $0.ratio >= 0.9 }
    if json { return (rows, met) }
    print("fos fs benchmark, blk server vs fio (io_uring, O_DIRECT) on the same \(image.hasSuffix(".img") ? "image file" : "disk"): medians of \(runs) runs, \(seconds) s per test")
    print("")
    var table = [["test", "fio IOPS", "fos IOPS", "fio MB/s", "fos MB/s", "fos/fio"]]
    for r in rows {
        table.append([r.test, String(format: "%.0f", r.fioIOPS), String(format: "%.0f", r.fosIOPS),
                      String(format: "%.1f", r.fioMBps), String(format: "%.1f", r.fosMBps), String(format: "%.2f", r.ratio)])
    }
    printTable(table, leftColumns: 1)
    print("")
    print("target: blk server ≥ 0.9× fio on every test: \(met ? "met" : "NOT met")")
    return (rows, met)
}

struct BlkRow: Codable {
    var test: String
    var fioIOPS: Double
    var fosIOPS: Double
    var fioMBps: Double
    var fosMBps: Double
    var ratio: Double
}
