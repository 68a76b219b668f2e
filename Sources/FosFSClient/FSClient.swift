import CFosWire
import FosCore
import FosFS
import Synchronization
import SystemPackage

/// Typed client of the fs fleet (/sys/fs). One channel to one member (any
/// member serves any inode: it forwards to the inode's home member). Errors
/// are `FosError.remote(Errno)` with the errno Linux would give.
///
/// There is no open-file state on the server: `open` checks permissions and
/// returns the inode; `read`/`write` name inodes and are checked again
/// against the caller's kernel credentials on every call.
public final class FSClient: Sendable {
    public let runtime: FosRuntime
    public let name: String
    public let timeout: Duration
    let state: Mutex<(channel: Channel, addr: MailboxAddress)>
    /// Channels to every member by index (FSRouting.swift), once asked for.
    let routes = Mutex(FSRoutes())

    public static let maxIO = FSWire.maxIO
    public static let rootIno = FSWire.rootIno

    /// Connects to a member of `name`, waiting up to `wait` for the fleet to
    /// register (it mounts the disk first). `excluding` skips members (tests
    /// use it to reach a particular one).
    public static func connect(_ rt: FosRuntime, name: String = "/sys/fs", excluding: [MailboxAddress] = [],
                               wait: Duration = .seconds(15), timeout: Duration = .seconds(30)) async throws -> FSClient {
        let (ch, addr) = try await open(rt, name: name, excluding: excluding, wait: wait)
        return FSClient(runtime: rt, name: name, timeout: timeout, channel: ch, addr: addr)
    }

