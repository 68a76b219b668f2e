import FosCore
import FosFS
import FosFSClient
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Several clients at once on a two-member fleet, each with a model of what
// its files must hold. Clients only change their own files, so the expected
// end state does not depend on how their operations interleave; the shared
// directory and the shared O_APPEND log are where they meet.

/// A record appended to the shared log: who, which, how long, a checksum, then the payload.
struct LogRecord: Sendable {
    var offset: UInt64
    var bytes: [UInt8]

    static let header = 16

    static func make(client: Int, seq: Int, payload: [UInt8]) -> [UInt8] {
        var h = [UInt8]()
        for v in [UInt32(client), UInt32(seq), UInt32(payload.count), Checksum(payload).crc] {
            withUnsafeBytes(of: v.littleEndian) { h += $0 }
        }
        return h + payload
    }
}

/// What one client leaves behind: its files (path to contents) and its log records.
struct ClientResult: Sendable {
    var client: Int
    var member: Int
    var dir: String
    var files: [String: [UInt8]]
    var log: [LogRecord]
    var ops: [String: Int]
}

/// The first offset where two byte strings differ (or the shorter length).
func firstDifference(_ a: [UInt8], _ b: [UInt8]) -> Int {
    let n = min(a.count, b.count)
    for i in 0..<n where a[i] != b[i] { return i }
    return n
}

/// Applies a write at `offset` to a model file (a write past the end leaves a hole of zeros).
func modelWrite(_ file: inout [UInt8], _ offset: Int, _ data: [UInt8]) {
    if file.count < offset + data.count { file += [UInt8](repeating: 0, count: offset + data.count - file.count) }
    file.replaceSubrange(offset..<(offset + data.count), with: data)
}

