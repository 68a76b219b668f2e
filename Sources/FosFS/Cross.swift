// Cross-member transactions: one operation that changes state homed on
// several members (a rename or link between directories of two members, a
// directory placed on another member) commits atomically through the
// journal of the member that coordinates it.
//
// Protocol (the fs server drives it; this file is the file-system half):
// the coordinator takes the fleet-wide disk lock, every other live member
// *lends* itself (finishes its running operation, commits, checkpoints, and
// runs nothing until the loan ends), and dead members' journal slots are
// replayed. The coordinator then owns every AG for the duration
// (`crossMember`): it runs the ordinary operation code, commits the result
// as one transaction flagged cross, checkpoints it, and hands each lender
// the list of blocks it wrote and the free-space deltas of its AGs
// (`CrossChanges`); the lenders drop those blocks and resume.
//
// Why this is crash-safe with one journal per member: at any moment the
// uncheckpointed images of a block live in at most one slot. Lenders
// checkpoint before the coordinator touches their blocks; the coordinator
// checkpoints before any lender writes again. So replaying the slots in any
// order gives the same disk. The one hazard is a coordinator that dies
// between its commit and its checkpoint: its slot then holds images of other
// members' blocks, and must be replayed before those members write again.
// Lenders that lose their coordinator, and members that mount, replay such a
// slot (`replaySlot`) under the fleet lock, once the slot's owner is known
// dead (its per-slot disk lock is free).
//
// Members joining and leaving: AG ownership is a function of the fleet's
// size (AG a belongs to member a mod N), so a new size moves AGs between
// members. Across a restart of the fleet this is safe as it stands: every
// member mounts under the fleet lock and replays the slots of all members
// not running, so no slot holds images of an AG that changed hands by the
// time anyone serves it. A live change is the same move as a cross-member
// transaction with every member lent: all commit and checkpoint, the new
// size is handed out with the loan's end (each member recomputes its AGs
// and drops its caches, as after a lost coordinator), members beyond the new
// size exit, new ones mount. fosd cannot yet change a fleet's size while it
// runs; that comes with the watchdog.
extension FileSystem {
    public struct AGDelta: Sendable, Equatable {
        public var ag: Int
        public var freeBlocks: Int64
        public var freeInodes: Int64
        public init(ag: Int, freeBlocks: Int64, freeInodes: Int64) {
            self.ag = ag
            self.freeBlocks = freeBlocks
            self.freeInodes = freeInodes
        }
    }

    /// What a cross-member transaction changed in other members' AGs.
    public struct CrossChanges: Sendable, Equatable {
        public var blocks: [UInt64] = []
        public var deltas: [AGDelta] = []
        public init(blocks: [UInt64] = [], deltas: [AGDelta] = []) {
            self.blocks = blocks
            self.deltas = deltas
        }
    }

    // MARK: lender

    /// Quiesces this member for a peer's cross-member transaction: waits for
    /// the running operation, commits and checkpoints, and keeps every other
    /// operation out until `resume()`.
    public func lend() async throws {
        await opLock.lock()
        do {
            if let dead { throw dead }
            // The coordinator may free and reuse our blocks: no read of ours
            // may still be at the disk (see StreamingRead).
            await waitForStreamingReads()
            try await commit()
            if jPos > UInt64(Layout.blockSize) || !checkpointSet.isEmpty { try await checkpoint() }
        } catch {
            if dead == nil { dead = .posix(.ioError) }
            opLock.unlock()
            throw error
        }
    }

    /// Takes in what a cross-member transaction did to this member's AGs
    /// (only between `lend` and `resume`). `nil`: unknown (the coordinator
    /// died; its slot was replayed): everything cached is dropped and free
    /// space recounted from the bitmaps.
    public func absorb(_ changes: CrossChanges?) async throws {
        inodes.removeAll()
        dirIndexes.removeAll()
        dirIndexEntries = 0
        guard let changes else {
            cache.removeAll()
            do { try await countFree(ags: ownedAGs) } catch { dead = .posix(.ioError); throw error }
            return
        }
        for b in changes.blocks { cache[b] = nil }
        for d in changes.deltas where d.ag >= 0 && d.ag < agFreeBlocks.count && owns(ag: d.ag) {
            agFreeBlocks[d.ag] = UInt64(max(0, Int64(agFreeBlocks[d.ag]) + d.freeBlocks))
            agFreeInodes[d.ag] = UInt64(max(0, Int64(agFreeInodes[d.ag]) + d.freeInodes))
        }
    }

    /// Ends a loan: operations run again.
    public func resume() { opLock.unlock() }

