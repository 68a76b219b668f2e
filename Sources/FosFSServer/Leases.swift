import CFosWire
import FosCore
import FosFS
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Directory leases (fos_wire.h, "Directory leases"): a client that made a
/// directory may create files in it without waiting for each answer.
///
/// Why: an untar waits for every create's answer (about 15 µs of the
/// member's work each) while the member has nothing else to do; with the
/// creates sent ahead, the client's work and the member's overlap.
///
/// What keeps the holder's guesses true: the directory was empty when
/// granted and only the holder changes it while the lease lasts, because
/// every request of another channel waits (`awaitOthersLeases`) until each
/// lease it does not hold has expired and every AHEAD record published by
/// then has been served. Granted only in a fleet of one member, while no
/// other channel has sent anything for `quietNs` and none has a request
/// waiting to be served in turn, and only to a caller that may create
/// files in the directory. The inode numbers are set aside in memory
/// (FileSystem.reserveInodes): the holder names its placeholders with them.
final class DirLeases: Sendable {
    struct Lease {
        var channel: UInt64
        var expires: UInt64
        var inos: Set<UInt64>
    }

    struct State {
        var byDir: [UInt64: Lease] = [:]
        /// When each open channel last sent a request (monotonicNanos).
        var lastSeen: [UInt64: UInt64] = [:]
        /// Each channel's requests being served now.
        var inflight: [UInt64: Int] = [:]
        /// Inode numbers whose leased create failed, by channel: kept
        /// aside until the channel closes, as its requests sent ahead for
        /// the file it was told it had may still come (they meet ESTALE,
        /// never another file that got the number).
        var failed: [UInt64: [UInt64]] = [:]
    }

    /// How long a lease lasts: the longest another client may wait for it
    /// (2 ms: an untar makes a directory's files in less). FOS_FS_LEASE_US
    /// sets it, up to a second: tests stretch it to hold a lease for sure.
    let lifetimeNs: UInt64 = {
        guard let v = getenv("FOS_FS_LEASE_US").flatMap({ UInt64(String(cString: $0)) }), v >= 100,
              v <= 1_000_000 else { return 2_000_000 }
        return v * 1000
    }()
    /// How long every other channel must have been quiet for a grant.
    static let quietNs: UInt64 = 20_000_000
    static let inosPerLease = Int(FOS_FS_LEASE_MAX_INOS)
    static let maxPerChannel = 64

    let state = Mutex(State())
    /// Leases not yet released: checked by every request.
    let count = Atomic<Int>(0)

    /// A request of `channel` starts being served (`done` when it ends).
    func enter(_ channel: UInt64, at now: UInt64) {
        state.withLock {
            $0.lastSeen[channel] = now
            $0.inflight[channel, default: 0] += 1
        }
    }

    func done(_ channel: UInt64) {
        state.withLock {
            let n = ($0.inflight[channel] ?? 1) - 1
            $0.inflight[channel] = n > 0 ? n : nil
        }
    }

    /// Whether an ordinary request of `channel` may follow its run in
    /// turn: not while another channel's lease is unreleased (it may have
    /// to wait for it, which one served in turn cannot).
    func mayTakeInTurn(_ channel: UInt64) -> Bool {
        if count.load(ordering: .relaxed) == 0 { return true }
        return state.withLock { s in s.byDir.values.allSatisfy { $0.channel == channel } }
    }

    /// The latest expiry of the leases others than `channel` hold; nil if none.
    func othersExpiry(_ channel: UInt64) -> UInt64? {
        state.withLock { s in
            s.byDir.values.filter { $0.channel != channel }.map(\.expires).max()
        }
    }

    /// Ends the leases others than `channel` hold that expired by `now`:
    /// the inode numbers they did not use.
    func releaseOthers(_ channel: UInt64, expiredBy now: UInt64) -> [UInt64] {
        state.withLock { end(&$0) { $0.channel != channel && $0.expires <= now } }
    }

    /// Ends the leases `which` picks: the inode numbers they did not use.
    private func end(_ s: inout State, _ which: (Lease) -> Bool) -> [UInt64] {
        var freed: [UInt64] = []
        for (dir, l) in s.byDir where which(l) {
            freed += l.inos
            s.byDir[dir] = nil
            count.subtract(1, ordering: .relaxed)
        }
        return freed
    }

    /// Whether no other channel is busy (`grant`'s test, for a MKDIR to
    /// see before it sets inode numbers aside).
    func othersQuiet(_ channel: UInt64, now: UInt64) -> Bool {
        state.withLock { Self.quiet(channel, $0, now: now) }
    }

    private static func quiet(_ channel: UInt64, _ s: State, now: UInt64) -> Bool {
        s.lastSeen.allSatisfy { $0.key == channel || now &- $0.value >= quietNs }
            && s.inflight.keys.allSatisfy { $0 == channel }
    }

