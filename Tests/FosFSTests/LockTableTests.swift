import FosFS
import SystemPackage
import Testing

private let file: UInt64 = 42
private func process(_ client: UInt64, _ pid: UInt64) -> LockOwner { LockOwner(client: client, owner: pid, kind: .process) }
private let a = process(1, 100), b = process(2, 200), c = process(3, 300)

private func range(_ start: Int64, _ length: Int64) -> LockRange { try! LockRange(start: start, length: length) }

private func req(_ o: LockOwner, _ t: LockType, _ start: Int64, _ length: Int64, ino: UInt64 = file) -> LockRequest {
    LockRequest(ino: ino, owner: o, type: t, range: range(start, length), pid: Int32(o.owner))
}

/// The owner's locks as (type, start, length), in order.
private func held(_ t: Table, _ o: LockOwner, ino: UInt64 = file) -> [String] {
    t.recordLocks(ino: ino).filter { $0.owner == o }.map { "\($0.type == .read ? "R" : "W")\($0.range.start)+\($0.range.length)" }
}

private func errno(_ body: () throws -> Void) -> Errno? {
    do {
        try body()
        return nil
    } catch let FSError.posix(e) {
        return e
    } catch {
        return nil
    }
}

/// A table the test closures (#expect) can change.
private final class Table {
    var t: LockTable
    init(maxPerClient: Int = 65536) { t = LockTable(maxPerClient: maxPerClient) }
    func lock(_ r: LockRequest, wait: Bool) throws -> LockOutcome { try t.lock(r, wait: wait) }
    func cancel(waiter id: UInt64) -> Bool { t.cancel(waiter: id) }
    func release(client: UInt64) -> [UInt64] { t.release(client: client) }
    func release(owner: LockOwner, ino: UInt64) { t.release(owner: owner, ino: ino) }
    func drainWoken() -> [UInt64] { t.drainWoken() }
    func conflict(for r: LockRequest) -> HeldLock? { t.conflict(for: r) }
    func recordLocks(ino: UInt64) -> [HeldLock] { t.recordLocks(ino: ino) }
    func flockLocks(ino: UInt64) -> [HeldLock] { t.flockLocks(ino: ino) }
    func count(client: UInt64) -> Int { t.count(client: client) }
    var waiterCount: Int { t.waiterCount }
}

@discardableResult
private func set(_ t: Table, _ r: LockRequest, wait: Bool = false) throws -> LockOutcome {
    try t.lock(r, wait: wait)
}

private func waiter(_ o: LockOutcome) -> UInt64? {
    if case .queued(let id) = o { return id }
    return nil
}

@Suite struct LockTableTests {
    @Test func rangesAreCheckedLikeLinux() throws {
        #expect(errno { _ = try LockRange(start: -1, length: 10) } == .invalidArgument)
        #expect(errno { _ = try LockRange(start: Int64.max, length: 2) } == .overflow)
        #expect(errno { _ = try LockRange(start: 10, length: Int64.max) } == .overflow)
        #expect(errno { _ = try LockRange(start: 3, length: -4) } == .invalidArgument)
        let back = try LockRange(start: 10, length: -4)
        #expect(back.start == 6 && back.end == 9 && back.length == 4)
        let eof = try LockRange(start: 7, length: 0)
        #expect(eof.end == LockRange.eof && eof.length == 0)
        // Exactly up to the largest offset is fine, and reads back as "to EOF".
        #expect(try LockRange(start: Int64.max, length: 1).length == 0)
        #expect(try LockRange(start: 0, length: Int64.max).end == Int64.max - 1)
    }

    @Test func unlockAndOtherTypesSplitAnOwnersRange() throws {
        let t = Table()
        try set(t, req(a, .write, 0, 100))
        try set(t, req(a, .unlock, 40, 20))
        #expect(held(t, a) == ["W0+40", "W60+40"])
        try set(t, req(a, .read, 10, 10))
        #expect(held(t, a) == ["W0+10", "R10+10", "W20+20", "W60+40"])
        // Unlocking across pieces trims both ends.
        try set(t, req(a, .unlock, 15, 50))
        #expect(held(t, a) == ["W0+10", "R10+5", "W65+35"])
        try set(t, req(a, .unlock, 0, 0))
        #expect(held(t, a).isEmpty && t.count(client: 1) == 0)
    }

    @Test func sameTypeNeighboursMerge() throws {
        let t = Table()
        try set(t, req(a, .read, 0, 10))
        try set(t, req(a, .read, 10, 10))
        #expect(held(t, a) == ["R0+20"])
        try set(t, req(a, .read, 30, 10))
        try set(t, req(a, .read, 15, 20))
        #expect(held(t, a) == ["R0+40"])
        // Another type next door stays apart; a lock inside one of its own type changes nothing.
        try set(t, req(a, .write, 40, 5))
        try set(t, req(a, .read, 5, 5))
        #expect(held(t, a) == ["R0+40", "W40+5"])
        // A lock to EOF swallows everything after it of its type.
        try set(t, req(a, .write, 45, 0))
        #expect(held(t, a) == ["R0+40", "W40+0"])
        #expect(t.count(client: 1) == 2)
    }

