import CFosWire
import FosCore
import FosFS
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The advisory locks of the inodes homed on this member (FOS_OP_FS_LOCK,
/// fos_wire.h), and what ties them to live clients.
///
/// A lock's client is a channel id: the channel the request came on here,
/// or for a request a peer forwarded, the channel it came on there (fosd
/// numbers channels once per node, so the two never collide). Everything a
/// client holds or waits for goes when its channel closes: here at once, at
/// the members its requests were forwarded to by LOCK_DROP. A request still
/// in flight then cannot leave a lock behind: a direct one finds its channel
/// gone before it changes the table; a forwarded one may reach its home
/// after the LOCK_DROP, so its reply, coming back to a closed channel, sends
/// another.
///
/// Locks are memory only. A restarted member has none, and its peers drop
/// the clients its previous incarnation forwarded once they hear of the new
/// one (announced at start, and carried by every forwarded request).
final class LockService: Sendable {
    struct State {
        var table = LockTable()
        /// Channels open to this member now.
        var live: Set<UInt64> = []
        /// Our clients → the members their requests were forwarded to.
        var forwardedTo: [UInt64: Set<Int>] = [:]
        /// Peers' clients with requests here → the member they came through.
        var origins: [UInt64: Int] = [:]
        var incarnations: [Int: UInt64] = [:]
        /// Handlers suspended until their waiter is granted or removed, and
        /// outcomes that came before their handler got to wait.
        var waiting: [UInt64: CheckedContinuation<Int32, Never>] = [:]
        var settled: [UInt64: Int32] = [:]
        /// Our forwarded waits in flight per home member, and those queued for a slot.
        var forwardedWaits: [Int: Int] = [:]
        var slotQueue: [Int: [CheckedContinuation<Void, Never>]] = [:]
    }

    /// CLOCK_MONOTONIC is node-wide: a restarted member's start is later than its predecessor's.
    let incarnation = monotonicNanos()
    let state = Mutex(State())

    struct Parsed {
        var request: LockRequest
        var command: UInt32
        var waitMs: UInt32
    }

    /// Field-by-field validation of a request (EINVAL, EOVERFLOW).
    static func parse(_ l: fos_fs_lock, client: UInt64) throws(FSError) -> Parsed {
        let invalid = FSError.posix(.invalidArgument)
        guard let type = LockType(rawValue: l.type), l.reserved == 0 else { throw invalid }
        let kind: LockOwner.Kind
        switch UInt32(l.kind) {
        case FOS_FS_LOCK_POSIX: kind = .process
        case FOS_FS_LOCK_OFD: kind = .ofd
        case FOS_FS_LOCK_FLOCK: kind = .flock
        default: throw invalid
        }
        // Linux: an OFD lock's l_pid must be 0; flock has no range.
        guard kind == .process ? l.pid > 0 : l.pid == 0 else { throw invalid }
        guard kind != .flock || (l.start == 0 && l.len == 0) else { throw invalid }
        switch UInt32(l.command) {
        case FOS_FS_LOCK_GET: guard type != .unlock, kind != .flock, l.wait_ms == 0 else { throw invalid }
        case FOS_FS_LOCK_SET: guard l.wait_ms == 0 else { throw invalid }
        case FOS_FS_LOCK_SETWAIT: break
        default: throw invalid
        }
        let range = try LockRange(start: l.start, length: l.len)
        let owner = LockOwner(client: client, owner: l.owner, kind: kind)
        return Parsed(request: LockRequest(ino: l.ino, owner: owner, type: type, range: range, pid: l.pid),
                      command: UInt32(l.command), waitMs: min(l.wait_ms, FOS_FS_LOCK_MAX_WAIT_MS))
    }

    // MARK: requests

    /// A LOCK from a client of this member.
    func request(_ r: Request, svc: FSService) async -> Reply {
        do {
            let p = try LockService.parse(try WireReader(r.payload).only(fos_fs_lock.self), client: r.channelID)
            do {
                return try await perform(p, cred: svc.credentials(r), svc: svc)
            } catch FSError.notHome(_, let home) where home != svc.member && home < svc.members {
                return await forward(r, to: home, waits: p.command == FOS_FS_LOCK_SETWAIT, svc: svc)
            }
        } catch {
            return Reply(status: svc.status(of: error))
        }
    }

    private func forward(_ r: Request, to home: Int, waits: Bool, svc: FSService) async -> Reply {
        if waits { await acquireWaitSlot(home) }
        defer { if waits { releaseWaitSlot(home) } }
        let client = r.channelID
        let live = state.withLock { s in
            if s.live.contains(client) { s.forwardedTo[client, default: []].insert(home) }
            return s.live.contains(client)
        }
        guard live else { return Reply(status: EINTR) }
        let reply = await svc.forward(to: home, op: UInt16(FOS_OP_FS_LOCK_FORWARDED), payload: origin(client, svc) + r.payload,
                                      cred: svc.credentials(r))
        // Closed meanwhile: the LOCK_DROP sent then may have overtaken the request.
        if !state.withLock({ $0.live.contains(client) }) { await drop(client, at: home, svc) }
        return reply
    }

    /// Forwarded waits to one home member share our one channel to it, and a
    /// channel with 256 requests in flight is not read until one ends: at
    /// most `maxForwardedWaits` may wait there at once, so that the rest of
    /// our traffic to it (unlocks among them) always gets through. The
    /// others wait here, in order, for a slot.
    static let maxForwardedWaits = 64

    private func acquireWaitSlot(_ home: Int) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            state.withLock { s in
                if s.forwardedWaits[home, default: 0] < LockService.maxForwardedWaits {
                    s.forwardedWaits[home, default: 0] += 1
                    c.resume()
                } else {
                    s.slotQueue[home, default: []].append(c)
                }
            }
        }
    }

    private func releaseWaitSlot(_ home: Int) {
        state.withLock { s in
            if s.slotQueue[home]?.isEmpty == false {
                s.slotQueue[home]!.removeFirst().resume()
            } else {
                s.forwardedWaits[home, default: 1] -= 1
            }
        }
    }

    /// LOCK_FORWARDED and LOCK_DROP: only ever inside a peer's FORWARD (no
    /// handler of their own), so the origin is a fleet member's word.
    func fromPeer(op: UInt16, _ w: WireReader, cred: Credentials, svc: FSService) async throws -> Reply {
        let o = try w.fixed(fos_fs_lock_origin.self)
        guard o.member < svc.members, Int(o.member) != svc.member, o.reserved == 0 else { throw FSError.posix(.protocolError) }
        if UInt32(op) == FOS_OP_FS_LOCK_DROP {
            try w.end()
            state.withLock { s in
                if LockService.note(o, &s) && o.client != 0 { LockService.release(o.client, &s) }
            }
            return Reply()
        }
        guard o.client != 0 else { throw FSError.posix(.protocolError) }
        let p = try LockService.parse(try w.only(fos_fs_lock.self), client: o.client)
        try state.withLock { s throws(FSError) in
            guard LockService.note(o, &s) else { throw .posix(.staleNFSFileHandle) }
            s.origins[o.client] = Int(o.member)
        }
        return try await perform(p, cred: cred, svc: svc)
    }

    /// Runs a request on an inode homed here (getattr throws notHome otherwise).
    private func perform(_ p: Parsed, cred: Credentials, svc: FSService) async throws -> Reply {
        let r = p.request
        let a = try await svc.fs.getattr(ino: r.ino)
        if p.command == FOS_FS_LOCK_GET {
            var out = fos_fs_lock_reply()
            out.type = UInt16(FOS_FS_LOCK_UNLOCK)
            if let c = state.withLock({ $0.table.conflict(for: r) }) {
                out = fos_fs_lock_reply(start: c.range.start, len: c.range.length, pid: c.pid, type: c.type.rawValue, reserved: 0)
            }
            var bytes = [UInt8]()
            appendStruct(out, to: &bytes)
            return Reply(payload: bytes)
        }
        // No open-file state: the access the fd would have needed.
        if r.owner.kind != .flock && r.type != .unlock { try svc.check(a, r.type == .read ? 4 : 2, cred) }
        let outcome = try state.withLock { s throws(FSError) -> LockOutcome in
            guard s.live.contains(r.owner.client) || s.origins[r.owner.client] != nil else { throw .posix(.interrupted) }
            let o = try s.table.lock(r, wait: p.command == FOS_FS_LOCK_SETWAIT)
            LockService.settleWoken(&s)
            return o
        }
        guard case .queued(let id) = outcome else { return Reply() }
        return Reply(status: await wait(id, ms: p.waitMs))
    }

    /// Suspends the handler until waiter `id` is granted (0), its wait ends
    /// (ETIMEDOUT) or its client goes (EINTR).
    private func wait(_ id: UInt64, ms: UInt32) async -> Int32 {
        let timer = Task {
            try? await Task.sleep(for: .milliseconds(Int(ms)))
            state.withLock { s in
                if s.table.cancel(waiter: id) { LockService.settle(id, ETIMEDOUT, &s) }
            }
        }
        let status = await withCheckedContinuation { c in
            state.withLock { s in
                if let st = s.settled.removeValue(forKey: id) { c.resume(returning: st) } else { s.waiting[id] = c }
            }
        }
        timer.cancel()
        return status
    }

    // MARK: clients coming and going

    func connected(_ channel: UInt64) {
        state.withLock { _ = $0.live.insert(channel) }
    }

    func disconnected(_ channel: UInt64, svc: FSService) {
        let homes = state.withLock { s in
            s.live.remove(channel)
            LockService.release(channel, &s)
            return s.forwardedTo.removeValue(forKey: channel) ?? []
        }
        guard !homes.isEmpty else { return }
        Task {
            for h in homes { await drop(channel, at: h, svc) }
        }
    }

    /// Tells the peers this member started, so that they forget the clients
    /// of its previous incarnation.
    func announce(_ svc: FSService) {
        guard svc.members > 1 else { return }
        Task {
            for i in 0..<svc.members where i != svc.member { await drop(0, at: i, svc) }
        }
    }

    private func drop(_ client: UInt64, at member: Int, _ svc: FSService) async {
        _ = await svc.forward(to: member, op: UInt16(FOS_OP_FS_LOCK_DROP), payload: origin(client, svc),
                              cred: Credentials(uid: getuid(), gid: getgid()))
    }

    private func origin(_ client: UInt64, _ svc: FSService) -> [UInt8] {
        var p = [UInt8]()
        appendStruct(fos_fs_lock_origin(client: client, incarnation: incarnation, member: UInt32(svc.member), reserved: 0), to: &p)
        return p
    }

    // MARK: state changes (under the lock)

    /// Records a peer's incarnation: a newer one than known means every
    /// client of the older one is gone. False for a message of an older one
    /// (a dead member's, still in flight).
    static func note(_ o: fos_fs_lock_origin, _ s: inout State) -> Bool {
        let m = Int(o.member)
        if let known = s.incarnations[m] {
            if o.incarnation < known { return false }
            if o.incarnation > known {
                for (c, from) in s.origins where from == m { release(c, &s) }
            }
        }
        s.incarnations[m] = o.incarnation
        return true
    }

    static func release(_ client: UInt64, _ s: inout State) {
        s.origins[client] = nil
        for id in s.table.release(client: client) { settle(id, EINTR, &s) }
        settleWoken(&s)
    }

    static func settleWoken(_ s: inout State) {
        for id in s.table.drainWoken() { settle(id, 0, &s) }
    }

    static func settle(_ id: UInt64, _ status: Int32, _ s: inout State) {
        if let c = s.waiting.removeValue(forKey: id) { c.resume(returning: status) } else { s.settled[id] = status }
    }
}
