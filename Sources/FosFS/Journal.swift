// The journal: write-ahead journaling of metadata (changed byte ranges, see
// JournalRecords.swift), one slot per fleet member (0...3) so members commit
// independently.
//
// Slot layout (`journalBlocks` blocks): block 0 is the slot's superblock
// (magic, slot, startSeq, crc); transactions follow from block 1, packed one
// after another at 64-byte boundaries (JournalRecords.swift). The earlier
// whole-block format, still replayed, was
//
//     [descriptor: magic, seq, count, flags, home block numbers]
//     [count block images]
//     [commit: magic, seq, count, crc32c(descriptor + images), crc of itself]
//
// written with one device write. Because the commit record checksums
// everything before it, no flush is needed between the images and the commit
// record: a torn transaction fails its checksum, and replay stops there.
// Transactions are appended; when the next one does not fit, a checkpoint
// writes every committed block home, flushes, records the next sequence
// number as startSeq in the slot superblock, flushes, and the log restarts at
// block 1. Replay reads from block 1 and applies transactions with consecutive
// sequence numbers from startSeq until the first invalid one; anything older
// left further in the log has a smaller sequence number and stops the scan.
// Every replay restarts the numbering a slot's worth of transactions later,
// so what a power loss left behind a lost transaction never matches again.
//
// Data goes home before the transaction that maps it (see FileSystem.swift).
// Transactions are written without a flush after each operation; each
// records the boot it was written in and whether new file blocks were still
// unflushed; fsync flushes, and nothing journaled goes home unflushed.
enum JournalFormat {
    static let jsbMagic: UInt64 = 0x3130_4253_4A53_4F46  // "FOSJSB01"
    static let descMagic: UInt64 = 0x4353_4544_4A53_4F46  // "FOSJDESC"
    static let commitMagic: UInt64 = 0x5449_4D43_4A53_4F46  // "FOSJCMIT"
    static let maxDescriptorEntries = (4096 - 24) / 8
    /// Descriptor flag: a cross-member transaction (its images include blocks
    /// of other members' AGs; see Cross.swift).
    static let crossFlag: UInt32 = 1
    /// Every write issued before this transaction had been flushed.
    static let afterFlushFlag: UInt32 = 2
    /// Blocks newly allocated to files had their data written home, unflushed.
    static let freshDataFlag: UInt32 = 4

    /// The slot superblock. `flushedThrough`: transactions up to this
    /// sequence number are known durable with their data (recorded before
    /// any of their images go home).
    static func jsb(slot: Int, startSeq: UInt64, flushedThrough: UInt64 = 0) -> [UInt8] {
        var b = [UInt8].zeroBlock()
        b.put64(0, jsbMagic)
        b.put32(8, UInt32(slot))
        b.put64(16, startSeq)
        b.put64(24, flushedThrough)
        b.put32(252, crc32c(b, count: 252))
        return b
    }

    /// Replays one slot onto its home blocks. Returns the next sequence number
    /// and how many transactions were applied. Leaves the slot empty.
    static func replay(device: any BlockDevice, sb: Superblock, slot: Int) async throws -> (next: UInt64, applied: Int) {
        let r = try await scan(device: device, sb: sb, slot: slot)
        return (r.next, r.applied)
    }

