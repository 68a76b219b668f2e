@testable import FosFS
import Testing

/// The delta transaction format (JournalRecords.swift) on its own; replay
/// through it is exercised by CrashTests and every remount test.
@Suite struct JournalRecordTests {
    func block(_ seed: UInt8) -> [UInt8] { (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) } }

    @Test func changedRangesFindEveryChangeAndMergeNeighbours() {
        let a = block(1)
        var b = a
        #expect(DeltaFormat.changedRanges(a, b).isEmpty)
        b[0] ^= 1
        b[17] ^= 1  // two words later: merged with the first
        b[2000] ^= 1
        b[4095] ^= 1
        let r = DeltaFormat.changedRanges(a, b)
        #expect(r == [0..<24, 2000..<2008, 4088..<4096])
        // Applying the ranges of b onto a gives b.
        var c = a
        for x in r { c.replaceSubrange(x, with: b[x]) }
        #expect(c == b)
    }

    /// The chunked diff against the plain word-by-word one, on random
    /// changes: in chunks, across chunk edges, in runs and scattered.
    @Test func changedRangesMatchAWordByWordDiff() {
        func plain(_ a: [UInt8], _ b: [UInt8]) -> [Range<Int>] {
            var out: [Range<Int>] = []
            let words = a.count / 8
            func differs(_ i: Int) -> Bool { a[(i * 8)..<(i * 8 + 8)] != b[(i * 8)..<(i * 8 + 8)] }
            var i = 0
            while i < words {
                guard differs(i) else {
                    i += 1
                    continue
                }
                let start = i
                var end = i + 1
                i += 1
                while i < words, i - end < DeltaFormat.mergeGapWords {
                    if differs(i) { end = i + 1 }
                    i += 1
                }
                out.append(start * 8..<end * 8)
                i = end
            }
            return out
        }
        var rng = SeededRandom(seed: 11)
        let a = block(5)
        for round in 0..<2000 {
            var b = a
            for _ in 0..<(round % 12) {
                let at = Int.random(in: 0..<4096, using: &rng)
                let len = round % 3 == 0 ? Int.random(in: 1...300, using: &rng) : 1
                for k in at..<min(4096, at + len) { b[k] ^= UInt8.random(in: 1...255, using: &rng) }
            }
            #expect(DeltaFormat.changedRanges(a, b) == plain(a, b), "round \(round)")
        }
    }

    @Test func roundTripAndWholeBlockWhenCheaper() throws {
        let old = block(2)
        var small = old
        small.put64(512, 0xDEAD_BEEF)
        let whole = block(9)
        var w = DeltaFormat.Writer(seq: 7)
        w.addChanges(home: 100, old: old, new: small)
        w.addChanges(home: 101, old: old, new: whole)  // everything changed: one whole-block record
        w.addChanges(home: 102, old: nil, new: whole)
        let t = w.finish(flags: 4, boot: 99)
        #expect(t.count % DeltaFormat.alignment == 0)
        #expect(DeltaFormat.length(Array(t.prefix(DeltaFormat.headerBytes)), seq: 7) == t.count)
        #expect(DeltaFormat.length(t, seq: 8) == nil)
        let p = try #require(try DeltaFormat.parse(t, seq: 7, homes: 50..<200))
        #expect(p.flags == 4 && p.boot == 99)
        #expect(p.records.map(\.home) == [100, 101, 102])
        #expect(p.records[0].bytes.count < 64)
        #expect(p.records[1].offset == 0 && p.records[1].bytes.count == 4096)
        var img = old
        img.replaceSubrange(p.records[0].offset..<(p.records[0].offset + p.records[0].bytes.count), with: p.records[0].bytes)
        #expect(img == small)
    }

    @Test func tornOrForeignTransactionsAreNotReplayed() throws {
        var w = DeltaFormat.Writer(seq: 3)
        var new = block(3)
        new[40] ^= 0xFF
        w.addChanges(home: 60, old: block(3), new: new)
        let t = w.finish(flags: 0, boot: 1)
        var torn = t
        torn[36] ^= 1
        #expect(try DeltaFormat.parse(torn, seq: 3, homes: 50..<200) == nil)
        #expect(try DeltaFormat.parse(t, seq: 4, homes: 50..<200) == nil)
        // Checks out but names a block outside the allocation groups: corrupt.
        #expect(throws: FSError.self) { try DeltaFormat.parse(t, seq: 3, homes: 70..<200) }
    }
}

