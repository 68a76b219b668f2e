// File contents: extent mapping, read, write (allocate on write, sparse
// holes read as zeros), truncate, and storing the extent list (inline or in
// the extent chain).
extension Inode {
    /// Index of the last extent starting at or before `l`.
    private func floorIndex(_ l: UInt64) -> Int? {
        var lo = 0, hi = extents.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if UInt64(extents[mid].logical) <= l { lo = mid + 1 } else { hi = mid }
        }
        return lo == 0 ? nil : lo - 1
    }

    /// Maps file block `l`: the physical block (nil in a hole) and how many
    /// blocks from `l` on have the same state.
    func map(_ l: UInt64) -> (physical: UInt64?, run: UInt64) {
        let fi = floorIndex(l)
        if let fi, extents[fi].logicalEnd > l {
            let e = extents[fi]
            return (e.physical + (l - UInt64(e.logical)), e.logicalEnd - l)
        }
        let next = (fi ?? -1) + 1
        if next < extents.count { return (nil, UInt64(extents[next].logical) - l) }
        return (nil, (1 << 32) - l)
    }

    func insertExtent(_ e: Extent) {
        var e = e
        var idx = (floorIndex(UInt64(e.logical)) ?? -1) + 1
        if idx > 0 {
            let p = extents[idx - 1]
            if p.logicalEnd == UInt64(e.logical), p.physical + UInt64(p.length) == e.physical,
               UInt64(p.length) + UInt64(e.length) < UInt64(UInt32.max) {
                e = Extent(logical: p.logical, length: p.length + e.length, physical: p.physical)
                extents.remove(at: idx - 1)
                idx -= 1
            }
        }
        if idx < extents.count {
            let n = extents[idx]
            if e.logicalEnd == UInt64(n.logical), e.physical + UInt64(e.length) == n.physical,
               UInt64(n.length) + UInt64(e.length) < UInt64(UInt32.max) {
                e.length += n.length
                extents.remove(at: idx)
            }
        }
        extents.insert(e, at: idx)
        extentsDirty = true
    }

    /// Unmaps file blocks [lo, hi); returns the physical runs released.
    func removeRange(_ lo: UInt64, _ hi: UInt64) -> [(UInt64, UInt64)] {
        var freed: [(UInt64, UInt64)] = []
        var out: [Extent] = []
        out.reserveCapacity(extents.count + 1)
        for e in extents {
            let s = UInt64(e.logical), t = e.logicalEnd
            if t <= lo || s >= hi { out.append(e); continue }
            if s < lo { out.append(Extent(logical: e.logical, length: UInt32(lo - s), physical: e.physical)) }
            let cs = max(s, lo), ct = min(t, hi)
            freed.append((e.physical + (cs - s), ct - cs))
            if t > hi { out.append(Extent(logical: UInt32(hi), length: UInt32(t - hi), physical: e.physical + (hi - s))) }
        }
        if !freed.isEmpty {
            extents = out
            extentsDirty = true
        }
        return freed
    }
}

extension FileSystem {
    /// Writes the inode's extent list to its chain blocks when it no longer
    /// fits inline (allocating or freeing chain blocks). May throw ENOSPC, in
    /// which case nothing changed on disk.
    func storeExtents(_ i: Inode) async throws {
        guard i.extentsDirty else { return }
        let per = Layout.extentsPerChainBlock
        let need = i.extents.count <= Layout.inlineExtents ? 0 : (i.extents.count + per - 1) / per
        while i.chain.count < need {
            let goal = i.chain.last.map { $0 + 1 } ?? i.extents.first?.physical
            let (b, _) = try await allocBlocks(count: 1, goal: goal, preferAG: i.ag, for: i)
            i.chain.append(b)
            i.blocks += 1
        }
        while i.chain.count > need {
            try await freeBlocks(i.chain.removeLast(), 1)
            i.blocks -= 1
        }
        for (k, blk) in i.chain.enumerated() {
            let buf = try await metaForWrite(blk, fresh: true)
            var d = [UInt8].zeroBlock()
            let slice = i.extents[(k * per)..<min(i.extents.count, (k + 1) * per)]
            d.put32(0, InodeCodec.chainMagic)
            d.put32(4, UInt32(slice.count))
            d.put64(8, k + 1 < i.chain.count ? i.chain[k + 1] : 0)
            for (j, e) in slice.enumerated() {
                d.put32(16 + j * 16, e.logical); d.put32(20 + j * 16, e.length); d.put64(24 + j * 16, e.physical)
            }
            buf.data = d
        }
        i.extentsDirty = false
        markDirty(i)
    }

