// Block and inode allocation, per AG.
//
// A member allocates only from AGs it owns (ag % members == member), so
// members never write each other's bitmaps. Within an AG the allocator takes
// the first free run at or after a goal (the block after the file's previous
// extent, else the AG's rotating hint), which keeps files contiguous. Free
// counts live in memory (counted at mount). Blocks freed since the last
// checkpoint are "reserved" (see FileSystem.swift) and skipped.
extension FileSystem {
    /// Counts free blocks and inodes of every AG (at mount).
    func countFree(ags: [Int]? = nil) async throws {
        for ag in ags ?? Array(0..<Int(sb.agCount)) {
            agFreeBlocks[ag] = try await countZeroBits(start: sb.bbmStart(ag), bits: sb.agSize(ag))
            agFreeInodes[ag] = try await countZeroBits(start: sb.ibmStart(ag), bits: UInt64(sb.inodesPerAG))
            agBlockHint[ag] = sb.dataStart(ag) - sb.agStart(ag)
        }
    }

    private func countZeroBits(start: UInt64, bits: UInt64) async throws -> UInt64 {
        var free: UInt64 = 0
        var remaining = bits
        var blk = start
        while remaining > 0 {
            let n = min(remaining, 32768)
            let d = try await device.read(block: blk, count: 1)
            var used: UInt64 = 0
            d.withUnsafeBytes { p in
                let words = Int(n / 64)
                for w in 0..<words { used += UInt64(p.loadUnaligned(fromByteOffset: w * 8, as: UInt64.self).nonzeroBitCount) }
                for bit in (UInt64(words) * 64)..<n where p[Int(bit / 8)] & (1 << (bit % 8)) != 0 { used += 1 }
            }
            free += n - used
            remaining -= n
            blk += 1
        }
        return free
    }

    /// End of the reserved range containing `block`, if any.
    private func reservedEnd(_ block: UInt64) -> UInt64? {
        for r in reserved where block >= r.start && block < r.start + r.count { return r.start + r.count }
        return nil
    }

    /// Finds the first clear bit in [from, to) of the bitmap at `bitmapStart`,
    /// skipping blocks for which `skip` returns a resume bit.
    private func findClear(bitmapStart: UInt64, from: UInt64, to: UInt64, skip: (UInt64) -> UInt64?) async throws -> UInt64? {
        var bit = from
        while bit < to {
            let bmIndex = bit / 32768
            let buf = try await cached(bitmapStart + bmIndex)
            let blockEnd = min(to, (bmIndex + 1) * 32768)
            let found: UInt64? = buf.data.withUnsafeBytes { p -> UInt64? in
                while bit < blockEnd {
                    let local = Int(bit % 32768)
                    if local % 64 == 0, bit + 64 <= blockEnd,
                       p.loadUnaligned(fromByteOffset: local / 8, as: UInt64.self) == UInt64.max {
                        bit += 64
                        continue
                    }
                    if p[local / 8] & (1 << (local % 8)) == 0 {
                        if let resume = skip(bit) { bit = max(resume, bit + 1); continue }
                        return bit
                    }
                    bit += 1
                }
                return nil
            }
            if let found { return found }
            bit = max(bit, blockEnd)
        }
        return nil
    }

    private func bitIsClear(_ bitmapStart: UInt64, _ bit: UInt64) async throws -> Bool {
        let buf = try await cached(bitmapStart + bit / 32768)
        let local = Int(bit % 32768)
        return buf.data[local / 8] & (1 << (local % 8)) == 0
    }

    private func setBits(_ bitmapStart: UInt64, _ first: UInt64, _ count: UInt64, to value: Bool) async throws {
        var bit = first
        let end = first + count
        while bit < end {
            let buf = try await metaForWrite(bitmapStart + bit / 32768)
            let stop = min(end, (bit / 32768 + 1) * 32768)
            while bit < stop {
                let local = Int(bit % 32768)
                let mask = UInt8(1 << (local % 8))
                let isSet = buf.data[local / 8] & mask != 0
                guard isSet != value else {
                    throw FSError.corrupt("bitmap at \(bitmapStart): bit \(bit) already \(value ? "set" : "clear")")
                }
                if value { buf.data[local / 8] |= mask } else { buf.data[local / 8] &= ~mask }
                bit += 1
            }
        }
    }

