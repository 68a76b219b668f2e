import CFosWire
import FosCore
import FosFS
import FosFSClient
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Change notifications (FOS_OP_FS_WATCH, fos_wire.h): the changes this
/// member was asked to make, for clients that cache (the FUSE daemon).
///
/// An event is logged by the member the client's request came to, after
/// the request succeeded and before its reply leaves: a watcher that polls
/// every member sees every change, also one that a peer carried out (a
/// forwarded request or a cross-member transaction). The log is bounded;
/// a watcher that falls behind is told it lost events and drops all it
/// caches. Nothing is logged until a watcher has asked once.
final class WatchLog: Sendable {
    struct Event {
        var kind: UInt8
        var ino: UInt64 = 0
        var parent: UInt64 = 0
        var offset: UInt64 = 0
        var length: UInt64 = 0
        var pid: Int32 = 0
        var name: [UInt8] = []

        /// Another inode event of the same inode joins this one: the
        /// attributes changed either way, and the data in both ranges
        /// (FOS_FS_EVENT_INODE: length 0 none, UInt64.max all).
        mutating func merge(_ e: Event) {
            if e.length == 0 { return }
            if length == 0 {
                (offset, length) = (e.offset, e.length)
                return
            }
            let (end1, o1) = offset.addingReportingOverflow(length)
            let (end2, o2) = e.offset.addingReportingOverflow(e.length)
            if length == .max || e.length == .max || o1 || o2 {
                (offset, length) = (0, .max)
                return
            }
            offset = min(offset, e.offset)
            length = max(end1, end2) - offset
        }
    }

    private struct State {
        /// events[i] has the sequence number first + i. Numbers start at 2:
        /// a cursor is never 0, which asks where the log is (a watcher at 0
        /// would be answered at once, forever).
        var events: [Event] = []
        var first: UInt64 = 2
        var waiters: [UInt64: CheckedContinuation<Void, Never>] = [:]
        var nextWaiter: UInt64 = 1
        /// The last event any watcher was given (`take`): later ones may
        /// still be merged (`append`).
        var given: UInt64 = 1
        var last: UInt64 { first + UInt64(events.count) - 1 }
    }

    static let capacity = 8192
    /// The member's start; a restarted member has a new log.
    let epoch = monotonicNanos() | 1
    private let watched = Atomic<Bool>(false)
    private let state = Mutex(State())

    // MARK: logging

    /// The events of a client's request that succeeded (FOS_OP_FS_AS
    /// unwrapped): what it changed, by whom.
    func noted(_ r: Request, _ reply: Reply) -> Reply {
        guard reply.status == 0, watched.load(ordering: .relaxed) else { return reply }
        var op = r.opcode, payload = r.payload
        if op == UInt16(FOS_OP_FS_AS) {
            guard let (h, _, end) = FSService.parseEnvelope(payload) else { return reply }
            op = h.opcode
            payload = Array(payload[end...])
        }
        var events = Self.events(op: op, payload, reply: reply.payload)
        guard !events.isEmpty else { return reply }
        for i in events.indices { events[i].pid = r.sender.pid }
        append(events)
        return reply
    }

    /// An OPEN with O_CREAT succeeded: a name may have been made in
    /// `parent`, the directory the path's last component was looked up in
    /// (the open says which: walking the path again here cost every create
    /// a second walk while a mount watched). Logged before the reply
    /// leaves, like the request's other events (`noted`).
    func created(in parent: UInt64, path: String, pid: Int32) {
        guard watched.load(ordering: .relaxed) else { return }
        let p = Array(path.utf8)
        guard let slash = p.lastIndex(of: 0x2F) else { return }
        let name = Array(p[(slash + 1)...])
        guard !name.isEmpty else { return }
        append([Event(kind: UInt8(FOS_FS_EVENT_ENTRY), parent: parent, pid: pid, name: name),
                Event(kind: UInt8(FOS_FS_EVENT_INODE), ino: parent, pid: pid)])
    }

    /// A change the member made by itself (a shared mapping's pages written
    /// back): data of `ino` in [offset, offset+length), by no client.
    func changed(ino: UInt64, offset: UInt64, length: UInt64) {
        guard watched.load(ordering: .relaxed) else { return }
        append([Event(kind: UInt8(FOS_FS_EVENT_INODE), ino: ino, offset: offset, length: length)])
    }

