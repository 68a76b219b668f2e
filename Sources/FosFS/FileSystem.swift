// One member of the fs fleet: the in-memory state of a mounted fos file
// system — buffer cache, journal, allocator, inode cache — and the operation
// wrapper that makes every public operation atomic.
//
// Concurrency: the fs server runs a member's operations as async handlers on
// one thread; they interleave only at `await`s (disk I/O). Each public
// operation holds `opLock` (FIFO) from start to end, so operations are atomic
// with respect to each other and all mutable state here is only ever touched
// by the lock holder. That is why the class is `@unchecked Sendable`. Finer
// locking would go per inode (directory + child, ordered by ino, for
// namespace ops) plus a per-AG allocator lock; the buffer cache would then
// need per-buffer I/O-in-progress waits.
//
// Buffer cache: one map block -> Buffer, bounded by `MountOptions.cacheBlocks`.
// A buffer is clean, dirty data (written home at commit or eviction),
// metadata in the running transaction (pinned until commit), or committed
// metadata whose home copy is stale (written at checkpoint or eviction).
// Eviction drops the least recently used quarter of the unpinned buffers.
//
// Journal (per member slot, see Journal.swift and JournalRecords.swift):
// the changed byte ranges of metadata blocks, whole blocks where the earlier
// contents do not matter. Every operation that changed something commits
// before it answers, without a device flush: a member (or node) killed
// afterwards loses nothing it acknowledged, since the kernel has the writes
// (page cache of the disk); fsync adds the flush that makes them survive a
// power loss too. (One served ahead may leave its commit to a later one,
// `commitLater`: its answer waits for that commit, `settle`.) A commit first writes file data home (overwrites, and the
// new blocks of large writes and of writers that never asked for an fsync;
// the new blocks of other small writes are journaled with their mapping),
// then the transaction as one journal write. A power loss
// may keep a transaction and lose the data it
// maps, so a transaction that gave files new blocks without a flush before it
// is marked, and replay in a later boot skips it unless a flush is known to
// have followed (Journal.scan): no file ever shows a block's previous
// contents. A data block with an image in the journal since the last
// checkpoint is journaled again when it changes (replay would otherwise put
// the older image back). A committed image goes home (eviction, checkpoint)
// only after its transaction was flushed. Operations never commit half-way,
// except `write`, which commits between blocks (consistent on its own).
//
// Freed blocks are not reused until the next checkpoint: a block freed by the
// running transaction must not be overwritten with new data before the free is
// committed (a crash would resurrect the old owner with foreign contents), and
// a freed metadata block may still have images in the journal that replay
// would write over new data. Checkpoints happen when the journal fills, or
// when reserved blocks are needed for space.
import SystemPackage
import CFosCRC
import Synchronization

final class Buffer {
    let block: UInt64
    var data: [UInt8]
    var dirtyData = false
    var inTxn = false
    var needsCheckpoint = false
    /// The last committed image while the buffer is modified again by the
    /// running transaction (what a checkpoint must write home).
    var committedCopy: [UInt8]?
    /// In the running transaction: the contents it started from (the
    /// journal records the difference), unless `full`: recorded whole
    /// (new metadata blocks and file data, whose earlier contents at home
    /// do not matter or are not what replay starts from).
    var base: [UInt8]?
    var full = false
    var lastUse: UInt64 = 0
    init(block: UInt64, data: [UInt8]) {
        self.block = block
        self.data = data
    }
}

/// The in-memory inode: decoded fields plus the whole sorted extent list.
final class Inode {
    let ino: UInt64
    var mode: UInt32 = 0
    var uid: UInt32 = 0
    var gid: UInt32 = 0
    var nlink: UInt32 = 0
    var size: UInt64 = 0
    var atime: Int64 = 0
    var mtime: Int64 = 0
    var ctime: Int64 = 0
    var btime: Int64 = 0
    var flags: UInt32 = 0
    var generation: UInt32 = 0
    var rdev: UInt64 = 0
    var blocks: UInt64 = 0
    var xattrBlock: UInt64 = 0
    /// The next inode on this one's AG orphan list (Orphans.swift).
    var orphanNext: UInt64 = 0
    var extents: [Extent] = []
    var chain: [UInt64] = []
    var inlineData: [UInt8] = []
    var extentsDirty = false

