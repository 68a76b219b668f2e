// Advisory file locks the way Linux keeps them (fs/locks.c), as a value with
// no I/O: the fs server holds one table for the inodes homed on its member
// and does the waiting, the messages and the clean-up of dead clients.
//
// Two families that never conflict with each other, as on Linux:
// - record locks (fcntl F_SETLK and friends): byte ranges, read or write,
//   owned by a process (POSIX) or by an open file description (OFD); an
//   owner's ranges never overlap, same-type neighbours merge, an unlock or a
//   lock of another type splits them;
// - flock(2) locks: the whole file, shared or exclusive, owned by an open
//   file description.
import SystemPackage

/// F_RDLCK, F_WRLCK, F_UNLCK with their Linux values; for flock(2) they
/// stand for LOCK_SH, LOCK_EX, LOCK_UN.
public enum LockType: UInt16, Sendable {
    case read = 0, write = 1, unlock = 2
}

/// Who holds a lock. `client` is the server's name for the connection the
/// request came on (never a message field), `owner` the client's name for
/// the process (POSIX) or open file description (OFD, flock).
public struct LockOwner: Hashable, Sendable {
    public enum Kind: UInt8, Sendable { case process, ofd, flock }
    public var client: UInt64
    public var owner: UInt64
    public var kind: Kind
    public init(client: UInt64, owner: UInt64, kind: Kind) {
        self.client = client
        self.owner = owner
        self.kind = kind
    }
}

/// Bytes `start...end` of a file; `end == LockRange.eof` reaches past any
/// end of file (fcntl's l_len 0).
public struct LockRange: Hashable, Sendable {
    public static let eof = Int64.max
    public static let wholeFile = LockRange(start: 0, end: eof)
    public let start: Int64
    public let end: Int64

    init(start: Int64, end: Int64) {
        self.start = start
        self.end = end
    }

    /// fcntl's l_start (already absolute) and l_len, checked as Linux does:
    /// a negative start, or a negative length reaching before byte 0, is
    /// EINVAL; a range past the largest offset is EOVERFLOW.
    public init(start: Int64, length: Int64) throws(FSError) {
        guard start >= 0 else { throw .posix(.invalidArgument) }
        if length > 0 {
            guard length - 1 <= Int64.max - start else { throw .posix(.overflow) }
            self.init(start: start, end: start + (length - 1))
        } else if length < 0 {
            guard start + length >= 0 else { throw .posix(.invalidArgument) }
            self.init(start: start + length, end: start - 1)
        } else {
            self.init(start: start, end: LockRange.eof)
        }
    }

    /// l_len as F_GETLK reports it (0: to the end of file).
    public var length: Int64 { end == LockRange.eof ? 0 : end - start + 1 }

    func overlaps(_ o: LockRange) -> Bool { start <= o.end && o.start <= end }
    func touches(_ o: LockRange) -> Bool {
        overlaps(o) || (end != LockRange.eof && end + 1 == o.start) || (o.end != LockRange.eof && o.end + 1 == start)
    }
    func union(_ o: LockRange) -> LockRange { LockRange(start: min(start, o.start), end: max(end, o.end)) }
}

/// A held lock. For flock the range is the whole file.
public struct HeldLock: Equatable, Sendable {
    public var owner: LockOwner
    public var type: LockType
    public var range: LockRange
    /// What F_GETLK reports: the process's pid, -1 for OFD locks.
    public var pid: Int32

    func conflicts(with r: LockRequest) -> Bool {
        owner != r.owner && (type == .write || r.type == .write) && range.overlaps(r.range)
    }
}

public struct LockRequest: Equatable, Sendable {
    public var ino: UInt64
    public var owner: LockOwner
    public var type: LockType
    public var range: LockRange
    public var pid: Int32
    public init(ino: UInt64, owner: LockOwner, type: LockType, range: LockRange = .wholeFile, pid: Int32 = -1) {
        self.ino = ino
        self.owner = owner
        self.type = type
        self.range = owner.kind == .flock ? .wholeFile : range
        self.pid = owner.kind == .process ? pid : -1
    }
}

public enum LockOutcome: Equatable, Sendable {
    case granted
    /// Blocked: the waiter with this id is granted later (`drainWoken`) or
    /// removed (`cancel`, `release(client:)`).
    case queued(UInt64)
}

public struct LockTable: Sendable {
    struct Inode {
        var record: [HeldLock] = []  // sorted by start
        var flock: [HeldLock] = []
        var waiters: [UInt64] = []   // FIFO
        var isEmpty: Bool { record.isEmpty && flock.isEmpty && waiters.isEmpty }

        func held(by owner: LockOwner) -> Int {
            flock.count { $0.owner == owner } + record.count { $0.owner == owner }
        }

