// Directories.
//
// On disk: 4 KiB blocks of variable-length records (see DirFormat); block 0
// starts with "." and "..". Entries never move: a delete merges the record
// into its predecessor (or zeroes the ino of a block's first record), an
// insert splits the slack of an existing record. A readdir cookie is
// (file block << 12 | offset of the next record); resuming parses the block
// from its start and returns records at or after the offset, so every entry
// that exists for the whole readdir is returned exactly once, across any
// number of concurrent inserts and deletes.
//
// Index: an in-memory hash table per directory (name -> ino, type, block,
// offset) plus the largest free slot of each block, built by one scan of the
// directory the first time it is used and kept in the member's cache
// (bounded by MountOptions.directoryIndexLimit; evicted whole, least recently
// used first). Trade-off versus an on-disk hashed index (htree): no second
// structure to journal, check and keep crash consistent, and O(1) lookups at
// any size once built; the price is one O(n) scan per directory after mount
// or eviction (100,000 entries = ~600 blocks) and ~100 bytes of memory per
// cached entry. The home member of a directory is its only writer, so its
// index never goes stale.
extension FileSystem {
    struct Record {
        var offset: Int
        var ino: UInt64
        var recLen: Int
        var nameLen: Int
        var type: UInt8
    }

    func parseBlock(_ d: [UInt8], dir: UInt64, block: Int) throws -> [Record] {
        var out: [Record] = []
        var off = 0
        while off < 4096 {
            guard off + DirFormat.header <= 4096 else { throw FSError.corrupt("directory \(dir) block \(block): truncated record") }
            let recLen = Int(d.u16(off + 8))
            let nameLen = Int(d[off + 10])
            guard recLen >= DirFormat.header, recLen % 4 == 0, off + recLen <= 4096,
                  DirFormat.recSize(nameLen: nameLen) <= recLen else {
                throw FSError.corrupt("directory \(dir) block \(block): bad record at \(off)")
            }
            out.append(Record(offset: off, ino: d.u64(off), recLen: recLen, nameLen: nameLen, type: d[off + 11]))
            off += recLen
        }
        return out
    }

    func recordName(_ d: [UInt8], _ r: Record) -> String {
        String(decoding: d[(r.offset + DirFormat.header)..<(r.offset + DirFormat.header + r.nameLen)], as: UTF8.self)
    }

    static func slack(_ records: [Record]) -> UInt16 {
        var best = 0
        for r in records {
            let free = r.ino == 0 ? r.recLen : r.recLen - DirFormat.recSize(nameLen: r.nameLen)
            best = max(best, free)
        }
        return UInt16(best)
    }

    func dirBlockPhysical(_ dir: Inode, _ l: Int) throws -> UInt64 {
        guard let p = dir.map(UInt64(l)).physical else { throw FSError.corrupt("directory \(dir.ino): hole at block \(l)") }
        return p
    }

    func dirIndex(_ dir: Inode) async throws -> DirIndex {
        clock &+= 1
        if let idx = dirIndexes[dir.ino] {
            idx.lastUse = clock
            return idx
        }
        let idx = DirIndex()
        let nblocks = Int(dir.size / 4096)
        idx.slack.reserveCapacity(nblocks)
        for l in 0..<nblocks {
            let d = try await cached(try dirBlockPhysical(dir, l)).data
            let recs = try parseBlock(d, dir: dir.ino, block: l)
            for r in recs where r.ino != 0 {
                let name = recordName(d, r)
                if l == 0, name == "." { continue }
                if l == 0, name == ".." { idx.parent = r.ino; continue }
                idx.names[NameKey(name)] = DirIndex.Slot(ino: r.ino, type: r.type, block: UInt32(l), offset: UInt16(r.offset))
            }
            idx.slack.append(Self.slack(recs))
        }
        idx.lastUse = clock
        dirIndexes[dir.ino] = idx
        dirIndexEntries += idx.names.count
        return idx
    }

    /// Makes sure some block of `dir` can take a record of `need` bytes
    /// (appending a block if none can); returns that block. This is the only
    /// step of an insert that can fail (ENOSPC), so callers do it first.
    func dirReserve(_ dir: Inode, need: Int) async throws -> Int {
        let idx = try await dirIndex(dir)
        let n = idx.slack.count
        if n > 0 {
            for k in 0..<n {
                let l = (idx.hint + k) % n
                if Int(idx.slack[l]) >= need {
                    idx.hint = l
                    return l
                }
            }
        }
        guard dir.size / 4096 < UInt64(UInt32.max) else { throw FSError.EFBIG }
        let l = n
        let goal = dir.extents.last.map { $0.physical + UInt64($0.length) }
        let (p, _) = try await allocBlocks(count: 1, goal: goal, preferAG: dir.ag, for: dir)
        dir.insertExtent(Extent(logical: UInt32(l), length: 1, physical: p))
        dir.blocks += 1
        do {
            try await storeExtents(dir)
        } catch {
            _ = dir.removeRange(UInt64(l), UInt64(l) + 1)
            dir.blocks -= 1
            try await freeBlocks(p, 1)
            try await storeExtents(dir)
            throw error
        }
        let buf = try await metaForWrite(p, fresh: true)
        var d = [UInt8].zeroBlock()
        d.put16(8, 4096)
        buf.data = d
        dir.size += 4096
        markDirty(dir)
        idx.slack.append(4096)
        idx.hint = l
        return l
    }

