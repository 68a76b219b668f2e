import CFosWire
import FosCore
import FosFS

/// Who owns a record lock: a process (fcntl F_SETLK and friends) or an open
/// file description (F_OFD_SETLK and friends; any id the client keeps for it).
/// Locks also belong to the FSClient's channel: two FSClients are two
/// clients even for the same pid, and closing one drops its locks.
public enum RecordLockOwner: Sendable, Hashable {
    case process(pid: Int32)
    case openFile(UInt64)
    /// A process lock whose owner is named by an id other than the pid:
    /// the FUSE daemon passes the kernel's lock_owner (one per files_struct,
    /// which the pid does not identify: threads, CLONE_FILES children).
    case processOwner(UInt64, pid: Int32)
}

/// A lock as F_GETLK reports it.
public struct LockConflict: Sendable, Equatable {
    public var type: LockType
    public var start: Int64
    /// 0: to the end of file.
    public var length: Int64
    /// The holder's pid; -1 for an open-file-description lock.
    public var pid: Int32
    public init(type: LockType, start: Int64, length: Int64, pid: Int32) {
        self.type = type
        self.start = start
        self.length = length
        self.pid = pid
    }
}

/// Advisory locks (FOS_OP_FS_LOCK). Ranges are fcntl's: `start` absolute
/// (resolve SEEK_CUR and SEEK_END first), `length` 0 to the end of file and
/// beyond, negative for the bytes before `start`. Locks are kept in memory
/// at the inode's home member: they are gone if that member restarts.
extension FSClient {
    /// F_GETLK: the first lock that keeps `owner` from taking `type` (read
    /// or write) on the range; nil if nothing would.
    public func getlk(ino: UInt64, owner: RecordLockOwner, type: LockType, start: Int64 = 0,
                      length: Int64 = 0) async throws -> LockConflict? {
        var l = FSClient.recordLock(ino, owner, type, start, length)
        l.command = UInt8(FOS_FS_LOCK_GET)
        let r = try await lockCall(l)
        guard r.count == MemoryLayout<fos_fs_lock_reply>.size,
              let c = r.withUnsafeBytes({ loadStruct(fos_fs_lock_reply.self, from: $0) }), let t = LockType(rawValue: c.type)
        else { throw FosError.badMessage("bad lock reply") }
        return t == .unlock ? nil : LockConflict(type: t, start: c.start, length: c.len, pid: c.pid)
    }

    /// F_SETLK (EAGAIN on a conflict) or, with `wait`, F_SETLKW: waits until
    /// granted (EDEADLK if a process lock would wait for itself).
    public func setlk(ino: UInt64, owner: RecordLockOwner, type: LockType, start: Int64 = 0, length: Int64 = 0,
                      wait: Bool = false) async throws {
        try await setLock(FSClient.recordLock(ino, owner, type, start, length), wait: wait)
    }

    /// flock(2) on the open file `owner`: `.read` is LOCK_SH, `.write`
    /// LOCK_EX, `.unlock` LOCK_UN; `wait` false is LOCK_NB (EWOULDBLOCK).
    /// A conversion drops the old lock first, as on Linux.
    public func flock(ino: UInt64, owner: UInt64, operation: LockType, wait: Bool = true) async throws {
        var l = fos_fs_lock()
        l.ino = ino
        l.owner = owner
        l.type = operation.rawValue
        l.kind = UInt8(FOS_FS_LOCK_FLOCK)
        try await setLock(l, wait: wait)
    }

    static func recordLock(_ ino: UInt64, _ owner: RecordLockOwner, _ type: LockType, _ start: Int64,
                           _ length: Int64) -> fos_fs_lock {
        var l = fos_fs_lock()
        l.ino = ino
        l.start = start
        l.len = length
        l.type = type.rawValue
        switch owner {
        case .process(let pid):
            l.kind = UInt8(FOS_FS_LOCK_POSIX)
            l.owner = UInt64(UInt32(bitPattern: pid))
            l.pid = pid
        case .openFile(let id):
            l.kind = UInt8(FOS_FS_LOCK_OFD)
            l.owner = id
        case .processOwner(let id, let pid):
            l.kind = UInt8(FOS_FS_LOCK_POSIX)
            l.owner = id
            l.pid = pid
        }
        return l
    }

    private func lockCall(_ l: fos_fs_lock) async throws -> [UInt8] {
        var p = [UInt8]()
        appendStruct(l, to: &p)
        return try await call(FOS_OP_FS_LOCK, p)
    }

    /// SET, or SETWAIT sent again each time the server's bounded wait ends
    /// (ETIMEDOUT): a repeat by the same owner changes nothing it holds.
    private func setLock(_ request: fos_fs_lock, wait: Bool) async throws {
        var l = request
        l.command = UInt8(wait ? FOS_FS_LOCK_SETWAIT : FOS_FS_LOCK_SET)
        if wait {
            // Each wait ends well within this client's own call timeout.
            let ms = timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000
            l.wait_ms = UInt32(max(1, min(Int64(FOS_FS_LOCK_MAX_WAIT_MS), ms / 2)))
        }
        while true {
            do {
                _ = try await lockCall(l)
                return
            } catch FosError.remote(let e) where wait && e == .timedOut {
                try Task.checkCancellation()
            }
        }
    }
}