    func noteMappingChanged(_ i: Inode) { markDirty(i) }

    /// A read whose device I/O happens outside the operation lock. Safe
    /// because a block freed meanwhile (truncate, unlink) is not reused before
    /// the next checkpoint, and a checkpoint waits until no such read is in
    /// flight (`streamingReads`): every block read here still holds this
    /// file's data, or data it held a moment ago — what a read racing a
    /// truncate may return anyway. Cached (possibly dirty) blocks are copied
    /// under the lock.
    struct StreamingRead: Sendable {
        var out: [UInt8]
        /// (first block, blocks, byte offset in the first block, bytes, where in `out`)
        var runs: [(block: UInt64, count: Int, skip: Int, bytes: Int, at: Int)] = []
    }

    func planRead(_ i: Inode, offset: UInt64, count: Int) async throws -> StreamingRead {
        guard offset < i.size, count > 0 else { return StreamingRead(out: []) }
        let end = min(i.size, offset + UInt64(count))
        var plan = StreamingRead(out: [UInt8](repeating: 0, count: Int(end - offset)))
        var pos = offset
        while pos < end {
            let l = pos / 4096
            let (phys, run) = i.map(l)
            let runEnd = min(end, (l + run) * 4096)
            if let phys {
                var p = pos
                var blk = phys
                while p < runEnd {
                    let ib = Int(p % 4096)
                    if let b = cache[blk] {
                        let n = min(4096 - ib, Int(runEnd - p))
                        let dst = Int(p - offset)
                        plan.out.withUnsafeMutableBytes { o in
                            b.data.withUnsafeBytes { s in (o.baseAddress! + dst).copyMemory(from: s.baseAddress! + ib, byteCount: n) }
                        }
                        p += UInt64(n)
                        blk += 1
                        continue
                    }
                    var k: UInt64 = 1
                    let blocksLeft = (runEnd - (p - p % 4096) + 4095) / 4096
                    while k < blocksLeft, k < UInt64(Self.readBatch), cache[blk + k] == nil { k += 1 }
                    let n = min(Int(k) * 4096 - ib, Int(runEnd - p))
                    plan.runs.append((blk, Int(k), ib, n, Int(p - offset)))
                    p += UInt64(n)
                    blk += k
                }
            }
            pos = runEnd
        }
        return plan
    }

    /// The device half of a read: under the lock (`keep`: cache what is
    /// read), or after it, for a plan counted in `streamingReads`.
    func execute(_ plan: StreamingRead, keep: Bool = false) async throws -> [UInt8] {
        var out = plan.out
        for r in plan.runs {
            let d = try await device.read(block: r.block, count: r.count)
            if keep { try await self.keep(d, from: r.block, count: UInt64(r.count)) }
            out.withUnsafeMutableBytes { o in
                d.withUnsafeBytes { s in (o.baseAddress! + r.at).copyMemory(from: s.baseAddress! + r.skip, byteCount: r.bytes) }
            }
        }
        return out
    }

    /// A streaming read's device half, outside the lock.
    func finish(_ plan: StreamingRead) async throws -> [UInt8] {
        guard !plan.runs.isEmpty else { return plan.out }
        defer { streamingReads.subtract(1, ordering: .acquiringAndReleasing) }
        return try await execute(plan)
    }

    /// Checkpoints make freed blocks reusable: not while a streaming read
    /// may still be reading one.
    func waitForStreamingReads() async {
        while streamingReads.load(ordering: .acquiring) > 0 {
            try? await Task.sleep(for: .microseconds(100))
        }
    }

    /// Most blocks one read of file data asks the device for at once.
    static let readBatch = 256

    /// Caches blocks just read (small files: they are read again; a large
    /// file streamed through would only push everything else out).
    func keep(_ data: [UInt8], from first: UInt64, count: UInt64) async throws {
        for k in 0..<count where cache[first + k] == nil {
            try await makeRoom()
            clock &+= 1
            let b = Buffer(block: first + k, data: Array(data[Int(k) * 4096..<Int(k + 1) * 4096]))
            b.lastUse = clock
            cache[first + k] = b
        }
    }

