// The POSIX operations of one member, each atomic (FileSystem.op) and each
// failing with the errno Linux would give. Checks come before mutations, so
// an operation that fails with a POSIX error changed nothing.
//
// Inode numbers of another member's AGs fail with FSError.notHome. Names are
// Swift Strings stored as UTF-8 (the server layer passes UTF-8 names).
// Timestamps: noatime (reads never dirty metadata); mtime/ctime per POSIX.
extension FileSystem {
    // MARK: helpers

    func checkName(_ name: String) throws {
        if name.isEmpty { throw FSError.ENOENT }
        if name.utf8.count > Layout.maxName { throw FSError.ENAMETOOLONG }
        if name.utf8.contains(0x2F) || name.utf8.contains(0) { throw FSError.EINVAL }
    }

    func directory(_ ino: UInt64) async throws -> Inode {
        let d = try await inode(ino)
        guard d.isDir else { throw FSError.ENOTDIR }
        return d
    }

    /// Looks `name` up in `dir` (which must be searchable by `cred`).
    func lookupIno(_ dir: Inode, _ name: String, _ cred: Credentials) async throws -> UInt64? {
        guard dir.isDir else { throw FSError.ENOTDIR }
        try require(dir, 1, cred)
        if name.utf8.count > Layout.maxName { throw FSError.ENAMETOOLONG }
        if name == "." { return dir.ino }
        let idx = try await dirIndex(dir)
        if name == ".." { return idx.parent }
        return idx.names[NameKey(name)]?.ino
    }

    /// Creates an inode of `mode` named `name` in `dir` (all checks done here).
    func makeNode(_ dir: Inode, _ name: String, mode: UInt32, rdev: UInt64 = 0, symlink: [UInt8]? = nil,
                  homeAG: Int? = nil, ino wanted: WantedInode? = nil, _ cred: Credentials) async throws -> Inode {
        guard dir.isDir else { throw FSError.ENOTDIR }
        try require(dir, 1, cred)
        if name == "." || name == ".." { throw FSError.EEXIST }
        try checkName(name)
        let idx = try await dirIndex(dir)
        if idx.names[NameKey(name)] != nil { throw FSError.EEXIST }
        try require(dir, 3, cred)
        if dir.nlink == 0 { throw FSError.ENOENT }
        let isDir = mode & M.fmt == M.dir
        if isDir, dir.nlink >= Layout.maxLinks { throw FSError.EMLINK }

        let nameLen = name.utf8.count
        let block = try await dirReserve(dir, need: DirFormat.recSize(nameLen: nameLen))
        let preferAG: Int
        if let homeAG {
            preferAG = homeAG
        } else if isDir, ownedAGs.count > 1 {
            // Spread directories over the AGs (their files follow them).
            nextDirAG = (nextDirAG + 1) % ownedAGs.count
            preferAG = ownedAGs[nextDirAG]
        } else {
            preferAG = dir.ag
        }
        let ino: UInt64
        if let wanted {
            ino = try await takeInodeNumber(wanted.number, reservedForCaller: wanted.reserved)
        } else {
            ino = try await allocInodeNumber(preferAG: owns(ag: preferAG) ? preferAG : ownedAGs[0])
        }
        let i = Inode(ino: ino)
        var m = mode
        var gid = cred.gid
        if dir.mode & M.sgid != 0 {
            gid = dir.gid
            if isDir { m |= M.sgid }
        }
        if !isDir, m & M.sgid != 0, !cred.isRoot, !cred.inGroup(gid) { m &= ~M.sgid }
        let now = nowNs()
        i.mode = m
        i.uid = cred.uid
        i.gid = gid
        i.nlink = isDir ? 2 : 1
        i.atime = now; i.mtime = now; i.ctime = now; i.btime = now
        i.generation = UInt32.random(in: 1...UInt32.max, using: &rng)
        i.rdev = rdev
        inodes[ino] = i
        markDirty(i)
        // Load the inode table block now (write-back at the end of the
        // operation then needs no I/O); one whose every other inode is free
        // need not be read at all.
        let itb = sb.inodeLocation(ino).block
        _ = try await metaForWrite(itb, fresh: try await inodeBlockOtherwiseFree(ino))
        if isDir || (symlink.map { $0.count > InodeCodec.inlineBytes } ?? false) {
            do {
                let (p, _) = try await allocBlocks(count: 1, goal: nil, preferAG: i.ag, for: i)
                i.extents = [Extent(logical: 0, length: 1, physical: p)]
                i.blocks = 1
                let buf = try await metaForWrite(p, fresh: true)
                if isDir {
                    dirInitBlock(&buf.data, selfIno: ino, parent: dir.ino)
                    i.size = 4096
                } else {
                    var d = [UInt8].zeroBlock()
                    d.putBytes(0, symlink!)
                    buf.data = d
                    i.size = UInt64(symlink!.count)
                }
            } catch {
                try await freeInodeNumber(ino)
                throw error
            }
        } else if let symlink {
            i.flags |= InodeFlags.inlineSymlink
            i.inlineData = symlink
            i.size = UInt64(symlink.count)
        }
        try await dirInsert(dir, name: name, ino: ino, type: M.dtype(m), block: block)
        if isDir { dir.nlink += 1 }
        touch(dir)
        return i
    }