/// Transactions are packed into the slot: small operations share blocks,
/// and they all replay after a crash (no unmount).
@Suite struct PackedJournalTests {
    @Test func smallOperationsShareBlocksAndReplay() async throws {
        let (dev, fs) = try await makeFS()
        let f = try await fs.create(parent: rootIno, name: "f", mode: 0o644, cred: root)
        let start = fs.jPos
        for k in 0..<64 {
            _ = try await fs.setattr(ino: f.ino, AttributeChanges(mode: UInt32(0o600 | (k & 0o77))), cred: root)
        }
        let used = (fs.jPos - start + 4095) / 4096
        #expect(used < 16, "64 chmods took \(used) journal blocks")
        // No unmount: everything comes back from the journal.
        let fs2 = try await FileSystem.mount(device: dev)
        let a = try await fs2.getattr(ino: f.ino)
        #expect(a.mode & 0o777 == UInt32(0o600 | (63 & 0o77)))
        try await fs2.unmount()
        try await fsckClean(dev)
    }
}

/// A power loss that drops the first block of a boot's transactions leaves
/// the later ones on disk with valid checksums: they must never replay in a
/// later boot, whose transactions reach the same places.
@Suite struct LostBootTests {
    @Test func transactionsOfALostBootNeverReplayLater() async throws {
        let (dev, fs) = try await makeFS()
        let f = try await fs.create(parent: rootIno, name: "f", mode: 0o644, cred: root)
        try await fs.unmount()
        let fs1 = try await FileSystem.mount(device: dev)
        for k in 0..<40 { _ = try await fs1.setattr(ino: f.ino, AttributeChanges(mode: UInt32(0o400 + k)), cred: root) }
        // The power loss: the block with the first of them never got there.
        let sb = try #require(Superblock.decode(try await dev.read(block: 0, count: 1)))
        try await dev.write(block: sb.journalSlotStart(0) + 1, data: [UInt8](repeating: 0, count: 4096))
        let fs2 = try await FileSystem.mount(device: dev)
        #expect(try await fs2.getattr(ino: f.ino).mode & 0o7777 == 0o644)
        var last: UInt32 = 0
        for k in 0..<32 {
            last = UInt32(0o600 + k)
            _ = try await fs2.setattr(ino: f.ino, AttributeChanges(mode: last), cred: root)
        }
        // A kill -9: the next mount replays the new boot's transactions only.
        let fs3 = try await FileSystem.mount(device: dev)
        #expect(try await fs3.getattr(ino: f.ino).mode & 0o7777 == last)
        try await fs3.unmount()
        try await fsckClean(dev)
    }
}

/// A commit that finds the journal full checkpoints first, which makes the
/// blocks freed so far reusable — its own frees among them. It must then be
/// durable before those blocks can get new data: else a power loss that
/// keeps the new data and loses the commit resurrects a file full of
/// another file's bytes.
@Suite struct CheckpointInCommitTests {
    @Test func freesOfACommitAfterACheckpointAreDurableBeforeReuse() async throws {
        let (dev, fs) = try await makeFS(mkfs: MkfsOptions(journalBlocks: 64))
        let old = pattern(64 * 1024, seed: 7)
        let a = try await fs.create(parent: rootIno, name: "a", mode: 0o644, cred: root)
        _ = try await fs.write(ino: a.ino, offset: 0, data: old)
        try await fs.fsync(ino: a.ino)
        // The next commit finds the journal full.
        fs.jPos = UInt64(fs.sb.journalBlocks) * 4096 - 64
        try await fs.unlink(parent: rootIno, name: "a", cred: root)
        // a's blocks are reusable now; b gets them (allocation from the start).
        fs.agBlockHint = fs.agBlockHint.map { _ in 0 }
        let b = try await fs.create(parent: rootIno, name: "b", mode: 0o644, cred: root)
        _ = try await fs.write(ino: b.ino, offset: 0, data: pattern(64 * 1024, seed: 8))
        // Power loss: of what was not flushed, the file data reached the
        // disk and the journal did not.
        let sb = fs.sb
        dev.simulatePowerLoss(keep: { $0 >= sb.firstAGBlock })
        dev.newBoot()
        let fs2 = try await FileSystem.mount(device: dev)
        if let again = try? await fs2.lookup(parent: rootIno, name: "a", cred: root) {
            #expect(try await fs2.read(ino: again.ino, offset: 0, count: old.count) == old, "a came back with other bytes")
        }
        try await fs2.unmount()
        try await fsckClean(dev)
    }
}