    init(ino: UInt64) { self.ino = ino }

    var isDir: Bool { mode & M.fmt == M.dir }
    var isReg: Bool { mode & M.fmt == M.reg }
    var isSymlink: Bool { mode & M.fmt == M.lnk }
    var ag: Int { Int(ino >> 32) }

    var attributes: FileAttributes {
        FileAttributes(ino: ino, mode: mode, nlink: nlink, uid: uid, gid: gid, rdev: rdev, size: size,
                       blocks: blocks * 8, blockSize: UInt32(Layout.blockSize), atime: atime, mtime: mtime,
                       ctime: ctime, btime: btime, generation: generation)
    }

    /// One pass over the slot's bytes (every commit encodes each inode it
    /// changed: field by field, each store through Array's uniqueness check,
    /// and a generic fill for the zeroing, this was 6% of a create's time).
    func encode(into b: inout [UInt8], at o: Int) {
        precondition(o >= 0 && o + Layout.inodeSize <= b.count, "inode slot outside its block")
        let inline = flags & InodeFlags.inlineSymlink != 0
        let inlineExtents = !inline && extents.count <= Layout.inlineExtents
        b.withUnsafeMutableBytes { raw in
            let p = UnsafeMutableRawBufferPointer(rebasing: raw[o..<(o + Layout.inodeSize)])
            p.initializeMemory(as: UInt8.self, repeating: 0)
            func put<T: FixedWidthInteger>(_ at: Int, _ v: T) { p.storeBytes(of: v.littleEndian, toByteOffset: at, as: T.self) }
            put(0, mode); put(4, uid); put(8, gid); put(12, nlink)
            put(16, size)
            put(24, atime); put(32, mtime); put(40, ctime); put(48, btime)
            put(56, flags); put(60, generation); put(64, rdev); put(72, blocks)
            put(80, xattrBlock)
            put(88, UInt32(extents.count))
            put(92, UInt16(inlineData.count))
            put(96, chain.first ?? 0)
            put(232, orphanNext)
            let io = InodeCodec.inlineOffset
            if inline, !inlineData.isEmpty {
                inlineData.withUnsafeBytes { (p.baseAddress! + io).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            } else if inlineExtents {
                for (i, e) in extents.enumerated() {
                    put(io + i * 16, e.logical); put(io + i * 16 + 4, e.length); put(io + i * 16 + 8, e.physical)
                }
            }
            put(252, fos_crc_inode(p.baseAddress!))
        }
    }

    /// Decodes the fixed part; returns the extent count and chain head (the
    /// chain is loaded by the caller). Nil if the slot is free or corrupt.
    static func decode(_ b: [UInt8], at o: Int, ino: UInt64) -> (Inode, count: Int, chainHead: UInt64)? {
        let mode = b.u32(o)
        guard mode != 0 else { return nil }
        let c = b.withUnsafeBytes { fos_crc_inode($0.baseAddress! + o) }
        guard c == b.u32(o + 252) else { return nil }
        let i = Inode(ino: ino)
        i.mode = mode; i.uid = b.u32(o + 4); i.gid = b.u32(o + 8); i.nlink = b.u32(o + 12)
        i.size = b.u64(o + 16)
        i.atime = b.i64(o + 24); i.mtime = b.i64(o + 32); i.ctime = b.i64(o + 40); i.btime = b.i64(o + 48)
        i.flags = b.u32(o + 56); i.generation = b.u32(o + 60); i.rdev = b.u64(o + 64); i.blocks = b.u64(o + 72)
        i.xattrBlock = b.u64(o + 80)
        i.orphanNext = b.u64(o + 232)
        let count = Int(b.u32(o + 88))
        let inlineLen = Int(b.u16(o + 92))
        let io = o + InodeCodec.inlineOffset
        if i.flags & InodeFlags.inlineSymlink != 0 {
            guard inlineLen <= InodeCodec.inlineBytes else { return nil }
            i.inlineData = Array(b[io..<(io + inlineLen)])
        } else if count <= Layout.inlineExtents {
            for k in 0..<count {
                i.extents.append(Extent(logical: b.u32(io + k * 16), length: b.u32(io + k * 16 + 4),
                                        physical: b.u64(io + k * 16 + 8)))
            }
        }
        return (i, count, b.u64(o + 96))
    }
}

@inline(__always) func fos_crc_inode(_ p: UnsafeRawPointer) -> UInt32 { fos_crc32c_ptr(p, 252) }

/// A name compared by its bytes, as POSIX names are (a directory's index
/// keys names by it; extended attribute names compare by it). String compares and hashes by canonical equivalence, which made
/// "\u{E9}" and "e\u{301}" one name (a create of the other said EEXIST).
struct NameKey: Hashable {
    let name: String
    init(_ name: String) { self.name = name }
    static func == (a: NameKey, b: NameKey) -> Bool { a.name.utf8.elementsEqual(b.name.utf8) }
    func hash(into h: inout Hasher) {
        var name = name  // native and contiguous after this, whatever it was
        name.withUTF8 { h.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// A directory's in-memory hash index (see Directory.swift).
final class DirIndex {
    struct Slot {
        var ino: UInt64
        var type: UInt8
        var block: UInt32
        var offset: UInt16
    }
    var names: [NameKey: Slot] = [:]
    var parent: UInt64 = 0
    /// Largest record that fits into each block.
    var slack: [UInt16] = []
    var hint = 0
    var lastUse: UInt64 = 0
}

public final class FileSystem: @unchecked Sendable {
    // Every stored property below is read and written only by the holder of
    // `opLock` (see the header comment).
    let device: any BlockDevice
    let sb: Superblock
    /// This member's index (0..<members) and the fleet size.
    public let member: Int
    public let members: Int
    let options: MountOptions
    let opLock = AsyncLock()
    /// Streaming reads doing device I/O outside the lock (FileData.swift).
    let streamingReads = Atomic<Int>(0)
    /// The file system whose opLock the current task holds for a whole
    /// cross-member transaction (see Cross.swift).
    @TaskLocal static var lockHolder: ObjectIdentifier?
    /// Set while serving a request sent ahead (FOS_MSG_AHEAD): its changes
    /// may wait for the commit of a later one (`endOperation`), because its
    /// answer waits for that commit (FosCore/AheadOrder.swift, `settle`).
    @TaskLocal public static var commitLater = false
    /// Operations answered ahead whose changes no commit has covered yet.
    public let uncommitted = Atomic<Bool>(false)
    /// How many operations in a row left their commit to a later one.
    var deferredCommits = 0
    /// At most this many: one commit's transaction stays small.
    static let deferredCommitsMax = 32

    var cache: [UInt64: Buffer] = [:]
    var clock: UInt64 = 0
    var txn: Set<UInt64> = []
    var dirtyData: Set<UInt64> = []
    var checkpointSet: Set<UInt64> = []
    /// Blocks with an image in the journal since the last checkpoint.
    var inJournal: Set<UInt64> = []
    /// A transaction was written to the journal without a flush since.
    var journalUnflushed = false
    /// The running transaction gives files new blocks (written home, not journaled).
    var txnHasFreshData = false
    /// New file blocks journaled by the running transaction (`dataChanged`).
    var txnJournaledData = 0
    static let journaledDataLimit = 4
    /// Such data went home and no flush followed yet.
    var freshDataUnflushed = false
    /// Some transaction since the last checkpoint was written with new file
    /// blocks unflushed, and the slot superblock does not yet say it is safe.
    var lastTxnHadFreshData = false
    /// The slot superblock's startSeq (first transaction since the checkpoint).
    var jStartSeq: UInt64 = 1
    var reserved: [(start: UInt64, count: UInt64)] = []
    var reservedCount: UInt64 = 0
    /// `availableBlocks` in bytes as of the end of the last operation that changed
    /// something: for decisions made off the operation lock (whether a
    /// client may send writes ahead, FOS_MSG_AHEAD_OK).
    public let roomBytes = Atomic<UInt64>(0)
    /// The largest file (a write past it is EFBIG).
    public static var maxFileSize: UInt64 { Layout.maxFileSize }

    var jSeq: UInt64 = 1
    /// Where the next transaction goes: a byte offset in the slot (block 0
    /// is the slot superblock), and the contents of the block it falls in.
    var jPos = UInt64(Layout.blockSize)
    var jTail: [UInt8] = []

    var inodes: [UInt64: Inode] = [:]
    var dirtyInodes: Set<UInt64> = []
    var dirIndexes: [UInt64: DirIndex] = [:]
    var dirIndexEntries = 0
    /// Inodes of this member's AGs on an orphan list (Orphans.swift), each
    /// with the one before it on its list (0: it is the head).
    var orphans: [UInt64: UInt64] = [:]
    /// Set by the server before the first operation, never changed after:
    /// whether some process may hold `ino` open (Orphans.swift). Nil: none
    /// can (a file system without clients, as in fsck and the unit tests).
    /// The Unlinker is the process removing the name, when it said (UNLINK).
    public var mayBeOpen: (@Sendable (UInt64, Unlinker?) -> Bool)?
    /// Set by the server before the first operation, never changed after:
    /// who keeps copies of file data that follow every change (Mapped.swift).
    public var dataObserver: DataObserver?
    /// While a write-back runs: its writes are not echoed to the observer.
    var observerMuted = false

    var agFreeBlocks: [UInt64]
    var agFreeInodes: [UInt64]
    var agBlockHint: [UInt64]
    var agInodeHint: [UInt64]
    /// Inode numbers set aside for directory leases (reserveInodeNumbers):
    /// free on disk, skipped by allocInodeNumber. Memory only: a restart
    /// frees them.
    var reservedInodes: Set<UInt64> = []
    var nextDirAG = 0
    var rng = BufferedRandom()
    /// Set after an I/O error or inconsistency inside an operation, and on
    /// unmount: the in-memory state can no longer be trusted or used.
    var dead: FSError?

    var ownedAGs: [Int]
    var maxTxn: Int { min(500, Int(sb.journalBlocks) - 3) }
    var txnSoftLimit: Int { max(4, min(maxTxn / 2, options.cacheBlocks / 4)) }

    init(device: any BlockDevice, sb: Superblock, member: Int, members: Int, options: MountOptions) {
        self.device = device
        self.sb = sb
        self.member = member
        self.members = members
        self.options = options
        let n = Int(sb.agCount)
        agFreeBlocks = Array(repeating: 0, count: n)
        agFreeInodes = Array(repeating: 0, count: n)
        agBlockHint = Array(repeating: 0, count: n)
        agInodeHint = Array(repeating: 1, count: n)
        ownedAGs = (0..<n).filter { $0 % members == member }
    }

    /// During a cross-member transaction this member owns every AG.
    var borrowing = false
    /// Other members' blocks committed during the current cross-member transaction.
    var crossTouched: Set<UInt64> = []
    func owns(ag: Int) -> Bool { borrowing || ag % members == member }
    func homeMember(of ino: UInt64) -> Int { Int(ino >> 32) % members }

    // MARK: operation wrapper

    /// Runs `body` atomically with respect to every other operation, then
    /// finishes the operation (inode write-back, commit if the transaction is
    /// large). A POSIX error thrown by `body` happens before any mutation, so
    /// the member stays usable; any other error (I/O, corruption) kills it.
    func op<T>(_ body: () async throws -> T) async throws -> T {
        // Inside crossMember's body the lock is already ours, and the
        // transaction ends there, not after each operation.
        if FileSystem.lockHolder == ObjectIdentifier(self) {
            if let dead { throw dead }
            return try await body()
        }
        await opLock.lock()
        defer { opLock.unlock() }
        if let dead { throw dead }
        do {
            let r = try await body()
            try await endOperation()
            return r
        } catch let e as FSError {
            switch e {
            case .posix(let errno) where errno != .ioError:
                do { try await endOperation() } catch { dead = .posix(.ioError); throw error }
                throw e
            case .notHome, .needsCoordination:
                throw e
            default:
                dead = e
                throw e
            }
        } catch {
            dead = .posix(.ioError)
            throw FSError.posix(.ioError)
        }
    }

    /// Every operation that changed something commits before it answers
    /// (without a flush: fsync adds that): a member killed afterwards loses
    /// nothing it acknowledged. Under `commitLater` the commit is a later
    /// operation's or `settle`'s, and the answer waits for it.
    func endOperation() async throws {
        // An inode changed by operations whose commit comes later is
        // encoded once, by that commit (`commit` writes dirty inodes back
        // first): tar's two writes and three attribute changes of a file
        // encoded it five times.
        let later = Self.commitLater && deferredCommits < Self.deferredCommitsMax
        if !later { try await writeDirtyInodesAsync() }
        let changed = !txn.isEmpty || !dirtyData.isEmpty || !dirtyInodes.isEmpty
        if changed, later {
            deferredCommits += 1
            uncommitted.store(true, ordering: .releasing)
        } else if changed {
            try await commit(flush: false)
        }
        // Space held back since the last checkpoint is needed: free it.
        if reservedCount > 0, reservedCount * 2 > availableBlocks + reservedCount {
            try await commit()
            try await checkpoint()
        }
        if changed { publishRoom() }
        trimCaches()
    }

    /// Commits what operations served ahead left uncommitted
    /// (`commitLater`): their answers go once this returns.
    public func settle() async throws {
        guard uncommitted.load(ordering: .acquiring) else { return }
        try await Self.$commitLater.withValue(false) { try await op {} }
    }

    var availableBlocks: UInt64 {
        ownedAGs.reduce(0) { $0 + agFreeBlocks[$1] } - reservedCount
    }

    /// `roomBytes` from the free counts now (after a change, a checkpoint, mount).
    func publishRoom() {
        roomBytes.store(availableBlocks * UInt64(Layout.blockSize), ordering: .relaxed)
    }

    func trimCaches() {
        if inodes.count > options.inodeCacheLimit {
            var drop = inodes.count - options.inodeCacheLimit / 2
            for (k, _) in inodes where drop > 0 && !dirtyInodes.contains(k) {
                inodes[k] = nil
                drop -= 1
            }
        }
        if dirIndexEntries > options.directoryIndexLimit {
            let order = dirIndexes.sorted { $0.value.lastUse < $1.value.lastUse }
            for (k, v) in order where dirIndexEntries > options.directoryIndexLimit / 2 {
                dirIndexEntries -= v.names.count
                dirIndexes[k] = nil
            }
        }
    }

    // MARK: buffer cache

    func cached(_ block: UInt64) async throws -> Buffer {
        clock &+= 1
        if let b = cache[block] {
            b.lastUse = clock
            return b
        }
        let data = try await device.read(block: block, count: 1)
        if let b = cache[block] { return b }  // (cannot happen under opLock; kept for safety)
        try await makeRoom()
        let b = Buffer(block: block, data: data)
        b.lastUse = clock
        cache[block] = b
        return b
    }

    /// A buffer for `block` without reading it (the caller overwrites it all).
    func fresh(_ block: UInt64) async throws -> Buffer {
        clock &+= 1
        if let b = cache[block] {
            b.lastUse = clock
            // A clean copy may be of a block freed meanwhile, by a peer's
            // cross-member transaction, which does not tell this cache: its
            // old bytes must not reach the block's new owner.
            if !b.inTxn && !b.dirtyData && !b.needsCheckpoint { b.data = .zeroBlock() }
            return b
        }
        try await makeRoom()
        let b = Buffer(block: block, data: .zeroBlock())
        b.lastUse = clock
        cache[block] = b
        return b
    }

    /// A metadata buffer joined to the running transaction, ready to modify.
    func metaForWrite(_ block: UInt64, fresh isFresh: Bool = false) async throws -> Buffer {
        let b = isFresh ? try await fresh(block) : try await cached(block)
        joinTxn(b, full: isFresh)
        return b
    }

    func joinTxn(_ b: Buffer, full: Bool = false) {
        if b.inTxn {
            if full { b.full = true }
            return
        }
        if b.needsCheckpoint { b.committedCopy = b.data }
        b.inTxn = true
        b.full = full
        b.base = full ? nil : b.data
        txn.insert(b.block)
    }

    /// File data changed in `b`: journaled if the block has an image in the
    /// journal since the last checkpoint (replay would otherwise put that
    /// older image back over it); else written home at the end of the
    /// operation, before the transaction. `journal`: a new block may be
    /// journaled (see below).
    func dataChanged(_ b: Buffer, fresh: Bool, journal: Bool = true) {
        // The first few new blocks of a transaction are journaled with the
        // metadata that maps them (replay writes them home): an fsync after
        // small writes (a database page, a log line) then costs one flush
        // instead of two (see `flushRecorded`). Larger writes go home first,
        // and so do the writes of a client that never asks for an fsync
        // (`journal` false): the journal would only carry that data twice
        // and fill, and the checkpoint that empties it stalls a request.
        if fresh, (journal && txnJournaledData < FileSystem.journaledDataLimit) || b.inTxn {
            if !b.inTxn { txnJournaledData += 1 }
            if b.dirtyData {
                b.dirtyData = false
                dirtyData.remove(b.block)
            }
            joinTxn(b, full: true)
            return
        }
        if fresh {
            // New to its file: written home before the transaction that maps
            // it (see Journal.swift for what a power loss then replays).
            txnHasFreshData = true
            markDataDirty(b)
            return
        }
        if b.inTxn || b.needsCheckpoint || inJournal.contains(b.block) {
            if b.dirtyData {
                b.dirtyData = false
                dirtyData.remove(b.block)
            }
            joinTxn(b, full: true)
        } else {
            markDataDirty(b)
        }
    }

    func markDataDirty(_ b: Buffer) {
        if !b.dirtyData {
            b.dirtyData = true
            dirtyData.insert(b.block)
        }
    }

    /// Forgets cached blocks that were freed (their contents no longer matter).
    func dropBuffers(_ start: UInt64, _ count: UInt64) {
        for blk in start..<(start + count) {
            guard let b = cache.removeValue(forKey: blk) else { continue }
            if b.inTxn { txn.remove(blk) }
            if b.dirtyData { dirtyData.remove(blk) }
            if b.needsCheckpoint { checkpointSet.remove(blk) }
        }
    }

    func makeRoom() async throws {
        guard cache.count >= options.cacheBlocks else { return }
        // The quarter used longest ago (outside the running transaction)
        // goes: those used no later than a cut-off found by selection. A
        // sort of the cache's buffers took 2 ms for 8192 of them, a
        // microsecond for every block a write brought in (14% of a member's
        // time under a stream of small writes); this takes a sixth of that.
        //
        // Buffers awaiting their checkpoint stay while there are enough
        // others: one of them may go home only after a flush that makes the
        // journal durable, and that flush (of everything written since the
        // last one) took 5-20 ms, inside the request that needed room: once
        // in every untar of 600 files after the cache had filled. The next
        // checkpoint writes them home and makes them ordinary buffers.
        let n = max(1, cache.count / 4)
        var uses: [UInt64] = []
        var awaiting: [UInt64] = []
        uses.reserveCapacity(cache.count)
        for b in cache.values where !b.inTxn {
            if b.needsCheckpoint { awaiting.append(b.lastUse) } else { uses.append(b.lastUse) }
        }
        let flushing = uses.count < n
        if flushing { uses += awaiting }
        guard !uses.isEmpty else { return }
        let cut = uses.selectSmallest(min(n, uses.count) - 1)
        let victims = cache.values.filter { !$0.inTxn && (flushing || !$0.needsCheckpoint) && $0.lastUse <= cut }
        if flushing, victims.contains(where: { $0.needsCheckpoint }) { try await makeJournalDurable() }
        var writes: [(UInt64, [UInt8])] = []
        for b in victims {
            if b.dirtyData {
                writes.append((b.block, b.data))
                dirtyData.remove(b.block)
            } else if b.needsCheckpoint {
                writes.append((b.block, b.data))
                checkpointSet.remove(b.block)
            }
            cache[b.block] = nil
        }
        try await writeRuns(writes, outliving: true)
    }

    /// Writes (block, data) pairs, coalescing contiguous blocks into one call.
    func writeRuns(_ writes: [(UInt64, [UInt8])], outliving: Bool = false) async throws {
        let sorted = writes.sorted { $0.0 < $1.0 }
        var i = 0
        while i < sorted.count {
            var j = i + 1
            var data = sorted[i].1
            while j < sorted.count, sorted[j].0 == sorted[j - 1].0 + 1, j - i < 256 {
                data.append(contentsOf: sorted[j].1)
                j += 1
            }
            if outliving {
                try await device.writeOutliving(block: sorted[i].0, data: data)
            } else {
                try await device.write(block: sorted[i].0, data: data)
            }
            i = j
        }
    }

    // MARK: inodes

    func checkHome(_ ino: UInt64) throws {
        guard sb.isValidIno(ino) else { throw FSError.ESTALE }
        let ag = Int(ino >> 32)
        if !owns(ag: ag) { throw FSError.notHome(ino: ino, member: ag % members) }
    }

    /// Loads an inode homed on this member (ESTALE if it is not allocated).
    func inode(_ ino: UInt64) async throws -> Inode {
        if let i = inodes[ino] { return i }
        try checkHome(ino)
        let (blk, off) = sb.inodeLocation(ino)
        let b = try await cached(blk)
        guard let (i, count, chainHead) = Inode.decode(b.data, at: off, ino: ino) else {
            if b.data.u32(off) == 0 { throw FSError.ESTALE }
            throw FSError.corrupt("inode \(ino): bad checksum")
        }
        if i.flags & InodeFlags.inlineSymlink == 0, count > Layout.inlineExtents {
            var next = chainHead
            while next != 0, i.extents.count < count {
                guard sb.isDataBlock(next), i.chain.count < 1 << 20 else {
                    throw FSError.corrupt("inode \(ino): bad extent chain block \(next)")
                }
                let cb = try await cached(next).data
                guard cb.u32(0) == InodeCodec.chainMagic else { throw FSError.corrupt("inode \(ino): bad chain") }
                i.chain.append(next)
                for k in 0..<min(Int(cb.u32(4)), Layout.extentsPerChainBlock) {
                    let o = 16 + k * 16
                    i.extents.append(Extent(logical: cb.u32(o), length: cb.u32(o + 4), physical: cb.u64(o + 8)))
                }
                next = cb.u64(8)
            }
            guard i.extents.count == count else { throw FSError.corrupt("inode \(ino): short extent chain") }
        }
        inodes[ino] = i
        return i
    }

    func markDirty(_ i: Inode) { dirtyInodes.insert(i.ino) }

    func writeDirtyInodes() throws {
        guard !dirtyInodes.isEmpty else { return }
        // Inode table blocks are almost always cached (the inode was loaded
        // from them); the rare miss is handled by the async variant.
        for ino in dirtyInodes {
            guard let i = inodes[ino] else { continue }
            precondition(!i.extentsDirty, "extent chain not stored before inode write-back")
            let (blk, off) = sb.inodeLocation(ino)
            guard let b = cache[blk] else {
                pendingInodeLoads.append(ino)
                continue
            }
            joinTxn(b)
            i.encode(into: &b.data, at: off)
        }
        dirtyInodes.removeAll(keepingCapacity: true)
    }
    var pendingInodeLoads: [UInt64] = []

    func writeDirtyInodesAsync() async throws {
        try writeDirtyInodes()
        while let ino = pendingInodeLoads.popLast() {
            guard let i = inodes[ino] else { continue }
            let (blk, off) = sb.inodeLocation(ino)
            let b = try await metaForWrite(blk)
            i.encode(into: &b.data, at: off)
        }
    }

    func touch(_ i: Inode, m: Bool = true, c: Bool = true) {
        let t = nowNs()
        if m { i.mtime = t }
        if c { i.ctime = t }
        markDirty(i)
    }

    // MARK: permissions

    func may(_ i: Inode, _ mask: UInt32, _ c: Credentials) -> Bool {
        if c.isRoot {
            if mask & 1 == 0 || i.isDir { return true }
            return i.mode & 0o111 != 0
        }
        let bits: UInt32
        if c.uid == i.uid { bits = (i.mode >> 6) & 7 }
        else if c.inGroup(i.gid) { bits = (i.mode >> 3) & 7 }
        else { bits = i.mode & 7 }
        return bits & mask == mask
    }

    /// Freeing `i`'s blocks (the last unlink, a truncation) needs the AGs of
    /// other members when its data spilled there: outside a cross-member
    /// transaction, say so before anything changes.
    func requireLocalBlocks(_ i: Inode?) throws {
        if let i, i.flags & InodeFlags.foreignData != 0, !borrowing { throw FSError.needsCoordination }
    }

    func require(_ i: Inode, _ mask: UInt32, _ c: Credentials) throws {
        if !may(i, mask, c) { throw FSError.EACCES }
    }

    /// Sticky directory: only the owner of the entry, of the directory, or
    /// root may remove or rename it.
    func stickyDenies(_ dir: Inode, _ victim: Inode, _ c: Credentials) -> Bool {
        dir.mode & M.sticky != 0 && !c.isRoot && c.uid != dir.uid && c.uid != victim.uid
    }
}
