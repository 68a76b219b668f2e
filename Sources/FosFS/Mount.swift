// mkfs, mount and unmount.
//
// mkfs chooses the geometry: AGs of 128 MiB..1 GiB with at least 4 AGs when
// the disk allows (smaller disks get 4 small AGs, tiny ones 1), one inode per
// 16 KiB, journal slots of disk/256 (64...8192 blocks). It writes only the
// superblocks, the journal slots (whole), bitmaps, the root directory and
// the first inode table block of each AG (its orphan list head); the rest of
// the inode tables is not zeroed because a free inode slot (bitmap bit clear)
// is never read, and every allocated slot is written whole.
extension FileSystem {
    public static func mkfs(device: any BlockDevice, options: MkfsOptions = MkfsOptions()) async throws {
        guard device.blockSize == Layout.blockSize else { throw FSError.EINVAL }
        let total = device.blockCount
        // Multiples of 8 keep AG starts byte-aligned in fsck's block map.
        // A slot of 1/128 of the disk, at most 64 MiB: a burst of changes
        // that fits in it never waits for a checkpoint (checkpointIfIdle).
        let jb = (UInt64(options.journalBlocks ?? Int(min(16384, max(64, total / 128)))) + 7) / 8 * 8
        let first = Layout.journalStart + jb * UInt64(Layout.journalSlots)
        guard total > first + 64 else { throw FSError.ENOSPC }
        let avail = total - first
        var agBlocks: UInt64
        if let a = options.agBlocks {
            agBlocks = UInt64(a)
        } else if avail >= 4 * 32768 {
            agBlocks = min(262_144, max(32768, (avail + 3) / 4))
        } else if avail >= 4 * 512 {
            agBlocks = (avail + 3) / 4
        } else {
            agBlocks = avail
        }
        agBlocks = agBlocks / 8 * 8
        let inodesPerAG = UInt64(min(1 << 24, max(64, (agBlocks * 4096 / UInt64(max(options.bytesPerInode, 1024)) + 15) / 16 * 16)))
        let bbm = (agBlocks + 32767) / 32768
        let ibm = (inodesPerAG + 32767) / 32768
        let itab = inodesPerAG / 16
        let meta = bbm + ibm + itab
        guard agBlocks > meta + 16 else { throw FSError.ENOSPC }
        var agCount = (avail + agBlocks - 1) / agBlocks
        if agCount > 1, avail - (agCount - 1) * agBlocks < meta + 16 { agCount -= 1 }
        var uuid = [UInt8](repeating: 0, count: 16)
        var g = SystemRandomNumberGenerator()
        for k in 0..<16 { uuid[k] = g.next() }
        let sb = Superblock(blockCount: total, agCount: UInt32(agCount), agBlocks: UInt32(agBlocks),
                            inodesPerAG: UInt32(inodesPerAG), bbmBlocks: UInt32(bbm), ibmBlocks: UInt32(ibm),
                            itableBlocks: UInt32(itab), journalBlocks: UInt32(jb), firstAGBlock: first,
                            uuid: uuid, createdNs: nowNs())
        guard sb.isSane else { throw FSError.EINVAL }

        // The journal is written out whole, as mke2fs does: on a disk image
        // that is a sparse file every first write of a block would otherwise
        // make the host file system allocate it, and every fsync that
        // flushes a journal block paid for that allocation.
        let zeros = [UInt8](repeating: 0, count: 256 * Layout.blockSize)
        for slot in 0..<Layout.journalSlots {
            var b: UInt64 = 1
            while b < jb {
                let n = min(256, jb - b)
                try await device.write(block: sb.journalSlotStart(slot) + b,
                                       data: n == 256 ? zeros : Array(zeros.prefix(Int(n) * Layout.blockSize)))
                b += n
            }
            try await device.write(block: sb.journalSlotStart(slot), data: JournalFormat.jsb(slot: slot, startSeq: 1))
        }
        let rootBlock = sb.dataStart(0)
        for ag in 0..<Int(agCount) {
            let size = sb.agSize(ag)
            let used = meta + (ag == 0 ? 1 : 0)
            var bm = [UInt8](repeating: 0, count: Int(bbm) * 4096)
            for bit in Array(0..<used) + Array(size..<(bbm * 32768)) { bm[Int(bit / 8)] |= 1 << (bit % 8) }
            try await device.write(block: sb.bbmStart(ag), data: bm)
            var im = [UInt8](repeating: 0, count: Int(ibm) * 4096)
            im[0] = ag == 0 ? 0b11 : 0b01  // index 0 reserved; root is AG 0 index 1
            for bit in inodesPerAG..<(ibm * 32768) { im[Int(bit / 8)] |= 1 << (bit % 8) }
            try await device.write(block: sb.ibmStart(ag), data: im)
        }
        // Root directory.
        let now = nowNs()
        let root = Inode(ino: Layout.rootIno)
        root.mode = M.dir | (options.rootMode & M.perm)
        root.uid = options.rootUid
        root.gid = options.rootGid
        root.nlink = 2
        root.size = 4096
        root.blocks = 1
        root.atime = now; root.mtime = now; root.ctime = now; root.btime = now
        root.generation = 1
        root.extents = [Extent(logical: 0, length: 1, physical: rootBlock)]
        var dirBlock = [UInt8]()
        let tmp = FileSystem(device: device, sb: sb, member: 0, members: 1, options: MountOptions())
        tmp.dirInitBlock(&dirBlock, selfIno: Layout.rootIno, parent: Layout.rootIno)
        try await device.write(block: rootBlock, data: dirBlock)
        let (iblk, ioff) = sb.inodeLocation(Layout.rootIno)
        var itable = [UInt8].zeroBlock()
        root.encode(into: &itable, at: ioff)
        try await device.write(block: iblk, data: itable)
        // Every AG's first inode table block holds its orphan list head
        // (Orphans.swift): a disk made again must not keep an old list.
        for ag in 1..<Int(agCount) { try await device.write(block: sb.itableStart(ag), data: .zeroBlock()) }
        try await device.flush()
        // The superblocks last: a disk without a valid superblock is not a
        // file system, so an interrupted mkfs leaves nothing half-made.
        let sbData = sb.encode()
        try await device.write(block: Layout.superblockBackup, data: sbData)
        try await device.write(block: 0, data: sbData)
        try await device.flush()
    }