    /// Writes `data` at `offset`, allocating blocks for holes. Returns the
    /// bytes written (short only if the disk filled up part-way).
    /// `journal`: new blocks of a small write may be journaled (`dataChanged`).
    func writeData(_ i: Inode, offset: UInt64, data: [UInt8], journal: Bool = true) async throws -> Int {
        guard !data.isEmpty else { return 0 }
        guard offset < Layout.maxFileSize, UInt64(data.count) <= Layout.maxFileSize - offset else {
            throw FSError.EFBIG
        }
        // Only small writes journal their new blocks (`dataChanged`): a
        // large one would pass its data through the journal twice.
        // Its whole blocks go home at once, past the buffer cache (`homeRun`),
        // and so do those of a writer that never asked for an fsync (nothing
        // of its is journaled): through a buffer per block (allocated,
        // copied, coalesced, evicted) its 9000-byte writes took the member
        // about 2 µs longer, of 18-20.
        let home = data.count > FileSystem.journaledDataLimit * Layout.blockSize
            || (!journal && data.count >= Layout.blockSize)
        if home {
            txnJournaledData = max(txnJournaledData, FileSystem.journaledDataLimit)
        }
        var done = 0
        var freshUntil: UInt64 = 0  // file blocks below this (and >= freshFrom) were just allocated
        var freshFrom: UInt64 = 0
        var retried = false
        while done < data.count {
            let pos = offset + UInt64(done)
            let l = pos / 4096
            let inBlock = Int(pos % 4096)
            let n = min(4096 - inBlock, data.count - done)
            var (phys, run) = i.map(l)
            if phys == nil {
                let lastL = (offset + UInt64(data.count) - 1) / 4096
                let want = Int(min(run, lastL - l + 1, 4096))
                let goal: UInt64? = {
                    if let prev = i.map(l == 0 ? 0 : l - 1).physical, l > 0 { return prev + 1 }
                    return i.extents.last.map { $0.physical + UInt64($0.length) }
                }()
                let got: (start: UInt64, count: Int)
                do {
                    got = try await allocBlocks(count: want, goal: goal, preferAG: i.ag, for: i, spill: true)
                } catch FSError.posix(.noSpace) where reservedCount > 0 && !retried {
                    retried = true
                    if pos > i.size {
                        i.size = pos
                        observeResize(i)
                    }
                    try await storeExtents(i)
                    try await commit()
                    try await checkpoint()
                    continue
                } catch FSError.posix(.noSpace) where done > 0 {
                    break
                }
                i.insertExtent(Extent(logical: UInt32(l), length: UInt32(got.count), physical: got.start))
                i.blocks += UInt64(got.count)
                do {
                    try await storeExtents(i)
                } catch FSError.posix(.noSpace) {
                    _ = i.removeRange(l, l + UInt64(got.count))
                    i.blocks -= UInt64(got.count)
                    try await freeBlocks(got.start, UInt64(got.count))
                    try await storeExtents(i)
                    if done > 0 { break }
                    throw FSError.ENOSPC
                }
                noteMappingChanged(i)
                freshFrom = l
                freshUntil = l + UInt64(got.count)
                phys = got.start
                run = UInt64(got.count)
            }
            if home, inBlock == 0 {
                let left = data.count - done
                var m = homeRun(phys!, upTo: Int(min(run, UInt64(left / 4096))))
                // The write's last block, only partly written but new to the
                // file, goes in the same device write, padded with the zeros
                // it holds anyway: through a buffer it was a second pwrite at
                // the commit (an untar's writes took the member 14.8-15.3 µs
                // each, now 13.5-14.8).
                let tail = left % 4096
                let last = l + UInt64(m)
                let padded = tail != 0 && m == left / 4096 && UInt64(m) < run && last >= freshFrom && last < freshUntil
                    && homeRun(phys! + UInt64(m), upTo: 1) == 1
                if padded { m += 1 }
                if m > 0 {
                    let len = padded ? left : m * 4096
                    // Straight from the request's data (the padding, if
                    // any, from the device's zeros): a padded copy was an
                    // allocation and a copy of each write.
                    try await device.writeOutliving(block: phys!, padding: data[done..<done + len])
                    forgetOverwritten(phys!, m)
                    if l < freshUntil && l + UInt64(m) > freshFrom { txnHasFreshData = true }
                    done += len
                    if pos + UInt64(len) > i.size {
                        i.size = pos + UInt64(len)
                        noteMappingChanged(i)
                    }
                    if txn.count + dirtyInodes.count >= txnSoftLimit {
                        try await commit(flush: false)
                        txnJournaledData = FileSystem.journaledDataLimit  // still a large write
                    }
                    continue
                }
            }
            let isFresh = l >= freshFrom && l < freshUntil
            // Part of a block the file had already, written in place at
            // home when its data is not journaled, as whole blocks are
            // (`homeRun`; a cached copy would be stale: it goes). Through a
            // buffer it was a read of the block now and a write of all of
            // it at the commit: tar's second write of a file, its tail,
            // took the member 2-3 µs longer.
            if !journal, !isFresh, n < 4096, device.writesBytesInPlace, homeRun(phys!, upTo: 1) == 1,
               cache[phys!]?.dirtyData != true {
                try await device.writeOutliving(block: phys!, offset: inBlock, bytes: data[done..<(done + n)])
                cache[phys!] = nil
                done += n
                if pos + UInt64(n) > i.size {
                    i.size = pos + UInt64(n)
                    noteMappingChanged(i)
                }
                continue
            }
            let buf = (isFresh || (inBlock == 0 && n == 4096)) ? try await fresh(phys!) : try await cached(phys!)
            let src = done
            buf.data.withUnsafeMutableBytes { d in
                data.withUnsafeBytes { s in (d.baseAddress! + inBlock).copyMemory(from: s.baseAddress! + src, byteCount: n) }
            }
            dataChanged(buf, fresh: isFresh, journal: journal)
            done += n
            if pos + UInt64(n) > i.size {
                i.size = pos + UInt64(n)
                noteMappingChanged(i)
            }
            if txn.count + dirtyInodes.count >= txnSoftLimit || cache.count > options.cacheBlocks + options.cacheBlocks / 2 {
                try await commit(flush: false)
            }
        }
        if done > 0 {
            touch(i)
            observeWrite(i, offset: offset, data[..<done])
        }
        return done
    }

