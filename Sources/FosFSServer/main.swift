import CFosSys
import CFosWire
import FosBlock
import FosCore
import FosFS
import FosFSClient
import Foundation
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// fos-fs: a member of the file system fleet /sys/fs. fosd starts it with
/// FOS_FS_MEMBERS (the fleet size) and FOS_MEMBER; it mounts the disk of
/// /sys/blk/0 (making a file system on a fresh, all-zero disk) and serves
/// the fs messages of fos_wire.h.
func say(_ s: String) { FileHandle.standardError.write(Data("fos-fs: \(s)\n".utf8)) }
func die(_ s: String, _ code: Int32 = 1) -> Never {
    say(s)
    exit(code)
}

/// Everything a handler needs; immutable after start-up but for the
/// Mutex-protected caches.
final class FSService: Sendable {
    let rt: FosRuntime
    let fs: FileSystem
    let blk: BlockClient
    let member: Int
    let members: Int
    let fleet: String
    /// Our internal mailbox id, once created (FORWARD is accepted there only).
    let internalMailbox = Atomic<UInt64>(0)
    /// When a client request last came or ended (monotonicNanos).
    let lastRequest = Atomic<UInt64>(0)
    /// Directory leases granted to clients (Leases.swift).
    let leases = DirLeases()
    /// Channels open to this member (both mailboxes): Ahead.swift.
    let channels = Atomic<Int>(0)
    /// Channels to peers' internal mailboxes, by member index.
    let peers = Mutex<[Int: Channel]>([:])
    /// Supplementary groups of each client channel's process, read once.
    let groups = Mutex<[UInt64: [UInt32]]>([:])
    /// Processes that asked for an fsync (by pid): the small writes of the
    /// others are not journaled (FileSystem.dataChanged). A reused pid only
    /// inherits the journaling, which every process had before; the set is
    /// emptied when it grows large, which costs a process one slower fsync.
    let syncers = Mutex<Set<Int32>>([])
    func noteSyncer(_ pid: Int32) {
        syncers.withLock {
            if $0.count >= 4096 { $0.removeAll() }
            $0.insert(pid)
        }
    }
    /// This member's part in a peer's cross-member transaction (Cross.swift).
    let loan = Mutex<Loan>(.none)
    /// Coordinations and recoveries of this member, one at a time.
    let diskLockUsers = AsyncLock()
    let locks = LockService()
    let watch = WatchLog()
    let openers: Openers
    let maps: SharedMaps

    init(rt: FosRuntime, fs: FileSystem, blk: BlockClient, member: Int, members: Int, fleet: String) {
        self.rt = rt
        self.fs = fs
        self.blk = blk
        self.member = member
        self.members = members
        self.fleet = fleet
        maps = SharedMaps(node: rt.node)
        openers = Openers(node: rt.node)
    }

    // MARK: credentials

    /// The sender's credentials: uid and gid as the kernel told fosd; the
    /// supplementary groups best effort from /proc/<pid>/status ("Groups:"),
    /// read at the channel's first request (a process that changes its groups
    /// later keeps the old ones on that channel; one whose /proc entry cannot
    /// be read — another pid namespace — has none).
    func credentials(_ r: Request) -> Credentials {
        let g = groups.withLock { $0[r.channelID] }
        if let g { return Credentials(uid: r.sender.uid, gid: r.sender.gid, groups: g, pid: r.sender.pid) }
        let read = PeerInfo.supplementaryGroups(of: r.sender.pid, max: Int(FOS_FS_MAX_GROUPS))
        groups.withLock { $0[r.channelID] = read }
        return Credentials(uid: r.sender.uid, gid: r.sender.gid, groups: read, pid: r.sender.pid)
    }

    // MARK: dispatch

    func handle(_ r: Request) async -> Reply {
        let now = monotonicNanos()
        lastRequest.store(now, ordering: .relaxed)
        defer { lastRequest.store(monotonicNanos(), ordering: .relaxed) }
        // Directory leases (Leases.swift). A request served in turn never
        // waits for one, and blocks grants to others while it is pending
        // anyway (`inTurnOnlyFrom`): only ordinary ones are counted.
        let counted = members == 1 && !r.inTurn
        if counted {
            leases.enter(r.channelID, at: now)
            if leases.count.load(ordering: .relaxed) > 0 { await awaitOthersLeases(r) }
        }
        defer { if counted { leases.done(r.channelID) } }
        if r.opcode == UInt16(FOS_OP_FS_FORWARD) { return await handleForward(r) }
        if r.opcode == UInt16(FOS_OP_FS_AS) { return watch.noted(r, await handleAs(r)) }
        if r.opcode == UInt16(FOS_OP_FS_LOCK) { return await locks.request(r, svc: self) }
        // One taken ahead may leave its commit to a later one (Ahead.swift).
        return await FileSystem.$commitLater.withValue(r.ahead) {
            let cred = credentials(r)
            switch UInt32(r.opcode) {
            case FOS_OP_FS_CREATE where Self.leased(r):
                let reply: Reply
                do {
                    reply = try await leasedCreate(r, cred: cred)
                } catch {
                    reply = Reply(status: status(of: error))
                }
                return watch.noted(r, reply)
            case FOS_OP_FS_MKDIR:
                let reply = watch.noted(r, await serve(op: r.opcode, payload: r.payload, cred: cred, forwarded: false))
                return await grantLease(r, reply, cred: cred)
            default:
                return watch.noted(r, await serve(op: r.opcode, payload: r.payload, cred: cred, forwarded: false))
            }
        }
    }

