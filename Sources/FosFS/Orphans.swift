// Orphans: files whose last name went while a process still had them open.
//
// POSIX keeps such a file, readable and writable, until its last close. The
// fs does not see closes (a client's descriptors live in its kernel), so the
// server says, through `mayBeOpen`, whether an inode losing its last link
// may still be open; if so the inode stays allocated with nlink 0 and joins
// its AG's orphan list in the same transaction as the unlink, and the server
// calls `releaseOrphan` once no process holds it. The list is on disk so a
// crash cannot leak the inode: mount reads the lists of the member's AGs and
// the server releases what nobody holds (after a node crash: all of it).
//
// Not orphaned, freed at once as before: directories, inodes with data in
// other members' AGs, and inodes unlinked inside a cross-member transaction
// (their freeing needs other members; the rare case is not worth that).
//
// On disk: slot 0 of an AG's inode table (index 0 is never an inode) holds
// the head: magic u64 at 0, first orphan u64 at 8, crc32c of bytes 0..<252
// at 252. Anything else there (zeros on images made before orphans; mkfs
// writes that block empty) is an empty list. Each orphan inode names the
// next at byte 232 (`Inode.orphanNext`).
extension FileSystem {
    static let orphanMagic: UInt64 = 0x3148_5052_4F53_4F46  // "FOSORPH1"

    static func orphanHead(_ b: [UInt8]) -> UInt64 {
        guard b.u64(0) == orphanMagic, b.u32(252) == b.withUnsafeBytes({ fos_crc_inode($0.baseAddress!) }) else {
            return 0
        }
        return b.u64(8)
    }

    static func setOrphanHead(_ b: inout [UInt8], _ ino: UInt64) {
        b.replaceSubrange(0..<Layout.inodeSize, with: repeatElement(0, count: Layout.inodeSize))
        b.put64(0, orphanMagic)
        b.put64(8, ino)
        let c = b.withUnsafeBytes { fos_crc_inode($0.baseAddress!) }
        b.put32(252, c)
    }

    /// The inode table block holding `ag`'s list head.
    func orphanHeadBlock(_ ag: Int) -> UInt64 { sb.inodeLocation(UInt64(ag) << 32).block }

    /// Whether the last link of `i` going may free it now.
    func shouldOrphan(_ i: Inode, unlinker: Unlinker?) -> Bool {
        guard !i.isDir, !borrowing, i.flags & InodeFlags.foreignData == 0, let check = mayBeOpen else { return false }
        return check(i.ino, unlinker)
    }

    func addOrphan(_ i: Inode) async throws {
        let b = try await metaForWrite(orphanHeadBlock(i.ag))
        let head = Self.orphanHead(b.data)
        i.orphanNext = head
        Self.setOrphanHead(&b.data, i.ino)
        markDirty(i)
        if head != 0 { orphans[head] = i.ino }
        orphans[i.ino] = 0
    }

    /// Takes `i` off its AG's list; the list is singly linked on disk, the
    /// predecessor known from memory.
    func removeOrphan(_ i: Inode) async throws {
        guard let prev = orphans[i.ino] else { return }
        let next = i.orphanNext
        if prev == 0 {
            let b = try await metaForWrite(orphanHeadBlock(i.ag))
            guard Self.orphanHead(b.data) == i.ino else {
                throw FSError.corrupt("orphan \(i.ino) is not the head of AG \(i.ag)'s list")
            }
            Self.setOrphanHead(&b.data, next)
        } else {
            let p = try await inode(prev)
            guard p.orphanNext == i.ino else { throw FSError.corrupt("orphan list of AG \(i.ag) changed under us") }
            p.orphanNext = next
            markDirty(p)
        }
        if next != 0 { orphans[next] = prev }
        orphans[i.ino] = nil
        i.orphanNext = 0
    }

    /// Mount: the orphans of this member's AGs.
    func loadOrphans() async throws {
        for ag in ownedAGs {
            var cur = Self.orphanHead(try await cached(orphanHeadBlock(ag)).data)
            var prev: UInt64 = 0
            while cur != 0 {
                guard cur >> 32 == UInt64(ag), sb.isValidIno(cur), orphans[cur] == nil else {
                    throw FSError.corrupt("AG \(ag): bad orphan list entry \(cur)")
                }
                let i = try await inode(cur)
                guard i.nlink == 0, !i.isDir else { throw FSError.corrupt("AG \(ag): orphan \(cur) has links") }
                orphans[cur] = prev
                prev = cur
                cur = i.orphanNext
            }
        }
    }

    /// Inodes of this member without a name that some process may hold,
    /// and that `releaseOrphans` can free (not those whose data spilled
    /// into a peer's groups, in a fleet of several members).
    public func orphanList() async throws -> [UInt64] {
        try await op {
            var out: [UInt64] = []
            for ino in orphans.keys {
                if members > 1, try await inode(ino).flags & InodeFlags.foreignData != 0 { continue }
                out.append(ino)
            }
            return out
        }
    }

    /// No process holds these orphans any more: frees them (one operation,
    /// committing as it goes when the batch outgrows a transaction). Inodes
    /// that are not orphans of this member are skipped.
    public func releaseOrphans(_ inos: some Sequence<UInt64>) async throws {
        try await op {
            for ino in inos where orphans[ino] != nil {
                let i = try await inode(ino)
                // Data that spilled into a peer's AG after the unlink: freeing
                // it needs that peer. Kept until a mount with a single member.
                guard i.flags & InodeFlags.foreignData == 0 || members == 1 else { continue }
                try await removeOrphan(i)
                try await destroyInode(i)
                // Each release leaves the lists whole: a batch larger than a
                // transaction may hold commits as it goes.
                try await writeDirtyInodesAsync()
                if txn.count + dirtyInodes.count >= txnSoftLimit { try await commit(flush: false) }
            }
        }
    }

    public func releaseOrphan(_ ino: UInt64) async throws { try await releaseOrphans([ino]) }
}