    @Test func conflictsFollowTypeRangeAndOwner() throws {
        let t = Table()
        try set(t, req(a, .write, 100, 50))
        #expect(errno { try set(t, req(b, .read, 149, 1)) } == .resourceTemporarilyUnavailable)
        #expect(errno { try set(t, req(b, .write, 0, 101)) } == .resourceTemporarilyUnavailable)
        try set(t, req(b, .write, 0, 100))
        try set(t, req(b, .read, 150, 0))
        // Readers share; the same owner never conflicts with itself.
        try set(t, req(c, .read, 200, 10))
        try set(t, req(a, .write, 100, 50))
        // A failed request leaves the requester's locks alone.
        #expect(errno { try set(t, req(b, .write, 90, 20)) } == .resourceTemporarilyUnavailable)
        #expect(held(t, b) == ["W0+100", "R150+0"])
    }

    @Test func getlkReportsTheFirstConflictingHolder() throws {
        let t = Table()
        try set(t, req(b, .read, 50, 10))
        try set(t, req(a, .write, 0, 10))
        let ofd = LockOwner(client: 3, owner: 9, kind: .ofd)
        try set(t, LockRequest(ino: file, owner: ofd, type: .write, range: range(100, 0)))
        let w = t.conflict(for: req(c, .write, 0, 0))
        #expect(w?.owner == a && w?.pid == 100 && w?.type == .write && w?.range.length == 10)
        #expect(t.conflict(for: req(c, .read, 20, 40))?.owner == nil)
        #expect(t.conflict(for: req(c, .write, 55, 1))?.pid == 200)
        // An OFD holder reports pid -1; one's own locks are never reported.
        let o = t.conflict(for: req(c, .read, 1000, 1))
        #expect(o?.owner == ofd && o?.pid == -1 && o?.range.length == 0)
        #expect(t.conflict(for: req(a, .write, 0, 10)) == nil)
        // A process lock and an OFD lock of the same client are different owners.
        #expect(t.conflict(for: LockRequest(ino: file, owner: LockOwner(client: 1, owner: 100, kind: .ofd), type: .read,
                                            range: range(0, 1)))?.owner == a)
    }

    @Test func upgradeAndDowngrade() throws {
        let t = Table()
        try set(t, req(a, .read, 0, 0))
        try set(t, req(b, .read, 0, 0))
        #expect(errno { try set(t, req(a, .write, 0, 0)) } == .resourceTemporarilyUnavailable)
        #expect(held(t, a) == ["R0+0"])
        try set(t, req(b, .unlock, 0, 0))
        try set(t, req(a, .write, 0, 0))
        #expect(held(t, a) == ["W0+0"])
        // A downgrade lets a waiting reader in.
        let id = try #require(waiter(try set(t, req(b, .read, 10, 10), wait: true)))
        #expect(t.drainWoken().isEmpty)
        try set(t, req(a, .read, 0, 0))
        #expect(t.drainWoken() == [id])
        #expect(held(t, b) == ["R10+10"])
    }

    @Test func waitersAreGrantedInOrderAndOnlyWhenFree() throws {
        let t = Table()
        try set(t, req(a, .write, 0, 100))
        let w1 = try #require(waiter(try set(t, req(b, .write, 0, 10), wait: true)))
        let w2 = try #require(waiter(try set(t, req(c, .write, 5, 10), wait: true)))
        let w3 = try #require(waiter(try set(t, req(process(4, 400), .write, 50, 10), wait: true)))
        // Freeing 50... lets only the third in; the others still conflict with a.
        try set(t, req(a, .unlock, 50, 0))
        #expect(t.drainWoken() == [w3])
        try set(t, req(a, .unlock, 0, 0))
        #expect(t.drainWoken() == [w1])
        try set(t, req(b, .unlock, 0, 0))
        #expect(t.drainWoken() == [w2])
        #expect(held(t, c) == ["W5+10"] && t.waiterCount == 0)
        #expect(t.count(client: 2) == 0 && t.count(client: 3) == 1)
    }

    @Test func cancelledWaitersAreNeverGranted() throws {
        let t = Table()
        try set(t, req(a, .write, 0, 0))
        let id = try #require(waiter(try set(t, req(b, .read, 0, 0), wait: true)))
        #expect(t.cancel(waiter: id))
        #expect(!t.cancel(waiter: id))
        try set(t, req(a, .unlock, 0, 0))
        #expect(t.drainWoken().isEmpty && held(t, b).isEmpty && t.count(client: 2) == 0)
    }

    @Test func deadlocksBetweenProcessesAreRefused() throws {
        let t = Table()
        try set(t, req(a, .write, 0, 10))
        try set(t, req(b, .write, 10, 10))
        let aw = try #require(waiter(try set(t, req(a, .write, 10, 10), wait: true)))
        #expect(errno { try set(t, req(b, .write, 0, 10), wait: true) } == .deadlock)
        // Non-blocking it is just a conflict.
        #expect(errno { try set(t, req(b, .write, 0, 10)) } == .resourceTemporarilyUnavailable)
        // Three owners over two files.
        try set(t, req(c, .read, 0, 1, ino: 7))
        let bw = try #require(waiter(try set(t, req(b, .write, 0, 1, ino: 7), wait: true)))
        #expect(errno { try set(t, req(c, .write, 15, 1), wait: true) } == .deadlock)
        // OFD locks get no detection (Linux): they wait.
        let ofd = LockOwner(client: 3, owner: 1, kind: .ofd)
        #expect(waiter(try t.lock(LockRequest(ino: file, owner: ofd, type: .write, range: range(15, 1)), wait: true)) != nil)
        // Breaking the cycle grants the waiter.
        try set(t, req(b, .unlock, 10, 10))
        #expect(t.drainWoken() == [aw])
        #expect(held(t, a) == ["W0+20"])
        #expect(t.cancel(waiter: bw))
    }

    @Test func releaseOfAClientFreesItsLocksAndWaiters() throws {
        let t = Table()
        try set(t, req(a, .write, 0, 10))
        try set(t, req(a, .read, 0, 0, ino: 8))
        let fl = LockOwner(client: 1, owner: 5, kind: .flock)
        try set(t, LockRequest(ino: file, owner: fl, type: .write))
        try set(t, req(b, .write, 20, 10))
        let aw = try #require(waiter(try set(t, req(a, .write, 20, 10), wait: true)))
        let cw = try #require(waiter(try set(t, req(c, .write, 0, 10), wait: true)))
        let fw = try #require(waiter(try set(t, LockRequest(ino: file, owner: LockOwner(client: 4, owner: 1, kind: .flock),
                                                              type: .read), wait: true)))
        #expect(t.release(client: 1) == [aw])
        #expect(t.drainWoken() == [cw, fw])
        #expect(t.recordLocks(ino: 8).isEmpty && held(t, a).isEmpty && t.count(client: 1) == 0)
        #expect(held(t, b) == ["W20+10"] && held(t, c) == ["W0+10"])
        // release(owner:) frees one owner on one file only.
        try set(t, req(b, .read, 0, 0, ino: 8))
        t.release(owner: b, ino: file)
        #expect(held(t, b).isEmpty && held(t, b, ino: 8) == ["R0+0"])
    }

    @Test func flockSharedExclusiveAndConversion() throws {
        let t = Table()
        let f1 = LockOwner(client: 1, owner: 1, kind: .flock), f2 = LockOwner(client: 2, owner: 1, kind: .flock)
        func flock(_ o: LockOwner, _ ty: LockType, wait: Bool = false) throws -> LockOutcome {
            try t.lock(LockRequest(ino: file, owner: o, type: ty), wait: wait)
        }
        _ = try flock(f1, .read)
        _ = try flock(f2, .read)
        #expect(errno { _ = try flock(f2, .write) } == .resourceTemporarilyUnavailable)
        // Linux drops the old lock before it tries the new one: a failed conversion leaves none.
        #expect(t.flockLocks(ino: file).map(\.owner) == [f1])
        _ = try flock(f1, .write)
        _ = try flock(f1, .write)
        #expect(t.flockLocks(ino: file).map(\.type) == [.write])
        // flock and record locks never meet.
        try set(t, req(b, .write, 0, 0))
        let id = try #require(waiter(try flock(f2, .read, wait: true)))
        _ = try flock(f1, .read)  // downgrade: the shared waiter joins
        #expect(t.drainWoken() == [id])
        _ = try flock(f1, .unlock)
        _ = try flock(f1, .unlock)
        #expect(t.flockLocks(ino: file).map(\.owner) == [f2] && t.count(client: 1) == 0)
        // The type of a flock request's range and pid are ignored.
        let r = LockRequest(ino: file, owner: f1, type: .read, range: range(5, 5), pid: 77)
        #expect(r.range == .wholeFile && r.pid == -1)
    }

    @Test func aClientCannotHoldUnboundedLocks() throws {
        let t = Table(maxPerClient: 3)
        try set(t, req(a, .read, 0, 1))
        try set(t, req(a, .read, 10, 1))
        try set(t, req(a, .write, 20, 10))
        #expect(errno { try set(t, req(a, .read, 40, 1)) } == .noLocks)
        // Splitting needs a record too; merging frees them.
        #expect(errno { try set(t, req(a, .unlock, 25, 1)) } == .noLocks)
        try set(t, req(a, .read, 0, 20))
        try set(t, req(a, .unlock, 25, 1))
        #expect(held(t, a) == ["R0+20", "W20+5", "W26+4"])
        try set(t, req(b, .write, 100, 1))
        #expect(t.count(client: 1) == 3 && t.count(client: 2) == 1)
    }
}