/// One client's workload: random operations on its own files in its own
/// directory and in /shared, and records appended to /shared/log. Throws
/// with the seed and the operation on the first surprise.
func runClient(_ c: Int, fs: FSClient, member: Int, seed: UInt64, ops: Int, sharedIno: UInt64,
               logIno: UInt64) async throws -> ClientResult {
    var rng = SplitMix64(seed: seed &+ UInt64(c) &* 0x1_0000_0001)
    let own = "/c\(c)"
    let ownIno = try await fs.mkdir(path: own).ino
    let dirs = [(own, ownIno), ("/shared", sharedIno)]
    var files: [String: [UInt8]] = [:]
    var log: [LogRecord] = []
    var counts: [String: Int] = [:]
    var made = 0

    func fresh(_ n: Int) -> [UInt8] { seededBytes(n, seed: rng.next()) }
    func dirOf(_ path: String) -> (String, UInt64) { path.hasPrefix("/shared/") ? dirs[1] : dirs[0] }
    func nameOf(_ path: String) -> String { String(path.split(separator: "/").last!) }

    for step in 0..<ops {
        let paths = files.keys.sorted()
        var kind = Int.random(in: 0..<10, using: &rng)
        if paths.isEmpty || (paths.count < 4 && kind > 6) { kind = 0 }
        if paths.count > 14, kind == 0 { kind = 5 }
        let ino: (String) async throws -> UInt64 = { try await fs.resolve(path: $0) }
        var what = ""
        do {
            switch kind {
            case 0, 1:
                // A new file of 0...300 KiB, written in up to three pieces in
                // random order (holes filled later), at unaligned boundaries.
                let (dir, dirIno) = dirs[Int.random(in: 0...1, using: &rng)]
                let name = "c\(c)-\(made)"
                made += 1
                let data = fresh(Int.random(in: 0...300 * 1024, using: &rng))
                what = "create \(dir)/\(name) (\(data.count) B)"
                let f = try await fs.create(parent: dirIno, name: name)
                var cuts = [0, data.count]
                for _ in 0..<Int.random(in: 0...2, using: &rng) { cuts.append(Int.random(in: 0...data.count, using: &rng)) }
                cuts.sort()
                var pieces = (0..<(cuts.count - 1)).map { (cuts[$0], cuts[$0 + 1]) }
                pieces.shuffle(using: &rng)
                for (a, b) in pieces where b > a {
                    #expect(try await fs.write(ino: f.ino, offset: UInt64(a), data: Array(data[a..<b])) == b - a)
                }
                files["\(dir)/\(name)"] = data
                counts["create", default: 0] += 1
            case 2:
                // Overwrite a range at an unaligned offset (possibly past the end).
                let p = paths.randomElement(using: &rng)!
                let off = Int.random(in: 0...(files[p]!.count + 5000), using: &rng)
                let data = fresh(Int.random(in: 1...100_000, using: &rng))
                what = "overwrite \(p) at \(off) (\(data.count) B)"
                #expect(try await fs.write(ino: try await ino(p), offset: UInt64(off), data: data) == data.count)
                modelWrite(&files[p]!, off, data)
                counts["overwrite", default: 0] += 1
            case 3:
                // O_APPEND: the member places it at the end.
                let p = paths.randomElement(using: &rng)!
                let data = fresh(Int.random(in: 1...70_000, using: &rng))
                what = "append \(p) (\(data.count) B)"
                let r = try await fs.append(ino: try await ino(p), data: data)
                #expect(r.offset == UInt64(files[p]!.count) && r.count == data.count, "\(what): went to \(r)")
                files[p]! += data
                counts["append", default: 0] += 1
            case 4:
                // Truncate, shorter or longer (an unaligned size).
                let p = paths.randomElement(using: &rng)!
                let size = Int.random(in: 0...(files[p]!.count + 20_000), using: &rng)
                what = "truncate \(p) to \(size)"
                _ = try await fs.truncate(ino: try await ino(p), size: UInt64(size))
                if size < files[p]!.count { files[p]!.removeLast(files[p]!.count - size) } else {
                    files[p]! += [UInt8](repeating: 0, count: size - files[p]!.count)
                }
                counts["truncate", default: 0] += 1
            case 5:
                let p = paths.randomElement(using: &rng)!
                what = "unlink \(p)"
                try await fs.unlink(parent: dirOf(p).1, name: nameOf(p))
                files[p] = nil
                counts["unlink", default: 0] += 1
            case 6:
                // Rename within the directory: to a new name, or over another of
                // our files there (which must then be gone); NOREPLACE refuses.
                let p = paths.randomElement(using: &rng)!
                let (dir, dirIno) = dirOf(p)
                let others = paths.filter { $0 != p && dirOf($0).0 == dir }
                if let q = others.randomElement(using: &rng), Bool.random(using: &rng) {
                    what = "rename \(p) over \(q)"
                    #expect(await errnoOf {
                        try await fs.rename(oldParent: dirIno, oldName: nameOf(p), newParent: dirIno, newName: nameOf(q),
                                            flags: .noReplace)
                    } == EEXIST, "\(what) with RENAME_NOREPLACE")
                    try await fs.rename(oldParent: dirIno, oldName: nameOf(p), newParent: dirIno, newName: nameOf(q))
                    files[q] = files[p]
                } else {
                    let name = "c\(c)-\(made)"
                    made += 1
                    what = "rename \(p) to \(name)"
                    try await fs.rename(oldParent: dirIno, oldName: nameOf(p), newParent: dirIno, newName: name)
                    files["\(dir)/\(name)"] = files[p]
                }
                files[p] = nil
                counts["rename", default: 0] += 1
            case 7:
                // A record in the shared log: one message, so one atomic append.
                let rec = LogRecord.make(client: c, seq: log.count, payload: fresh(Int.random(in: 0...4000, using: &rng)))
                what = "log record \(log.count) (\(rec.count) B)"
                let r = try await fs.append(ino: logIno, data: rec)
                #expect(r.count == rec.count, "\(what): \(r)")
                log.append(LogRecord(offset: r.offset, bytes: rec))
                counts["log", default: 0] += 1
            case 8:
                // Read-your-writes through our own member, mid-workload.
                let p = paths.randomElement(using: &rng)!
                what = "read back \(p)"
                let got = try await fs.readFile(path: p)
                #expect(Checksum(got) == Checksum(files[p]!), "\(what): \(got.count) B, expected \(files[p]!.count), differ at \(firstDifference(got, files[p]!))")
                counts["read", default: 0] += 1
            default:
                let p = paths.randomElement(using: &rng)!
                what = "fsync \(p)"
                try await fs.fsync(ino: try await ino(p), dataOnly: Bool.random(using: &rng))
                counts["fsync", default: 0] += 1
            }
        } catch {
            throw TestFailure("seed \(seed), client \(c) (member \(member)), step \(step): \(what): \(error)")
        }
    }
    return ClientResult(client: c, member: member, dir: own, files: files, log: log, ops: counts)
}

