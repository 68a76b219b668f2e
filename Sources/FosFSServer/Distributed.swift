import CFosWire
import FosCore
import FosFS
import FosFSClient

#if canImport(Glibc)
import Glibc
#endif

/// Lookups, path walks and opens that cross members: a walk runs on one
/// member until it needs an inode homed on another, and this member (the
/// one the client asked) sends the rest of the walk there, and so on. Each
/// leg is a FORWARD of WALK, OPENAT or OPENINO carrying the caller's
/// credentials; nothing here changes more than one member's state, so no
/// transaction spans members.
extension FSService {
    /// Walk legs per request: every leg consumes a component or a symlink,
    /// so a legitimate walk needs far fewer.
    static let maxLegs = 256

    /// LOOKUP, CREATE, OPEN and RESOLVE after an inode turned out to be
    /// homed on another member.
    func distributed(op: UInt16, payload: [UInt8], cred: Credentials, forwarded: Bool) async throws -> Reply {
        let w = WireReader(payload)
        switch UInt32(op) {
        case FOS_OP_FS_LOOKUP:
            let h = try w.fixed(fos_fs_name_req.self)
            let name = try w.name(Int(h.name_len), exactEnd: true)
            let home = fs.home(of: h.dir)
            if home != member { return try await elsewhere(home, op: op, payload: payload, cred: cred, forwarded: forwarded) }
            let child = try await fs.lookupChild(parent: h.dir, name: name, cred: cred)
            var p = [UInt8]()
            appendStruct(fos_fs_ino(ino: child), to: &p)
            return try await at(fs.home(of: child), op: UInt16(FOS_OP_FS_GETATTR), payload: p, cred: cred)
        case FOS_OP_FS_CREATE:
            let h = try w.fixed(fos_fs_create.self)
            let home = fs.home(of: h.dir)
            if home != member { return try await elsewhere(home, op: op, payload: payload, cred: cred, forwarded: forwarded) }
            let name = try w.name(Int(h.name_len), exactEnd: true)
            let flags = OpenFlags(rawValue: Int32(bitPattern: h.flags)).union(.create)
            let step = try await fs.openAt(parent: h.dir, name: name, flags: flags, mode: h.mode, cred: cred)
            return try await finish(step, flags: flags, trailingSlash: false, cred: cred)
        case FOS_OP_FS_OPEN, FOS_OP_FS_RESOLVE:
            let (h, path) = try w.pathRequest()
            let comps = pathComponents(path)
            for c in comps where c.utf8.count > Int(FOS_FS_NAME_MAX) { throw FSError.posix(.fileNameTooLong) }
            let trailing = path.utf8.last == UInt8(ascii: "/")
            let noFollow = OpenFlags.noFollow.rawValue
            if UInt32(op) == FOS_OP_FS_RESOLVE {
                guard h.flags & ~UInt32(bitPattern: noFollow) == 0, h.mode == 0 else { throw FSError.posix(.invalidArgument) }
                var s = WalkState(at: FileSystem.rootIno, components: comps,
                                  followLast: h.flags == 0 || trailing, mustBeDir: trailing)
                var out = [UInt8]()
                appendStruct(fos_fs_ino(ino: try await walkAnywhere(&s, cred: cred)), to: &out)
                return Reply(payload: out)
            }
            let flags = OpenFlags(rawValue: Int32(bitPattern: h.flags))
            guard let last = comps.last else {
                return try await at(fs.home(of: FileSystem.rootIno), op: UInt16(FOS_OP_FS_OPENINO),
                                    payload: Self.openIno(FileSystem.rootIno, flags, trailing: true), cred: cred)
            }
            var s = WalkState(at: FileSystem.rootIno, components: Array(comps.dropLast()), followLast: true)
            let parent = try await walkAnywhere(&s, cred: cred)
            let r = try await at(fs.home(of: parent), op: UInt16(FOS_OP_FS_OPENAT),
                                 payload: Self.openAt(parent, last, flags, mode: h.mode, links: s.links, trailing: trailing),
                                 cred: cred)
            let done = try await finish(try Self.decodeStep(r), flags: flags, trailingSlash: trailing, cred: cred)
            if flags.contains(.create), done.status == 0 { watch.created(in: parent, path: path, pid: cred.pid) }
            return done
        default:
            return Reply(status: EXDEV)
        }
    }