    /// What a successful request changed, from its payload (validated by
    /// then) and its reply.
    static func events(op: UInt16, _ p: [UInt8], reply: [UInt8]) -> [Event] {
        func at<T>(_ t: T.Type) -> T? { p.withUnsafeBytes { loadStruct(T.self, from: $0) } }
        func bytes(_ from: Int, _ n: Int) -> [UInt8] { from >= 0 && n >= 0 && from + n <= p.count ? Array(p[from..<(from + n)]) : [] }
        func inode(_ ino: UInt64, all: Bool = false) -> Event {
            Event(kind: UInt8(FOS_FS_EVENT_INODE), ino: ino, length: all ? UInt64.max : 0)
        }
        func entry(_ dir: UInt64, _ name: [UInt8]) -> Event { Event(kind: UInt8(FOS_FS_EVENT_ENTRY), parent: dir, name: name) }
        switch UInt32(op) {
        case FOS_OP_FS_SETATTR:
            guard let s = at(fos_fs_setattr.self) else { return [] }
            return [inode(s.ino, all: s.valid & FOS_FS_SET_SIZE != 0)]
        case FOS_OP_FS_WRITE:
            guard let io = at(fos_fs_io.self),
                  let w = reply.withUnsafeBytes({ loadStruct(fos_fs_write_reply.self, from: $0) }) else { return [] }
            return [Event(kind: UInt8(FOS_FS_EVENT_INODE), ino: io.ino, offset: w.offset, length: UInt64(w.count))]
        case FOS_OP_FS_CREATE, FOS_OP_FS_MKDIR, FOS_OP_FS_MKNOD, FOS_OP_FS_SYMLINK:
            guard let c = at(fos_fs_create.self) else { return [] }
            return [entry(c.dir, bytes(MemoryLayout<fos_fs_create>.size, Int(c.name_len))), inode(c.dir)]
        case FOS_OP_FS_LINK:
            guard let l = at(fos_fs_link.self) else { return [] }
            return [entry(l.dir, bytes(MemoryLayout<fos_fs_link>.size, Int(l.name_len))), inode(l.dir), inode(l.ino)]
        case FOS_OP_FS_UNLINK, FOS_OP_FS_RMDIR:
            guard let n = at(fos_fs_name_req.self) else { return [] }
            return [entry(n.dir, bytes(MemoryLayout<fos_fs_name_req>.size, Int(n.name_len))), inode(n.dir)]
        case FOS_OP_FS_RENAME:
            guard let r = at(fos_fs_rename.self) else { return [] }
            let start = MemoryLayout<fos_fs_rename>.size
            return [entry(r.old_dir, bytes(start, Int(r.old_len))),
                    entry(r.new_dir, bytes(start + Int(r.old_len), Int(r.new_len))), inode(r.old_dir), inode(r.new_dir)]
        case FOS_OP_FS_SETXATTR, FOS_OP_FS_REMOVEXATTR:
            // Clients may cache what they learnt (fos-fuse: no security.capability).
            guard let x = at(fos_fs_xattr.self) else { return [] }
            return [inode(x.ino)]
        case FOS_OP_FS_OPEN:
            guard let o = at(fos_fs_open.self), let a = try? FSWire.decodeAttributes(reply) else { return [] }
            var out: [Event] = []
            // A name O_CREAT may have made: the OPEN handler logs it
            // (`created`), knowing the directory.
            if o.flags & UInt32(O_TRUNC) != 0 { out.append(inode(a.ino, all: true)) }
            return out
        default:
            return []
        }
    }

