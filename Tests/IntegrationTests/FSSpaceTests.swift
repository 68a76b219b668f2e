import CFosCRC
import CFosSys
import FosCore
import FosFS
import FosFSClient
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A small seeded generator, so that a failing run can be replayed from its
/// printed seed (the same as FosCoreTests' SplitMix64: test targets share no code).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// `n` bytes of a seeded stream, generated a word at a time (a byte loop is slow in debug builds).
func seededBytes(_ n: Int, seed: UInt64) -> [UInt8] {
    var rng = SplitMix64(seed: seed)
    var out = [UInt8](repeating: 0, count: n)
    out.withUnsafeMutableBytes { b in
        var i = 0
        while i + 8 <= n {
            b.storeBytes(of: rng.next(), toByteOffset: i, as: UInt64.self)
            i += 8
        }
        var last = rng.next()
        while i < n {
            b[i] = UInt8(truncatingIfNeeded: last)
            last >>= 8
            i += 1
        }
    }
    return out
}

/// Length and CRC-32C of some bytes: what a test keeps instead of the bytes themselves.
struct Checksum: Equatable, CustomStringConvertible {
    var count: Int
    var crc: UInt32
    init(_ b: [UInt8]) {
        count = b.count
        crc = b.withUnsafeBytes { fos_crc32c(0, $0.baseAddress, $0.count) }
    }
    var description: String { "\(count) B crc \(String(crc, radix: 16))" }
}

/// The seed of a randomised test: FOS_TEST_SEED if set (to replay a failure), else a fresh one.
/// Tests put it into every failure message.
func testSeed() -> UInt64 {
    if let s = ProcessInfo.processInfo.environment["FOS_TEST_SEED"], let v = UInt64(s) { return v }
    return UInt64.random(in: 1...UInt64(Int64.max))
}

/// What filling a disk left behind: every file with the checksum of what it holds.
struct Fill {
    var files: [String: Checksum] = [:]
    var bytes = 0
    /// The errno of the create or write that found the disk full (-1: not a remote error).
    var stoppedBy: Int32?
    var stoppedHow = ""
}

/// Writes files of distinct seeded contents (100 KB to 3 MB, unaligned sizes)
/// through `targets` in turn until a create or a write fails. A file cut
/// short by the full disk keeps what the short write put in it.
func fillDisk(_ targets: [(fs: FSClient, dir: String)], seed: UInt64, maxFiles: Int = 400) async throws -> Fill {
    var fill = Fill()
    var rng = SplitMix64(seed: seed)
    for k in 0..<maxFiles {
        let (fs, dir) = targets[k % targets.count]
        let path = "\(dir)/f\(k)"
        let data = seededBytes(Int.random(in: 100_000...3_000_000, using: &rng), seed: seed &+ UInt64(k) &* 7919)
        var written = 0
        do {
            let (d, name) = try await fs.parent(of: path)
            let f = try await fs.create(parent: d, name: name)
            fill.files[path] = Checksum([])
            // After a short write (the disk filled part-way) the rest must fail.
            while written < data.count {
                let n = try await fs.write(ino: f.ino, offset: UInt64(written), data: Array(data[written...]))
                guard n > 0 else { throw TestFailure("a write of \(data.count - written) bytes wrote none and said nothing") }
                written += n
                fill.files[path] = Checksum(Array(data[..<written]))
            }
            fill.bytes += written
        } catch {
            fill.bytes += written
            fill.stoppedBy = remoteErrno(error) ?? -1
            fill.stoppedHow = "\(path) at byte \(written) of \(data.count): \(error)"
            return fill
        }
    }
    return fill
}

/// Reads every file back and compares it with its checksum.
func verifyFiles(_ fs: FSClient, _ files: [String: Checksum], _ what: String) async throws {
    for (path, want) in files.sorted(by: { $0.key < $1.key }) {
        let got = Checksum(try await fs.readFile(path: path))
        #expect(got == want, "\(what): \(path) holds \(got), wrote \(want)")
    }
}

/// Stops the node (SIGTERM: members unmount), checks the disk offline, starts it again.
func restartCheckingDisk(_ node: TestNode, _ what: String) async throws {
    let st = await node.terminate()
    #expect(st == 0, "\(what): fosd wait status \(st ?? -1); log:\n\(node.log)")
    let r = try await offline(node, ["fsck", "--disk", node.stateDir + "/disk.img"])
    #expect(r.status == 0 && r.stdout == "clean\n", "\(what): fsck: \(r.stdout) \(r.stderr)")
    try node.launch()
    try await node.waitReady()
}

