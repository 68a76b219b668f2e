// fsck: checks a file system and returns its problems (empty = clean).
//
// It first replays every journal slot, exactly as a mount would (so it
// writes to the device when a journal holds committed transactions), then
// checks read-only: superblock and its backup; every AG's bitmaps against
// the blocks and inodes reachable from the root; inode checksums; extents
// (inside data areas, sorted, no overlap within or between files, none
// past the end of a regular file, no holes in directories); the blocks
// count; directory records, "." and "..", and that no directory is reachable
// twice (no cycles, no directory hard links); link counts; the orphan
// lists (Orphans.swift: allocated inodes without a name, which count as used).
extension FileSystem {
    public static func fsck(device: any BlockDevice) async throws -> [String] {
        var problems: [String] = []
        func problem(_ s: String) { if problems.count < 200 { problems.append(s) } }

        let b0 = try await device.read(block: 0, count: 1)
        let b1 = try await device.read(block: Layout.superblockBackup, count: 1)
        let primary = Superblock.decode(b0), backup = Superblock.decode(b1)
        if primary == nil { problem("superblock: invalid") }
        if backup == nil { problem("backup superblock: invalid") }
        if let p = primary, let b = backup, p != b { problem("backup superblock differs from the primary") }
        guard let sb = primary ?? backup else { return problems }
        if sb.blockCount > device.blockCount { problem("superblock: file system larger than the device"); return problems }

        for slot in 0..<Layout.journalSlots {
            do { _ = try await JournalFormat.replay(device: device, sb: sb, slot: slot) }
            catch { problem("journal slot \(slot): \(error)") }
        }

        // A read-only view: a member that owns every AG, never committing.
        let fs = FileSystem(device: device, sb: sb, member: 0, members: 1, options: MountOptions(cacheBlocks: 4096))
        var bbm: [[UInt8]] = []
        var ibm: [[UInt8]] = []
        for ag in 0..<Int(sb.agCount) {
            bbm.append(try await device.read(block: sb.bbmStart(ag), count: Int(sb.bbmBlocks)))
            ibm.append(try await device.read(block: sb.ibmStart(ag), count: Int(sb.ibmBlocks)))
        }
        func bit(_ m: [UInt8], _ i: UInt64) -> Bool { m[Int(i / 8)] & (1 << (i % 8)) != 0 }

        // Expected block usage: one bit per block of the device.
        var used = [UInt8](repeating: 0, count: Int((sb.blockCount + 7) / 8))
        func claim(_ start: UInt64, _ n: UInt64, _ owner: String) {
            for blk in start..<(start + n) {
                guard blk < sb.blockCount else { problem("\(owner): block \(blk) past the end"); return }
                if used[Int(blk / 8)] & (1 << (blk % 8)) != 0 {
                    problem("\(owner): block \(blk) is claimed twice")
                    return
                }
                used[Int(blk / 8)] |= 1 << (blk % 8)
            }
        }
        for ag in 0..<Int(sb.agCount) { claim(sb.agStart(ag), UInt64(sb.metaBlocks), "AG \(ag) metadata") }

        var links: [UInt64: UInt32] = [:]
        var subdirs: [UInt64: UInt32] = [:]
        var seen: [UInt64: Inode] = [:]
        var dirsVisited: Set<UInt64> = []

        func load(_ ino: UInt64) async -> Inode? {
            if let i = seen[ino] { return i }
            guard sb.isValidIno(ino) else { problem("inode \(ino): invalid number"); return nil }
            if !bit(ibm[Int(ino >> 32)], ino & 0xFFFF_FFFF) { problem("inode \(ino): in use but free in the inode bitmap") }
            let i: Inode
            do { i = try await fs.inode(ino) } catch {
                problem("inode \(ino): \(error)")
                return nil
            }
            seen[ino] = i
            let name = "inode \(ino)"
            var count: UInt64 = 0
            var lastEnd: UInt64 = 0
            for (k, e) in i.extents.enumerated() {
                if e.length == 0 { problem("\(name): empty extent") }
                if k > 0, UInt64(e.logical) < lastEnd { problem("\(name): extents overlap or unsorted") }
                lastEnd = e.logicalEnd
                if !sb.isDataBlock(e.physical) || !sb.isDataBlock(e.physical + UInt64(e.length) - 1)
                    || sb.ag(ofBlock: e.physical) != sb.ag(ofBlock: e.physical + UInt64(e.length) - 1) {
                    problem("\(name): extent \(e.physical)+\(e.length) outside a data area")
                    continue
                }
                claim(e.physical, UInt64(e.length), name)
                count += UInt64(e.length)
            }
            for c in i.chain where sb.isDataBlock(c) { claim(c, 1, "\(name) extent chain"); count += 1 }
            if i.xattrBlock != 0 {
                if sb.isDataBlock(i.xattrBlock) { claim(i.xattrBlock, 1, "\(name) xattrs"); count += 1 }
                else { problem("\(name): xattr block \(i.xattrBlock) outside a data area") }
            }
            if count != i.blocks { problem("\(name): blocks field \(i.blocks), owns \(count)") }
            if i.isReg, lastEnd * 4096 >= i.size + 4096 { problem("\(name): blocks past the end of file (size \(i.size))") }
            if i.isDir {
                if i.size % 4096 != 0 || i.size == 0 { problem("\(name): directory size \(i.size)") }
                if count - UInt64(i.chain.count) - (i.xattrBlock != 0 ? 1 : 0) != i.size / 4096 {
                    problem("\(name): directory has holes")
                }
            }
            if i.isSymlink, i.flags & InodeFlags.inlineSymlink == 0, i.extents.isEmpty {
                problem("\(name): symlink without target")
            }
            return i
        }

        // Walk the tree from the root.
        var queue: [(ino: UInt64, parent: UInt64)] = [(Layout.rootIno, Layout.rootIno)]
        links[Layout.rootIno] = 1  // the root's own ".." counts as its link from above
        while let (dino, parent) = queue.popLast() {
            guard let dir = await load(dino) else { continue }
            guard dir.isDir else { problem("inode \(dino): expected a directory"); continue }
            if dirsVisited.contains(dino) { problem("directory \(dino) reachable twice (cycle or hard link)"); continue }
            dirsVisited.insert(dino)
            var sawDot = false, sawDotDot = false
            var names: Set<NameKey> = []
            for l in 0..<Int(dir.size / 4096) {
                guard let p = dir.map(UInt64(l)).physical, sb.isDataBlock(p) else { continue }
                let d = try await device.read(block: p, count: 1)
                let recs: [Record]
                do { recs = try fs.parseBlock(d, dir: dino, block: l) } catch {
                    problem("\(error)")
                    continue
                }
                for (k, r) in recs.enumerated() where r.ino != 0 {
                    let name = fs.recordName(d, r)
                    if l == 0, k == 0 {
                        if name != "." || r.ino != dino { problem("directory \(dino): bad '.'") }
                        sawDot = true
                        continue
                    }
                    if l == 0, k == 1 {
                        if name != ".." { problem("directory \(dino): second entry is not '..'") }
                        else if r.ino != parent { problem("directory \(dino): '..' is \(r.ino), expected \(parent)") }
                        sawDotDot = true
                        continue
                    }
                    if name == "." || name == ".." || name.isEmpty || name.utf8.contains(0x2F) {
                        problem("directory \(dino): bad name '\(name)'")
                        continue
                    }
                    if !names.insert(NameKey(name)).inserted { problem("directory \(dino): duplicate name '\(name)'") }
                    guard let child = await load(r.ino) else { problem("directory \(dino): '\(name)' -> bad inode \(r.ino)"); continue }
                    if r.type != M.dtype(child.mode) { problem("directory \(dino): '\(name)' has the wrong type") }
                    links[r.ino, default: 0] += 1
                    if child.isDir {
                        subdirs[dino, default: 0] += 1
                        queue.append((r.ino, dino))
                    }
                }
            }
            if !sawDot || !sawDotDot { problem("directory \(dino): missing '.' or '..'") }
        }

        // Orphan lists: open files without a name; their blocks are in use.
        for ag in 0..<Int(sb.agCount) {
            let head = try await device.read(block: sb.inodeLocation(UInt64(ag) << 32).block, count: 1)
            var cur = FileSystem.orphanHead(head)
            var steps: UInt64 = 0
            while cur != 0 {
                steps += 1
                guard cur >> 32 == UInt64(ag), sb.isValidIno(cur), steps <= UInt64(sb.inodesPerAG) else {
                    problem("AG \(ag): bad orphan list entry \(cur)")
                    break
                }
                if seen[cur] != nil { problem("inode \(cur): orphan listed twice or with a name"); break }
                guard let i = await load(cur) else { break }
                if i.nlink != 0 || i.isDir { problem("inode \(cur): orphan with nlink \(i.nlink)") }
                cur = i.orphanNext
            }
        }

        for (ino, i) in seen {
            if i.isDir {
                let expect = 2 + (subdirs[ino] ?? 0)
                if i.nlink != expect { problem("directory \(ino): nlink \(i.nlink), expected \(expect)") }
                if ino != Layout.rootIno, links[ino] ?? 0 != 1 { problem("directory \(ino): \(links[ino] ?? 0) names") }
            } else if i.nlink != links[ino] ?? 0 {
                problem("inode \(ino): nlink \(i.nlink), found \(links[ino] ?? 0) names")
            }
        }

        for ag in 0..<Int(sb.agCount) {
            if !bit(ibm[ag], 0) { problem("AG \(ag): reserved inode 0 marked free") }
            var orphans = 0
            for idx in 1..<UInt64(sb.inodesPerAG) where bit(ibm[ag], idx) {
                if seen[UInt64(ag) << 32 | idx] == nil {
                    orphans += 1
                    if orphans <= 5 { problem("inode \(UInt64(ag) << 32 | idx): allocated but unreachable") }
                }
            }
            if orphans > 5 { problem("AG \(ag): \(orphans) unreachable inodes in all") }
            let start = sb.agStart(ag)
            var leaked = 0, missing = 0
            let size = sb.agSize(ag)
            var k: UInt64 = 0
            while k < size {
                let blk = start + k
                // Fast path: eight blocks at once when both sides are byte aligned.
                if k % 8 == 0, blk % 8 == 0, k + 8 <= size, bbm[ag][Int(k / 8)] == used[Int(blk / 8)] {
                    k += 8
                    continue
                }
                let inUse = used[Int(blk / 8)] & (1 << (blk % 8)) != 0
                let marked = bit(bbm[ag], k)
                if marked, !inUse {
                    leaked += 1
                    if leaked <= 5 { problem("block \(blk): marked used but unreferenced") }
                } else if inUse, !marked {
                    missing += 1
                    if missing <= 5 { problem("block \(blk): in use but marked free") }
                }
                k += 1
            }
            if leaked > 5 || missing > 5 { problem("AG \(ag): \(leaked) leaked and \(missing) unmarked blocks in all") }
        }
        return problems
    }
}