    /// Allocates up to `count` contiguous blocks (at least one) for inode
    /// `owner`, preferring `goal` and the AG `preferAG`, from the AGs of the
    /// owner's home member: that member frees them later. Only file data in
    /// a cross-member transaction may spill into other members' AGs (`spill`;
    /// the inode is then marked, and whatever frees its blocks runs as a
    /// cross-member transaction too). Throws ENOSPC.
    func allocBlocks(count: Int, goal: UInt64?, preferAG: Int, for owner: Inode,
                     spill: Bool = false) async throws -> (start: UInt64, count: Int) {
        let home = homeMember(of: owner.ino)
        var order = (0..<Int(sb.agCount)).filter { $0 % members == home }
        if let i = order.firstIndex(of: preferAG) { order = Array(order[i...] + order[..<i]) }
        if spill, borrowing { order += (0..<Int(sb.agCount)).filter { $0 % members != home } }
        for ag in order where agFreeBlocks[ag] > 0 && owns(ag: ag) {
            let agStart = sb.agStart(ag)
            let lo = sb.dataStart(ag) - agStart
            let hi = sb.agSize(ag)
            var from = agBlockHint[ag]
            if let goal, sb.ag(ofBlock: goal) == ag { from = goal - agStart }
            if from < lo || from >= hi { from = lo }
            let skip: (UInt64) -> UInt64? = { [self] bit in reservedEnd(agStart + bit).map { $0 - agStart } }
            var bit = try await findClear(bitmapStart: sb.bbmStart(ag), from: from, to: hi, skip: skip)
            if bit == nil, from > lo {
                bit = try await findClear(bitmapStart: sb.bbmStart(ag), from: lo, to: from, skip: skip)
            }
            guard let first = bit else { continue }
            var n: UInt64 = 1
            while n < UInt64(count), first + n < hi, reservedEnd(agStart + first + n) == nil,
                  try await bitIsClear(sb.bbmStart(ag), first + n) {
                n += 1
            }
            try await setBits(sb.bbmStart(ag), first, n, to: true)
            agFreeBlocks[ag] -= n
            agBlockHint[ag] = first + n
            if ag % members != home, owner.flags & InodeFlags.foreignData == 0 {
                owner.flags |= InodeFlags.foreignData
                markDirty(owner)
            }
            return (agStart + first, Int(n))
        }
        throw FSError.ENOSPC
    }

    func freeBlocks(_ start: UInt64, _ count: UInt64) async throws {
        guard count > 0 else { return }
        guard let ag = sb.ag(ofBlock: start), sb.isDataBlock(start), sb.isDataBlock(start + count - 1),
              sb.ag(ofBlock: start + count - 1) == ag else {
            throw FSError.corrupt("freeing blocks \(start)+\(count) outside a data area")
        }
        guard owns(ag: ag) else { throw FSError.corrupt("freeing blocks of AG \(ag) owned by another member") }
        try await setBits(sb.bbmStart(ag), start - sb.agStart(ag), count, to: false)
        agFreeBlocks[ag] += count
        dropBuffers(start, count)
        if let last = reserved.last, last.start + last.count == start {
            reserved[reserved.count - 1].count += count
        } else {
            reserved.append((start, count))
        }
        reservedCount += count
    }

    func agOrder(prefer: Int) -> [Int] {
        guard let i = ownedAGs.firstIndex(of: prefer) else { return ownedAGs }
        return Array(ownedAGs[i...] + ownedAGs[..<i])
    }

    /// Allocates an inode number, preferring AG `preferAG`.
    func allocInodeNumber(preferAG: Int) async throws -> UInt64 {
        for ag in agOrder(prefer: preferAG) where agFreeInodes[ag] > 0 {
            let n = UInt64(sb.inodesPerAG)
            let from = inodeSearchStart(ag)
            let skip = reservedSkip(ag)
            var bit = try await findClear(bitmapStart: sb.ibmStart(ag), from: from, to: n, skip: skip)
            if bit == nil, from > 1 {
                bit = try await findClear(bitmapStart: sb.ibmStart(ag), from: 1, to: from, skip: skip)
            }
            guard let idx = bit else { continue }
            try await setBits(sb.ibmStart(ag), idx, 1, to: true)
            agFreeInodes[ag] -= 1
            agInodeHint[ag] = idx + 1
            return UInt64(ag) << 32 | idx
        }
        throw FSError.ENOSPC
    }