    /// Unlinks one name of `victim` from `dir`; at nlink 0 frees the inode,
    /// or keeps it as an orphan while it may be open (`unlinker`: who
    /// removes the name, if it said what it holds).
    func dropLink(_ victim: Inode, unlinker: Unlinker? = nil) async throws {
        if victim.isDir {
            victim.nlink = 0
        } else {
            victim.nlink -= 1
        }
        touch(victim, m: false)
        guard victim.nlink == 0 else { return }
        if shouldOrphan(victim, unlinker: unlinker) {
            try await addOrphan(victim)
        } else {
            try await destroyInode(victim)
        }
    }

    func isEmptyDir(_ d: Inode) async throws -> Bool { try await dirIndex(d).names.isEmpty }

    // MARK: lookups and attributes

    public func lookup(parent: UInt64, name: String, cred: Credentials) async throws -> FileAttributes {
        try await op {
            let dir = try await inode(parent)
            guard let ino = try await lookupIno(dir, name, cred) else { throw FSError.ENOENT }
            return try await inode(ino).attributes
        }
    }

    public func getattr(ino: UInt64) async throws -> FileAttributes {
        try await op { try await inode(ino).attributes }
    }

    public func setattr(ino: UInt64, _ ch: AttributeChanges, cred: Credentials) async throws -> FileAttributes {
        try await op {
            let i = try await inode(ino)
            let owner = cred.isRoot || cred.uid == i.uid
            // Validate everything first.
            if ch.mode != nil, !owner { throw FSError.EPERM }
            if let uid = ch.uid, !(cred.isRoot || (cred.uid == i.uid && uid == i.uid)) { throw FSError.EPERM }
            if let gid = ch.gid, !(cred.isRoot || (cred.uid == i.uid && (gid == i.gid || cred.inGroup(gid)))) {
                throw FSError.EPERM
            }
            if let size = ch.size {
                if i.isDir { throw FSError.EISDIR }
                if !i.isReg { throw FSError.EINVAL }
                try require(i, 2, cred)
                if size > Layout.maxFileSize { throw FSError.EFBIG }
            }
            let explicit = [ch.atime, ch.mtime].contains { if case .ns = $0 { true } else { false } }
            if explicit, !owner { throw FSError.EPERM }
            if (ch.atime != nil || ch.mtime != nil), !explicit, !owner, !may(i, 2, cred) { throw FSError.EACCES }

            if let size = ch.size, size < i.size { try requireLocalBlocks(i) }
            let now = nowNs()
            if let size = ch.size {
                try await truncateData(i, to: size)
                if !cred.isRoot { dropSetID(i) }
            }
            if let mode = ch.mode {
                var m = (i.mode & M.fmt) | (mode & M.perm)
                if !cred.isRoot, !cred.inGroup(i.gid), !(ch.gid.map { cred.inGroup($0) } ?? false) { m &= ~M.sgid }
                i.mode = m
            }
            if ch.uid != nil || ch.gid != nil {
                if let uid = ch.uid { i.uid = uid }
                if let gid = ch.gid { i.gid = gid }
                if !i.isDir {
                    i.mode &= ~M.suid
                    if i.mode & M.xgrp != 0 { i.mode &= ~M.sgid }
                }
            }
            if let a = ch.atime { i.atime = { if case .ns(let t) = a { t } else { now } }() }
            if let m = ch.mtime { i.mtime = { if case .ns(let t) = m { t } else { now } }() }
            i.ctime = now
            markDirty(i)
            return i.attributes
        }
    }