    static func readSuperblock(_ device: any BlockDevice) async throws -> Superblock {
        if let sb = Superblock.decode(try await device.read(block: 0, count: 1)) { return sb }
        if let sb = Superblock.decode(try await device.read(block: Layout.superblockBackup, count: 1)) { return sb }
        throw FSError.corrupt("no valid superblock")
    }

    /// Mounts member `member` of a fleet of `members` (1...4). Replays the
    /// member's journal slot (all four slots when members == 1, the only
    /// member then owning everything).
    public static func mount(device: any BlockDevice, member: Int = 0, members: Int = 1,
                             options: MountOptions = MountOptions()) async throws -> FileSystem {
        guard (1...Layout.journalSlots).contains(members), (0..<members).contains(member) else { throw FSError.EINVAL }
        let sb = try await readSuperblock(device)
        guard sb.blockCount <= device.blockCount else { throw FSError.corrupt("device smaller than the file system") }
        let slots = members == 1 ? Array(0..<Layout.journalSlots) : [member]
        var next: UInt64 = 1
        for s in slots {
            let r = try await JournalFormat.replay(device: device, sb: sb, slot: s)
            if s == member { next = r.next }
        }
        let fs = FileSystem(device: device, sb: sb, member: member, members: members, options: options)
        fs.jSeq = next
        fs.jStartSeq = next
        device.expectSmallWrites(block: sb.journalSlotStart(member), count: Int(sb.journalBlocks))
        try await fs.countFree()
        try await fs.loadOrphans()
        fs.publishRoom()
        return fs
    }

    /// Commits, checkpoints and flushes; the member cannot be used afterwards.
    public func unmount() async throws {
        try await op {
            try await commit()
            try await checkpoint()
            try await device.flush()
            dead = .posix(.badFileDescriptor)
        }
    }

    /// Commits the running transaction and flushes the device (sync(2)).
    public func sync() async throws {
        try await op {
            try await commit()
        }
    }
}