func fsRestarts(_ node: TestNode) async throws -> Int {
    try await node.fleets().filter { $0.fleet == "/sys/fs" }.reduce(0) { $0 + $1.restarts }
}

/// 64 MiB is the smallest disk fosd accepts; mkfs makes 4 AGs of 4032 blocks
/// there (15866 data blocks, 4028 inodes), small enough to fill in a second.
let smallDisk = "64M"

@Suite("fs: full disk", .serialized)
struct FSSpaceTests {
    @Test("one member: a full disk is ENOSPC, keeps every byte, and takes writes again right after a delete")
    func fullDisk() async throws {
        let seed = testSeed()
        try await TestNode.with(members: 1, diskSize: smallDisk) { node in
            var fs = try await FSClient.connect(try node.runtime())
            let dir = try await fs.mkdir(path: "/fill")
            var fill = try await fillDisk([(fs, "/fill")], seed: seed)
            #expect(fill.stoppedBy == ENOSPC, "seed \(seed): the fill stopped with errno \(fill.stoppedBy ?? 0): \(fill.stoppedHow)")
            #expect(try await fsRestarts(node) == 0, "seed \(seed): a full disk restarted the member")
            let full = try await fs.statfs().fs
            #expect(full.availableBlocks == 0, "seed \(seed): ENOSPC with \(full.availableBlocks) blocks available")
            // Everything but the last partial block and the metadata of the files is data.
            #expect(fill.bytes > Int(full.totalBlocks) * 4096 * 95 / 100, "seed \(seed): only \(fill.bytes) bytes fit in \(full)")
            try await verifyFiles(fs, fill.files, "seed \(seed), full disk")

            // Full, the disk still takes what needs no new block: an overwrite
            // in place, an empty file in a directory block with room. A new
            // directory needs a block.
            let some = try #require(fill.files.filter { $0.value.count > 200_000 }.keys.sorted().first)
            var bytes = try await fs.readFile(path: some)
            let patch = seededBytes(100_000, seed: seed ^ 0x5a5a)
            bytes.replaceSubrange(12_345..<112_345, with: patch)
            #expect(try await fs.write(ino: try await fs.resolve(path: some), offset: 12_345, data: patch) == patch.count)
            fill.files[some] = Checksum(bytes)
            _ = try await fs.create(parent: dir.ino, name: "empty")
            fill.files["/fill/empty"] = Checksum([])
            #expect(await errnoOf { try await fs.mkdir(path: "/fill/newdir") } == ENOSPC, "seed \(seed)")

            // A write larger than the free space writes what fits and says so
            // (pwrite(2)), even when the space ends where one message of the
            // client ends and the next begins: free exactly 30 blocks (two
            // messages of 15) and write three messages' worth.
            let cut = try #require(fill.files.filter { $0.value.count > 400_000 && $0.key != some }.keys.sorted().first)
            let cutSize = (try #require(fill.files[cut]).count + 4095) / 4096 * 4096 - 30 * 4096
            let kept = Array(try await fs.readFile(path: cut).prefix(cutSize))
            _ = try await fs.truncate(ino: try await fs.resolve(path: cut), size: UInt64(cutSize))
            fill.files[cut] = Checksum(kept)
            let over = seededBytes(3 * FSClient.maxIO, seed: seed ^ 0xa5a5)
            let o = try await fs.create(parent: dir.ino, name: "over")
            var wrote = -1
            let overErr = await errnoOf { wrote = try await fs.write(ino: o.ino, offset: 0, data: over) }
            #expect(overErr == nil && wrote == 30 * 4096, "seed \(seed): write of \(over.count) bytes into 30 free blocks: errno \(overErr ?? 0), returned \(wrote)")
            // Give those blocks back: `fosctl fs put` of more than fits must
            // fail (not leave a short file behind and say nothing).
            _ = try await fs.truncate(ino: o.ino, size: 0)
            fill.files["/fill/over"] = Checksum([])
            let put = try await runCommand("/bin/sh", ["-c", "head -c 200000 /dev/zero | \"$0\" fs put /fill/put --runtime \"$1\"",
                                                       node.fosctlPath, node.runtimeDir], outputIn: node.root)
            #expect(put.status == 1 && put.stderr.contains("No space left"),
                    "seed \(seed): put of 200000 bytes into 30 free blocks: status \(put.status), \(put.stderr)")
            let putSize = Int(try await fs.stat(path: "/fill/put").size)
            fill.files["/fill/put"] = Checksum([UInt8](repeating: 0, count: putSize))

            // Deleting a file makes room at once: no fsync, no wait.
            let victims = fill.files.sorted { $0.value.count > $1.value.count }.prefix(3).map(\.key)
            let first = try #require(fill.files[victims[0]]).count
            try await fs.unlink(path: victims[0])
            fill.files[victims[0]] = nil
            let after1 = seededBytes(first * 9 / 10, seed: seed &+ 1_000_001)
            let a1 = try await fs.writeFile(path: "/fill/after-unlink", data: after1)
            #expect(a1.size == UInt64(after1.count), "seed \(seed): \(a1.size) of \(after1.count) bytes fit after freeing \(first)")
            fill.files["/fill/after-unlink"] = Checksum(after1)

            // And after an fsync of the directory, as a careful program would do.
            var freed = 0
            for v in victims.dropFirst() {
                freed += try #require(fill.files[v]).count
                try await fs.unlink(path: v)
                fill.files[v] = nil
            }
            try await fs.fsync(ino: dir.ino)
            let room = try await fs.statfs().fs
            // statfs counts freed blocks as free; as available only after a
            // checkpoint (an allocation that needs them forces one).
            #expect(room.freeBlocks >= UInt64(freed / 4096), "seed \(seed): freed \(freed) bytes, \(room)")
            let after2 = seededBytes(freed * 9 / 10, seed: seed &+ 1_000_002)
            let a2 = try await fs.writeFile(path: "/fill/after-fsync", data: after2, sync: true)
            #expect(a2.size == UInt64(after2.count), "seed \(seed): \(a2.size) of \(after2.count) bytes fit after freeing \(freed)")
            fill.files["/fill/after-fsync"] = Checksum(after2)
            try await fs.mkdir(path: "/fill/newdir")
            try await verifyFiles(fs, fill.files, "seed \(seed), after deletes")
            #expect(try await fsRestarts(node) == 0, "seed \(seed)")

            try await restartCheckingDisk(node, "seed \(seed)")
            fs = try await FSClient.connect(try node.runtime())
            try await verifyFiles(fs, fill.files, "seed \(seed), after a restart")
        }
    }