    /// Walks the valid transactions of a slot and applies those that may
    /// replay. `cross`: one of them is a cross-member transaction.
    ///
    /// Which transactions replay: all valid ones written in the device's
    /// current boot (nothing unflushed was lost: a killed process loses no
    /// completed write). After a power loss, a transaction whose new file
    /// blocks were written home without a flush (`freshData`) replays only if
    /// a later one was written after a flush (`afterFlush`): otherwise its
    /// metadata could point at blocks still holding a previous file's data.
    /// Replay stops at the first that does not, keeping a prefix.
    static func scan(device: any BlockDevice, sb: Superblock, slot: Int) async throws -> (next: UInt64, applied: Int, cross: Bool) {
        var cross = false
        let start = sb.journalSlotStart(slot)
        let size = UInt64(sb.journalBlocks)
        let j = try await device.read(block: start, count: 1)
        guard j.u64(0) == jsbMagic, j.u32(252) == crc32c(j, count: 252), j.u32(8) == UInt32(slot) else {
            throw FSError.corrupt("journal slot \(slot): bad slot superblock")
        }
        let flushedThrough = j.u64(24)
        struct Found {
            var seq: UInt64
            var records: [DeltaFormat.Record]
            var flags: UInt32
            var boot: UInt64
        }
        let homes = sb.firstAGBlock..<sb.blockCount
        var found: [Found] = []
        var seq = j.u64(16)
        // Transactions are packed: each starts where the last ended (64-byte
        // aligned), so the walk is in bytes. The slot is read in chunks.
        var reader = SlotReader(device: device, start: start, blocks: size)
        let bytes = size * UInt64(Layout.blockSize)
        var pos = UInt64(Layout.blockSize)
        while pos + UInt64(DeltaFormat.headerBytes + DeltaFormat.trailerBytes) <= bytes {
            let head = try await reader.bytes(pos, DeltaFormat.headerBytes)
            if let n = DeltaFormat.length(head, seq: seq), pos + UInt64(n) <= bytes {
                let t = try await reader.bytes(pos, n)
                guard let r = try DeltaFormat.parse(t, seq: seq, homes: homes) else { break }
                found.append(Found(seq: seq, records: r.records, flags: r.flags, boot: r.boot))
                seq += 1
                pos += UInt64(n)
                continue
            }
            guard pos % UInt64(Layout.blockSize) == 0 else { break }
            let blk = pos / UInt64(Layout.blockSize)
            let desc = try await reader.bytes(pos, Layout.blockSize)
            // The whole-block format of earlier versions.
            guard blk + 2 <= size - 1, desc.u64(0) == descMagic, desc.u64(8) == seq else { break }
            let count = UInt64(desc.u32(16))
            guard count >= 1, count <= UInt64(maxDescriptorEntries), blk + count + 1 < size else { break }
            let rest = try await reader.bytes(pos + UInt64(Layout.blockSize), (Int(count) + 1) * Layout.blockSize)
            let commit = Array(rest[(Int(count) * 4096)...])
            guard commit.u64(0) == commitMagic, commit.u64(8) == seq, UInt64(commit.u32(16)) == count,
                  commit.u32(252) == crc32c(commit, count: 252) else { break }
            var crc = crc32c(desc)
            crc = crc32c(rest, count: Int(count) * 4096, seed: crc)
            guard crc == commit.u32(20) else { break }
            var records: [DeltaFormat.Record] = []
            for k in 0..<Int(count) {
                let home = desc.u64(24 + 8 * k)
                guard homes.contains(home) else {
                    throw FSError.corrupt("journal slot \(slot): transaction \(seq) targets block \(home)")
                }
                records.append(DeltaFormat.Record(home: home, offset: 0, bytes: rest[(k * 4096)..<((k + 1) * 4096)]))
            }
            found.append(Found(seq: seq, records: records, flags: desc.u32(20), boot: commit.u64(24)))
            seq += 1
            pos += (count + 2) * UInt64(Layout.blockSize)
        }
        // The prefix that may replay (see above).
        let boot = device.bootID
        var lastAfterFlush = -1
        for (k, t) in found.enumerated() where t.flags & afterFlushFlag != 0 { lastAfterFlush = k }
        var replay = 0
        while replay < found.count {
            let t = found[replay]
            let safe = t.boot == boot && boot != 0 || t.flags & freshDataFlag == 0 || replay <= lastAfterFlush
                || t.seq <= flushedThrough
            guard safe else { break }
            replay += 1
        }
        let first = j.u64(16)
        // Every record in order onto the home images (a delta onto what is
        // at home: see JournalRecords.swift), then each block written once.
        var images: [UInt64: [UInt8]] = [:]
        for t in found.prefix(replay) {
            if t.flags & crossFlag != 0 { cross = true }
            for r in t.records {
                if r.offset == 0, r.bytes.count == Layout.blockSize {
                    images[r.home] = Array(r.bytes)
                    continue
                }
                var img: [UInt8]
                if let have = images[r.home] { img = have } else { img = try await device.read(block: r.home, count: 1) }
                img.replaceSubrange(r.offset..<(r.offset + r.bytes.count), with: r.bytes)
                images[r.home] = img
            }
        }
        for home in images.keys.sorted() {
            try await device.write(block: home, data: images[home]!)
        }
        // The slot must never offer anything it holds now again: not the
        // transactions dropped above, and not those a power loss left behind
        // a lost one (numbered from startSeq on, they would match the next
        // boot's numbers once its log reaches their places). Numbering goes
        // on a whole slot's worth of transactions later, every time.
        let next = first + UInt64(found.count) + size * UInt64(Layout.blockSize) / UInt64(DeltaFormat.alignment)
        try await device.flush()
        try await device.write(block: start, data: jsb(slot: slot, startSeq: next))
        try await device.flush()
        return (next, replay, cross)
    }
}

extension FileSystem {
    var journalStart: UInt64 { sb.journalSlotStart(member) }