    // MARK: coordinator

    /// Runs `body` — calls of this member's public operations — as one
    /// cross-member transaction owning every AG. The caller holds the fleet
    /// lock, every live peer has lent, and dead peers' slots are replayed.
    /// Returns the body's outcome (a POSIX error from it is a normal
    /// outcome) and what peers must absorb. Throws only when this member
    /// failed (I/O, corruption): it is then dead, and the peers must treat
    /// the coordinator as lost.
    public func crossMember<T: Sendable>(_ body: () async throws -> T) async throws -> (Result<T, FSError>, CrossChanges) {
        await opLock.lock()
        defer { opLock.unlock() }
        if let dead { throw dead }
        let all = Array(0..<Int(sb.agCount))
        let foreign = all.filter { !owns(ag: $0) }
        let own = ownedAGs
        do {
            // Our own earlier work commits on its own: the cross transaction
            // stays as small as the operation.
            try await commit()
            try await countFree(ags: foreign)
            let before = foreign.map { (agFreeBlocks[$0], agFreeInodes[$0]) }
            borrowing = true
            ownedAGs = all
            crossTouched = []
            defer {
                borrowing = false
                ownedAGs = own
                forgetForeign()
            }
            let outcome: Result<T, FSError>
            do {
                outcome = .success(try await FileSystem.$lockHolder.withValue(ObjectIdentifier(self)) { try await body() })
            } catch FSError.posix(let e) where e != .ioError {
                outcome = .failure(.posix(e))
            } catch FSError.notHome, FSError.needsCoordination {
                outcome = .failure(.posix(.improperLink))  // cannot happen while owning every AG
            }
            // Even a failed operation may have read (never written, but for
            // ENOSPC half-way) other members' blocks: the same end for both.
            try await commit(cross: true)
            try await checkpoint()
            var changes = CrossChanges()
            changes.blocks = crossTouched.sorted()
            for (k, ag) in foreign.enumerated() {
                let db = Int64(agFreeBlocks[ag]) - Int64(before[k].0)
                let di = Int64(agFreeInodes[ag]) - Int64(before[k].1)
                if db != 0 || di != 0 { changes.deltas.append(AGDelta(ag: ag, freeBlocks: db, freeInodes: di)) }
            }
            return (outcome, changes)
        } catch let e as FSError {
            dead = e
            throw e
        } catch {
            dead = .posix(.ioError)
            throw FSError.posix(.ioError)
        }
    }

    /// After a cross transaction: nothing of other members' AGs stays cached
    /// (they change it from now on). Everything of theirs is clean here: the
    /// transaction was checkpointed.
    private func forgetForeign() {
        for (b, _) in cache {
            if let ag = sb.ag(ofBlock: b), !owns(ag: ag) { cache[b] = nil }
        }
        for (ino, _) in inodes where !owns(ag: Int(ino >> 32)) { inodes[ino] = nil }
        for (ino, idx) in dirIndexes where !owns(ag: Int(ino >> 32)) {
            dirIndexEntries -= idx.names.count
            dirIndexes[ino] = nil
        }
    }

    // MARK: placement

    /// The member a new directory named `name` in the root directory is
    /// homed on: top-level directories are spread over the fleet (by a hash
    /// of the name, so a retried mkdir lands on the same member); everything
    /// else starts on its parent's member.
    public func placement(ofTopLevel name: String) -> Int { Self.placement(ofTopLevel: name, members: members) }

    public static func placement(ofTopLevel name: String, members: Int) -> Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in name.utf8 { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
        return Int(h % UInt64(members))
    }

    /// The member of a fleet of `members` that homes inode `ino`.
    public static func home(of ino: UInt64, members: Int) -> Int { Int(ino >> 32) % members }

    /// The AG of `target` with the most free inodes (while borrowing).
    func placementAG(member target: Int) -> Int? {
        (0..<Int(sb.agCount)).filter { $0 % members == target }.max { agFreeInodes[$0] < agFreeInodes[$1] }
    }

    // MARK: recovery

    /// Replays journal slot `slot` of a member that is not running (or of
    /// none: a slot beyond the fleet's size). The caller holds the fleet lock
    /// and the slot's own disk lock. Returns whether anything was applied.
    public static func replaySlot(device: any BlockDevice, slot: Int) async throws -> Bool {
        let sb = try await readSuperblock(device)
        guard (0..<Layout.journalSlots).contains(slot) else { throw FSError.EINVAL }
        return try await JournalFormat.replay(device: device, sb: sb, slot: slot).applied > 0
    }

    public static var journalSlots: Int { Layout.journalSlots }
}