        /// Gives `r.owner` what `r` asks for (conflicts were checked before).
        mutating func apply(_ r: LockRequest) {
            if r.owner.kind == .flock {
                flock.removeAll { $0.owner == r.owner }
                if r.type != .unlock { flock.append(HeldLock(owner: r.owner, type: r.type, range: .wholeFile, pid: -1)) }
            } else {
                let mine = record.filter { $0.owner == r.owner }
                record = (record.filter { $0.owner != r.owner } + LockTable.applying(r, to: mine))
                    .sorted { $0.range.start < $1.range.start }
            }
        }
    }
    var inodes: [UInt64: Inode] = [:]
    var waiting: [UInt64: LockRequest] = [:]
    var perClient: [UInt64: Int] = [:]
    var nextWaiter: UInt64 = 1
    var woken: [UInt64] = []
    /// Locks plus waiters one client may have: a client must not be able to
    /// make the server hold unbounded memory (ENOLCK beyond).
    public let maxPerClient: Int
    /// How far deadlock detection follows the wait-for graph before it gives up
    /// (and lets the request wait, as Linux does after its own bound).
    static let maxDeadlockSteps = 4096

    public init(maxPerClient: Int = 65536) { self.maxPerClient = maxPerClient }

    // MARK: queries

    /// F_GETLK: the first lock (lowest start) of another owner that keeps a
    /// record lock `r` from being granted, nil if none would.
    public func conflict(for r: LockRequest) -> HeldLock? {
        inodes[r.ino]?.record.first { $0.conflicts(with: r) }
    }

    public func recordLocks(ino: UInt64) -> [HeldLock] { inodes[ino]?.record ?? [] }
    public func flockLocks(ino: UInt64) -> [HeldLock] { inodes[ino]?.flock ?? [] }
    public var waiterCount: Int { waiting.count }
    public func count(client: UInt64) -> Int { perClient[client] ?? 0 }

    // MARK: changes

    /// F_SETLK (`wait` false: EAGAIN on a conflict), F_SETLKW (queued;
    /// EDEADLK if a process lock would wait on its own owner through other
    /// waiting process locks), flock with and without LOCK_NB. A flock
    /// conversion drops the old lock first, as Linux does: a conversion that
    /// fails leaves the owner without a lock.
    public mutating func lock(_ r: LockRequest, wait: Bool) throws(FSError) -> LockOutcome {
        var ino = inodes[r.ino] ?? Inode()
        defer { store(r.ino, ino) }
        if r.owner.kind == .flock {
            if let i = ino.flock.firstIndex(where: { $0.owner == r.owner }) {
                if ino.flock[i].type == r.type { return .granted }
                ino.flock.remove(at: i)
                adjust(r.owner.client, -1)
                if r.type == .unlock {
                    grant(&ino)
                    return .granted
                }
            } else if r.type == .unlock {
                return .granted
            }
            if !ino.flock.contains(where: { $0.conflicts(with: r) }) {
                try reserve(r.owner.client, 1)
                ino.apply(r)
                grant(&ino)
                return .granted
            }
            grant(&ino)
            return try enqueue(r, &ino, wait: wait, blockers: [])
        }
        let blockers = r.type == .unlock ? [] : ino.record.filter { $0.conflicts(with: r) }
        if blockers.isEmpty {
            var after = ino
            after.apply(r)
            try reserve(r.owner.client, after.held(by: r.owner) - ino.held(by: r.owner))
            ino = after
            grant(&ino)
            return .granted
        }
        return try enqueue(r, &ino, wait: wait, blockers: Set(blockers.map(\.owner)))
    }

    /// Removes a waiter (its wait expired). False if it was granted or
    /// removed before.
    @discardableResult
    public mutating func cancel(waiter id: UInt64) -> Bool {
        guard let r = waiting.removeValue(forKey: id) else { return false }
        inodes[r.ino]?.waiters.removeAll { $0 == id }
        if inodes[r.ino]?.isEmpty == true { inodes[r.ino] = nil }
        adjust(r.owner.client, -1)
        return true
    }

    /// Everything `owner` holds (on `ino`, or everywhere), and its waiters.
    /// Returns the waiters removed.
    @discardableResult
    public mutating func release(owner: LockOwner, ino: UInt64? = nil) -> [UInt64] {
        release { o, i in o == owner && (ino == nil || i == ino) }
    }

    /// Everything of a client whose connection closed. Returns the waiters removed.
    @discardableResult
    public mutating func release(client: UInt64) -> [UInt64] {
        // Most clients that go never locked anything: no walk over every inode for them.
        guard perClient[client] != nil else { return [] }
        return release { o, _ in o.client == client }
    }

    /// Waiters granted since the last call, in the order they were granted.
    public mutating func drainWoken() -> [UInt64] {
        defer { woken = [] }
        return woken
    }

