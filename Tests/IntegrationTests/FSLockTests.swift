import CFosWire
import FosCore
import FosFS
import FosFSClient
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Advisory locks (FOS_OP_FS_LOCK) on a fleet of two fs members: one client
// reaches the file's home member directly, the other through forwarding.

/// Two clients on different members and a new file homed on the first one's
/// member: `near` reaches it directly, `far` through a forward.
private func lockSetup(_ rt: FosRuntime, _ name: String) async throws -> (near: FSClient, far: FSClient, ino: UInt64) {
    let c0 = try await FSClient.connect(rt)
    let c1 = try await FSClient.connect(rt, excluding: [c0.member])
    let f = try await c0.create(parent: FSClient.rootIno, name: name)
    let (s0, s1) = (try await c0.statfs(), try await c1.statfs())
    #expect(s0.members == 2 && s0.member != s1.member)
    return Int(f.ino >> 32) % 2 == s0.member ? (c0, c1, f.ino) : (c1, c0, f.ino)
}

/// A call that may block, running on its own while the test goes on.
private final class Pending: Sendable {
    /// nil while it runs; then its errno (nil: it succeeded).
    private let result = Mutex<Int32??>(nil)

    init(_ body: @escaping @Sendable () async throws -> Void) {
        Task {
            let e = await errnoOf(body)
            self.result.withLock { $0 = .some(e) }
        }
    }

    var finished: Bool { result.withLock { $0 != nil } }

    /// Its errno once it ends (nil: success); fails the test after `limit`.
    func outcome(within limit: Duration = .seconds(10)) async throws -> Int32? {
        try await eventually("the lock call to end", timeout: limit) { result.withLock { $0 } }
    }
}

/// Long enough for a request to reach its home member and queue there.
private let settle = Duration.milliseconds(300)

@Suite("fs locks", .serialized)
struct FSLockTests {
    @Test("record locks between clients on two members: EAGAIN, GETLK, waiting, EDEADLK")
    func recordLocks() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let (near, far, ino) = try await lockSetup(try node.runtime(), "records")
            let a = RecordLockOwner.process(pid: 1111), b = RecordLockOwner.process(pid: 2222)