    static func open(_ rt: FosRuntime, name: String, excluding: [MailboxAddress],
                             wait: Duration) async throws -> (Channel, MailboxAddress) {
        let deadline = ContinuousClock.now + wait
        while true {
            do {
                let e = try await rt.lookup(name, excluding: excluding)
                return (try await rt.connect(e.addr, key: e.key), e.addr)
            } catch let e as FosError {
                let retry: Bool
                switch e {
                case .noSuchName, .peerGone: retry = true
                case .remote(let x): retry = x == .noSuchFileOrDirectory || x == .connectionRefused
                default: retry = false
                }
                if !retry || ContinuousClock.now >= deadline { throw e }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
    }

    private init(runtime: FosRuntime, name: String, timeout: Duration, channel: Channel, addr: MailboxAddress) {
        self.runtime = runtime
        self.name = name
        self.timeout = timeout
        self.state = Mutex((channel, addr))
    }

    /// The member this client talks to.
    public var member: MailboxAddress { state.withLock { $0.addr } }

    /// Closes the channel.
    public func close() async {
        let ch = state.withLock { $0.channel }
        try? await runtime.close(ch)
    }

    // MARK: transport

    /// Sends one request; if the member died, reconnects to another one and
    /// retries once.
    /// Requests made in this task act for this user (FOS_OP_FS_AS): the
    /// fleet checks permissions and sets owners as for them. Only a client
    /// running as root may (others get EPERM); the FUSE daemon does.
    @TaskLocal public static var actingAs: Credentials?

    func call(_ op: UInt32, _ payload: [UInt8]) async throws -> [UInt8] {
        let route = routedChannel(FSClient.routeKey(op, payload))
        var op = op, payload = payload
        if let who = FSClient.actingAs {
            var p = [UInt8]()
            let groups = Array(who.groups.prefix(Int(FOS_FS_MAX_GROUPS)))
            appendStruct(fos_fs_forward(opcode: UInt16(op), ngroups: UInt16(groups.count), uid: who.uid, gid: who.gid, hops: 0, pid: 0),
                         to: &p)
            for g in groups { appendStruct(g, to: &p) }
            p += payload
            guard p.count <= Int(FOS_MAX_PAYLOAD) else { throw FosError.remote(.messageTooLong) }
            (op, payload) = (FOS_OP_FS_AS, p)
        }
        if let route {
            do {
                return try await runtime.call(route.channel, opcode: UInt16(op), payload: payload, timeout: timeout).checked()
            } catch FosError.peerGone {
                dropRoute(route.addr)
            }
        }
        let (ch, addr) = state.withLock { ($0.channel, $0.addr) }
        do {
            return try await runtime.call(ch, opcode: UInt16(op), payload: payload, timeout: timeout).checked()
        } catch FosError.peerGone {
            let (nch, naddr) = try await FSClient.open(runtime, name: name, excluding: [addr], wait: .seconds(10))
            state.withLock { $0 = (nch, naddr) }
            return try await runtime.call(nch, opcode: UInt16(op), payload: payload, timeout: timeout).checked()
        }
    }

    static func nameBytes(_ s: String) throws -> [UInt8] {
        let b = Array(s.utf8)
        if b.isEmpty { throw FosError.remote(.noSuchFileOrDirectory) }
        if b.count > FSWire.nameMax { throw FosError.remote(.fileNameTooLong) }
        return b
    }

    static func pathBytes(_ s: String) throws -> [UInt8] {
        let b = Array(s.utf8)
        if b.isEmpty { throw FosError.remote(.noSuchFileOrDirectory) }
        if b.count >= FSWire.pathMax { throw FosError.remote(.fileNameTooLong) }
        return b
    }

    private func attrs(_ op: UInt32, _ payload: [UInt8]) async throws -> FileAttributes {
        try FSWire.decodeAttributes(try await call(op, payload))
    }

    private func namePayload(_ dir: UInt64, _ name: String, flags: UInt32 = 0) throws -> [UInt8] {
        let n = try FSClient.nameBytes(name)
        var p = [UInt8]()
        appendStruct(fos_fs_name_req(dir: dir, name_len: UInt32(n.count), flags: flags), to: &p)
        return p + n
    }

    private func inoPayload(_ ino: UInt64) -> [UInt8] {
        var p = [UInt8]()
        appendStruct(fos_fs_ino(ino: ino), to: &p)
        return p
    }

    private func createPayload(_ dir: UInt64, _ name: String, mode: UInt32, flags: Int32 = 0, rdev: UInt64 = 0,
                               target: [UInt8] = []) throws -> [UInt8] {
        let n = try FSClient.nameBytes(name)
        var p = [UInt8]()
        appendStruct(fos_fs_create(dir: dir, rdev: rdev, mode: mode, flags: UInt32(bitPattern: flags),
                                   name_len: UInt32(n.count), target_len: UInt32(target.count)), to: &p)
        return p + n + target
    }

    // MARK: inode operations

    public func lookup(parent: UInt64, name: String) async throws -> FileAttributes {
        try await attrs(FOS_OP_FS_LOOKUP, try namePayload(parent, name))
    }

    public func getattr(ino: UInt64) async throws -> FileAttributes {
        try await attrs(FOS_OP_FS_GETATTR, inoPayload(ino))
    }

    public func setattr(ino: UInt64, _ ch: AttributeChanges) async throws -> FileAttributes {
        var s = fos_fs_setattr()
        s.ino = ino
        if let m = ch.mode { s.valid |= FOS_FS_SET_MODE; s.mode = m }
        if let u = ch.uid { s.valid |= FOS_FS_SET_UID; s.uid = u }
        if let g = ch.gid { s.valid |= FOS_FS_SET_GID; s.gid = g }
        if let z = ch.size { s.valid |= FOS_FS_SET_SIZE; s.size = z }
        switch ch.atime {
        case .now: s.valid |= FOS_FS_SET_ATIME_NOW
        case .ns(let t): s.valid |= FOS_FS_SET_ATIME; s.atime_ns = t
        case nil: break
        }
        switch ch.mtime {
        case .now: s.valid |= FOS_FS_SET_MTIME_NOW
        case .ns(let t): s.valid |= FOS_FS_SET_MTIME; s.mtime_ns = t
        case nil: break
        }
        var p = [UInt8]()
        appendStruct(s, to: &p)
        return try await attrs(FOS_OP_FS_SETATTR, p)
    }

    public func chmod(ino: UInt64, mode: UInt32) async throws -> FileAttributes {
        try await setattr(ino: ino, AttributeChanges(mode: mode))
    }

    public func chown(ino: UInt64, uid: UInt32? = nil, gid: UInt32? = nil) async throws -> FileAttributes {
        try await setattr(ino: ino, AttributeChanges(uid: uid, gid: gid))
    }

    public func truncate(ino: UInt64, size: UInt64) async throws -> FileAttributes {
        try await setattr(ino: ino, AttributeChanges(size: size))
    }

    public func utimens(ino: UInt64, atime: TimeSetting?, mtime: TimeSetting?) async throws -> FileAttributes {
        try await setattr(ino: ino, AttributeChanges(atime: atime, mtime: mtime))
    }

    /// Creates a regular file (`flags` as open(2); O_EXCL by default).
    public func create(parent: UInt64, name: String, mode: UInt32 = 0o644,
                       flags: OpenFlags = [.create, .exclusive, .readWrite]) async throws -> FileAttributes {
        try await attrs(FOS_OP_FS_CREATE, try createPayload(parent, name, mode: mode, flags: flags.rawValue))
    }

    public func mkdir(parent: UInt64, name: String, mode: UInt32 = 0o755) async throws -> FileAttributes {
        try await attrs(FOS_OP_FS_MKDIR, try createPayload(parent, name, mode: mode))
    }

    public func mknod(parent: UInt64, name: String, mode: UInt32, rdev: UInt64 = 0) async throws -> FileAttributes {
        try await attrs(FOS_OP_FS_MKNOD, try createPayload(parent, name, mode: mode, rdev: rdev))
    }

    public func symlink(parent: UInt64, name: String, target: String) async throws -> FileAttributes {
        let t = Array(target.utf8)
        if t.isEmpty { throw FosError.remote(.noSuchFileOrDirectory) }
        if t.count >= FSWire.pathMax { throw FosError.remote(.fileNameTooLong) }
        return try await attrs(FOS_OP_FS_SYMLINK, try createPayload(parent, name, mode: 0o777, target: t))
    }

    public func link(ino: UInt64, newParent: UInt64, name: String) async throws -> FileAttributes {
        let n = try FSClient.nameBytes(name)
        var p = [UInt8]()
        appendStruct(fos_fs_link(ino: ino, dir: newParent, name_len: UInt32(n.count), reserved: 0), to: &p)
        return try await attrs(FOS_OP_FS_LINK, p + n)
    }

    /// An FSClient holds no file open (its opens leave no placeholder, as
    /// the shim's do), so its own opens never keep a file it unlinks.
    public func unlink(parent: UInt64, name: String) async throws {
        _ = try await call(FOS_OP_FS_UNLINK, try namePayload(parent, name, flags: FOS_FS_UNLINK_HOLDS_NONE))
    }

    public func rmdir(parent: UInt64, name: String) async throws {
        _ = try await call(FOS_OP_FS_RMDIR, try namePayload(parent, name))
    }

    /// rename(2)/renameat2(2); atomic also between directories homed on
    /// different members (a cross-member transaction, durable on return).
    public func rename(oldParent: UInt64, oldName: String, newParent: UInt64, newName: String,
                       flags: RenameFlags = []) async throws {
        let o = try FSClient.nameBytes(oldName), n = try FSClient.nameBytes(newName)
        var p = [UInt8]()
        appendStruct(fos_fs_rename(old_dir: oldParent, new_dir: newParent, flags: flags.rawValue,
                                   old_len: UInt16(o.count), new_len: UInt16(n.count)), to: &p)
        _ = try await call(FOS_OP_FS_RENAME, p + o + n)
    }

    public func readlink(ino: UInt64) async throws -> String {
        String(decoding: try await call(FOS_OP_FS_READLINK, inoPayload(ino)), as: UTF8.self)
    }

    // MARK: data

    /// pread(2): up to `count` bytes (fewer at the end of the file), split
    /// into messages of at most `maxIO` bytes.
    public func read(ino: UInt64, offset: UInt64, count: Int) async throws -> [UInt8] {
        guard count >= 0 else { throw FosError.remote(.invalidArgument) }
        var out = [UInt8]()
        var done = 0
        while done < count {
            let n = min(FSClient.maxIO, count - done)
            var p = [UInt8]()
            appendStruct(fos_fs_io(ino: ino, offset: offset + UInt64(done), count: UInt32(n), flags: 0), to: &p)
            let r = try await call(FOS_OP_FS_READ, p)
            guard r.count <= n else { throw FosError.badMessage("read reply longer than asked") }
            out += r
            done += r.count
            if r.count < n { break }
        }
        return out
    }

    /// pwrite(2): all of `data`, split into messages of at most `maxIO`
    /// bytes; fewer (the count written) if the disk fills up part-way.
    @discardableResult
    public func write(ino: UInt64, offset: UInt64, data: [UInt8]) async throws -> Int {
        var done = 0
        repeat {
            let n = min(FSClient.maxIO, data.count - done)
            var p = [UInt8]()
            p.reserveCapacity(MemoryLayout<fos_fs_io>.size + n)
            appendStruct(fos_fs_io(ino: ino, offset: offset + UInt64(done), count: UInt32(n), flags: 0), to: &p)
            p += data[done..<(done + n)]
            let r: [UInt8]
            do {
                r = try await call(FOS_OP_FS_WRITE, p)
            } catch _ where done > 0 {
                // As pwrite(2): bytes already written are the result; the
                // error (ENOSPC, EFBIG) comes with the next call.
                break
            }
            guard let w = r.withUnsafeBytes({ loadStruct(fos_fs_write_reply.self, from: $0) }), Int(w.count) <= n else {
                throw FosError.badMessage("bad write reply")
            }
            done += Int(w.count)
            if Int(w.count) < n { break }
        } while done < data.count
        return done
    }

    /// An O_APPEND write; atomic when `data` fits one message (`maxIO`).
    /// Returns where the first byte went and how many were written.
    @discardableResult
    public func append(ino: UInt64, data: [UInt8]) async throws -> (offset: UInt64, count: Int) {
        var first: UInt64?
        var done = 0
        repeat {
            let n = min(FSClient.maxIO, data.count - done)
            var p = [UInt8]()
            appendStruct(fos_fs_io(ino: ino, offset: 0, count: UInt32(n), flags: FOS_FS_IO_APPEND), to: &p)
            p += data[done..<(done + n)]
            let r: [UInt8]
            do {
                r = try await call(FOS_OP_FS_WRITE, p)
            } catch _ where done > 0 {
                break  // as in `write`
            }
            guard let w = r.withUnsafeBytes({ loadStruct(fos_fs_write_reply.self, from: $0) }), Int(w.count) <= n else {
                throw FosError.badMessage("bad write reply")
            }
            if first == nil { first = w.offset }
            done += Int(w.count)
            if Int(w.count) < n { break }
        } while done < data.count
        return (first ?? 0, done)
    }

    /// fsync(2), or fdatasync(2) with `dataOnly`.
    public func fsync(ino: UInt64, dataOnly: Bool = false) async throws {
        var p = [UInt8]()
        appendStruct(fos_fs_fsync(ino: ino, datasync: dataOnly ? 1 : 0, reserved: 0), to: &p)
        _ = try await call(FOS_OP_FS_FSYNC, p)
    }

    // MARK: directories and the file system

    /// Entries after `cookie` (0 = from the start, "." and ".." included).
    /// An empty result is the end of the directory.
    public func readdir(ino: UInt64, cookie: UInt64 = 0, max: Int = 256) async throws -> [DirectoryEntry] {
        var p = [UInt8]()
        appendStruct(fos_fs_readdir(ino: ino, cookie: cookie, max: UInt32(Swift.max(1, Swift.min(max, 1024))), reserved: 0),
                     to: &p)
        return try FSWire.decodeDirents(try await call(FOS_OP_FS_READDIR, p))
    }

    /// Every entry of a directory ("." and ".." included).
    public func readdirAll(ino: UInt64) async throws -> [DirectoryEntry] {
        var out: [DirectoryEntry] = []
        var cookie: UInt64 = 0
        while true {
            let batch = try await readdir(ino: ino, cookie: cookie, max: 1024)
            guard let last = batch.last else { return out }
            out += batch
            cookie = last.nextCookie
        }
    }

    public struct Stats: Sendable, Equatable {
        public var fs: FileSystemStats
        /// The member that answered, and the fleet's size.
        public var member: Int
        public var members: Int
    }

    public func statfs() async throws -> Stats {
        let r = try await call(FOS_OP_FS_STATFS, [])
        guard r.count == MemoryLayout<fos_fs_statfs>.size, let s = r.withUnsafeBytes({ loadStruct(fos_fs_statfs.self, from: $0) })
        else { throw FosError.badMessage("bad statfs reply") }
        return Stats(fs: FileSystemStats.make(blockSize: s.block_size, totalBlocks: s.total_blocks, freeBlocks: s.free_blocks,
                                         availableBlocks: s.avail_blocks, totalInodes: s.total_inodes,
                                         freeInodes: s.free_inodes, nameMax: s.name_max, agCount: Int(s.ag_count)),
                     member: Int(s.member), members: Int(s.members))
    }

    // MARK: extended attributes

    private func xattrPayload(_ ino: UInt64, _ name: String, flags: UInt32 = 0, value: [UInt8] = []) throws -> [UInt8] {
        let n = Array(name.utf8)
        if n.isEmpty || n.count > FSWire.nameMax { throw FosError.remote(.outOfRange) }
        var p = [UInt8]()
        appendStruct(fos_fs_xattr(ino: ino, flags: flags, name_len: UInt16(n.count), reserved: 0,
                                  value_len: UInt32(value.count), reserved2: 0), to: &p)
        return p + n + value
    }

    public func getxattr(ino: UInt64, name: String) async throws -> [UInt8] {
        try await call(FOS_OP_FS_GETXATTR, try xattrPayload(ino, name))
    }

    public func setxattr(ino: UInt64, name: String, value: [UInt8], flags: XattrFlags = []) async throws {
        let p = try xattrPayload(ino, name, flags: UInt32(bitPattern: flags.rawValue), value: value)
        // A value too large for one message is too large for the file
        // system: setxattr(2)'s E2BIG, not the transport's EMSGSIZE.
        guard p.count <= Int(FOS_MAX_PAYLOAD) else { throw FosError.remote(.argListTooLong) }
        _ = try await call(FOS_OP_FS_SETXATTR, p)
    }

    /// Tells the inode's member that this process holds the regular file
    /// open by a placeholder memfd named "fos-<ino>-0-0-<node>" (in hex):
    /// while that lives, losing its last name leaves the file an orphan.
    public func hold(ino: UInt64) async throws {
        _ = try await call(FOS_OP_FS_HOLD, inoPayload(ino))
    }

    public func listxattr(ino: UInt64) async throws -> [String] {
        let r = try await call(FOS_OP_FS_LISTXATTR, inoPayload(ino))
        return r.split(separator: 0, omittingEmptySubsequences: true).map { String(decoding: $0, as: UTF8.self) }
    }

    public func removexattr(ino: UInt64, name: String) async throws {
        _ = try await call(FOS_OP_FS_REMOVEXATTR, try xattrPayload(ino, name))
    }

    // MARK: paths

    private func openPayload(_ path: String, flags: Int32, mode: UInt32) throws -> [UInt8] {
        let b = try FSClient.pathBytes(path)
        var p = [UInt8]()
        appendStruct(fos_fs_open(flags: UInt32(bitPattern: flags), mode: mode, path_len: UInt32(b.count), reserved: 0), to: &p)
        return p + b
    }

    /// open(2) on an absolute path: permission checks, O_CREAT, O_EXCL,
    /// O_TRUNC, O_DIRECTORY, O_NOFOLLOW. Returns the opened inode.
    public func open(path: String, flags: OpenFlags = .readOnly, mode: UInt32 = 0o644) async throws -> FileAttributes {
        try await attrs(FOS_OP_FS_OPEN, try openPayload(path, flags: flags.rawValue, mode: mode))
    }

    /// The inode a path names (a final symlink followed unless `followLast` is false).
    public func resolve(path: String, followLast: Bool = true) async throws -> UInt64 {
        let r = try await call(FOS_OP_FS_RESOLVE, try openPayload(path, flags: followLast ? 0 : OpenFlags.noFollow.rawValue, mode: 0))
        guard let i = r.withUnsafeBytes({ loadStruct(fos_fs_ino.self, from: $0) }) else { throw FosError.badMessage("bad resolve reply") }
        return i.ino
    }

    /// stat(2) (lstat(2) with `followLast` false).
    public func stat(path: String, followLast: Bool = true) async throws -> FileAttributes {
        try await getattr(ino: try await resolve(path: path, followLast: followLast))
    }

    /// Splits "/a/b/c" into the parent's inode and "c".
    public func parent(of path: String) async throws -> (dir: UInt64, name: String) {
        let comps = pathComponents(path)
        guard let last = comps.last else { throw FosError.remote(.fileExists) }
        let dir = comps.count == 1 ? FSClient.rootIno : try await resolve(path: "/" + comps.dropLast().joined(separator: "/"))
        return (dir, last)
    }

    @discardableResult
    public func mkdir(path: String, mode: UInt32 = 0o755) async throws -> FileAttributes {
        let (d, n) = try await parent(of: path)
        return try await mkdir(parent: d, name: n, mode: mode)
    }

    public func unlink(path: String) async throws {
        let (d, n) = try await parent(of: path)
        try await unlink(parent: d, name: n)
    }

    /// The whole file.
    public func readFile(path: String) async throws -> [UInt8] {
        let a = try await open(path: path, flags: .readOnly)
        var out = [UInt8]()
        while true {
            let chunk = try await read(ino: a.ino, offset: UInt64(out.count), count: max(FSClient.maxIO, Int(a.size) - out.count))
            out += chunk
            if chunk.isEmpty || out.count >= Int(a.size) && chunk.count < FSClient.maxIO { return out }
        }
    }

    /// Creates or truncates `path` and writes all of `data` (or throws, as
    /// ENOSPC when the disk fills up part-way); with `sync`, fsyncs it.
    @discardableResult
    public func writeFile(path: String, data: [UInt8], mode: UInt32 = 0o644, sync: Bool = false) async throws -> FileAttributes {
        let a = try await open(path: path, flags: [.writeOnly, .create, .truncate], mode: mode)
        var done = 0
        while done < data.count {
            // After a short write the next one says why.
            let n = try await write(ino: a.ino, offset: UInt64(done), data: Array(data[done...]))
            if n == 0 { throw FosError.remote(.noSpace) }
            done += n
        }
        if sync { try await fsync(ino: a.ino) }
        return try await getattr(ino: a.ino)
    }

    /// The names in a directory, without "." and "..".
    public func listDirectory(path: String) async throws -> [DirectoryEntry] {
        let a = try await open(path: path, flags: [.readOnly, .directory])
        return try await readdirAll(ino: a.ino).filter { $0.name != "." && $0.name != ".." }
    }
}