    /// Where a search for a free inode number of AG `ag` starts: after the
    /// last one given out (never 0, which no inode has).
    private func inodeSearchStart(_ ag: Int) -> UInt64 {
        let h = agInodeHint[ag]
        return h < 1 || h >= UInt64(sb.inodesPerAG) ? 1 : h
    }

    /// Skips the inode numbers of AG `ag` set aside for leases.
    private func reservedSkip(_ ag: Int) -> (UInt64) -> UInt64? {
        if reservedInodes.isEmpty { return { _ in nil } }
        let held = reservedInodes, high = UInt64(ag) << 32
        return { held.contains(high | $0) ? $0 + 1 : nil }
    }

    /// Sets aside up to `count` free inode numbers, in AG `preferAG` first,
    /// for a directory lease: the holder names its new files with them
    /// before the member has seen the creates (fos_wire.h, "Directory
    /// leases"). Fewer (or none) when the AGs are nearly full.
    func reserveInodeNumbers(_ count: Int, preferAG: Int) async throws -> [UInt64] {
        var got: [UInt64] = []
        for ag in agOrder(prefer: preferAG) where agFreeInodes[ag] > UInt64(count) {
            let n = UInt64(sb.inodesPerAG)
            var from = inodeSearchStart(ag)
            while got.count < count,
                  let idx = try await findClear(bitmapStart: sb.ibmStart(ag), from: from, to: n, skip: reservedSkip(ag)) {
                let ino = UInt64(ag) << 32 | idx
                reservedInodes.insert(ino)
                got.append(ino)
                from = idx + 1
            }
            if got.count == count { break }
        }
        return got
    }

    /// Takes inode number `wanted` for a new node: one reserved for the
    /// caller (`reservedForCaller`), or a free one nobody reserved (a
    /// create replayed to a restarted member). EEXIST if it is not free.
    func takeInodeNumber(_ wanted: UInt64, reservedForCaller: Bool) async throws -> UInt64 {
        let ag = Int(wanted >> 32), idx = wanted & 0xFFFF_FFFF
        guard ag < Int(sb.agCount), owns(ag: ag), idx >= 1, idx < UInt64(sb.inodesPerAG) else {
            throw FSError.posix(.invalidArgument)
        }
        if reservedInodes.contains(wanted) {
            guard reservedForCaller else { throw FSError.EEXIST }
            reservedInodes.remove(wanted)
        }
        guard try await bitIsClear(sb.ibmStart(ag), idx) else { throw FSError.EEXIST }
        try await setBits(sb.ibmStart(ag), idx, 1, to: true)
        agFreeInodes[ag] -= 1
        return wanted
    }

    /// The inode table block of `ino` is not cached and holds no other
    /// allocated inode: its contents do not matter (free slots are never
    /// read), so it can start as zeros instead of being read.
    func inodeBlockOtherwiseFree(_ ino: UInt64) async throws -> Bool {
        guard cache[sb.inodeLocation(ino).block] == nil else { return false }
        let ag = Int(ino >> 32), idx = ino & 0xFFFF_FFFF
        let first = idx - idx % UInt64(Layout.inodesPerBlock)
        for other in first..<(first + UInt64(Layout.inodesPerBlock)) where other != idx && other < UInt64(sb.inodesPerAG) {
            if try await !bitIsClear(sb.ibmStart(ag), other) { return false }
        }
        return true
    }

    /// Releases an inode number and clears its on-disk slot.
    func freeInodeNumber(_ ino: UInt64) async throws {
        let ag = Int(ino >> 32)
        try await setBits(sb.ibmStart(ag), ino & 0xFFFF_FFFF, 1, to: false)
        agFreeInodes[ag] += 1
        let (blk, off) = sb.inodeLocation(ino)
        let b = try await metaForWrite(blk)
        b.data.replaceSubrange(off..<(off + Layout.inodeSize), with: repeatElement(0, count: Layout.inodeSize))
        inodes[ino] = nil
        dirtyInodes.remove(ino)
        if let idx = dirIndexes.removeValue(forKey: ino) { dirIndexEntries -= idx.names.count }
    }
}