    /// Inserts a record into block `l` (reserved by dirReserve). The block's
    /// new slack comes from the same parse: the split record has none left,
    /// the new one what it does not use, the others what they had.
    func dirInsert(_ dir: Inode, name: String, ino: UInt64, type: UInt8, block l: Int) async throws {
        let idx = try await dirIndex(dir)
        let nameBytes = Array(name.utf8)
        let need = DirFormat.recSize(nameLen: nameBytes.count)
        let buf = try await metaForWrite(try dirBlockPhysical(dir, l))
        var placed: Int?
        var slack = 0
        for r in try parseBlock(buf.data, dir: dir.ino, block: l) {
            // A record with no entry (a block's emptied first) is all free.
            let used = r.ino == 0 ? 0 : DirFormat.recSize(nameLen: r.nameLen)
            guard placed == nil, r.recLen - used >= need else {
                slack = max(slack, r.recLen - used)
                continue
            }
            if used > 0 { buf.data.put16(r.offset + 8, UInt16(used)) }
            placed = r.offset + used
            write(&buf.data, at: r.offset + used, ino: ino, recLen: r.recLen - used, name: nameBytes, type: type)
            slack = max(slack, r.recLen - used - need)
        }
        guard let off = placed else { throw FSError.corrupt("directory \(dir.ino): reserved block \(l) is full") }
        idx.slack[l] = UInt16(slack)
        idx.names[NameKey(name)] = DirIndex.Slot(ino: ino, type: type, block: UInt32(l), offset: UInt16(off))
        dirIndexEntries += 1
    }

    private func write(_ d: inout [UInt8], at o: Int, ino: UInt64, recLen: Int, name: [UInt8], type: UInt8) {
        d.put64(o, ino)
        d.put16(o + 8, UInt16(recLen))
        d[o + 10] = UInt8(name.count)
        d[o + 11] = type
        d.putBytes(o + DirFormat.header, name)
    }

    func dirRemove(_ dir: Inode, name: String) async throws {
        let idx = try await dirIndex(dir)
        guard let slot = idx.names[NameKey(name)] else { throw FSError.ENOENT }
        let l = Int(slot.block)
        let buf = try await metaForWrite(try dirBlockPhysical(dir, l))
        let recs = try parseBlock(buf.data, dir: dir.ino, block: l)
        guard let k = recs.firstIndex(where: { $0.offset == Int(slot.offset) }) else {
            throw FSError.corrupt("directory \(dir.ino): index points at no record")
        }
        if k == 0 {
            buf.data.put64(0, 0)
        } else {
            let prev = recs[k - 1]
            buf.data.put16(prev.offset + 8, UInt16(prev.recLen + recs[k].recLen))
        }
        idx.slack[l] = Self.slack(try parseBlock(buf.data, dir: dir.ino, block: l))
        idx.names[NameKey(name)] = nil
        dirIndexEntries -= 1
    }

    /// Points an existing entry at another inode, in place (rename over an
    /// existing name: the name never disappears).
    func dirRetarget(_ dir: Inode, name: String, ino: UInt64, type: UInt8) async throws {
        let idx = try await dirIndex(dir)
        guard var slot = idx.names[NameKey(name)] else { throw FSError.ENOENT }
        let buf = try await metaForWrite(try dirBlockPhysical(dir, Int(slot.block)))
        buf.data.put64(Int(slot.offset), ino)
        buf.data[Int(slot.offset) + 11] = type
        slot.ino = ino
        slot.type = type
        idx.names[NameKey(name)] = slot
    }

    /// Rewrites ".." (a directory moved to another parent).
    func dirSetParent(_ dir: Inode, _ parent: UInt64) async throws {
        let idx = try await dirIndex(dir)
        let buf = try await metaForWrite(try dirBlockPhysical(dir, 0))
        let recs = try parseBlock(buf.data, dir: dir.ino, block: 0)
        guard recs.count >= 2, recordName(buf.data, recs[1]) == ".." else {
            throw FSError.corrupt("directory \(dir.ino): no '..' entry")
        }
        buf.data.put64(recs[1].offset, parent)
        idx.parent = parent
    }

    /// Writes the first block of a new directory ("." and "..").
    func dirInitBlock(_ d: inout [UInt8], selfIno: UInt64, parent: UInt64) {
        d = .zeroBlock()
        write(&d, at: 0, ino: selfIno, recLen: 16, name: Array(".".utf8), type: 4)
        write(&d, at: 16, ino: parent, recLen: 4096 - 16, name: Array("..".utf8), type: 4)
    }

    func dirList(_ dir: Inode, cookie: UInt64, max: Int) async throws -> [DirectoryEntry] {
        var out: [DirectoryEntry] = []
        var l = Int(cookie >> 12)
        var from = Int(cookie & 0xFFF)
        let nblocks = Int(dir.size / 4096)
        while l < nblocks, out.count < max {
            let d = try await cached(try dirBlockPhysical(dir, l)).data
            for r in try parseBlock(d, dir: dir.ino, block: l) where r.offset >= from && r.ino != 0 {
                if out.count >= max { break }
                let end = r.offset + r.recLen
                let next = end >= 4096 ? UInt64(l + 1) << 12 : UInt64(l) << 12 | UInt64(end)
                out.append(DirectoryEntry(name: recordName(d, r), ino: r.ino, type: r.type, nextCookie: next))
            }
            l += 1
            from = 0
        }
        return out
    }
}