    private func append(_ events: [Event]) {
        let wake = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            // A change of the inode the last event (not yet given to any
            // watcher) is about, by the same process, joins it: an untar's
            // writes and attribute changes of a file are one event, not
            // five, for the member to log and a mount to take and sort.
            for e in events {
                if e.kind == UInt8(FOS_FS_EVENT_INODE), s.last > s.given, let i = s.events.indices.last,
                   s.events[i].kind == e.kind, s.events[i].ino == e.ino, s.events[i].pid == e.pid {
                    s.events[i].merge(e)
                } else {
                    s.events.append(e)
                }
            }
            // Trimmed in halves, so that a full log costs no shift per event.
            if s.events.count > 2 * WatchLog.capacity {
                let drop = s.events.count - WatchLog.capacity
                s.events.removeFirst(drop)
                s.first += UInt64(drop)
            }
            let w = Array(s.waiters.values)
            s.waiters.removeAll()
            return w
        }
        for w in wake { w.resume() }
    }

    // MARK: watchers

    func watch(_ r: Request) async -> Reply {
        guard r.sender.uid == 0 else { return Reply(status: EPERM) }
        guard r.payload.count == MemoryLayout<fos_fs_watch>.size,
              let w = r.payload.withUnsafeBytes({ loadStruct(fos_fs_watch.self, from: $0) }) else {
            return Reply(status: EPROTO)
        }
        guard w.wait_ms <= FOS_FS_WATCH_MAX_WAIT_MS, (1...1024).contains(w.max) else { return Reply(status: EINVAL) }
        watched.store(true, ordering: .relaxed)
        if w.cursor == 0 {
            // From here on: what is logged so far counts as given.
            let at = state.withLock { s -> UInt64 in
                s.given = max(s.given, s.last)
                return s.last
            }
            return reply(cursor: at, events: [], lost: false)
        }
        let deadline = ContinuousClock.now + .milliseconds(Int(w.wait_ms))
        while true {
            let (events, lost, cursor, full) = take(after: w.cursor, max: Int(w.max))
            let now = ContinuousClock.now
            // While changes keep coming, answers that are not full wait
            // for the burst interval too: a watcher that asked again at
            // once was answered every 4 ms with a hundred events during an
            // untar, and its wakeups took the cores the clients and this
            // member needed.
            let last = answered.withLock { $0[r.channelID] } ?? now - WatchLog.burstInterval
            if lost || full || now >= deadline || (!events.isEmpty && now >= last + WatchLog.burstInterval) {
                if !events.isEmpty { noteAnswered(r.channelID) }
                return reply(cursor: cursor, events: events, lost: lost)
            }
            if !events.isEmpty {
                try? await Task.sleep(for: min(last + WatchLog.burstInterval - now, deadline - now))
                continue
            }
            await wait(after: w.cursor, until: deadline)
            // Woken by a change: let the burst it starts gather into one
            // answer. A watcher answered per event wakes once per operation
            // of every client and, on a small machine, takes the core the
            // clients and this member need. While changes keep coming, at
            // most one answer per `burstInterval`: a tar x with a FUSE
            // daemon watching ran 35% longer with an answer every 3 ms, and
            // as fast as without a watcher with one every 30 ms.
            let woken = ContinuousClock.now
            let gather = max(WatchLog.gather, last + WatchLog.burstInterval - woken)
            if woken < deadline { try? await Task.sleep(for: min(gather, deadline - woken)) }
        }
    }

    /// How long a woken watcher waits for more events before its answer.
    static let gather: Duration = .milliseconds(3)
    /// The least time between two answers while changes keep coming.
    static let burstInterval: Duration = .milliseconds(25)
    /// When each watcher (by channel) was last answered with events.
    private let answered = Mutex<[UInt64: ContinuousClock.Instant]>([:])

    private func noteAnswered(_ channel: UInt64) {
        let now = ContinuousClock.now
        answered.withLock { a in
            // Watchers that went away: forgotten once there are many.
            if a.count >= 64 { a = a.filter { now - $0.value < WatchLog.burstInterval } }
            a[channel] = now
        }
    }

    /// Events after `cursor`; whether some were lost; the cursor to go on
    /// from; whether more were there than one answer holds.
    private func take(after cursor: UInt64, max: Int) -> ([Event], Bool, UInt64, Bool) {
        state.withLock { s in
            let lost = cursor + 1 < s.first
            let from = Swift.max(cursor + 1, s.first)
            guard from <= s.last else { return ([], lost, lost ? s.last : cursor, false) }
            let i = Int(from - s.first)
            var out: [Event] = []
            var bytes = MemoryLayout<fos_fs_watch_reply>.size
            var full = false
            for e in s.events[i...] {
                let size = MemoryLayout<fos_fs_event>.size + (e.name.count + 7) & ~7
                if out.count == max || bytes + size > Int(FOS_MAX_PAYLOAD) {
                    full = true
                    break
                }
                bytes += size
                out.append(e)
            }
            let to = from + UInt64(out.count) - 1
            s.given = Swift.max(s.given, to)
            return (out, lost, to, full)
        }
    }

    /// Until an event after `cursor`, or the deadline.
    private func wait(after cursor: UInt64, until deadline: ContinuousClock.Instant) async {
        let id = state.withLock { s -> UInt64 in
            defer { s.nextWaiter += 1 }
            return s.nextWaiter
        }
        let timer = Task {
            try? await Task.sleep(until: deadline)
            state.withLock { $0.waiters.removeValue(forKey: id) }?.resume()
        }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.last > cursor || cursor + 1 < s.first || ContinuousClock.now >= deadline { return true }
                s.waiters[id] = c
                return false
            }
            if now { c.resume() }
        }
        timer.cancel()
    }

    private func reply(cursor: UInt64, events: [Event], lost: Bool) -> Reply {
        var out = [UInt8]()
        appendStruct(fos_fs_watch_reply(cursor: cursor, epoch: epoch, count: UInt32(events.count),
                                        flags: lost ? FOS_FS_WATCH_LOST : 0), to: &out)
        for e in events {
            appendStruct(fos_fs_event(ino: e.ino, parent: e.parent, offset: e.offset, length: e.length, origin_pid: e.pid,
                                      kind: e.kind, reserved: 0, name_len: UInt16(e.name.count)), to: &out)
            out += e.name
            while out.count % 8 != 0 { out.append(0) }
        }
        return Reply(payload: out)
    }
}