    /// A CREATE sent under a directory lease (Leases.swift).
    static func leased(_ r: Request) -> Bool {
        guard let c = r.payload.withUnsafeBytes({ loadStruct(fos_fs_create.self, from: $0) }) else { return false }
        return c.flags & FOS_FS_CREATE_LEASED != 0
    }

    /// A peer's forwarded request: only on our internal mailbox, only from a
    /// member of our fleet (both attested by fosd).
    func handleForward(_ r: Request) async -> Reply {
        guard r.mailbox == internalMailbox.load(ordering: .acquiring), r.sender.fleet == fleet else {
            return Reply(status: EPERM)
        }
        guard let (h, cred, end) = Self.parseEnvelope(r.payload), h.opcode != UInt16(FOS_OP_FS_FORWARD),
              h.opcode != UInt16(FOS_OP_FS_AS), h.hops == 1 else {
            return Reply(status: EPROTO)
        }
        return await serve(op: h.opcode, payload: Array(r.payload[end...]), cred: cred, forwarded: true)
    }

    /// A root client's request on behalf of a user (FOS_OP_FS_AS): root could
    /// become that user anyway, so nothing is granted that it lacks.
    func handleAs(_ r: Request) async -> Reply {
        guard r.sender.uid == 0 else { return Reply(status: EPERM) }
        guard let (h, cred, end) = Self.parseEnvelope(r.payload), h.hops == 0,
              (FOS_OP_FS_LOOKUP...FOS_OP_FS_RESOLVE).contains(UInt32(h.opcode)) else {
            return Reply(status: EPROTO)
        }
        var c = cred
        c.pid = r.sender.pid
        return await serve(op: h.opcode, payload: Array(r.payload[end...]), cred: c, forwarded: false)
    }

    /// fos_fs_forward, its groups, and where the inner payload starts.
    static func parseEnvelope(_ p: [UInt8]) -> (fos_fs_forward, Credentials, Int)? {
        p.withUnsafeBytes { b -> (fos_fs_forward, Credentials, Int)? in
            guard let h = loadStruct(fos_fs_forward.self, from: b), h.ngroups <= FOS_FS_MAX_GROUPS else { return nil }
            let start = MemoryLayout<fos_fs_forward>.size
            let end = start + Int(h.ngroups) * 4
            guard end <= b.count else { return nil }
            let g = (0..<Int(h.ngroups)).map { loadStruct(UInt32.self, from: b, at: start + $0 * 4) ?? 0 }
            return (h, Credentials(uid: h.uid, gid: h.gid, groups: g, pid: h.pid), end)
        }
    }

    /// Runs one request. An inode homed on a peer sends the whole request
    /// there (once); lookups and opens that cross members continue leg by
    /// leg (Distributed.swift); a change that needs several members — found
    /// by the member the request was forwarded to — becomes a cross-member
    /// transaction (Cross.swift).
    func serve(op: UInt16, payload: [UInt8], cred: Credentials, forwarded: Bool) async -> Reply {
        do {
            do {
                return try await dispatch(op: op, WireReader(payload), cred: cred)
            } catch FSError.notHome(_, let home) {
                switch UInt32(op) {
                case FOS_OP_FS_LOOKUP, FOS_OP_FS_CREATE, FOS_OP_FS_OPEN, FOS_OP_FS_RESOLVE:
                    return try await distributed(op: op, payload: payload, cred: cred, forwarded: forwarded)
                case _ where !forwarded && home != member && home < members:
                    return await forward(to: home, op: op, payload: payload, cred: cred)
                case FOS_OP_FS_RENAME, FOS_OP_FS_LINK, FOS_OP_FS_UNLINK, FOS_OP_FS_RMDIR, FOS_OP_FS_MKDIR:
                    return await coordinate(op: op, payload: payload, cred: cred)
                default:
                    return Reply(status: EXDEV)
                }
            } catch FSError.needsCoordination {
                return await coordinate(op: op, payload: payload, cred: cred)
            } catch FSError.posix(.noSpace) where members > 1 && Self.allocating.contains(UInt32(op)) {
                // Our AGs are full: once more with every member's AGs (file
                // data spills into them, new inodes land there). Space freed
                // on any member counts at once, so no memory of "full" here.
                return await coordinate(op: op, payload: payload, cred: cred)
            }
        } catch {
            return Reply(status: status(of: error))
        }
    }

