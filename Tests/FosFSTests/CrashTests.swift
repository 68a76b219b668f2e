@testable import FosFS
import SystemPackage
import Testing

/// Random write/rename/fsync workloads on a device that loses power at a
/// random moment; the survivor must replay to a clean file system holding
/// every byte an fsync covered.
@Suite struct CrashTests {
    /// Returns whether the crash interrupted the workload (rather than following it).
    static func runSeed(_ seed: UInt64) async throws -> Bool {
        var r = SeededRandom(seed: seed)
        // Drawn apart, so that the workload of each seed stays what it was.
        var journalDraws = SeededRandom(seed: seed ^ 0x6A6F_7572)
        let base = MemoryBlockDevice(blockCount: 2048)
        try await FileSystem.mkfs(device: base, options: MkfsOptions(journalBlocks: 64))
        let dev = CrashingBlockDevice(wrapping: base, crashAfter: Int(r.next() % 40), seed: seed)
        // model: current contents per name; durable: contents an fsync covered and nothing touched since
        var model: [String: [UInt8]] = [:]
        // name -> (inode, contents, whether the name itself is durable: a full
        // fsync commits everything; fdatasync only the file's data and size)
        var durable: [String: (ino: UInt64, content: [UInt8], byName: Bool)] = [:]
        let names = (0..<6).map { "f\($0)" } + (0..<4).map { "d/g\($0)" }
        do {
            let fs = try await FileSystem.mount(device: dev, options: MountOptions(cacheBlocks: 64))
            // Half the files losing their last name stay as orphans (Orphans.swift).
            fs.mayBeOpen = { ino, _ in ino & 1 == 1 }
            let d = try await fs.mkdir(parent: rootIno, name: "d", mode: 0o755, cred: root)
            func parent(_ n: String) -> (UInt64, String) {
                n.hasPrefix("d/") ? (d.ino, String(n.dropFirst(2))) : (rootIno, n)
            }
            for _ in 0..<60 {
                let name = names[Int(r.next() % UInt64(names.count))]
                let (p, leaf) = parent(name)
                switch r.next() % 10 {
                case 0...3:  // write
                    durable[name] = nil  // (a write cut short by the crash may persist in part)
                    let a = try await fs.open(path: "/" + name, flags: [.create, .readWrite], cred: root)
                    var cur = model[name] ?? []
                    let off = Int(r.next() % 20000)
                    // One write in four is large: its whole blocks go home
                    // past the buffer cache (FileData.homeRun).
                    let size = r.next() % 4 == 0 ? Int(r.next() % 40000) + 16385 : Int(r.next() % 9000) + 1
                    let data = pattern(size, seed: r.next())
                    // Half as from a client that never fsyncs: new blocks
                    // of small writes go home instead of into the journal.
                    _ = try await fs.write(ino: a.ino, offset: UInt64(off), data: data, journalData: journalDraws.next() % 2 == 0)
                    if cur.count < off + data.count { cur += [UInt8](repeating: 0, count: off + data.count - cur.count) }
                    cur.replaceSubrange(off..<(off + data.count), with: data)
                    model[name] = cur
                    durable[name] = nil
                case 4, 5:  // fsync
                    if model[name] != nil {
                        let ino = try await fs.resolve(path: "/" + name, cred: root)
                        let dataOnly = r.next() % 2 == 0
                        try await fs.fsync(ino: ino, dataOnly: dataOnly)
                        durable[name] = (ino, model[name]!, !dataOnly)
                    }
                case 6, 7:  // rename
                    let other = names[Int(r.next() % UInt64(names.count))]
                    if model[name] != nil, other != name {
                        durable[name] = nil
                        durable[other] = nil
                        let (q, leaf2) = parent(other)
                        try await fs.rename(oldParent: p, oldName: leaf, newParent: q, newName: leaf2, cred: root)
                        model[other] = model[name]
                        model[name] = nil
                        durable[name] = nil
                        durable[other] = nil
                    }
                case 8:  // unlink
                    if model[name] != nil {
                        durable[name] = nil
                        try await fs.unlink(parent: p, name: leaf, cred: root)
                        model[name] = nil
                        durable[name] = nil
                    }
                default:  // truncate
                    if let cur = model[name] {
                        durable[name] = nil
                        let ino = try await fs.resolve(path: "/" + name, cred: root)
                        let size = Int(r.next() % UInt64(cur.count + 1))
                        _ = try await fs.setattr(ino: ino, AttributeChanges(size: UInt64(size)), cred: root)
                        model[name] = Array(cur[0..<size])
                        durable[name] = nil
                    }
                }
            }
        } catch let e as FSError where e == .posix(.ioError) {
        } catch BlockDeviceError.crashed {
        }
        let midRun = dev.hasCrashed
        try await dev.crash()
        let problems = try await FileSystem.fsck(device: base)
        #expect(problems.isEmpty, "seed \(seed): \(problems.prefix(5))")
        let fs = try await FileSystem.mount(device: base)
        for (name, (ino, content, byName)) in durable {
            if byName { #expect(try await fs.resolve(path: "/" + name, cred: root) == ino, "seed \(seed): \(name)") }
            let got = try await fs.read(ino: ino, offset: 0, count: content.count + 10)
            let ok = got == content
            let diff = zip(got, content).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1
            #expect(ok, "seed \(seed): \(name) lost fsynced data (\(got.count) vs \(content.count) bytes, first difference at \(diff))")
        }
        try await fs.releaseOrphans(try await fs.orphanList())
        #expect(try await fs.orphanList().isEmpty)
        try await fs.unmount()
        #expect(try await FileSystem.fsck(device: base).isEmpty)
        return midRun
    }

    @Test(arguments: 0..<4)
    func crashSeeds(_ part: Int) async throws {
        var interrupted = 0
        for seed in UInt64(part * 60)..<UInt64(part * 60 + 60) {
            if try await Self.runSeed(seed) { interrupted += 1 }
        }
        // Many crashes must land inside the workload, not after it.
        #expect(interrupted >= 25, "only \(interrupted) of 60 crashes interrupted the workload")
    }
}

/// New file blocks go home unflushed, before the transaction that maps them:
/// a power loss that keeps the transaction but not the data must not show
/// the blocks' previous contents (another file's) in the new file.
@Suite struct StaleDataTests {
    @Test func powerLossNeverExposesAnotherFilesOldBlocks() async throws {
        let dev = MemoryBlockDevice(blockCount: 8192)
        try await FileSystem.mkfs(device: dev, options: MkfsOptions(journalBlocks: 64))
        let fs = try await FileSystem.mount(device: dev)
        let secret = [UInt8](repeating: 0x5E, count: 64 * 1024)
        let a = try await fs.create(parent: rootIno, name: "secret", mode: 0o600, cred: root)
        _ = try await fs.write(ino: a.ino, offset: 0, data: secret)
        try await fs.fsync(ino: a.ino)
        try await fs.unlink(parent: rootIno, name: "secret", cred: root)
        try await fs.unmount()  // checkpoint: the freed blocks may be reused
        let fs2 = try await FileSystem.mount(device: dev)
        // Small writes of a client that never fsyncs go home unflushed too
        // (first, so that they get the freed blocks).
        let c = try await fs2.create(parent: rootIno, name: "small", mode: 0o644, cred: root)
        for k in 0..<16 {
            _ = try await fs2.write(ino: c.ino, offset: UInt64(k * 4096), data: [UInt8](repeating: 0x22, count: 4096),
                                    journalData: false)
        }
        let b = try await fs2.create(parent: rootIno, name: "new", mode: 0o644, cred: root)
        _ = try await fs2.write(ino: b.ino, offset: 0, data: [UInt8](repeating: 0x11, count: 64 * 1024))
        // Power goes: the journal (blocks before the AGs) survives, the data does not.
        dev.simulatePowerLoss { $0 < 2 + 4 * 64 }
        let fs3 = try await FileSystem.mount(device: dev)
        for name in ["new", "small"] {
            if let attrs = try? await fs3.lookup(parent: rootIno, name: name, cred: root) {
                let leaked = try await fs3.read(ino: attrs.ino, offset: 0, count: 64 * 1024).contains(0x5E)
                #expect(!leaked, "\(name) shows the deleted file's bytes")
            }
        }
        try await fs3.unmount()
        try await fsckClean(dev)
    }
}

/// A large write puts whole blocks home past the buffer cache
/// (FileData.homeRun); a block with an image in the journal must not go that
/// way, or replay after a power loss puts the old image back over it.
@Suite struct HomeWriteTests {
    @Test func largeOverwriteOfAJournaledBlockSurvivesReplay() async throws {
        let dev = MemoryBlockDevice(blockCount: 8192)
        try await FileSystem.mkfs(device: dev, options: MkfsOptions(journalBlocks: 64))
        let fs = try await FileSystem.mount(device: dev, options: MountOptions(cacheBlocks: 16))
        let a = try await fs.create(parent: rootIno, name: "a", mode: 0o644, cred: root)
        // A small write to a new block is journaled with its mapping.
        _ = try await fs.write(ino: a.ino, offset: 0, data: pattern(4096, seed: 1))
        try await fs.fsync(ino: a.ino)
        // Small overwrites of another file push that block out of the
        // 16-block cache; its journal image stays until a checkpoint.
        let b = try await fs.create(parent: rootIno, name: "b", mode: 0o644, cred: root)
        _ = try await fs.write(ino: b.ino, offset: 0, data: pattern(64 * 4096, seed: 2))
        for k in 0..<64 { _ = try await fs.write(ino: b.ino, offset: UInt64(k * 4096), data: pattern(4096, seed: UInt64(k))) }
        let new = pattern(64 * 1024, seed: 3)
        _ = try await fs.write(ino: a.ino, offset: 0, data: new)
        try await fs.fsync(ino: a.ino)
        // Power goes after the fsync: everything written is kept, the
        // journal replays at the next mount.
        dev.simulatePowerLoss { _ in true }
        let fs2 = try await FileSystem.mount(device: dev)
        #expect(try await fs2.read(ino: a.ino, offset: 0, count: new.count) == new)
        try await fs2.unmount()
        try await fsckClean(dev)
    }
    /// The last block of a write that goes home, new to the file and only
    /// partly written, goes in the same device write padded with zeros
    /// (not through the cache): the file reads back whole, its end reads
    /// zeros when extended, an append continues it, and after a power loss
    /// before any flush it never shows the bytes its blocks held before.
    @Test func partlyWrittenLastBlockGoesHomePadded() async throws {
        let dev = MemoryBlockDevice(blockCount: 8192)
        try await FileSystem.mkfs(device: dev, options: MkfsOptions(journalBlocks: 64))
        let fs = try await FileSystem.mount(device: dev)
        let old = try await fs.create(parent: rootIno, name: "old", mode: 0o600, cred: root)
        _ = try await fs.write(ino: old.ino, offset: 0, data: [UInt8](repeating: 0x5E, count: 64 * 1024))
        try await fs.fsync(ino: old.ino)
        try await fs.unlink(parent: rootIno, name: "old", cred: root)
        try await fs.unmount()  // checkpoint: the freed blocks may be reused

        let fs2 = try await FileSystem.mount(device: dev)
        let f = try await fs2.create(parent: rootIno, name: "f", mode: 0o644, cred: root)
        let first = pattern(3 * 4096 + 952, seed: 7)
        #expect(try await fs2.write(ino: f.ino, offset: 0, data: first, journalData: false) == first.count)
        let tail = try #require(try await fs2.inode(f.ino).map(3).physical)
        #expect(fs2.cache[tail] == nil, "the last block went through the buffer cache")
        #expect(try await fs2.read(ino: f.ino, offset: 0, count: 1 << 20) == first)
        _ = try await fs2.setattr(ino: f.ino, AttributeChanges(size: 4 * 4096), cred: root)
        #expect(try await fs2.read(ino: f.ino, offset: UInt64(first.count), count: 4096)
                == [UInt8](repeating: 0, count: 4 * 4096 - first.count))
        let more = pattern(5000, seed: 8)
        _ = try await fs2.write(ino: f.ino, offset: UInt64(first.count), data: more, journalData: false)
        let whole = first + more
        #expect(try await fs2.read(ino: f.ino, offset: 0, count: 1 << 20) == whole)
        let g = try await fs2.create(parent: rootIno, name: "g", mode: 0o644, cred: root)
        _ = try await fs2.write(ino: g.ino, offset: 0, data: pattern(5 * 4096 + 100, seed: 9), journalData: false)
        try await fs2.unmount()

        let fs3 = try await FileSystem.mount(device: dev)
        #expect(try await fs3.read(ino: f.ino, offset: 0, count: 1 << 20) == whole)
        let h = try await fs3.create(parent: rootIno, name: "h", mode: 0o644, cred: root)
        _ = try await fs3.write(ino: h.ino, offset: 0, data: [UInt8](repeating: 0x11, count: 2 * 4096 + 10),
                                journalData: false)
        // Power goes: the journal survives, the data written home does not.
        dev.simulatePowerLoss { $0 < 2 + 4 * 64 }
        let fs4 = try await FileSystem.mount(device: dev)
        if let attrs = try? await fs4.lookup(parent: rootIno, name: "h", cred: root) {
            let got = try await fs4.read(ino: attrs.ino, offset: 0, count: 1 << 20)
            #expect(!got.contains(0x5E), "h shows the deleted file's bytes")
        }
        try await fs4.unmount()
        try await fsckClean(dev)
    }
}