/// The member checkpoints in the pauses between bursts (checkpointIfIdle):
/// only when the journal is full enough or a delete holds space back, never
/// while an operation runs, and what it checkpointed is home: it survives a
/// power loss with the journal gone.
@Suite struct IdleCheckpointTests {
    @Test func checkpointsWhenFullEnoughAndNotBusy() async throws {
        let (dev, fs) = try await makeFS(mkfs: MkfsOptions(journalBlocks: 256))
        let start = UInt64(Layout.blockSize)
        let a = try await fs.create(parent: rootIno, name: "a", mode: 0o644, cred: root)
        _ = try await fs.write(ino: a.ino, offset: 0, data: pattern(100, seed: 1))
        // Barely used: not worth the flushes.
        #expect(try await fs.checkpointIfIdle(minFill: 0.125) == false)
        var names: [String] = []
        for i in 0..<40 {
            let f = try await fs.create(parent: rootIno, name: "f\(i)", mode: 0o644, cred: root)
            _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(8000, seed: UInt64(i)))
            names.append("f\(i)")
        }
        let used = fs.jPos
        #expect(Double(used) >= 0.125 * Double(256 * 4096))
        // Busy: an operation holds the lock.
        #expect(fs.opLock.tryLock())
        #expect(try await fs.checkpointIfIdle(minFill: 0.125) == false)
        fs.opLock.unlock()
        #expect(fs.jPos == used)
        #expect(try await fs.checkpointIfIdle(minFill: 0.125) == true)
        #expect(fs.jPos == start)
        // Power loss, and the journal's records wiped: what the checkpoint
        // wrote home is all there is.
        dev.simulatePowerLoss(keep: { _ in false })
        dev.newBoot()
        let slot = fs.sb.journalSlotStart(fs.member)
        for b in 1..<UInt64(fs.sb.journalBlocks) {
            try await dev.write(block: slot + b, data: [UInt8](repeating: 0, count: Layout.blockSize))
        }
        try await dev.flush()
        let fs2 = try await FileSystem.mount(device: dev)
        for (i, n) in names.enumerated() {
            let f = try await fs2.lookup(parent: rootIno, name: n, cred: root)
            #expect(try await fs2.read(ino: f.ino, offset: 0, count: 8000) == pattern(8000, seed: UInt64(i)))
        }
        try await fs2.unmount()
        try await fsckClean(dev)
    }

    @Test func checkpointsWhenADeleteHoldsSpaceBack() async throws {
        let (_, fs) = try await makeFS(mkfs: MkfsOptions(journalBlocks: 256))
        let big = try await fs.create(parent: rootIno, name: "big", mode: 0o644, cred: root)
        _ = try await fs.write(ino: big.ino, offset: 0, data: pattern(9 << 20, seed: 3))
        #expect(try await fs.checkpointIfIdle(minFill: 1) == false)
        let before = try await fs.statfs().availableBlocks
        try await fs.unlink(parent: rootIno, name: "big", cred: root)
        // Freed, but held back until a checkpoint.
        #expect(try await fs.statfs().availableBlocks < before + 2048)
        #expect(try await fs.checkpointIfIdle(minFill: 1) == true)
        #expect(try await fs.statfs().availableBlocks >= before + 2304)
    }
}