    @Test("one member: space a delete frees is available once clients pause, with no request to force it")
    func freedSpaceComesBackWhenIdle() async throws {
        try await TestNode.with(members: 1, diskSize: smallDisk) { node in
            let fs = try await FSClient.connect(try node.runtime())
            let before = try await fs.statfs().fs.availableBlocks
            _ = try await fs.writeFile(path: "/big", data: seededBytes(12 << 20, seed: 5))
            try await fs.unlink(path: "/big")
            // Held back until a checkpoint (blocks are not reused before their free is durable).
            let right = try await fs.statfs().fs.availableBlocks
            #expect(right < before - 2048, "\(right) blocks available right after the delete, \(before) before the write")
            // The member checkpoints when no request came for 200 ms: ask every 500 ms.
            var now = right
            for _ in 0..<20 where now < before - 64 {
                try await Task.sleep(for: .milliseconds(500))
                now = try await fs.statfs().fs.availableBlocks
            }
            #expect(now >= before - 64, "\(now) blocks available 10 s after the delete, \(before) before the write")
        }
    }

    @Test("one member: out of inodes, create and mkdir are ENOSPC; an unlink gives one back")
    func outOfInodes() async throws {
        let seed = testSeed()
        try await TestNode.with(members: 1, diskSize: smallDisk) { node in
            let fs = try await FSClient.connect(try node.runtime())
            let start = try await fs.statfs().fs
            var files: [String: Checksum] = [:]
            var dirs: [FileAttributes] = []
            var rng = SplitMix64(seed: seed)
            var stop: Int32?
            // Tiny files (one block each), spread over a few directories.
            while stop == nil, files.count < Int(start.totalInodes) + 10 {
                if files.count % 600 == 0 {
                    do { dirs.append(try await fs.mkdir(path: "/t\(dirs.count)")) } catch {
                        stop = remoteErrno(error) ?? -1
                        break
                    }
                }
                let d = dirs.count - 1
                let name = "i\(files.count)"
                do {
                    let f = try await fs.create(parent: dirs[d].ino, name: name)
                    let data = seededBytes(Int.random(in: 0...200, using: &rng), seed: seed &+ UInt64(files.count))
                    try await fs.write(ino: f.ino, offset: 0, data: data)
                    files["/t\(d)/\(name)"] = Checksum(data)
                } catch {
                    stop = remoteErrno(error) ?? -1
                }
            }
            #expect(stop == ENOSPC, "seed \(seed): stopped with errno \(stop ?? 0) after \(files.count) files")
            let full = try await fs.statfs().fs
            #expect(full.freeInodes == 0 && full.freeBlocks > full.totalBlocks / 2, "seed \(seed): \(full)")
            // Every inode but the root's is a file or one of the directories.
            #expect(files.count + dirs.count == Int(start.totalInodes) - 1, "seed \(seed): \(files.count) files, \(full)")
            #expect(await errnoOf { try await fs.mkdir(path: "/t0/sub") } == ENOSPC)
            #expect(await errnoOf { _ = try await fs.symlink(parent: FSClient.rootIno, name: "l", target: "/t0") } == ENOSPC)

            let gone = files.keys.sorted().prefix(3)
            for p in gone {
                try await fs.unlink(path: p)
                files[p] = nil
            }
            for k in 0..<3 { _ = try await fs.create(parent: dirs[0].ino, name: "again\(k)") }
            #expect(await errnoOf { _ = try await fs.create(parent: dirs[0].ino, name: "one-too-many") } == ENOSPC)
            #expect(try await fsRestarts(node) == 0)
            try await verifyFiles(fs, files, "seed \(seed), out of inodes")
            let st = await node.terminate()
            #expect(st == 0)
            let r = try await offline(node, ["fsck", "--disk", node.stateDir + "/disk.img"])
            #expect(r.status == 0 && r.stdout == "clean\n", "seed \(seed): fsck: \(r.stdout) \(r.stderr)")
        }
    }