    /// Grants `channel` a lease on `dir` with `inos` if no other channel is
    /// busy; also ends the channel's own expired leases (everything it sent
    /// before this request has been served). Returns the expiry, or nil,
    /// and the inode numbers to give back either way.
    func grant(_ channel: UInt64, dir: UInt64, inos: [UInt64], now: UInt64,
               othersInTurn: Bool) -> (expires: UInt64?, freed: [UInt64]) {
        state.withLock { s in
            let freed = end(&s) { $0.channel == channel && $0.expires <= now }
            let mine = s.byDir.values.count { $0.channel == channel }
            guard Self.quiet(channel, s, now: now), !othersInTurn, mine < Self.maxPerChannel, s.byDir[dir] == nil else {
                return (nil, freed + inos)
            }
            let expires = now + lifetimeNs
            s.byDir[dir] = Lease(channel: channel, expires: expires, inos: Set(inos))
            count.add(1, ordering: .relaxed)
            return (expires, freed)
        }
    }

    /// Whether `ino` was set aside for `channel`'s lease on `dir` (it is
    /// then the caller's to take).
    func take(_ channel: UInt64, dir: UInt64, ino: UInt64) -> Bool {
        state.withLock { s in
            guard var l = s.byDir[dir], l.channel == channel, l.inos.remove(ino) != nil else { return false }
            s.byDir[dir] = l
            return true
        }
    }

    /// The leased create of `ino` failed: the number stays set aside
    /// until `channel` closes.
    func failed(_ channel: UInt64, ino: UInt64) {
        state.withLock { $0.failed[channel, default: []].append(ino) }
    }

    /// A channel closed (after everything it sent ahead was served): its
    /// leases end.
    func closed(_ channel: UInt64) -> [UInt64] {
        state.withLock { s in
            s.lastSeen[channel] = nil
            s.inflight[channel] = nil
            return (s.failed.removeValue(forKey: channel) ?? []) + end(&s) { $0.channel == channel }
        }
    }
}

extension FSService {
    /// Before a request of `r`'s channel: every lease another channel holds
    /// has expired, and everything published under it has been served.
    ///
    /// Not for a request served in turn: those it would wait for are
    /// served after it. None needs to: another channel's requests are
    /// taken in turn while leases are held only if sent ahead, and those
    /// (writes and attribute changes of files the sender has open, creates
    /// under its own lease) cannot touch a directory leased to another: to
    /// have it open, the sender waited for the lease.
    func awaitOthersLeases(_ r: Request) async {
        // No lease is granted while this request is served (`enter`), so
        // this ends; one granted while it waited to be served is waited for.
        while let until = leases.othersExpiry(r.channelID) {
            while case let now = monotonicNanos(), now < until {
                try? await Task.sleep(for: .nanoseconds(Int64(until - now)))
            }
            await rt.loop.takeAheadOfOthers(than: r.channelID)
            let freed = leases.releaseOthers(r.channelID, expiredBy: monotonicNanos())
            if !freed.isEmpty { await fs.releaseInodes(freed) }
        }
    }

    /// A MKDIR that asked for a lease: the reply with one, if granted.
    func grantLease(_ r: Request, _ reply: Reply, cred: Credentials) async -> Reply {
        guard members == 1, reply.status == 0, welcomesAhead,
              let c = r.payload.withUnsafeBytes({ loadStruct(fos_fs_create.self, from: $0) }),
              c.flags & FOS_FS_MKDIR_LEASE != 0,
              let st = reply.payload.withUnsafeBytes({ loadStruct(fos_fs_stat.self, from: $0) }),
              reply.payload.count == MemoryLayout<fos_fs_stat>.size,
              cred.isRoot || (st.uid == cred.uid && st.mode & 0o300 == 0o300),
              leases.othersQuiet(r.channelID, now: monotonicNanos()) else { return reply }
        guard let inos = try? await fs.reserveInodes(DirLeases.inosPerLease, near: st.ino), !inos.isEmpty else {
            return reply
        }
        // No suspension from here to the grant: what it checks stays true
        // (checked again: others may have come while the numbers were set
        // aside).
        let g = leases.grant(r.channelID, dir: st.ino, inos: inos, now: monotonicNanos(),
                             othersInTurn: !rt.loop.inTurnOnlyFrom(r.channelID))
        if !g.freed.isEmpty { await fs.releaseInodes(g.freed) }
        guard let expires = g.expires else { return reply }
        var out = reply
        let left = expires &- monotonicNanos()
        appendStruct(fos_fs_lease(expires_ns: expires, count: UInt32(inos.count),
                                  lifetime_us: UInt32(min(left / 1000, UInt64(UInt32.max)))), to: &out.payload)
        for i in inos { appendStruct(i, to: &out.payload) }
        return out
    }

    /// A CREATE sent under a lease: the file gets the inode number chosen.
    func leasedCreate(_ r: Request, cred: Credentials) async throws -> Reply {
        let w = WireReader(r.payload)
        let h = try w.fixed(fos_fs_create.self)
        let name = try w.name(Int(h.name_len), exactEnd: true)
        guard members == 1, h.target_len == 0, h.rdev != 0,
              h.flags & UInt32(O_CREAT | O_EXCL) == UInt32(O_CREAT | O_EXCL) else {
            throw FSError.posix(.invalidArgument)
        }
        let reserved = leases.take(r.channelID, dir: h.dir, ino: h.rdev)
        do {
            let a = try await fs.create(parent: h.dir, name: name, mode: h.mode,
                                        ino: WantedInode(number: h.rdev, reserved: reserved), cred: cred)
            return ok(opened(a, for: cred))
        } catch {
            if reserved { leases.failed(r.channelID, ino: h.rdev) }
            throw error
        }
    }
}