    // MARK: internals

    private mutating func release(_ match: (LockOwner, UInt64) -> Bool) -> [UInt64] {
        let removed = waiting.filter { match($0.value.owner, $0.value.ino) }.map(\.key).sorted()
        for id in removed { cancel(waiter: id) }
        for key in Array(inodes.keys) {
            guard var ino = inodes[key] else { continue }
            let before = ino.record.count + ino.flock.count
            for l in ino.record + ino.flock where match(l.owner, key) { adjust(l.owner.client, -1) }
            ino.record.removeAll { match($0.owner, key) }
            ino.flock.removeAll { match($0.owner, key) }
            if ino.record.count + ino.flock.count != before { grant(&ino) }
            store(key, ino)
        }
        return removed
    }

    private mutating func enqueue(_ r: LockRequest, _ ino: inout Inode, wait: Bool,
                                  blockers: Set<LockOwner>) throws(FSError) -> LockOutcome {
        guard wait else { throw .posix(.resourceTemporarilyUnavailable) }
        if r.owner.kind == .process && deadlocks(r.owner, waitingOn: blockers) { throw .posix(.deadlock) }
        try reserve(r.owner.client, 1)
        let id = nextWaiter
        nextWaiter += 1
        waiting[id] = r
        ino.waiters.append(id)
        return .queued(id)
    }

    /// Would `me` waiting on `blockers` close a cycle? Only waiting process
    /// locks are followed (Linux: OFD and flock waiters are never checked).
    /// Across inodes of this table; not across fs members.
    private func deadlocks(_ me: LockOwner, waitingOn blockers: Set<LockOwner>) -> Bool {
        let waits = Dictionary(grouping: waiting.values.filter { $0.owner.kind == .process }, by: \.owner)
        var stack = Array(blockers)
        var seen = Set<LockOwner>()
        while let o = stack.popLast() {
            if o == me { return true }
            guard seen.insert(o).inserted else { continue }
            if seen.count > LockTable.maxDeadlockSteps { return false }
            for w in waits[o] ?? [] {
                stack += (inodes[w.ino]?.record ?? []).filter { $0.conflicts(with: w) }.map(\.owner)
            }
        }
        return false
    }

    /// Grants, in FIFO order, every waiter of `ino` that no held lock blocks
    /// (a waiter does not hold back a later one that does not conflict with
    /// what is held, as on Linux).
    private mutating func grant(_ ino: inout Inode) {
        var i = 0
        while i < ino.waiters.count {
            let id = ino.waiters[i]
            guard let r = waiting[id] else {
                ino.waiters.remove(at: i)
                continue
            }
            let held = r.owner.kind == .flock ? ino.flock : ino.record
            if held.contains(where: { $0.conflicts(with: r) }) {
                i += 1
                continue
            }
            ino.waiters.remove(at: i)
            waiting[id] = nil
            let before = ino.held(by: r.owner)
            ino.apply(r)
            // The waiter was counted as one record; now count what it holds.
            adjust(r.owner.client, ino.held(by: r.owner) - before - 1)
            woken.append(id)
        }
    }

    /// The owner's record locks after `r`: the range taken out of every lock
    /// of another type (split where needed), joined with every overlapping or
    /// adjacent lock of the same type.
    static func applying(_ r: LockRequest, to mine: [HeldLock]) -> [HeldLock] {
        var out: [HeldLock] = []
        var joined = r.range
        for l in mine {
            if r.type != .unlock && l.type == r.type && l.range.touches(r.range) {
                joined = joined.union(l.range)
            } else if l.range.overlaps(r.range) {
                if l.range.start < r.range.start {
                    out.append(HeldLock(owner: l.owner, type: l.type, range: LockRange(start: l.range.start, end: r.range.start - 1),
                                        pid: l.pid))
                }
                if l.range.end > r.range.end {
                    out.append(HeldLock(owner: l.owner, type: l.type, range: LockRange(start: r.range.end + 1, end: l.range.end),
                                        pid: l.pid))
                }
            } else {
                out.append(l)
            }
        }
        if r.type != .unlock { out.append(HeldLock(owner: r.owner, type: r.type, range: joined, pid: r.pid)) }
        return out
    }

    private mutating func reserve(_ client: UInt64, _ n: Int) throws(FSError) {
        if n > 0 && (perClient[client] ?? 0) + n > maxPerClient { throw .posix(.noLocks) }
        adjust(client, n)
    }

    private mutating func adjust(_ client: UInt64, _ n: Int) {
        let v = (perClient[client] ?? 0) + n
        perClient[client] = v > 0 ? v : nil
    }

    private mutating func store(_ key: UInt64, _ ino: Inode) {
        inodes[key] = ino.isEmpty ? nil : ino
    }
}