    /// Two members: top-level directories on each (the fleet places them by
    /// name), files through both. A member whose AGs are full spills into
    /// the other's in a cross-member transaction, so the whole disk fills;
    /// statfs sums both members' exact parts.
    @Test("two members: the whole disk fills through both, ENOSPC through both, nothing lost")
    func fullDiskTwoMembers() async throws {
        let seed = testSeed()
        try await TestNode.with(members: 1, fsMembers: 2, diskSize: smallDisk) { node in
            let rt = try node.runtime()
            let c0 = try await FSClient.connect(rt)
            let c1 = try await FSClient.connect(rt, excluding: [c0.member])
            #expect(Set([try await c0.statfs().member, try await c1.statfs().member]) == [0, 1])
            let a = "/" + topLevelNames(on: 0, of: 2, 1)[0], b = "/" + topLevelNames(on: 1, of: 2, 1)[0]
            try await c0.mkdir(path: a)
            try await c1.mkdir(path: b)
            var fill = try await fillDisk([(c0, a), (c1, b), (c1, a), (c0, b)], seed: seed)
            #expect(fill.stoppedBy == ENOSPC, "seed \(seed): the fill stopped with errno \(fill.stoppedBy ?? 0): \(fill.stoppedHow)")
            // Full through either member, for files in either directory.
            for (m, c, dir) in [(0, c0, a), (1, c1, a), (0, c0, b), (1, c1, b)] {
                #expect(await errnoOf {
                    let f = try await c.open(path: "\(dir)/more", flags: [.create, .writeOnly])
                    try await c.write(ino: f.ino, offset: 0, data: seededBytes(8192, seed: seed))
                } == ENOSPC, "seed \(seed): writing \(dir)/more through member \(m)")
            }
            #expect(try await fsRestarts(node) == 0, "seed \(seed): a full disk restarted a member")
            try await verifyFiles(c0, fill.files, "seed \(seed), full, through member 0")
            try await verifyFiles(c1, fill.files, "seed \(seed), full, through member 1")