    // MARK: creating names

    public func create(parent: UInt64, name: String, mode: UInt32, flags: OpenFlags = [.create, .exclusive],
                       cred: Credentials) async throws -> FileAttributes {
        try await op {
            let dir = try await directory(parent)
            return try await openIn(dir, name, flags: flags.union(.create), mode: mode, cred, links: 0).attributes
        }
    }

    /// An exclusive create of a regular file with inode number `ino`
    /// (fos_wire.h, "Directory leases"). A name that is already that very
    /// regular file (the same create, replayed after a restart) is it.
    public func create(parent: UInt64, name: String, mode: UInt32, ino: WantedInode,
                       cred: Credentials) async throws -> FileAttributes {
        try await op {
            let dir = try await directory(parent)
            try require(dir, 3, cred)  // as the create itself would
            if let have = try await dirIndex(dir).names[NameKey(name)]?.ino {
                let i = try await inode(have)
                if have == ino.number, i.isReg { return i.attributes }
                throw FSError.EEXIST
            }
            return try await makeNode(dir, name, mode: M.reg | (mode & M.perm), ino: ino, cred).attributes
        }
    }

    /// Sets aside up to `count` inode numbers for new files of directory
    /// `dir` (a lease's: fos_wire.h); `releaseInodes` gives back those
    /// not used.
    public func reserveInodes(_ count: Int, near dir: UInt64) async throws -> [UInt64] {
        try await op {
            let d = try await inode(dir)
            return try await reserveInodeNumbers(count, preferAG: owns(ag: d.ag) ? d.ag : ownedAGs[0])
        }
    }

    public func releaseInodes(_ inos: [UInt64]) async {
        _ = try? await op {
            for i in inos { reservedInodes.remove(i) }
        }
    }

    public func mkdir(parent: UInt64, name: String, mode: UInt32, cred: Credentials) async throws -> FileAttributes {
        try await op {
            let dir = try await inode(parent)
            var homeAG: Int?
            if members > 1, parent == Layout.rootIno, name != ".", name != ".." {
                let target = placement(ofTopLevel: name)
                if target != member {
                    if !borrowing {
                        // Fail the checks here rather than in a fleet-wide transaction.
                        guard dir.isDir else { throw FSError.ENOTDIR }
                        try require(dir, 1, cred)
                        try checkName(name)
                        if try await dirIndex(dir).names[NameKey(name)] != nil { throw FSError.EEXIST }
                        try require(dir, 3, cred)
                        throw FSError.needsCoordination
                    }
                    homeAG = placementAG(member: target)
                }
            }
            return try await makeNode(dir, name, mode: M.dir | (mode & M.perm), homeAG: homeAG, cred).attributes
        }
    }

    /// mknod(2): regular files, FIFOs, sockets and (root only) device nodes;
    /// just the inode with its mode and rdev.
    public func mknod(parent: UInt64, name: String, mode: UInt32, rdev: UInt64 = 0,
                      cred: Credentials) async throws -> FileAttributes {
        try await op {
            var m = mode
            switch mode & M.fmt {
            case 0: m |= M.reg
            case M.reg, M.fifo, M.sock: break
            case M.chr, M.blk: if !cred.isRoot { throw FSError.EPERM }
            case M.dir: throw FSError.EPERM
            default: throw FSError.EINVAL
            }
            let isDev = m & M.fmt == M.chr || m & M.fmt == M.blk
            return try await makeNode(try await inode(parent), name, mode: m, rdev: isDev ? rdev : 0, cred).attributes
        }
    }

    public func symlink(parent: UInt64, name: String, target: String, cred: Credentials) async throws -> FileAttributes {
        try await op {
            let t = Array(target.utf8)
            if t.isEmpty { throw FSError.ENOENT }
            if t.count > Layout.maxSymlink { throw FSError.ENAMETOOLONG }
            return try await makeNode(try await inode(parent), name, mode: M.lnk | 0o777, symlink: t, cred).attributes
        }
    }