    /// The whole request belongs to another member: send it there, once.
    func elsewhere(_ home: Int, op: UInt16, payload: [UInt8], cred: Credentials, forwarded: Bool) async throws -> Reply {
        guard !forwarded, home < members else { return Reply(status: EXDEV) }
        return await forward(to: home, op: op, payload: payload, cred: cred)
    }

    /// An open that found an existing name: walk on to the inode, open it at its home.
    func finish(_ step: OpenStep, flags: OpenFlags, trailingSlash: Bool, cred: Credentials) async throws -> Reply {
        switch step {
        case .opened(let a):
            return ok(a)
        case .follow(var s):
            let ino = try await walkAnywhere(&s, cred: cred)
            return try await at(fs.home(of: ino), op: UInt16(FOS_OP_FS_OPENINO),
                                payload: Self.openIno(ino, flags, trailing: trailingSlash), cred: cred)
        }
    }

    /// Runs a walk to its end, leg by leg on the members that home its inodes.
    func walkAnywhere(_ s: inout WalkState, cred: Credentials) async throws -> UInt64 {
        for _ in 0..<Self.maxLegs {
            let home = fs.home(of: s.next)
            if home == member {
                do {
                    return try await fs.walk(&s, cred: cred)
                } catch FSError.notHome(_, let m) where m != member {
                    continue
                }
            }
            let r = try await at(home, op: UInt16(FOS_OP_FS_WALK), payload: Self.encode(s), cred: cred)
            let b = try r.checked()
            guard let tag = b.first else { throw FSError.posix(.protocolError) }
            if tag == 0 {
                guard b.count == 9, let ino = b.withUnsafeBytes({ loadStruct(UInt64.self, from: $0, at: 1) }) else {
                    throw FSError.posix(.protocolError)
                }
                return ino
            }
            let next = try Self.decodeWalk(WireReader(Array(b.dropFirst())))
            // A leg that made no progress would ping-pong forever.
            guard next != s else { throw FSError.posix(.protocolError) }
            s = next
        }
        throw FSError.posix(.tooManySymbolicLinkLevels)
    }

    /// Runs `op` on member `home`: here, or there with the caller's credentials.
    func at(_ home: Int, op: UInt16, payload: [UInt8], cred: Credentials) async throws -> Reply {
        if home == member { return try await dispatch(op: op, WireReader(payload), cred: cred) }
        guard home < members else { throw FSError.posix(.staleNFSFileHandle) }
        return await forward(to: home, op: op, payload: payload, cred: cred)
    }

    /// statfs(2) of the whole file system: each member's exact part of the
    /// AGs it owns, summed (a member that does not answer counts as it was
    /// when we last knew: at our mount or our last cross-member transaction).
    func fleetStats() async throws -> FileSystemStats {
        var sum = try await fs.statfs(of: member)
        for m in 0..<members where m != member {
            let r = await forward(to: m, op: UInt16(FOS_OP_FS_STATFS_PART), payload: [], cred: .root)
            var part = try await fs.statfs(of: m)
            if r.status == 0, r.payload.count == MemoryLayout<fos_fs_statfs>.size,
               let p = r.payload.withUnsafeBytes({ loadStruct(fos_fs_statfs.self, from: $0) }) {
                part.freeBlocks = p.free_blocks
                part.availableBlocks = p.avail_blocks
                part.freeInodes = p.free_inodes
            }
            sum.totalBlocks += part.totalBlocks
            sum.freeBlocks += part.freeBlocks
            sum.availableBlocks += part.availableBlocks
            sum.totalInodes += part.totalInodes
            sum.freeInodes += part.freeInodes
        }
        return sum
    }

    // MARK: the legs (dispatched for FORWARDs from peers)