/// Checks every client's files and directory, the shared directory and the
/// log, each client's work read through a client of the other member.
func verifyClients(_ results: [ClientResult], readers: [Int: FSClient], _ what: String) async throws {
    for r in results {
        let fs = try #require(readers[1 - r.member])
        for (path, want) in r.files.sorted(by: { $0.key < $1.key }) {
            let got = try await fs.readFile(path: path)
            #expect(Checksum(got) == Checksum(want),
                    "\(what): client \(r.client)'s \(path): \(got.count) B, expected \(want.count), differ at \(firstDifference(got, want))")
        }
        let listed = Set(try await fs.listDirectory(path: r.dir).map(\.name))
        let expected = Set(r.files.keys.filter { $0.hasPrefix(r.dir + "/") }.map { String($0.dropFirst(r.dir.count + 1)) })
        #expect(listed == expected, "\(what): \(r.dir) lists \(listed.symmetricDifference(expected).sorted()) wrongly")
    }
    for fs in readers.values {
        let listed = Set(try await fs.listDirectory(path: "/shared").map(\.name))
        let expected = Set(results.flatMap { $0.files.keys.filter { $0.hasPrefix("/shared/") } }.map { String($0.dropFirst(8)) })
        #expect(listed == expected.union(["log"]), "\(what): /shared lists \(listed.symmetricDifference(expected.union(["log"])).sorted()) wrongly")
        // The log: every record where its append said, intact, and together
        // they tile the file (appends neither overlapped nor left gaps).
        let log = try await fs.readFile(path: "/shared/log")
        var end: UInt64 = 0
        for rec in results.flatMap(\.log).sorted(by: { $0.offset < $1.offset }) {
            #expect(rec.offset == end, "\(what): log record at \(rec.offset), previous one ended at \(end)")
            let at = Int(rec.offset)
            let stored = at + rec.bytes.count <= log.count ? Array(log[at..<(at + rec.bytes.count)]) : []
            #expect(Checksum(stored) == Checksum(rec.bytes), "\(what): log record at \(rec.offset) (\(rec.bytes.count) B) damaged")
            end = rec.offset + UInt64(rec.bytes.count)
        }
        #expect(UInt64(log.count) == end, "\(what): log is \(log.count) B, records end at \(end)")
    }
}

@Suite("fs: concurrent clients", .serialized)
struct FSConcurrencyTests {
    /// Clients on both members at once: files of 0...300 KiB written in
    /// pieces, overwritten, appended to, truncated, renamed and unlinked, a
    /// shared directory and a shared O_APPEND log. Every byte is checked
    /// through the other member, again after a clean restart, and fsck must
    /// find the disk clean.
    @Test("8 clients on two members: checksummed files verified through the other member and after a restart")
    func concurrentClients() async throws {
        let seed = testSeed()
        let clients = 8
        let ops = ProcessInfo.processInfo.environment["FOS_CONCURRENCY_OPS"].flatMap(Int.init) ?? 250
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            // Each client its own runtime (as separate processes would have)
            // and its own channel, alternating between the members.
            let first = try await FSClient.connect(try node.runtime())
            let second = try await FSClient.connect(try node.runtime(), excluding: [first.member])
            let byMember = [try await first.statfs().member: first, try await second.statfs().member: second]
            #expect(Set(byMember.keys) == [0, 1])
            let shared = try await first.mkdir(path: "/shared")
            let logIno = try await first.create(parent: shared.ino, name: "log").ino

            var fleet: [(FSClient, Int)] = []
            for c in 0..<clients {
                let m = c % 2
                let fs = try await FSClient.connect(try node.runtime(), excluding: [byMember[1 - m]!.member])
                fleet.append((fs, m))
            }
            let start = monotonicNanos()
            let results = try await withThrowingTaskGroup(of: ClientResult.self) { group in
                for (c, (fs, m)) in fleet.enumerated() {
                    group.addTask {
                        try await runClient(c, fs: fs, member: m, seed: seed, ops: ops, sharedIno: shared.ino, logIno: logIno)
                    }
                }
                var all: [ClientResult] = []
                for try await r in group { all.append(r) }
                return all.sorted { $0.client < $1.client }
            }
            let took = seconds(since: start)
            var total: [String: Int] = [:]
            for r in results { total.merge(r.ops, uniquingKeysWith: +) }
            // The workload did what it is meant to test.
            for op in ["create", "overwrite", "append", "truncate", "unlink", "rename", "log", "read", "fsync"] {
                #expect(total[op, default: 0] >= clients, "seed \(seed): only \(total[op, default: 0]) \(op) operations")
            }
            #expect(try await fsRestarts(node) == 0, "seed \(seed)")
            try await verifyClients(results, readers: byMember, "seed \(seed), \(took) s of work")

            try await restartCheckingDisk(node, "seed \(seed)")
            let r0 = try await FSClient.connect(try node.runtime())
            let r1 = try await FSClient.connect(try node.runtime(), excluding: [r0.member])
            let readers = [try await r0.statfs().member: r0, try await r1.statfs().member: r1]
            try await verifyClients(results, readers: readers, "seed \(seed), after a restart")
        }
    }
}