    public func link(ino: UInt64, newParent: UInt64, name: String, cred: Credentials) async throws -> FileAttributes {
        try await op {
            let i = try await inode(ino)
            let dir = try await directory(newParent)
            try require(dir, 1, cred)
            if name == "." || name == ".." { throw FSError.EEXIST }
            try checkName(name)
            if try await dirIndex(dir).names[NameKey(name)] != nil { throw FSError.EEXIST }
            if i.isDir { throw FSError.EPERM }
            try require(dir, 3, cred)
            if dir.nlink == 0 || i.nlink == 0 { throw FSError.ENOENT }
            if i.nlink >= Layout.maxLinks { throw FSError.EMLINK }
            let block = try await dirReserve(dir, need: DirFormat.recSize(nameLen: name.utf8.count))
            try await dirInsert(dir, name: name, ino: i.ino, type: M.dtype(i.mode), block: block)
            i.nlink += 1
            touch(i, m: false)
            touch(dir)
            return i.attributes
        }
    }

    public func readlink(ino: UInt64) async throws -> String {
        try await op {
            let i = try await inode(ino)
            guard i.isSymlink else { throw FSError.EINVAL }
            return String(decoding: try await symlinkTarget(i), as: UTF8.self)
        }
    }

    func symlinkTarget(_ i: Inode) async throws -> [UInt8] {
        if i.flags & InodeFlags.inlineSymlink != 0 { return i.inlineData }
        guard let p = i.map(0).physical, i.size <= UInt64(Layout.maxSymlink) else {
            throw FSError.corrupt("symlink \(i.ino) without target")
        }
        return Array(try await cached(p).data[0..<Int(i.size)])
    }

    // MARK: removing names

    public func unlink(parent: UInt64, name: String, cred: Credentials, unlinker: Unlinker? = nil) async throws {
        try await op {
            let dir = try await directory(parent)
            try require(dir, 1, cred)
            if name == "." || name == ".." { throw FSError.EISDIR }
            try checkName(name)
            guard let ino = try await dirIndex(dir).names[NameKey(name)]?.ino else { throw FSError.ENOENT }
            try require(dir, 3, cred)
            let victim = try await inode(ino)
            if victim.isDir { throw FSError.EISDIR }
            if stickyDenies(dir, victim, cred) { throw FSError.EPERM }
            if victim.nlink <= 1 { try requireLocalBlocks(victim) }
            try await dirRemove(dir, name: name)
            touch(dir)
            try await dropLink(victim, unlinker: unlinker)
        }
    }

    public func rmdir(parent: UInt64, name: String, cred: Credentials) async throws {
        try await op {
            let dir = try await directory(parent)
            try require(dir, 1, cred)
            if name == "." { throw FSError.EINVAL }
            if name == ".." { throw FSError.ENOTEMPTY }
            try checkName(name)
            guard let ino = try await dirIndex(dir).names[NameKey(name)]?.ino else { throw FSError.ENOENT }
            try require(dir, 3, cred)
            let victim = try await inode(ino)
            if !victim.isDir { throw FSError.ENOTDIR }
            if stickyDenies(dir, victim, cred) { throw FSError.EPERM }
            if !(try await isEmptyDir(victim)) { throw FSError.ENOTEMPTY }
            try await dirRemove(dir, name: name)
            dir.nlink -= 1
            touch(dir)
            try await dropLink(victim)
        }
    }

    /// True if `ancestor` is `dir` or one of its ancestors.
    func isAncestor(_ ancestor: UInt64, of dir: UInt64) async throws -> Bool {
        var cur = dir
        var steps = 0
        while true {
            if cur == ancestor { return true }
            if cur == Layout.rootIno { return false }
            let parent = try await dirIndex(try await inode(cur)).parent
            if parent == cur { return false }
            cur = parent
            steps += 1
            if steps > 1 << 20 { throw FSError.corrupt("directory cycle above \(dir)") }
        }
    }