    /// Writes every dirty data block home (`outliving`: through the device's
    /// cheap path that only has to outlive this process until a flush).
    func writeDirtyData(outliving: Bool = false) async throws {
        var writes: [(UInt64, [UInt8])] = []
        for blk in dirtyData {
            guard let b = cache[blk] else { continue }
            b.dirtyData = false
            writes.append((blk, b.data))
        }
        dirtyData.removeAll()
        try await writeRuns(writes, outliving: outliving)
    }

    /// Commits the running transaction: dirty data (overwrites of blocks
    /// files already had) goes home, the transaction (metadata, and the data
    /// of newly allocated blocks, which is journaled with the metadata that
    /// points at it) goes to the journal, and with `flush` the device makes
    /// both durable. Without a flush the commit survives the death of this
    /// process (the blk server has the writes) but not a power loss.
    func commit(cross crossRequested: Bool = false, flush: Bool = true) async throws {
        // Anything committed while borrowing other members' AGs is part of a
        // cross-member transaction (Cross.swift), whoever asked for the commit.
        let cross = crossRequested || borrowing
        try await writeDirtyInodesAsync()
        // Through the page cache either way: with `flush`, the flush below
        // makes it durable.
        if !dirtyData.isEmpty { try await writeDirtyData(outliving: true) }
        if txnHasFreshData { freshDataUnflushed = true }
        guard !txn.isEmpty else {
            if flush { try await flushRecorded() }
            uncommitted.store(false, ordering: .releasing)
            deferredCommits = 0
            return
        }
        // A durable commit of new file blocks: their data first.
        if flush, freshDataUnflushed { try await flushDevice() }
        let blocks = txn.sorted()
        guard blocks.count <= maxTxn else {
            throw FSError.corrupt("transaction of \(blocks.count) blocks exceeds the journal (\(maxTxn))")
        }
        var w = DeltaFormat.Writer(seq: jSeq)
        for blk in blocks {
            let b = cache[blk]!
            w.addChanges(home: blk, old: b.full ? nil : b.base, new: b.data)
        }
        let need = UInt64(DeltaFormat.length(streamBytes: w.streamBytes))
        // A checkpoint makes the blocks freed so far reusable, this
        // transaction's frees among them: then it is flushed right away, so
        // no block is reused before its free is durable.
        let checkpointed = jPos + need > UInt64(sb.journalBlocks) * UInt64(Layout.blockSize)
        if checkpointed {
            try await checkpoint()
        }
        let flags = (cross ? JournalFormat.crossFlag : 0)
            | (freshDataUnflushed ? JournalFormat.freshDataFlag : JournalFormat.afterFlushFlag)
        // Packed after the last transaction: the block it ends in is written
        // again, its earlier bytes unchanged (so a torn write of that block
        // cannot damage what it already held).
        let bs = UInt64(Layout.blockSize)
        let kept = Int(jPos % bs)
        let txnBytes = w.finish(flags: flags, boot: device.bootID)
        var out = [UInt8]()
        out.reserveCapacity((kept + txnBytes.count + Layout.blockSize - 1) / Layout.blockSize * Layout.blockSize)
        out += jTail.prefix(kept)
        out += txnBytes
        out.append(contentsOf: repeatElement(0, count: (Layout.blockSize - out.count % Layout.blockSize) % Layout.blockSize))
        try await device.writeOutliving(block: journalStart + jPos / bs, data: out, unchanged: Int(jPos % bs))
        lastTxnHadFreshData = freshDataUnflushed
        txnHasFreshData = false
        txnJournaledData = 0
        if flush || checkpointed {
            try await flushDevice()
        } else {
            journalUnflushed = true
        }
        inJournal.formUnion(blocks)
        if borrowing {
            crossTouched.formUnion(blocks.filter { b in sb.ag(ofBlock: b).map { $0 % members != member } ?? false })
        }
        for blk in blocks {
            let b = cache[blk]!
            b.inTxn = false
            b.base = nil
            b.full = false
            b.committedCopy = nil
            b.needsCheckpoint = true
            checkpointSet.insert(blk)
        }
        txn.removeAll()
        jPos += need
        if jPos % bs == 0 {
            jTail = []
        } else if jTail.count == Layout.blockSize {
            // Copied into the block it holds already: no new array per commit.
            jTail.withUnsafeMutableBytes { d in
                out.withUnsafeBytes { d.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[($0.count - Layout.blockSize)...])) }
            }
        } else {
            jTail = Array(out[(out.count - Layout.blockSize)...])
        }
        jSeq += 1
        uncommitted.store(false, ordering: .releasing)
        deferredCommits = 0
    }

    /// Writes every committed block home, then empties the journal. Blocks
    /// freed before this point become reusable.
    /// A committed image may go home only once its transaction is durable:
    /// otherwise a power loss could keep the home write and lose the
    /// journal record (and the earlier ones replay depends on).
    func makeJournalDurable() async throws {
        guard journalUnflushed || lastTxnHadFreshData else { return }
        try await flushRecorded()
    }

    /// A flush after which every transaction so far replays after a power
    /// loss: one written with new file blocks unflushed (Journal.scan drops
    /// those) is recorded as durable in the slot superblock.
    func flushRecorded() async throws {
        let fresh = freshDataUnflushed || lastTxnHadFreshData
        try await flushDevice()
        guard fresh, jSeq > jStartSeq else { return }
        // Flushed right away: the cheap write is as good.
        try await device.writeOutliving(block: journalStart, data: JournalFormat.jsb(slot: member, startSeq: jStartSeq,
                                                                                     flushedThrough: jSeq - 1))
        try await flushDevice()
        lastTxnHadFreshData = false
    }

    /// Every flush makes everything written so far durable.
    func flushDevice() async throws {
        try await device.flush()
        journalUnflushed = false
        freshDataUnflushed = false
    }

    /// Checkpoints now, unless an operation runs or waits, if the journal
    /// is at least `minFill` full or at least 8 MiB freed since the last
    /// checkpoint are held back; says whether it did. The caller knows
    /// when clients pause (the fs member: no request for a while).
    ///
    /// Why: a checkpoint flushes the device three times (the journal, the
    /// blocks it wrote home, its new start), milliseconds each. Left to the
    /// commit that finds the journal full, that stall lands on one request
    /// of a burst (a tar x of a few hundred files met it every ~250 files).
    /// Done in the pauses between bursts, a burst that fits in the journal
    /// never waits for one, and space freed by a delete becomes free
    /// (statfs) without waiting for the journal to fill.
    public func checkpointIfIdle(minFill: Double) async throws -> Bool {
        guard opLock.tryLock() else { return false }
        defer { opLock.unlock() }
        let full = Double(jPos) >= minFill * Double(UInt64(sb.journalBlocks) * UInt64(Layout.blockSize))
        guard dead == nil, !borrowing, full || reservedCount >= 2048 else { return false }
        do {
            try await commit()
            try await checkpoint()
        } catch {
            dead = .posix(.ioError)
            throw error
        }
        return true
    }

    func checkpoint() async throws {
        await waitForStreamingReads()
        try await makeJournalDurable()
        var writes: [(UInt64, [UInt8])] = []
        for blk in checkpointSet {
            guard let b = cache[blk] else { continue }
            writes.append((blk, b.committedCopy ?? b.data))
            if b.committedCopy == nil { b.needsCheckpoint = false } else { b.needsCheckpoint = false; b.committedCopy = nil }
        }
        checkpointSet.removeAll()
        // Each write below is flushed before anything depends on it.
        try await writeRuns(writes, outliving: true)
        try await flushDevice()
        try await device.writeOutliving(block: journalStart, data: JournalFormat.jsb(slot: member, startSeq: jSeq))
        try await flushDevice()
        jStartSeq = jSeq
        lastTxnHadFreshData = false
        jPos = UInt64(Layout.blockSize)
        jTail = []
        inJournal.removeAll()
        reserved.removeAll()
        reservedCount = 0
        publishRoom()
    }
}

