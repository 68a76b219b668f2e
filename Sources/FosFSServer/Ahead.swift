import CFosWire
import FosCore
import FosFS

/// Which writes a client may send ahead (FOS_MSG_AHEAD: it goes on without
/// waiting for the answer; FosCore/AheadOrder.swift keeps the order).
///
/// Only WRITEs at an offset (an append's place is known only when it is
/// served, and a client replaying one after a restart would append it
/// twice), SETATTRs of mode, owner and times (the shim sends those only
/// for root, which they cannot fail) and CREATEs under a directory lease
/// (Leases.swift), and only in a fleet of one member: a member serves a request
/// for an inode homed elsewhere by forwarding it, and a write sent ahead
/// that waited for a peer while that peer's own waited for us would hang
/// both. (In a larger fleet every reply says no, and a shim sends each
/// write as an ordinary request.)
///
/// Shared mappings: a write must be in every shared mapping of the file
/// when it returns, and mappings are read without asking us. So while any
/// file of this member is mapped shared, replies say no (the reply to the
/// MAP itself among them). Left: a process whose last reply came before
/// another process mapped the file may still send its next writes ahead,
/// until a reply tells it otherwise (at most FOS_FS_AHEAD_MAX writes).
///
/// Room: a write sent ahead cannot be answered ENOSPC in time, so replies
/// say AHEAD_OK only while this member has, beyond a margin, room for
/// FOS_FS_AHEAD_BYTES from every channel it serves at once (the most a
/// client may have unanswered). Past that, writes wait for their answers
/// again and a full disk says ENOSPC to the write that meets it. The room
/// is as of the last change (`FileSystem.roomBytes`); a client whose
/// ahead writes still meet an error (EIO, a full disk that others filled
/// between two of its replies) is told at its next write, fsync or close
/// of the file.
///
/// Commits: a request taken ahead leaves its changes uncommitted
/// (FileSystem.commitLater) while the next one taken ahead is the same
/// client's, and the loop holds its answer until the last of the run
/// commits them all (`settleAhead`; FosCore/AheadOrder.swift), or the
/// client's next ordinary request does with its own (`followsInTurn`). An
/// untar's writes and attribute changes of a file and the create of the
/// next one are one commit, not one each.
extension FSService {
    /// Commits what requests served ahead left; false if that failed.
    func settleAhead() async -> Bool {
        do {
            try await fs.settle()
            return true
        } catch {
            return false
        }
    }

    /// Requests that may follow a client's run in turn (FosCore's
    /// `takeFollower`): served at once in a fleet of one member, never
    /// waiting for another client (not LOCK, WATCH, MAP, MSYNC, FSYNC).
    static let followsInTurn: Set<UInt32> = [
        FOS_OP_FS_LOOKUP, FOS_OP_FS_GETATTR, FOS_OP_FS_SETATTR, FOS_OP_FS_CREATE, FOS_OP_FS_MKDIR,
        FOS_OP_FS_MKNOD, FOS_OP_FS_SYMLINK, FOS_OP_FS_LINK, FOS_OP_FS_UNLINK, FOS_OP_FS_RMDIR,
        FOS_OP_FS_RENAME, FOS_OP_FS_OPEN, FOS_OP_FS_RESOLVE, FOS_OP_FS_READ, FOS_OP_FS_WRITE,
    ]

    /// Kept free beyond the clients' ahead bytes: metadata, the journal,
    /// other clients' ordinary writes in the meantime.
    static let aheadMarginBytes: UInt64 = 64 << 20

    func takesAhead(_ r: Request) -> Bool {
        guard members == 1 else { return false }
        // A create under a directory lease (Leases.swift).
        if r.opcode == UInt16(FOS_OP_FS_CREATE) { return Self.leased(r) }
        if r.opcode == UInt16(FOS_OP_FS_SETATTR) {
            // Mode, owner, times: served twice after a replay, the same
            // (a truncate is not taken: it may meet a shared mapping).
            guard let a = r.payload.withUnsafeBytes({ loadStruct(fos_fs_setattr.self, from: $0) }) else { return false }
            return a.valid & FOS_FS_SET_SIZE == 0
        }
        guard r.opcode == UInt16(FOS_OP_FS_WRITE),
              let h = r.payload.withUnsafeBytes({ loadStruct(fos_fs_io.self, from: $0) }) else { return false }
        // A write the file system refuses whatever its state (EFBIG) is
        // the shim's to refuse at once; one that comes anyway is ordinary.
        return h.flags & FOS_FS_IO_APPEND == 0 && h.count <= FOS_FS_AHEAD_BYTES
            && h.offset <= FileSystem.maxFileSize - UInt64(h.count)
    }

    var welcomesAhead: Bool {
        guard members == 1, maps.isEmpty else { return false }
        let room = fs.roomBytes.load(ordering: .relaxed)
        let clients = UInt64(max(0, channels.load(ordering: .relaxed)))
        return room >= Self.aheadMarginBytes + clients * UInt64(FOS_FS_AHEAD_BYTES)
    }
}