    /// rename(2)/renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE; atomic.
    public func rename(oldParent: UInt64, oldName: String, newParent: UInt64, newName: String,
                       flags: RenameFlags = [], cred: Credentials) async throws {
        try await op {
            if flags.rawValue & ~3 != 0 || flags == [.noReplace, .exchange] { throw FSError.EINVAL }
            let od = try await directory(oldParent)
            let nd = try await directory(newParent)
            try require(od, 1, cred)
            try require(nd, 1, cred)
            for n in [oldName, newName] where n == "." || n == ".." { throw FSError.EBUSY }
            try checkName(oldName)
            try checkName(newName)
            guard let sIno = try await dirIndex(od).names[NameKey(oldName)]?.ino else { throw FSError.ENOENT }
            let tIno = try await dirIndex(nd).names[NameKey(newName)]?.ino
            try require(od, 3, cred)
            try require(nd, 3, cred)
            let src = try await inode(sIno)
            let dst: Inode? = if let tIno { try await inode(tIno) } else { nil }
            if flags.contains(.exchange), dst == nil { throw FSError.ENOENT }
            if flags.contains(.noReplace), dst != nil { throw FSError.EEXIST }
            if stickyDenies(od, src, cred) { throw FSError.EPERM }
            if let dst, stickyDenies(nd, dst, cred) { throw FSError.EPERM }
            let moving = oldParent != newParent
            if src.isDir, moving, !may(src, 2, cred) { throw FSError.EACCES }
            if flags.contains(.exchange), let dst, dst.isDir, moving, !may(dst, 2, cred) { throw FSError.EACCES }
            if let dst, dst.ino == src.ino {
                return  // two names of one file: nothing to do
            }
            if src.isDir, moving, try await isAncestor(src.ino, of: newParent) { throw FSError.EINVAL }
            if flags.contains(.exchange), let dst, dst.isDir, moving, try await isAncestor(dst.ino, of: oldParent) {
                throw FSError.EINVAL
            }

            if flags.contains(.exchange), let dst {
                try await dirRetarget(od, name: oldName, ino: dst.ino, type: M.dtype(dst.mode))
                try await dirRetarget(nd, name: newName, ino: src.ino, type: M.dtype(src.mode))
                if moving {
                    if src.isDir {
                        try await dirSetParent(src, nd.ino)
                        od.nlink -= 1; nd.nlink += 1
                    }
                    if dst.isDir {
                        try await dirSetParent(dst, od.ino)
                        nd.nlink -= 1; od.nlink += 1
                    }
                }
                touch(src, m: false); touch(dst, m: false); touch(od); touch(nd)
                return
            }
            if let dst {
                if src.isDir, !dst.isDir { throw FSError.ENOTDIR }
                if !src.isDir, dst.isDir { throw FSError.EISDIR }
                if dst.isDir, !(try await isEmptyDir(dst)) { throw FSError.ENOTEMPTY }
                if dst.nlink <= 1 { try requireLocalBlocks(dst) }
                try await dirRetarget(nd, name: newName, ino: src.ino, type: M.dtype(src.mode))
                try await dirRemove(od, name: oldName)
                if dst.isDir { nd.nlink -= 1 }
                try await dropLink(dst)
            } else {
                if src.isDir, moving, nd.nlink >= Layout.maxLinks { throw FSError.EMLINK }
                let block = try await dirReserve(nd, need: DirFormat.recSize(nameLen: newName.utf8.count))
                try await dirInsert(nd, name: newName, ino: src.ino, type: M.dtype(src.mode), block: block)
                try await dirRemove(od, name: oldName)
            }
            if src.isDir, moving {
                try await dirSetParent(src, nd.ino)
                od.nlink -= 1
                nd.nlink += 1
            }
            touch(src, m: false); touch(od); touch(nd)
        }
    }

    // MARK: data

    /// A write or truncation by someone without CAP_FSETID (here: not root)
    /// drops setuid, and setgid where the group may execute (without it,
    /// setgid marks mandatory locking), as Linux does: a program changed
    /// by another user must not keep its owner's privileges.
    func dropSetID(_ i: Inode) {
        var m = i.mode
        m &= ~M.suid
        if m & M.xgrp != 0 { m &= ~M.sgid }
        if m != i.mode {
            i.mode = m
            markDirty(i)
        }
    }

    /// A write's checks, and the set-id bits it drops.
    /// Write permission is Linux's at open; a write only names who writes.
    /// So the owner may always write (as NFS servers let the owner, who
    /// could make the file writable anyway): a file created 0444 and
    /// written through the descriptor that created it, or made read-only
    /// while open, takes the writes as on Linux. Others need w now.
    private func mayWrite(_ i: Inode, _ data: [UInt8], _ cred: Credentials?) throws {
        if let cred, cred.uid != i.uid, !may(i, 2, cred) { throw FSError.posix(.permissionDenied) }
        if i.isDir { throw FSError.EISDIR }
        if !i.isReg { throw FSError.EINVAL }
        if let cred, !cred.isRoot, !data.isEmpty { dropSetID(i) }
    }

