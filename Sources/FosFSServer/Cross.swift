import CFosWire
import FosBlock
import FosCore
import FosFS
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Cross-member transactions, the fleet half (the file-system half and the
/// crash-safety argument are in FosFS/Cross.swift).
///
/// Disk locks at the blk server order everything: lock `m` is held by
/// member m for its whole life (so "lock m is free" means "member m is not
/// running", reliably: the blk server frees it only when m's channel closed
/// and m's last I/O completed), and `fleetLock` is held while a member
/// mounts or coordinates, or recovers from a lost coordinator.
enum Loan: Sendable, Equatable {
    case none
    /// Lent to `coordinator` over `channel`; `ready` once quiesced.
    case lent(channel: UInt64, coordinator: Int, ready: Bool)
    /// The coordinator's channel closed while lent: our opLock is (once
    /// `ready`) still held.
    case orphaned(coordinator: Int, ready: Bool)
}

extension FSService {
    static let fleetLock = FOS_BLK_LOCKS - 1
    static func slotLock(_ m: Int) -> UInt32 { UInt32(m) }

    // MARK: coordinator

    /// Runs a request that changes several members' state as one
    /// cross-member transaction coordinated by this member.
    func coordinate(op: UInt16, payload: [UInt8], cred: Credentials) async -> Reply {
        guard members > 1 else { return Reply(status: EXDEV) }
        // Disk locks belong to our one blk channel: one holder per member at a time.
        await diskLockUsers.lock()
        defer { diskLockUsers.unlock() }
        do {
            guard try await blk.lock(Self.fleetLock, wait: .seconds(30)) else { return Reply(status: EAGAIN) }
        } catch {
            return Reply(status: EIO)
        }
        // A loan orphaned by a dead coordinator still holds our opLock: the
        // fleet lock is ours now, so recover here (the recovery task that
        // waits for it then finds nothing to do).
        if case .orphaned(let dead, _) = loan.withLock({ $0 }), await quiesced(after: dead) {
            do {
                try await recover(from: dead)
            } catch {
                fatal("recovery from member \(dead) failed: \(error)")
                return Reply(status: EIO)
            }
            loan.withLock { $0 = .none }
            fs.resume()
        }
        var lent: [(member: Int, channel: Channel)] = []
        var deadSlots: [Int] = []
        var reply = Reply(status: EAGAIN)
        var changes = FileSystem.CrossChanges()
        do {
            for m in 0..<members where m != member {
                if let ch = try await acquire(m) {
                    lent.append((m, ch))
                } else {
                    deadSlots.append(m)
                }
            }
            do {
                let (outcome, ch) = try await fs.crossMember { try await self.dispatch(op: op, WireReader(payload), cred: cred) }
                changes = ch
                switch outcome {
                case .success(let r): reply = r
                case .failure(let e): reply = Reply(status: status(of: e))
                }
            } catch {
                // This member failed inside the transaction: whether it
                // committed is for the lenders to find out (they recover as
                // from a lost coordinator once we are gone).
                fatal("cross-member transaction: \(error)")
                return Reply(status: EIO)
            }
        } catch {
            say("member \(member): cross-member transaction not started: \(error)")
        }
        let encoded = Self.encode(changes)
        for (m, ch) in lent {
            // On the channel of the loan: a lender that died since has
            // nothing to take back (its next incarnation mounts afresh).
            guard !ch.isClosed else { continue }
            do {
                _ = try await rt.call(ch, opcode: UInt16(FOS_OP_FS_RETURN), payload: encoded, timeout: .seconds(30)).checked()
            } catch FosError.peerGone {
                continue
            } catch {
                // It recovers on its own when it sees our channel close; a
                // member that cannot take the changes in restarts itself.
                say("member \(member): member \(m) did not take back its loan: \(error)")
            }
        }
        for m in deadSlots { try? await blk.unlock(Self.slotLock(m)) }
        try? await blk.unlock(Self.fleetLock)
        return reply
    }

    /// Gets member `m` out of the way: the channel of the loan when it lent
    /// itself to us; nil when it is not running (we then hold its slot lock and have
    /// replayed its journal: nothing of its is in memory anywhere, and its
    /// next incarnation waits for the fleet lock before mounting). A member
    /// between the two — dying, or up but not yet registered — is asked
    /// again until one of them holds.
    func acquire(_ m: Int) async throws -> Channel? {
        var p = [UInt8]()
        appendStruct(UInt32(member), to: &p)
        let deadline = ContinuousClock.now + .seconds(20)
        while true {
            if try await blk.lock(Self.slotLock(m), wait: nil) {
                _ = try await FileSystem.replaySlot(device: blk, slot: m)
                return nil
            }
            do {
                let ch = try await peer(m, wait: .milliseconds(200))
                _ = try await rt.call(ch, opcode: UInt16(FOS_OP_FS_LEND), payload: p, timeout: .seconds(30)).checked()
                return ch
            } catch FosError.remote(let e) {
                throw FosError.remote(e)  // it answered: no
            } catch {
                peers.withLock { _ = $0.removeValue(forKey: m) }
                if ContinuousClock.now >= deadline { throw error }
                try await Task.sleep(for: .milliseconds(5))
            }
        }
    }

    // MARK: lender

    func handleLend(_ r: Request) async -> Reply {
        guard isPeer(r) else { return Reply(status: EPERM) }
        guard r.payload.count == 4, let c = r.payload.withUnsafeBytes({ loadStruct(UInt32.self, from: $0) }),
              Int(c) < members, Int(c) != member else { return Reply(status: EPROTO) }
        let coordinator = Int(c)
        let previous = loan.withLock { l -> Loan in
            let old = l
            if case .none = l { l = .lent(channel: r.channelID, coordinator: coordinator, ready: false) }
            return old
        }
        switch previous {
        case .none:
            do {
                try await fs.lend()
            } catch {
                fatal("cannot lend: \(error)")
                return Reply(status: EIO)
            }
            // A coordinator that died meanwhile left the loan orphaned; its
            // recovery waits for this.
            loan.withLock { l in
                switch l {
                case .lent(r.channelID, coordinator, false): l = .lent(channel: r.channelID, coordinator: coordinator, ready: true)
                case .orphaned(let c, false): l = .orphaned(coordinator: c, ready: true)
                default: break
                }
            }
            return Reply()
        case .orphaned(let dead, _):
            // Still quiesced for a coordinator that died; the new one holds the
            // fleet lock, under which we recover before lending on.
            guard await quiesced(after: dead) else { return Reply(status: EAGAIN) }
            do {
                try await recover(from: dead)
            } catch {
                fatal("cannot recover from member \(dead)'s transaction: \(error)")
                return Reply(status: EIO)
            }
            loan.withLock { $0 = .lent(channel: r.channelID, coordinator: coordinator, ready: true) }
            return Reply()
        case .lent:
            return Reply(status: EBUSY)
        }
    }

    func handleReturn(_ r: Request) async -> Reply {
        guard isPeer(r) else { return Reply(status: EPERM) }
        let mine = loan.withLock { l -> Bool in
            if case .lent(r.channelID, _, true) = l { return true }
            return false
        }
        guard mine else { return Reply(status: EPERM) }
        guard let changes = Self.decodeChanges(r.payload) else { return Reply(status: EPROTO) }
        do {
            try await fs.absorb(changes)
        } catch {
            fatal("cannot take back the loan: \(error)")
            return Reply(status: EIO)
        }
        loan.withLock { $0 = .none }
        fs.resume()
        return Reply()
    }

    /// A channel closed: if it was our coordinator's, recover under the
    /// fleet lock once the blk server has let the coordinator's lock go.
    func channelClosed(_ id: UInt64) {
        let dead = loan.withLock { l -> Int? in
            guard case .lent(id, let c, let ready) = l else { return nil }
            l = .orphaned(coordinator: c, ready: ready)
            return c
        }
        guard let dead else { return }
        say("member \(member): coordinator \(dead) went away during a cross-member transaction; recovering")
        _ = rt.loop.spawn {
            await self.diskLockUsers.lock()
            defer { self.diskLockUsers.unlock() }
            do {
                guard try await self.blk.lock(Self.fleetLock, wait: .seconds(3600)) else { return }
                if await self.quiesced(after: dead) {
                    try await self.recover(from: dead)
                    self.loan.withLock { $0 = .none }
                    self.fs.resume()
                }
                try await self.blk.unlock(Self.fleetLock)
            } catch {
                self.fatal("recovery from member \(dead) failed: \(error)")
            }
        }
    }

    /// Waits until an orphaned loan is quiesced (the LEND that started it has
    /// finished); false if the loan is no longer orphaned by `dead`.
    func quiesced(after dead: Int) async -> Bool {
        while true {
            let s = loan.withLock { $0 }
            guard case .orphaned(dead, let ready) = s else { return false }
            if ready { return true }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    /// With the fleet lock held and our opLock still lent: replays the dead
    /// coordinator's journal slot unless its next incarnation is up (and did
    /// that itself), then forgets everything cached.
    func recover(from dead: Int) async throws {
        if try await blk.lock(Self.slotLock(dead), wait: nil) {
            _ = try await FileSystem.replaySlot(device: blk, slot: dead)
            try await blk.unlock(Self.slotLock(dead))
        }
        try await fs.absorb(nil)
    }

    func isPeer(_ r: Request) -> Bool {
        r.mailbox == internalMailbox.load(ordering: .acquiring) && r.sender.fleet == fleet
    }

    // MARK: wire

    static func encode(_ c: FileSystem.CrossChanges) -> [UInt8] {
        var p = [UInt8]()
        appendStruct(UInt32(c.deltas.count), to: &p)
        for d in c.deltas {
            appendStruct(UInt32(d.ag), to: &p)
            appendStruct(UInt32(0), to: &p)
            appendStruct(d.freeBlocks, to: &p)
            appendStruct(d.freeInodes, to: &p)
        }
        for b in c.blocks { appendStruct(b, to: &p) }
        return p
    }

    static func decodeChanges(_ p: [UInt8]) -> FileSystem.CrossChanges? {
        p.withUnsafeBytes { b -> FileSystem.CrossChanges? in
            guard let n = loadStruct(UInt32.self, from: b), n <= 1 << 16 else { return nil }
            var at = 4
            var c = FileSystem.CrossChanges()
            for _ in 0..<Int(n) {
                guard let ag = loadStruct(UInt32.self, from: b, at: at),
                      let db = loadStruct(Int64.self, from: b, at: at + 8),
                      let di = loadStruct(Int64.self, from: b, at: at + 16) else { return nil }
                c.deltas.append(.init(ag: Int(ag), freeBlocks: db, freeInodes: di))
                at += 24
            }
            guard (b.count - at) % 8 == 0 else { return nil }
            while at < b.count {
                c.blocks.append(loadStruct(UInt64.self, from: b, at: at)!)
                at += 8
            }
            return c
        }
    }
}