            let s0 = try await c0.statfs().fs, s1 = try await c1.statfs().fs
            var homes: Set<Int> = []
            for path in fill.files.keys { homes.insert(Int(try await c1.resolve(path: path) >> 32) % 2) }
            #expect(homes == [0, 1], "members homing the files: \(homes.sorted())")
            #expect(fill.bytes > Int(s0.totalBlocks) * 4096 * 9 / 10, "\(fill.bytes) bytes fit in \(s0.totalBlocks) blocks")
            #expect(s0.availableBlocks == 0, "ENOSPC, and member 0 reports \(s0.availableBlocks) blocks available")
            #expect(s1.availableBlocks == 0, "ENOSPC, and member 1 reports \(s1.availableBlocks) blocks available")

            // A delete through one member makes room for a write through the other.
            let victim = try #require(fill.files.max { $0.value.count < $1.value.count })
            try await c1.unlink(path: victim.key)
            fill.files[victim.key] = nil
            let again = seededBytes(victim.value.count * 9 / 10, seed: seed &+ 2_000_001)
            let after = try await c0.writeFile(path: "\(b)/after-unlink", data: again)
            #expect(after.size == UInt64(again.count), "seed \(seed): \(after.size) of \(again.count) bytes fit after freeing \(victim.value)")
            fill.files["\(b)/after-unlink"] = Checksum(again)

            try await restartCheckingDisk(node, "seed \(seed)")
            let c = try await FSClient.connect(try node.runtime())
            try await verifyFiles(c, fill.files, "seed \(seed), after a restart")
        }
    }

    /// The member allocates the image file's space on the host a 16 MiB
    /// chunk at a time, ahead of its first write into it (ext4 only:
    /// LocalCommitDevice.allocateAhead). A first small file costs the host
    /// at most two chunks (that of its commit and that of its block); a
    /// 40 MiB file, one run of blocks over at least three chunks not
    /// written before, costs them whole: about 48 MiB, where writes alone
    /// would have taken 40. (Measured in st_blocks: ext4's SEEK_HOLE counts
    /// allocated but unwritten space as a hole.)
    @Test("the disk image's host space is allocated a chunk ahead of the first write into it (ext4)",
          .enabled(if: allocatesAheadHere(NSTemporaryDirectory())))
    func allocatedAhead() async throws {
        try await TestNode.with(members: 1, diskSize: "256M") { node in
            let img = node.stateDir + "/disk.img"
            let c = try await FSClient.connect(try node.runtime())
            let before = try allocatedBytes(img)
            let f = try await c.create(parent: FSClient.rootIno, name: "small", mode: 0o644)
            #expect(try await c.write(ino: f.ino, offset: 0, data: pattern(4096)) == 4096)
            let grown = try allocatedBytes(img) - before
            #expect(grown >= 4 << 20, "the image grew by \(grown) bytes for a 4 KiB file: no chunk allocated ahead")
            #expect(grown <= 33 << 20, "the image grew by \(grown) bytes for a 4 KiB file: more than two chunks")

            let big = try await c.create(parent: FSClient.rootIno, name: "big", mode: 0o644)
            let data = pattern(40 << 20, seed: 3)
            let beforeBig = try allocatedBytes(img)
            #expect(try await c.write(ino: big.ino, offset: 0, data: data) == data.count)
            let grownBig = try allocatedBytes(img) - beforeBig
            #expect(grownBig >= 44 << 20, "the image grew by \(grownBig) bytes for a 40 MiB file: its chunks not allocated whole")
            #expect(grownBig <= 65 << 20, "the image grew by \(grownBig) bytes for a 40 MiB file")
            #expect(try await c.read(ino: f.ino, offset: 0, count: 4096) == pattern(4096))
            #expect(try await c.read(ino: big.ino, offset: (40 << 20) - 4096, count: 4096) == Array(data.suffix(4096)))
        }
    }
}

/// Whether `dir` is on ext4 and fallocate works there (an ext4 file system
/// without extents, or ext2 and ext3 with the same magic, refuses it).
func allocatesAheadHere(_ dir: String) -> Bool {
    let path = dir + "/fos-fallocate-probe-\(getpid())"
    let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
    guard fd >= 0 else { return false }
    defer {
        close(fd)
        unlink(path)
    }
    return fos_sys_fs_type(fd) == 0xEF53 && fos_sys_allocate(fd, 0, 4096) == 0
}

/// The bytes the host has allocated to a file (st_blocks).
func allocatedBytes(_ path: String) throws -> Int {
    var st = stat()
    guard stat(path, &st) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
    return Int(st.st_blocks) * 512
}