    func dispatchInternal(op: UInt16, _ w: WireReader, cred: Credentials) async throws -> Reply {
        switch UInt32(op) {
        case FOS_OP_FS_WALK:
            var s = try Self.decodeWalk(w)
            var out = [UInt8]()
            do {
                let ino = try await fs.walk(&s, cred: cred)
                out.append(0)
                appendStruct(ino, to: &out)
            } catch FSError.notHome {
                out.append(1)
                out += Self.encode(s)
            }
            return Reply(payload: out)
        case FOS_OP_FS_OPENAT:
            let h = try w.fixed(OpenAtHeader.self)
            let name = try w.name(Int(h.nameLength), exactEnd: true)
            guard h.links <= 40, h.trailing <= 1 else { throw FSError.posix(.protocolError) }
            let step = try await fs.openAt(parent: h.parent, name: name, flags: OpenFlags(rawValue: h.flags),
                                           mode: h.mode, cred: cred, links: Int(h.links), trailingSlash: h.trailing == 1)
            var out = [UInt8]()
            switch step {
            case .opened(let a):
                out.append(0)
                out += FSWire.encode(opened(a, for: cred))
            case .follow(let s):
                out.append(1)
                out += Self.encode(s)
            }
            return Reply(payload: out)
        case FOS_OP_FS_STATFS_PART:
            try w.end()
            return Reply(payload: FSWire.encodeStats(try await fs.statfs(of: member), member: member, members: members))
        case FOS_OP_FS_OPENINO:
            let h = try w.only(OpenInoHeader.self)
            guard h.trailing <= 1 else { throw FSError.posix(.protocolError) }
            return ok(opened(try await fs.openExisting(ino: h.ino, flags: OpenFlags(rawValue: h.flags), cred: cred,
                                                       trailingSlash: h.trailing == 1), for: cred))
        default:
            return Reply(status: ENOSYS)
        }
    }

    // MARK: wire of the legs

    struct OpenAtHeader {
        var parent: UInt64
        var flags: Int32
        var mode: UInt32
        var links: UInt32
        var trailing: UInt32
        var nameLength: UInt32
        var pad: UInt32 = 0
    }

    struct OpenInoHeader {
        var ino: UInt64
        var flags: Int32
        var trailing: UInt32
    }

    static func openAt(_ parent: UInt64, _ name: String, _ flags: OpenFlags, mode: UInt32, links: Int, trailing: Bool) -> [UInt8] {
        var p = [UInt8]()
        appendStruct(OpenAtHeader(parent: parent, flags: flags.rawValue, mode: mode, links: UInt32(links),
                                  trailing: trailing ? 1 : 0, nameLength: UInt32(name.utf8.count)), to: &p)
        p += Array(name.utf8)
        return p
    }

    static func openIno(_ ino: UInt64, _ flags: OpenFlags, trailing: Bool) -> [UInt8] {
        var p = [UInt8]()
        appendStruct(OpenInoHeader(ino: ino, flags: flags.rawValue, trailing: trailing ? 1 : 0), to: &p)
        return p
    }

    static func decodeStep(_ r: Reply) throws -> OpenStep {
        let b = try r.checked()
        guard let tag = b.first else { throw FSError.posix(.protocolError) }
        if tag == 0 { return .opened(try FSWire.decodeAttributes(Array(b.dropFirst()))) }
        guard tag == 1 else { throw FSError.posix(.protocolError) }
        return .follow(try decodeWalk(WireReader(Array(b.dropFirst()))))
    }

    /// WalkState: dir u64, pending u64, flags u32 (1 followLast, 2 mustBeDir),
    /// links u32, count u32, then count × (u16 length + name bytes).
    static func encode(_ s: WalkState) -> [UInt8] {
        var p = [UInt8]()
        appendStruct(s.dir, to: &p)
        appendStruct(s.pending, to: &p)
        appendStruct(UInt32((s.followLast ? 1 : 0) | (s.mustBeDir ? 2 : 0)), to: &p)
        appendStruct(UInt32(s.links), to: &p)
        appendStruct(UInt32(s.components.count), to: &p)
        for c in s.components {
            appendStruct(UInt16(c.utf8.count), to: &p)
            p += Array(c.utf8)
        }
        return p
    }

    static func decodeWalk(_ w: WireReader) throws -> WalkState {
        let dir = try w.fixed(UInt64.self)
        let pending = try w.fixed(UInt64.self)
        let flags = try w.fixed(UInt32.self)
        let links = try w.fixed(UInt32.self)
        let count = try w.fixed(UInt32.self)
        guard flags & ~3 == 0, links <= 40, count <= FOS_FS_PATH_MAX / 2 else { throw FSError.posix(.protocolError) }
        var comps: [String] = []
        for _ in 0..<count {
            let n = try w.fixed(UInt16.self)
            comps.append(try w.name(Int(n), exactEnd: false))
        }
        try w.end()
        var s = WalkState(at: dir, components: comps, followLast: flags & 1 != 0, mustBeDir: flags & 2 != 0, links: Int(links))
        s.pending = pending
        return s
    }
}
