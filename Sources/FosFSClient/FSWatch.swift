import CFosWire
import FosCore
import FosFS

/// A change another client made (FOS_OP_FS_WATCH, fos_wire.h).
public enum FSEvent: Sendable, Equatable {
    /// The inode's attributes changed, and its data in `range` (empty: none;
    /// up to UInt64.max: all of it).
    case inode(ino: UInt64, offset: UInt64, length: UInt64, pid: Int32)
    /// `name` in `parent` names something else now, or nothing.
    case entry(parent: UInt64, name: String, pid: Int32)

    public var pid: Int32 {
        switch self {
        case .inode(_, _, _, let p), .entry(_, _, let p): p
        }
    }
}

public struct FSWatchBatch: Sendable {
    public var cursor: UInt64
    /// The member's incarnation: a new one means its earlier events are gone.
    public var epoch: UInt64
    /// Events between the cursor asked for and these were dropped.
    public var lost: Bool
    public var events: [FSEvent]
}

extension FSClient {
    /// The changes the member this client talks to made after `cursor`
    /// (0: none, just the current cursor), waiting up to `wait` for one.
    /// Root only.
    public func watch(after cursor: UInt64, wait: Duration = .seconds(5), max: Int = 512) async throws -> FSWatchBatch {
        let c = wait.components
        let ms = UInt32(Swift.min(Int64(FOS_FS_WATCH_MAX_WAIT_MS), Swift.max(0, c.seconds * 1000 + c.attoseconds / 1_000_000_000_000_000)))
        var p = [UInt8]()
        appendStruct(fos_fs_watch(cursor: cursor, wait_ms: ms, max: UInt32(Swift.max(1, Swift.min(max, 1024)))), to: &p)
        // Never as another user: the watch is the client's own.
        let r = try await FSClient.$actingAs.withValue(nil) { try await call(FOS_OP_FS_WATCH, p) }
        return try FSClient.decodeWatch(r)
    }

    static func decodeWatch(_ bytes: [UInt8]) throws -> FSWatchBatch {
        try bytes.withUnsafeBytes { b in
            guard let h = loadStruct(fos_fs_watch_reply.self, from: b), h.count <= 1024 else {
                throw FosError.badMessage("bad watch reply")
            }
            var off = MemoryLayout<fos_fs_watch_reply>.size
            var out: [FSEvent] = []
            for _ in 0..<h.count {
                guard let e = loadStruct(fos_fs_event.self, from: b, at: off) else { throw FosError.badMessage("bad watch event") }
                let start = off + MemoryLayout<fos_fs_event>.size
                let len = Int(e.name_len)
                guard len <= FSWire.nameMax, start + len <= b.count else { throw FosError.badMessage("bad watch event") }
                switch UInt32(e.kind) {
                case FOS_FS_EVENT_INODE:
                    out.append(.inode(ino: e.ino, offset: e.offset, length: e.length, pid: e.origin_pid))
                case FOS_FS_EVENT_ENTRY:
                    let name = String(decoding: UnsafeRawBufferPointer(rebasing: b[start..<(start + len)]), as: UTF8.self)
                    out.append(.entry(parent: e.parent, name: name, pid: e.origin_pid))
                default:
                    throw FosError.badMessage("unknown watch event \(e.kind)")
                }
                off = (start + len + 7) & ~7
            }
            return FSWatchBatch(cursor: h.cursor, epoch: h.epoch, lost: h.flags & FOS_FS_WATCH_LOST != 0, events: out)
        }
    }
}