/// Reads a journal slot's bytes, a chunk of blocks at a time (replay walks
/// it once, front to back). A chunk fits one blk message: 1 MiB reads
/// (many messages in flight at once) stalled a member's mount for one to
/// five seconds in a crash-restart loop, for a reason not found yet.
struct SlotReader {
    let device: any BlockDevice
    let start: UInt64
    let blocks: UInt64
    static let chunkBlocks: UInt64 = 8
    private var chunks: [UInt64: [UInt8]] = [:]

    init(device: any BlockDevice, start: UInt64, blocks: UInt64) {
        self.device = device
        self.start = start
        self.blocks = blocks
    }

    /// `count` bytes at byte `offset` of the slot (within it: callers check).
    mutating func bytes(_ offset: UInt64, _ count: Int) async throws -> [UInt8] {
        var out = [UInt8]()
        out.reserveCapacity(count)
        var at = offset
        let chunkBytes = SlotReader.chunkBlocks * UInt64(Layout.blockSize)
        while out.count < count {
            let c = at / chunkBytes
            if chunks[c] == nil {
                let first = c * SlotReader.chunkBlocks
                let n = min(SlotReader.chunkBlocks, blocks - first)
                chunks[c] = try await device.read(block: start + first, count: Int(n))
            }
            let chunk = chunks[c]!
            let from = Int(at - c * chunkBytes)
            let take = min(count - out.count, chunk.count - from)
            guard take > 0 else { throw FSError.corrupt("journal read past its slot") }
            out += chunk[from..<(from + take)]
            at += UInt64(take)
        }
        return out
    }
}