    static let allocating: Set<UInt32> = [FOS_OP_FS_CREATE, FOS_OP_FS_MKDIR, FOS_OP_FS_MKNOD, FOS_OP_FS_SYMLINK,
                                          FOS_OP_FS_LINK, FOS_OP_FS_RENAME, FOS_OP_FS_WRITE, FOS_OP_FS_SETXATTR,
                                          FOS_OP_FS_OPEN, FOS_OP_FS_SETATTR]

    func status(of error: Error) -> Int32 {
        switch error {
        case FSError.posix(let e):
            if e == .ioError { fatal("I/O error") }
            return e.rawValue
        case FSError.corrupt(let why):
            fatal(why)
            return EIO
        case FSError.notHome, FSError.needsCoordination: return EXDEV
        case FosError.remote(let e): return e.rawValue
        case FosError.timeout: return ETIMEDOUT
        case let e as Errno: return e.rawValue
        default: return EIO
        }
    }

    /// The file system no longer trusts its in-memory state (I/O error or
    /// corruption): leave, so that fosd restarts the member, which replays
    /// the journal. The reply in flight goes out first.
    func fatal(_ why: String) {
        say("member \(member): file system failed (\(why)); restarting")
        Task.detached {
            try? await Task.sleep(for: .milliseconds(100))
            exit(3)
        }
    }

    func forward(to home: Int, op: UInt16, payload: [UInt8], cred: Credentials) async -> Reply {
        var p = [UInt8]()
        let groups = Array(cred.groups.prefix(Int(FOS_FS_MAX_GROUPS)))
        appendStruct(fos_fs_forward(opcode: op, ngroups: UInt16(groups.count), uid: cred.uid, gid: cred.gid, hops: 1,
                                    pid: cred.pid), to: &p)
        for g in groups { appendStruct(g, to: &p) }
        p += payload
        guard p.count <= Int(FOS_MAX_PAYLOAD) else { return Reply(status: EMSGSIZE) }
        for attempt in 0..<2 {
            do {
                let ch = try await peer(home)
                return try await rt.call(ch, opcode: UInt16(FOS_OP_FS_FORWARD), payload: p, timeout: .seconds(30))
            } catch FosError.peerGone where attempt == 0 {
                peers.withLock { _ = $0.removeValue(forKey: home) }
            } catch {
                return Reply(status: error is FosError && (error as! FosError) == .timeout ? ETIMEDOUT : EAGAIN)
            }
        }
        return Reply(status: EAGAIN)
    }

