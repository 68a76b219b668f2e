import CFosWire
import FosCore
import Synchronization

/// Requests straight to the member that homes their inode (opt-in:
/// `routeByInode()`). A member serves whatever it is sent, forwarding what
/// another member homes (FOS_OP_FS_FORWARD); a client that knows where an
/// inode lives saves that hop, which on a small machine is a wake-up of a
/// second member per request. An inode's home is its allocation group
/// modulo the fleet's size (FileSystem.homeMember). Path requests (OPEN,
/// RESOLVE), locks (tied to the channel they came on) and the change log
/// stay on the client's own channel.
struct FSRoutes {
    var members = 0
    var channels: [Int: (channel: Channel, addr: MailboxAddress)] = [:]
}

extension FSClient {
    /// Finds every member of the fleet and routes inode requests to their
    /// homes from then on. Cheap when nothing is missing: call it again now
    /// and then, after a member restarted.
    public func routeByInode() async {
        let (ch, addr) = state.withLock { ($0.channel, $0.addr) }
        guard let own = try? await FSClient.statfs(on: ch, runtime: runtime) else { return }
        let (missing, stale) = routes.withLock { r -> (Bool, [Channel]) in
            var stale: [Channel] = []
            if r.members != own.members {
                // The fleet changed size: homes moved, start over.
                stale = r.channels.values.map(\.channel).filter { $0 !== ch }
                r = FSRoutes(members: own.members)
            }
            r.channels[own.member] = (ch, addr)
            return (r.channels.count < r.members, stale)
        }
        for c in stale { try? await runtime.close(c) }
        guard missing else { return }
        var excluded = routes.withLock { $0.channels.values.map(\.addr) }
        while routes.withLock({ $0.channels.count < $0.members }) {
            guard let (c, a) = try? await FSClient.open(runtime, name: name, excluding: excluded, wait: .zero) else { return }
            excluded.append(a)
            guard let s = try? await FSClient.statfs(on: c, runtime: runtime), s.members == own.members else {
                try? await runtime.close(c)
                continue
            }
            let kept = routes.withLock { r -> Bool in
                guard r.channels[s.member] == nil else { return false }
                r.channels[s.member] = (c, a)
                return true
            }
            if !kept { try? await runtime.close(c) }
        }
    }

    static func statfs(on ch: Channel, runtime: FosRuntime) async throws -> (member: Int, members: Int) {
        let r = try await runtime.call(ch, opcode: UInt16(FOS_OP_FS_STATFS), payload: [], timeout: .seconds(5)).checked()
        guard r.count == MemoryLayout<fos_fs_statfs>.size, let s = r.withUnsafeBytes({ loadStruct(fos_fs_statfs.self, from: $0) }),
              s.members > 0, s.member < s.members else { throw FosError.badMessage("bad statfs reply") }
        return (Int(s.member), Int(s.members))
    }

    /// The inode a request is about, for routing (nil: the own channel).
    static func routeKey(_ op: UInt32, _ p: [UInt8]) -> UInt64? {
        func u64(_ at: Int) -> UInt64? { p.count >= at + 8 ? p.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: at, as: UInt64.self) } : nil }
        switch op {
        case FOS_OP_FS_LINK:
            return u64(8)  // the new name's directory
        case FOS_OP_FS_LOOKUP, FOS_OP_FS_GETATTR, FOS_OP_FS_SETATTR, FOS_OP_FS_CREATE, FOS_OP_FS_MKDIR, FOS_OP_FS_MKNOD,
             FOS_OP_FS_SYMLINK, FOS_OP_FS_UNLINK, FOS_OP_FS_RMDIR, FOS_OP_FS_RENAME, FOS_OP_FS_READLINK, FOS_OP_FS_READ,
             FOS_OP_FS_WRITE, FOS_OP_FS_FSYNC, FOS_OP_FS_READDIR, FOS_OP_FS_GETXATTR, FOS_OP_FS_SETXATTR,
             FOS_OP_FS_LISTXATTR, FOS_OP_FS_REMOVEXATTR, FOS_OP_FS_HOLD:
            return u64(0)
        default:
            return nil
        }
    }

    /// The channel to the home member of `key`, if routing knows it.
    func routedChannel(_ key: UInt64?) -> (channel: Channel, addr: MailboxAddress)? {
        guard let key else { return nil }
        return routes.withLock { r in r.members > 0 ? r.channels[Int(key >> 32) % r.members] : nil }
    }

    /// A routed channel's member went away: back to the own channel until
    /// `routeByInode` finds its successor.
    func dropRoute(_ addr: MailboxAddress) {
        routes.withLock { r in r.channels = r.channels.filter { $0.value.addr != addr } }
    }
}