            try await near.setlk(ino: ino, owner: a, type: .write, start: 0, length: 100)
            #expect(await errnoOf { try await far.setlk(ino: ino, owner: b, type: .write, start: 50, length: 10) } == EAGAIN)
            #expect(await errnoOf { try await far.setlk(ino: ino, owner: b, type: .read, start: 99, length: 1) } == EAGAIN)
            #expect(try await far.getlk(ino: ino, owner: b, type: .read) == LockConflict(type: .write, start: 0, length: 100, pid: 1111))
            #expect(try await near.getlk(ino: ino, owner: a, type: .write) == nil, "one's own locks never conflict")
            try await far.setlk(ino: ino, owner: b, type: .read, start: 100, length: 0)
            #expect(await errnoOf { try await near.setlk(ino: ino, owner: a, type: .write, start: 5000, length: 1) } == EAGAIN)
            #expect(try await near.getlk(ino: ino, owner: a, type: .write, start: 200, length: 1)
                    == LockConflict(type: .read, start: 100, length: 0, pid: 2222))

            // A blocking lock (forwarded) waits for the holder's unlock.
            let waiter = Pending { try await far.setlk(ino: ino, owner: b, type: .write, start: 0, length: 10, wait: true) }
            await pause(settle)
            #expect(!waiter.finished)
            try await near.setlk(ino: ino, owner: a, type: .unlock, start: 0, length: 50)
            #expect(try await waiter.outcome() == nil)
            #expect(try await near.getlk(ino: ino, owner: a, type: .read, start: 5, length: 1)?.pid == 2222)

            // EDEADLK: a holds 50..99 and waits for b's 0..9; b asks for a's range.
            let aWaits = Pending { try await near.setlk(ino: ino, owner: a, type: .write, start: 0, length: 10, wait: true) }
            await pause(settle)
            #expect(!aWaits.finished)
            #expect(await errnoOf {
                try await far.setlk(ino: ino, owner: b, type: .write, start: 60, length: 1, wait: true)
            } == EDEADLK)
            try await far.setlk(ino: ino, owner: b, type: .unlock, start: 0, length: 0)
            #expect(try await aWaits.outcome() == nil)
            #expect(try await far.getlk(ino: ino, owner: b, type: .read) == LockConflict(type: .write, start: 0, length: 10, pid: 1111))

            // OFD locks: owned by the open file, pid -1 in reports, no deadlock detection.
            try await far.setlk(ino: ino, owner: .openFile(77), type: .read, start: 200, length: 10)
            #expect(try await near.getlk(ino: ino, owner: a, type: .write, start: 205, length: 1)?.pid == -1)
            #expect(try await node.fleets().filter { $0.fleet == "/sys/fs" }.allSatisfy { $0.restarts == 0 })
        }
    }

    @Test("flock: shared and exclusive per open file, conversion, and no meeting with record locks")
    func flocks() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let (near, far, ino) = try await lockSetup(try node.runtime(), "flocked")
            try await near.flock(ino: ino, owner: 1, operation: .write, wait: false)
            #expect(await errnoOf { try await far.flock(ino: ino, owner: 2, operation: .read, wait: false) } == EWOULDBLOCK)
            #expect(await errnoOf { try await near.flock(ino: ino, owner: 3, operation: .read, wait: false) } == EWOULDBLOCK,
                    "another open file of the same client")
            // Record locks and flock never conflict.
            try await far.setlk(ino: ino, owner: .process(pid: 2), type: .write)
            #expect(try await near.getlk(ino: ino, owner: .process(pid: 1), type: .read)?.pid == 2)
            try await far.setlk(ino: ino, owner: .process(pid: 2), type: .unlock)

            // A downgrade lets a waiting shared lock in.
            let shared = Pending { try await far.flock(ino: ino, owner: 2, operation: .read) }
            await pause(settle)
            #expect(!shared.finished)
            try await near.flock(ino: ino, owner: 1, operation: .read, wait: false)
            #expect(try await shared.outcome() == nil)
            // An upgrade that conflicts fails and, as on Linux, leaves no lock behind.
            #expect(await errnoOf { try await near.flock(ino: ino, owner: 1, operation: .write, wait: false) } == EWOULDBLOCK)
            try await far.flock(ino: ino, owner: 2, operation: .write, wait: false)
            try await far.flock(ino: ino, owner: 2, operation: .unlock)
            try await near.flock(ino: ino, owner: 1, operation: .write, wait: false)
        }
    }

    @Test("a dead client's locks and waiters go: runtime shut down, channel closed, forwarded or direct")
    func clientGoesAway() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let (near, far, ino) = try await lockSetup(try node.runtime(), "orphans")

            // The holder reaches the home member through the other member, from
            // a process presence of its own that then leaves the node.
            let leaving = try node.runtime()
            let holder = try await FSClient.connect(leaving, excluding: [near.member])
            try await holder.setlk(ino: ino, owner: .process(pid: 7), type: .write)
            try await holder.flock(ino: ino, owner: 7, operation: .write)
            let w1 = Pending { try await near.setlk(ino: ino, owner: .process(pid: 8), type: .read, wait: true) }
            let w2 = Pending { try await near.flock(ino: ino, owner: 8, operation: .read) }
            await pause(settle)
            #expect(!w1.finished && !w2.finished)
            node.retire(leaving)
            #expect(try await w1.outcome() == nil)
            #expect(try await w2.outcome() == nil)
            try await near.setlk(ino: ino, owner: .process(pid: 8), type: .unlock)

            // A holder on the home member whose channel closes.
            let direct = try await FSClient.connect(try node.runtime(), excluding: [far.member])
            try await direct.setlk(ino: ino, owner: .openFile(99), type: .write, start: 1000, length: 1)
            let w3 = Pending { try await far.setlk(ino: ino, owner: .openFile(5), type: .write, start: 1000, length: 1, wait: true) }
            await pause(settle)
            #expect(!w3.finished)
            await direct.close()
            #expect(try await w3.outcome() == nil)

            // A waiter whose client leaves is removed, never granted later.
            let quitting = try node.runtime()
            let quitter = try await FSClient.connect(quitting, excluding: [near.member])
            let w4 = Pending { try await quitter.setlk(ino: ino, owner: .process(pid: 10), type: .write, start: 1000, length: 1, wait: true) }
            await pause(settle)
            #expect(!w4.finished)
            node.retire(quitting)
            await pause(settle)
            try await far.setlk(ino: ino, owner: .openFile(5), type: .unlock)
            try await near.setlk(ino: ino, owner: .process(pid: 11), type: .write, start: 1000, length: 1)
        }
    }

    @Test("a member restart: a dead member's clients lose what they held elsewhere; the locks it homed are gone")
    func memberRestart() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let (near, far, ino) = try await lockSetup(try node.runtime(), "restarts")
            let (home, other) = (try await near.statfs().member, try await far.statfs().member)
            // The file itself must survive the kill -9 of its home member.
            try await near.fsync(ino: ino)
            try await near.fsync(ino: FSClient.rootIno)
            try await far.setlk(ino: ino, owner: .process(pid: 20), type: .write)
            let w = Pending { try await near.setlk(ino: ino, owner: .process(pid: 21), type: .write, wait: true) }
            await pause(settle)
            #expect(!w.finished)
            // The forwarding member dies: its client's channel with it. Its next
            // incarnation announces itself and the home member drops the old one's clients.
            let k1 = try await node.fosctl(["kill", "/sys/fs#\(other)"])
            #expect(k1.status == 0, "\(k1.stderr)")
            #expect(try await w.outcome(within: .seconds(15)) == nil)
            // The home member dies: pid 21's lock goes with it (memory only).
            let k2 = try await node.fosctl(["kill", "/sys/fs#\(home)"])
            #expect(k2.status == 0, "\(k2.stderr)")
            let fresh = try await FSClient.connect(try node.runtime())
            try await eventually("the home member back, without locks", timeout: .seconds(15)) { () -> Bool? in
                try await fresh.setlk(ino: ino, owner: .process(pid: 22), type: .write)
                return true
            }
        }
    }

    @Test("hundreds of forwarded waiters do not hold up the rest of their member's traffic to the home member")
    func manyWaiters() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let rt = try node.runtime()
            let (near, far, ino) = try await lockSetup(rt, "crowded")
            try await far.setlk(ino: ino, owner: .process(pid: 1), type: .write)
            // More waiters than a channel carries in flight (256), on two channels
            // of the forwarding member (each client's own channel has that limit too).
            let far2 = try await FSClient.connect(try node.runtime(), excluding: [near.member])
            let waiters = (0..<300).map { i in
                Pending { try await (i % 2 == 0 ? far : far2).setlk(ino: ino, owner: .process(pid: Int32(100 + i)), type: .read, wait: true) }
            }
            await pause(.seconds(1))
            #expect(waiters.allSatisfy { !$0.finished })
            // The unlock travels on the same peer channel as the waits.
            let t0 = ContinuousClock.now
            try await far.setlk(ino: ino, owner: .process(pid: 1), type: .unlock)
            #expect(ContinuousClock.now - t0 < .seconds(3))
            for w in waiters { #expect(try await w.outcome(within: .seconds(20)) == nil) }
            #expect(try await near.getlk(ino: ino, owner: .process(pid: 2), type: .write)?.type == .read)
        }
    }

    @Test("malformed lock requests get EINVAL, EOVERFLOW or EPROTO; internal lock ops are refused; members keep serving")
    func malformed() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let rt = try node.runtime()
            let (near, _, ino) = try await lockSetup(rt, "target")
            func bytes<T>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
            func lock(_ change: (inout fos_fs_lock) -> Void) -> [UInt8] {
                var l = fos_fs_lock(ino: ino, start: 0, len: 0, owner: 1, pid: 1, type: UInt16(FOS_FS_LOCK_WRITE),
                                    kind: UInt8(FOS_FS_LOCK_POSIX), command: UInt8(FOS_FS_LOCK_SET), wait_ms: 0, reserved: 0)
                change(&l)
                return bytes(l)
            }
            // Round robin: each request goes to one of the two members, directly or forwarded.
            func call(_ p: [UInt8], op: UInt32 = FOS_OP_FS_LOCK) async throws -> Int32 {
                try await rt.call(name: "/sys/fs", opcode: UInt16(op), payload: p).status
            }
            for _ in 0..<2 {
                #expect(try await call([]) == EPROTO)
                #expect(try await call(Array(lock { _ in }.dropLast())) == EPROTO)
                #expect(try await call(lock { _ in } + [0]) == EPROTO)
                #expect(try await call(lock { $0.type = 3 }) == EINVAL)
                #expect(try await call(lock { $0.kind = 0 }) == EINVAL)
                #expect(try await call(lock { $0.kind = 4 }) == EINVAL)
                #expect(try await call(lock { $0.command = 0 }) == EINVAL)
                #expect(try await call(lock { $0.command = 9 }) == EINVAL)
                #expect(try await call(lock { $0.reserved = 1 }) == EINVAL)
                #expect(try await call(lock { $0.start = -1 }) == EINVAL)
                #expect(try await call(lock { $0.start = 5; $0.len = -6 }) == EINVAL)
                #expect(try await call(lock { $0.start = Int64.max; $0.len = 2 }) == EOVERFLOW)
                #expect(try await call(lock { $0.pid = 0 }) == EINVAL)
                #expect(try await call(lock { $0.kind = UInt8(FOS_FS_LOCK_OFD) }) == EINVAL, "OFD with a pid")
                #expect(try await call(lock { $0.kind = UInt8(FOS_FS_LOCK_FLOCK); $0.pid = 0; $0.len = 1 }) == EINVAL)
                #expect(try await call(lock { $0.command = UInt8(FOS_FS_LOCK_GET); $0.type = UInt16(FOS_FS_LOCK_UNLOCK) }) == EINVAL)
                #expect(try await call(lock { $0.command = UInt8(FOS_FS_LOCK_GET); $0.kind = UInt8(FOS_FS_LOCK_FLOCK); $0.pid = 0 }) == EINVAL)
                #expect(try await call(lock { $0.wait_ms = 5 }) == EINVAL)
                #expect(try await call(lock { $0.ino = 0xdead_beef_0000_0001 }) == ESTALE)
                #expect(try await call(lock { $0.ino = 0xdead_bee0_0000_0001 }) == ESTALE)
            }
            // The ops peers use are not reachable from outside, alone or as a FORWARD.
            #expect(try await call([], op: FOS_OP_FS_LOCK_FORWARDED) == ENOSYS)
            #expect(try await call(bytes(fos_fs_lock_origin()), op: FOS_OP_FS_LOCK_DROP) == ENOSYS)
            var fwd = bytes(fos_fs_forward(opcode: UInt16(FOS_OP_FS_LOCK_DROP), ngroups: 0, uid: 0, gid: 0, hops: 1, pid: 0))
            fwd += bytes(fos_fs_lock_origin())
            #expect(try await call(fwd, op: FOS_OP_FS_FORWARD) == EPERM)
            var rng = SystemRandomNumberGenerator()
            for len in [1, 8, 24, 47, 48, 48, 48, 48, 49, 100] {
                _ = try await call((0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) })
            }
            // Still serving, never restarted.
            try await near.setlk(ino: ino, owner: .process(pid: 3), type: .write, start: 0, length: 1)
            #expect(try await near.getlk(ino: ino, owner: .process(pid: 4), type: .read)?.pid == 3)
            #expect(try await node.fleets().filter { $0.fleet == "/sys/fs" }.allSatisfy { $0.restarts == 0 })
        }
    }
}