    /// The channel to member `i`'s internal mailbox (registered as /sys/fs/<i>).
    func peer(_ i: Int, wait: Duration = .seconds(10)) async throws -> Channel {
        if let c = peers.withLock({ $0[i] }), !c.isClosed { return c }
        let deadline = ContinuousClock.now + wait
        var entry: NameEntry
        while true {
            do {
                entry = try await rt.lookup("\(fleet)/\(i)", fleetInternal: true)
                break
            } catch FosError.noSuchName(let n) {
                // The peer is (re)starting: give it a moment.
                if ContinuousClock.now >= deadline { throw FosError.noSuchName(n) }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        let ch = try await rt.connect(entry.addr, key: rt.fleetKey)
        let existing = peers.withLock { p -> Channel? in
            if let c = p[i], !c.isClosed { return c }
            p[i] = ch
            return nil
        }
        if let existing {
            try? await rt.close(ch)
            return existing
        }
        return ch
    }

    // MARK: operations

    func ok(_ a: FileAttributes) -> Reply { Reply(payload: FSWire.encode(a)) }

    /// An inode of ours opened for the caller (Openers: it may be held now).
    func opened(_ a: FileAttributes, for cred: Credentials) -> FileAttributes {
        openers.opened(a.ino, by: cred.pid)
        return a
    }

    /// Linux permission bits against `cred` (root: read/write always).
    func check(_ a: FileAttributes, _ mask: UInt32, _ c: Credentials) throws {
        if c.isRoot { return }
        let bits: UInt32
        if c.uid == a.uid { bits = (a.mode >> 6) & 7 }
        else if c.inGroup(a.gid) { bits = (a.mode >> 3) & 7 }
        else { bits = a.mode & 7 }
        if bits & mask != mask { throw FSError.posix(.permissionDenied) }
    }

    func dispatch(op: UInt16, _ w: WireReader, cred: Credentials) async throws -> Reply {
        switch UInt32(op) {
        case FOS_OP_FS_LOOKUP:
            let h = try w.fixed(fos_fs_name_req.self)
            let name = try w.name(Int(h.name_len), exactEnd: true)
            return ok(try await fs.lookup(parent: h.dir, name: name, cred: cred))
        case FOS_OP_FS_GETATTR:
            let h = try w.only(fos_fs_ino.self)
            return ok(try await fs.getattr(ino: h.ino))
        case FOS_OP_FS_SETATTR:
            let h = try w.only(fos_fs_setattr.self)
            guard h.valid & ~FOS_FS_SET_ALL == 0,
                  h.valid & (FOS_FS_SET_ATIME | FOS_FS_SET_ATIME_NOW) != (FOS_FS_SET_ATIME | FOS_FS_SET_ATIME_NOW),
                  h.valid & (FOS_FS_SET_MTIME | FOS_FS_SET_MTIME_NOW) != (FOS_FS_SET_MTIME | FOS_FS_SET_MTIME_NOW)
            else { throw FSError.posix(.invalidArgument) }
            var c = AttributeChanges()
            if h.valid & FOS_FS_SET_MODE != 0 { c.mode = h.mode }
            if h.valid & FOS_FS_SET_UID != 0 { c.uid = h.uid }
            if h.valid & FOS_FS_SET_GID != 0 { c.gid = h.gid }
            if h.valid & FOS_FS_SET_SIZE != 0 { c.size = h.size }
            if h.valid & FOS_FS_SET_ATIME != 0 { c.atime = .ns(h.atime_ns) }
            if h.valid & FOS_FS_SET_ATIME_NOW != 0 { c.atime = .now }
            if h.valid & FOS_FS_SET_MTIME != 0 { c.mtime = .ns(h.mtime_ns) }
            if h.valid & FOS_FS_SET_MTIME_NOW != 0 { c.mtime = .now }
            return ok(try await fs.setattr(ino: h.ino, c, cred: cred))
        case FOS_OP_FS_CREATE, FOS_OP_FS_MKDIR, FOS_OP_FS_MKNOD, FOS_OP_FS_SYMLINK:
            let h = try w.fixed(fos_fs_create.self)
            let isSymlink = UInt32(op) == FOS_OP_FS_SYMLINK
            guard isSymlink || h.target_len == 0 else { throw FSError.posix(.invalidArgument) }
            let name = try w.name(Int(h.name_len), exactEnd: false)
            switch UInt32(op) {
            case FOS_OP_FS_CREATE:
                try w.end()
                let flags = OpenFlags(rawValue: Int32(bitPattern: h.flags)).union(.create)
                return ok(try await fs.create(parent: h.dir, name: name, mode: h.mode, flags: flags, cred: cred))
            case FOS_OP_FS_MKDIR:
                try w.end()
                return ok(try await fs.mkdir(parent: h.dir, name: name, mode: h.mode, cred: cred))
            case FOS_OP_FS_MKNOD:
                try w.end()
                return ok(try await fs.mknod(parent: h.dir, name: name, mode: h.mode, rdev: h.rdev, cred: cred))
            default:
                guard h.target_len > 0 else { throw FSError.posix(.noSuchFileOrDirectory) }
                guard h.target_len < FOS_FS_PATH_MAX else { throw FSError.posix(.fileNameTooLong) }
                let target = try w.text(Int(h.target_len))
                try w.end()
                return ok(try await fs.symlink(parent: h.dir, name: name, target: target, cred: cred))
            }
        case FOS_OP_FS_LINK:
            let h = try w.fixed(fos_fs_link.self)
            let name = try w.name(Int(h.name_len), exactEnd: true)
            return ok(try await fs.link(ino: h.ino, newParent: h.dir, name: name, cred: cred))
        case FOS_OP_FS_UNLINK, FOS_OP_FS_RMDIR:
            let h = try w.fixed(fos_fs_name_req.self)
            let listed = UInt32(op) == FOS_OP_FS_UNLINK && h.flags & FOS_FS_UNLINK_HOLDS_LISTED != 0
            let name = try w.name(Int(h.name_len), exactEnd: !listed)
            if UInt32(op) == FOS_OP_FS_UNLINK {
                let known = FOS_FS_UNLINK_HOLDS_NONE | FOS_FS_UNLINK_SHARED_NONE | FOS_FS_UNLINK_HOLDS_LISTED
                guard h.flags & ~known == 0, h.flags.nonzeroBitCount <= 1 else { throw FSError.posix(.invalidArgument) }
                var held: Set<UInt64>?
                if listed {
                    let n = try w.fixed(UInt32.self)
                    guard n <= FOS_FS_UNLINK_LIST_MAX else { throw FSError.posix(.invalidArgument) }
                    held = Set(try (0..<n).map { _ in try w.fixed(UInt64.self) })
                    try w.end()
                }
                let who = Unlinker(pid: cred.pid, holdsNone: h.flags & FOS_FS_UNLINK_HOLDS_NONE != 0,
                                   sharedNone: h.flags & FOS_FS_UNLINK_SHARED_NONE != 0, held: held)
                try await fs.unlink(parent: h.dir, name: name, cred: cred, unlinker: who)
            } else {
                guard h.flags == 0 else { throw FSError.posix(.invalidArgument) }
                try await fs.rmdir(parent: h.dir, name: name, cred: cred)
            }
            return Reply()
        case FOS_OP_FS_RENAME:
            let h = try w.fixed(fos_fs_rename.self)
            let old = try w.name(Int(h.old_len), exactEnd: false)
            let new = try w.name(Int(h.new_len), exactEnd: true)
            try await fs.rename(oldParent: h.old_dir, oldName: old, newParent: h.new_dir, newName: new,
                                flags: RenameFlags(rawValue: h.flags), cred: cred)
            return Reply()
        case FOS_OP_FS_READLINK:
            let h = try w.only(fos_fs_ino.self)
            return Reply(payload: Array(try await fs.readlink(ino: h.ino).utf8))
        case FOS_OP_FS_READ:
            let h = try w.only(fos_fs_io.self)
            guard h.flags == 0, h.count <= FOS_FS_MAX_IO, h.offset <= UInt64(Int64.max) else {
                throw FSError.posix(.invalidArgument)
            }
            let a = try await fs.getattr(ino: h.ino)
            try check(a, 4, cred)
            if let d = maps.read(h.ino, generation: a.generation, offset: h.offset, count: Int(h.count)) {
                return Reply(payload: d)
            }
            return Reply(payload: try await fs.read(ino: h.ino, offset: h.offset, count: Int(h.count)))
        case FOS_OP_FS_WRITE:
            let h = try w.fixed(fos_fs_io.self)
            guard h.flags & ~FOS_FS_IO_APPEND == 0, h.count <= FOS_FS_MAX_IO, h.offset <= UInt64(Int64.max) else {
                throw FSError.posix(.invalidArgument)
            }
            let data = try w.bytes(Int(h.count))
            try w.end()
            let journal = syncers.withLock { $0.contains(cred.pid) }
            var r = fos_fs_write_reply()
            if h.flags & FOS_FS_IO_APPEND != 0 {
                let (at, n) = try await fs.append(ino: h.ino, data: data, journalData: journal, cred: cred)
                r.offset = at
                r.count = UInt32(n)
            } else {
                r.offset = h.offset
                r.count = UInt32(try await fs.write(ino: h.ino, offset: h.offset, data: data, journalData: journal,
                                                    cred: cred))
            }
            var out = [UInt8]()
            appendStruct(r, to: &out)
            return Reply(payload: out)
        case FOS_OP_FS_FSYNC:
            let h = try w.only(fos_fs_fsync.self)
            guard h.datasync <= 1 else { throw FSError.posix(.invalidArgument) }
            noteSyncer(cred.pid)
            try await maps.sync(h.ino, svc: self)
            try await fs.fsync(ino: h.ino, dataOnly: h.datasync == 1)
            return Reply()
        case FOS_OP_FS_MAP:
            let h = try w.only(fos_fs_map.self)
            guard h.flags & ~FOS_FS_MAP_WRITE == 0, h.reserved == 0 else { throw FSError.posix(.invalidArgument) }
            let a = try await fs.getattr(ino: h.ino)
            guard a.type == .regular else { throw FSError.posix(Errno(rawValue: ENODEV)) }
            let writable = h.flags & FOS_FS_MAP_WRITE != 0
            try check(a, writable ? 6 : 4, cred)
            var out = [UInt8]()
            appendStruct(try await maps.map(a, writable: writable, cred: cred, svc: self), to: &out)
            return Reply(payload: out)
        case FOS_OP_FS_HOLD:
            let h = try w.only(fos_fs_ino.self)
            let a = try await fs.getattr(ino: h.ino)
            guard a.type == .regular else { throw FSError.posix(.invalidArgument) }
            _ = opened(a, for: cred)
            return Reply()
        case FOS_OP_FS_MSYNC:
            let h = try w.only(fos_fs_msync.self)
            guard h.flags & ~FOS_FS_MSYNC_FLUSH == 0, h.reserved == 0 else { throw FSError.posix(.invalidArgument) }
            _ = try await fs.getattr(ino: h.ino)
            try await maps.sync(h.ino, memfdIno: h.memfd_ino, svc: self)
            if h.flags & FOS_FS_MSYNC_FLUSH != 0 {
                noteSyncer(cred.pid)
                try await fs.fsync(ino: h.ino, dataOnly: true)
            }
            return Reply()
        case FOS_OP_FS_READDIR:
            let h = try w.only(fos_fs_readdir.self)
            guard (1...1024).contains(h.max) else { throw FSError.posix(.invalidArgument) }
            let a = try await fs.getattr(ino: h.ino)
            guard a.type == .directory else { throw FSError.posix(.notDirectory) }
            try check(a, 4, cred)
            let entries = try await fs.readdir(ino: h.ino, cookie: h.cookie, max: Int(h.max))
            return Reply(payload: FSWire.encodeDirents(entries).0)
        case FOS_OP_FS_STATFS:
            try w.end()
            return Reply(payload: FSWire.encodeStats(try await fleetStats(), member: member, members: members))
        case FOS_OP_FS_GETXATTR, FOS_OP_FS_SETXATTR, FOS_OP_FS_REMOVEXATTR:
            let h = try w.fixed(fos_fs_xattr.self)
            let isSet = UInt32(op) == FOS_OP_FS_SETXATTR
            guard isSet || (h.value_len == 0 && h.flags == 0) else { throw FSError.posix(.invalidArgument) }
            guard h.flags & ~3 == 0 else { throw FSError.posix(.invalidArgument) }
            guard h.name_len > 0, h.name_len <= FOS_FS_NAME_MAX else { throw FSError.posix(.outOfRange) }
            let name = try w.text(Int(h.name_len))
            switch UInt32(op) {
            case FOS_OP_FS_GETXATTR:
                try w.end()
                return Reply(payload: try await fs.getxattr(ino: h.ino, name: name, cred: cred))
            case FOS_OP_FS_SETXATTR:
                let value = try w.bytes(Int(h.value_len))
                try w.end()
                try await fs.setxattr(ino: h.ino, name: name, value: value,
                                      flags: XattrFlags(rawValue: Int32(h.flags)), cred: cred)
                return Reply()
            default:
                try w.end()
                try await fs.removexattr(ino: h.ino, name: name, cred: cred)
                return Reply()
            }
        case FOS_OP_FS_LISTXATTR:
            let h = try w.only(fos_fs_ino.self)
            var out = [UInt8]()
            for n in try await fs.listxattr(ino: h.ino, cred: cred) {
                out += Array(n.utf8)
                out.append(0)
            }
            return Reply(payload: out)
        case FOS_OP_FS_OPEN, FOS_OP_FS_RESOLVE:
            let (h, path) = try w.pathRequest()
            if UInt32(op) == FOS_OP_FS_OPEN {
                let flags = OpenFlags(rawValue: Int32(bitPattern: h.flags))
                let (a, parent) = try await fs.openNoting(path: path, flags: flags, mode: h.mode, cred: cred)
                if flags.contains(.create), let parent { watch.created(in: parent, path: path, pid: cred.pid) }
                return ok(opened(a, for: cred))
            }
            let noFollow = UInt32(bitPattern: OpenFlags.noFollow.rawValue)
            guard h.flags & ~noFollow == 0, h.mode == 0 else { throw FSError.posix(.invalidArgument) }
            let ino = try await fs.resolve(path: path, cred: cred, followLast: h.flags & noFollow == 0)
            var out = [UInt8]()
            appendStruct(fos_fs_ino(ino: ino), to: &out)
            return Reply(payload: out)
        case FOS_OP_FS_LOCK_FORWARDED, FOS_OP_FS_LOCK_DROP:
            return try await locks.fromPeer(op: op, w, cred: cred, svc: self)
        default:
            return try await dispatchInternal(op: op, w, cred: cred)
        }
    }
}

/// Reads a request payload front to back; every shortfall or excess is
/// EPROTO, a name too long ENAMETOOLONG, bytes that are not UTF-8 EINVAL.
final class WireReader {
    let p: [UInt8]
    var at = 0
    init(_ p: [UInt8]) { self.p = p }

    func fixed<T>(_ t: T.Type) throws -> T {
        guard let v = p.withUnsafeBytes({ loadStruct(T.self, from: $0, at: at) }) else { throw FSError.posix(.protocolError) }
        at += MemoryLayout<T>.size
        return v
    }

    /// A struct that is the whole payload.
    func only<T>(_ t: T.Type) throws -> T {
        let v = try fixed(t)
        try end()
        return v
    }

    func end() throws {
        guard at == p.count else { throw FSError.posix(.protocolError) }
    }

    func bytes(_ n: Int) throws -> [UInt8] {
        guard n >= 0, n <= p.count - at else { throw FSError.posix(.protocolError) }
        defer { at += n }
        return Array(p[at..<(at + n)])
    }

    func text(_ n: Int) throws -> String {
        let b = try bytes(n)
        guard !b.contains(0), let s = String(validating: b, as: UTF8.self) else { throw FSError.posix(.invalidArgument) }
        return s
    }

    /// OPEN and RESOLVE: the header and the path (1...PATH_MAX-1 bytes).
    func pathRequest() throws -> (fos_fs_open, String) {
        let h = try fixed(fos_fs_open.self)
        guard h.path_len > 0 else { throw FSError.posix(.noSuchFileOrDirectory) }
        guard h.path_len < FOS_FS_PATH_MAX else { throw FSError.posix(.fileNameTooLong) }
        let path = try text(Int(h.path_len))
        try end()
        return (h, path)
    }

    /// A directory entry name: 1...255 bytes, no '/', no NUL.
    func name(_ n: Int, exactEnd: Bool) throws -> String {
        if n > Int(FOS_FS_NAME_MAX) {
            guard n <= p.count - at else { throw FSError.posix(.protocolError) }
            throw FSError.posix(.fileNameTooLong)
        }
        if n == 0 { throw FSError.posix(.noSuchFileOrDirectory) }
        let s = try text(n)
        if exactEnd { try end() }
        if s.utf8.contains(0x2F) { throw FSError.posix(.invalidArgument) }
        return s
    }
}

// MARK: start-up

/// Member 0 formats a fresh disk; the others wait for its superblock.
func prepareDisk(_ blk: BlockClient, member: Int) async throws {
    var waited = 0
    while true {
        switch try await FileSystem.probe(device: blk) {
        case .fos:
            return
        case .foreign:
            die("not a fos disk: run `fosctl mkfs --disk PATH` with the node stopped", 2)
        case .empty:
            if member == 0 {
                say("fresh disk (\(blk.blocks) blocks): making a file system")
                try await FileSystem.mkfs(device: blk)
                return
            }
            waited += 1
            if waited > 1200 { die("no file system appeared on the disk (member 0 makes it)") }
            try await Task.sleep(for: .milliseconds(50))
        }
    }
}

/// Mounts under the disk locks (see Cross.swift): the fleet lock while we
/// replay, and our slot's lock for as long as we live (a previous
/// incarnation must be fully gone first). Besides our own journal slot we
/// replay every slot whose member is not running (its lock is free): a
/// coordinator that died mid-transaction left images of our blocks there,
/// and after a change of the fleet's size a slot may hold images of AGs
/// that are now ours. Replay is by block address, so whose slot it is does
/// not matter; the owner, when it comes, finds it empty.
func mountUnderLocks(_ blk: BlockClient, device: any BlockDevice, member: Int, members: Int) async throws -> FileSystem {
    // Fleet lock first: a coordinator (which holds it) then sees our slot
    // lock free, takes us for not running, and replays our slot itself.
    guard try await blk.lock(FSService.fleetLock, wait: .seconds(120)) else {
        die("the fleet lock on the disk was not granted in 120 s")
    }
    guard try await blk.lock(FSService.slotLock(member), wait: .seconds(60)) else {
        die("member \(member) of the fleet is still running (its disk lock is held)")
    }
    for slot in 0..<FileSystem.journalSlots where slot != member {
        guard try await blk.lock(FSService.slotLock(slot), wait: nil) else { continue }
        if try await FileSystem.replaySlot(device: device, slot: slot) {
            say("member \(member): replayed journal slot \(slot) (its member is not running)")
        }
        try await blk.unlock(FSService.slotLock(slot))
    }
    let fs = try await FileSystem.mount(device: device, member: member, members: members)
    try await blk.unlock(FSService.fleetLock)
    return fs
}

/// Checkpoints the journal in the pauses between bursts of requests
/// (FileSystem.checkpointIfIdle): once it is an eighth full (or a delete
/// left space held back) and no client request came or ended for 20 ms.
/// (At 200 ms, back-to-back commands of a script never left such a pause,
/// and the checkpoint, some 20 ms of flushes, landed inside one of them.
/// Its flushes block the member: a request that comes during one waits,
/// which at 20 ms happens more often in work with pauses of 20-200 ms.)
/// Clients' requests only: the member's own periodic work (the orphan
/// reaper every 200 ms) would otherwise never let it look idle.
func checkpointWhenIdle(_ fs: FileSystem, svc: FSService) async {
    let idleNs: UInt64 = 20_000_000
    var wait: UInt64 = 100_000_000
    while true {
        try? await Task.sleep(for: .nanoseconds(Int64(wait)))
        if Task.isCancelled { return }
        // The last request's time first: read after the clock, a newer one
        // would make `quiet` wrap.
        let last = svc.lastRequest.load(ordering: .relaxed)
        let quiet = monotonicNanos() &- last
        if quiet < idleNs {
            // Wake when the pause would be long enough.
            wait = idleNs - quiet + 1_000_000
            continue
        }
        do {
            _ = try await fs.checkpointIfIdle(minFill: 0.125)
        } catch {
            return svc.fatal("idle checkpoint: \(error)")
        }
        // Soon again while requests came within the last second (the next
        // pause is likely near), rarely once the member has been idle: the
        // end of a first short burst after that is seen up to 100 ms late,
        // when the journal is seldom full enough to matter.
        wait = quiet < 1_000_000_000 ? 10_000_000 : 100_000_000
    }
}

func runMember() -> Never {
    fos_sys_keep_heap()
    // SIGTERM and SIGINT are taken by a thread of ours (sigwait): blocked
    // here, before the runtime starts threads, so every thread inherits it.
    var sigs = sigset_t()
    sigemptyset(&sigs)
    sigaddset(&sigs, SIGTERM)
    sigaddset(&sigs, SIGINT)
    pthread_sigmask(SIG_BLOCK, &sigs, nil)
    let termSignals = sigs

    let env = ProcessInfo.processInfo.environment
    let members = env["FOS_FS_MEMBERS"].flatMap(Int.init) ?? 1
    guard (1...FileSystem.maxMembers).contains(members) else { die("FOS_FS_MEMBERS must be 1...\(FileSystem.maxMembers)") }
    let rt: FosRuntime
    do {
        rt = try FosRuntime.connect(ownThread: false)
    } catch {
        die("\(error)")
    }
    let member = rt.isMember ? Int(rt.memberIndex) : (env["FOS_MEMBER"].flatMap(Int.init) ?? 0)
    guard member < members else { die("member \(member) of a fleet of \(members)") }
    let fleetName = rt.isMember ? rt.fleet : (env["FOS_FLEET"] ?? "/sys/fs")
    let service = Mutex<FSService?>(nil)

    rt.loop.spawn {
        do {
            // fosd starts every fleet at once: the blk server may not be registered yet.
            var blkClient: BlockClient?
            for attempt in 0... {
                do {
                    blkClient = try await BlockClient.connect(rt)
                    break
                } catch FosError.noSuchName(_) where attempt < 500 {
                    try await Task.sleep(for: .milliseconds(20))
                }
            }
            guard let blk = blkClient else { die("no block server") }
            try await prepareDisk(blk, member: member)
            var device: any BlockDevice = blk
            if let path = env["FOS_FS_DISK"], !path.isEmpty {
                let (local, why) = await LocalCommitDevice.open(path: path, blk: blk)
                if let local { device = local } else if let why { say("member \(member): commits go through the blk server: \(why)") }
            }
            let fs = try await mountUnderLocks(blk, device: device, member: member, members: members)
            let svc = FSService(rt: rt, fs: fs, blk: blk, member: member, members: members, fleet: fleetName)
            let openers = svc.openers
            openers.seed(homedAt: member, of: members)
            let maps = svc.maps
            fs.mayBeOpen = { maps.has($0) || openers.mayBeOpen($0, unlinker: $1) }
            fs.dataObserver = maps
            await maps.adopt(svc: svc)
            rt.loop.spawn { await openers.reap(fs, mapped: { maps.has($0) }) { svc.fatal("\($0)") } }
            rt.loop.spawn { await maps.run(svc: svc) }
            rt.loop.spawn { await checkpointWhenIdle(fs, svc: svc) }
            var handlers: [UInt16: FosServer.Handler] = [:]
            for op in UInt32(FOS_OP_FS_LOOKUP)...UInt32(FOS_OP_FS_RESOLVE) {
                handlers[UInt16(op)] = { await svc.handle($0) }
            }
            handlers[UInt16(FOS_OP_FS_FORWARD)] = { await svc.handle($0) }
            handlers[UInt16(FOS_OP_FS_AS)] = { await svc.handle($0) }
            handlers[UInt16(FOS_OP_FS_LEND)] = { await svc.handleLend($0) }
            handlers[UInt16(FOS_OP_FS_RETURN)] = { await svc.handleReturn($0) }
            handlers[UInt16(FOS_OP_FS_LOCK)] = { await svc.handle($0) }
            handlers[UInt16(FOS_OP_FS_WATCH)] = { await svc.watch.watch($0) }
            handlers[UInt16(FOS_OP_FS_MAP)] = { await svc.handle($0) }
            handlers[UInt16(FOS_OP_FS_MSYNC)] = { await svc.handle($0) }
            handlers[UInt16(FOS_OP_FS_HOLD)] = { await svc.handle($0) }
            let server = FosServer(runtime: rt, handlers: handlers, onConnect: { ch, stats in
                closeFD(stats)
                svc.channels.add(1, ordering: .relaxed)
                svc.locks.connected(ch.id)
            }, onDisconnect: { ch in
                svc.channels.subtract(1, ordering: .relaxed)
                _ = svc.groups.withLock { $0.removeValue(forKey: ch.id) }
                svc.locks.disconnected(ch.id, svc: svc)
                svc.channelClosed(ch.id)
                let freed = svc.leases.closed(ch.id)
                if !freed.isEmpty { _ = rt.loop.spawn { await fs.releaseInodes(freed) } }
            }, ahead: FosServer.AheadPolicy(takes: { svc.takesAhead($0) }, welcomes: { _ in svc.welcomesAhead },
                                            settled: { !fs.uncommitted.load(ordering: .acquiring) },
                                            settle: { await svc.settleAhead() },
                                            follows: { op, channel in
                                                FSService.followsInTurn.contains(UInt32(op))
                                                    && svc.leases.mayTakeInTurn(channel)
                                            }))
            service.withLock { $0 = svc }
            let a = try await server.start(name: fleetName, policy: .roundRobin)
            if let i = a.internal {
                svc.internalMailbox.store(i.mailbox, ordering: .releasing)
                // Peers find member i under <fleet>/<i> (fleet-internal, no key).
                try await rt.register(name: "\(fleetName)/\(member)", addr: i, key: .none, policy: .roundRobin,
                                      flags: UInt32(FOS_NAME_INTERNAL))
                svc.locks.announce(svc)
            }
        } catch let e as FSError {
            die("cannot mount the file system: \(e)")
        } catch {
            die("cannot start: \(error)")
        }
    }

    // SIGTERM (fosd stopping the node): unmount — commit, checkpoint,
    // flush — and leave.
    let signalThread = Thread {
        var set = termSignals
        var sig: Int32 = 0
        sigwait(&set, &sig)
        rt.loop.spawn {
            if let svc = service.withLock({ $0 }) {
                await svc.maps.writeBackAll(svc: svc)
                do {
                    try await svc.fs.unmount()
                } catch {
                    say("member \(member): unmount failed: \(error)")
                    exit(1)
                }
            }
            exit(0)
        }
        // Never linger: fosd would kill us anyway.
        sleep(5)
        say("member \(member): unmount did not finish in 5 s")
        _exit(1)
    }
    signalThread.start()

    rt.run()
    exit(0)
}

runMember()