    /// pread(2). A large file's blocks that are not cached are read from the
    /// device after the operation lock is let go (see `StreamingRead`), so
    /// that reads of several clients overlap at the disk.
    public func read(ino: UInt64, offset: UInt64, count: Int) async throws -> [UInt8] {
        let plan = try await op { () -> StreamingRead in
            let i = try await inode(ino)
            if i.isDir { throw FSError.EISDIR }
            if !i.isReg { throw FSError.EINVAL }
            let plan = try await planRead(i, offset: offset, count: count)
            // Small files: read under the lock and kept in the cache (they
            // are read again); so is everything inside a cross-member
            // transaction, which must not leave reads behind.
            if i.blocks <= UInt64(options.cacheBlocks / 8) || FileSystem.lockHolder == ObjectIdentifier(self) {
                return StreamingRead(out: try await execute(plan, keep: i.blocks <= UInt64(options.cacheBlocks / 8)))
            }
            if !plan.runs.isEmpty { streamingReads.add(1, ordering: .acquiringAndReleasing) }
            return plan
        }
        return try await finish(plan)
    }

    /// pwrite(2): returns the bytes written. `journalData`: the writer may
    /// fsync soon, so new blocks of a small write are best journaled
    /// (`dataChanged`). `cred`: who writes, checked under the same lock;
    /// one who is not root drops the set-id bits (`dropSetID(_:)`). nil:
    /// the caller checked, as root.
    public func write(ino: UInt64, offset: UInt64, data: [UInt8], journalData: Bool = true,
                      cred: Credentials? = nil) async throws -> Int {
        try await op {
            let i = try await inode(ino)
            try mayWrite(i, data, cred)
            return try await writeData(i, offset: offset, data: data, journal: journalData)
        }
    }

    /// An O_APPEND write: atomically at the current end of the file. Returns
    /// where the data went and how much was written.
    public func append(ino: UInt64, data: [UInt8], journalData: Bool = true,
                       cred: Credentials? = nil) async throws -> (offset: UInt64, count: Int) {
        try await op {
            let i = try await inode(ino)
            try mayWrite(i, data, cred)
            let at = i.size
            return (at, try await writeData(i, offset: at, data: data, journal: journalData))
        }
    }

    /// fsync(2) / fdatasync(2): everything written before is durable when
    /// this returns. Every operation committed (unflushed) before it
    /// answered, so both are one device flush; `dataOnly` is accepted for
    /// fdatasync, which costs the same.
    public func fsync(ino: UInt64, dataOnly: Bool = false) async throws {
        try await op {
            _ = try await inode(ino)
            try await commit()
        }
    }

    // MARK: directories

    /// Entries from `cookie` (0 = start), including "." and "..", at most `max`.
    public func readdir(ino: UInt64, cookie: UInt64 = 0, max: Int = 256) async throws -> [DirectoryEntry] {
        try await op {
            let d = try await directory(ino)
            return try await dirList(d, cookie: cookie, max: max)
        }
    }

    /// statfs(2) over every AG, or over the AGs of fleet member `of`:
    /// exact for this member's own AGs, as this member last knew them for
    /// others' (a fleet sums its members' own parts).
    public func statfs(of m: Int? = nil) async throws -> FileSystemStats {
        try await op {
            let ags = (0..<Int(sb.agCount)).filter { ag in m.map { ag % members == $0 } ?? true }
            var total: UInt64 = 0
            for ag in ags { total += sb.agSize(ag) - UInt64(sb.metaBlocks) }
            let free = ags.reduce(0) { $0 + agFreeBlocks[$1] }
            return FileSystemStats(
                blockSize: UInt32(Layout.blockSize), totalBlocks: total, freeBlocks: free,
                availableBlocks: free - min(free, reservedCount), totalInodes: UInt64(ags.count) * UInt64(sb.inodesPerAG - 1),
                freeInodes: ags.reduce(0) { $0 + agFreeInodes[$1] }, nameMax: UInt32(Layout.maxName), agCount: Int(sb.agCount))
        }
    }
}