    /// How many of the `upTo` blocks from `start` a large write may put home
    /// with one device write, past the buffer cache: those neither in the
    /// running transaction, nor committed and awaiting their checkpoint, nor
    /// with an image in the journal (replay would put that image back over
    /// them). Such a block is what `dataChanged` would only have marked
    /// dirty, to write home at the commit: written now, it is home before
    /// the transaction that maps it all the same (`txnHasFreshData` keeps a
    /// durable commit flushing it first).
    ///
    /// Why: through the cache, every 4 KiB block of a large write was a
    /// buffer of its own (an allocation, a dictionary entry, a copy, an
    /// eviction sort and a coalescing copy later): 1.3 ms of this member's
    /// time per MiB, most of a sequential write through the mount.
    func homeRun(_ start: UInt64, upTo max: Int) -> Int {
        var m = 0
        while m < max {
            let blk = start + UInt64(m)
            if inJournal.contains(blk) { break }
            if let b = cache[blk], b.inTxn || b.needsCheckpoint { break }
            m += 1
        }
        return m
    }

    /// Forgets the cached copies of blocks just overwritten whole at home
    /// (clean or dirty, never in a transaction: `homeRun`).
    func forgetOverwritten(_ start: UInt64, _ count: Int) {
        for blk in start..<(start + UInt64(count)) {
            guard let b = cache.removeValue(forKey: blk) else { continue }
            if b.dirtyData { dirtyData.remove(blk) }
        }
    }

    /// Sets the file size: frees blocks past the end and zeroes the tail of
    /// the last partial block, so a later extension reads zeros.
    func truncateData(_ i: Inode, to newSize: UInt64) async throws {
        if newSize < i.size {
            let keep = (newSize + 4095) / 4096
            for (p, n) in i.removeRange(keep, 1 << 32) {
                try await freeBlocks(p, n)
                i.blocks -= n
            }
            try await storeExtents(i)
            if newSize % 4096 != 0, let phys = i.map(newSize / 4096).physical {
                let buf = try await cached(phys)
                let from = Int(newSize % 4096)
                buf.data.replaceSubrange(from..<4096, with: repeatElement(0, count: 4096 - from))
                dataChanged(buf, fresh: false)
            }
        }
        let changed = newSize != i.size
        if changed { noteMappingChanged(i) }
        i.size = newSize
        touch(i)
        if changed { observeResize(i) }
    }

    /// Releases everything an inode owns, then the inode itself.
    func destroyInode(_ i: Inode) async throws {
        observeFree(i.ino)
        for (p, n) in i.removeRange(0, 1 << 32) { try await freeBlocks(p, n) }
        i.extentsDirty = false
        for b in i.chain { try await freeBlocks(b, 1) }
        i.chain = []
        if i.xattrBlock != 0 { try await freeBlocks(i.xattrBlock, 1) }
        try await freeInodeNumber(i.ino)
    }
}
