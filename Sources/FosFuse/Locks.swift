import CFosFuse
import FosCore
import FosFS
import FosFSClient
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Record locks and flock through the fleet (FOS_OP_FS_LOCK), owned by the
/// kernel's lock_owner; all through one client (`lockClient`), since the
/// fleet keeps locks per client channel.
extension Daemon {
    private func lockType(_ t: Int32) -> LockType? {
        switch t {
        case Int32(F_RDLCK): .read
        case Int32(F_WRLCK): .write
        case Int32(F_UNLCK): .unlock
        default: nil
        }
    }

    /// A POSIX lock's pid for the fleet (which wants one > 0): the kernel
    /// sends 0 with an unlock.
    private func lockPid(_ r: Req, _ l: fosfuse_lock) -> Int32 {
        if l.pid > 0 { return l.pid }
        var c = fosfuse_ctx()
        fosfuse_req_ctx(r.raw, &c)
        return max(1, c.pid)
    }

    func getlk(_ r: Req, ino: UInt64, owner: UInt64, _ l: fosfuse_lock) {
        guard let t = lockType(l.type), t != .unlock else { return replyErr(r, EINVAL) }
        let pid = lockPid(r, l)
        serve(r, asCaller: false) { r in
            var out = l
            if let c = try await self.lockClient.getlk(ino: ino, owner: .processOwner(owner, pid: pid), type: t,
                                                       start: l.start, length: l.len) {
                out = fosfuse_lock(type: Int32(c.type == .read ? F_RDLCK : F_WRLCK), pid: c.pid, start: c.start, len: c.length)
            } else {
                out.type = Int32(F_UNLCK)
            }
            fosfuse_reply_lock(r.raw, &out)
        }
    }

    func setlk(_ r: Req, ino: UInt64, owner: UInt64, _ l: fosfuse_lock, wait: Bool) {
        guard let t = lockType(l.type) else { return replyErr(r, EINVAL) }
        let pid = lockPid(r, l)
        if t != .unlock { files.locked(ino: ino, owner: owner) }
        waitable(r, wait: wait) {
            try await self.lockClient.setlk(ino: ino, owner: .processOwner(owner, pid: pid), type: t, start: l.start,
                                            length: l.len, wait: wait)
        }
    }

    func flock(_ r: Req, ino: UInt64, owner: UInt64, op: Int32) {
        let t: LockType
        switch op & ~LOCK_NB {
        case LOCK_SH: t = .read
        case LOCK_EX: t = .write
        case LOCK_UN: t = .unlock
        default: return replyErr(r, EINVAL)
        }
        let wait = op & LOCK_NB == 0 && t != .unlock
        waitable(r, wait: wait) {
            try await self.lockClient.flock(ino: ino, owner: owner, operation: t, wait: wait)
        }
    }

    /// A lock request, cancelled if the kernel interrupts a waiting one
    /// (the caller got a signal): it ends with EINTR.
    private func waitable(_ r: Req, wait: Bool, _ body: @escaping @Sendable () async throws -> Void) {
        // Registered before the task starts: the request is freed once answered.
        let token = wait ? waits.token() : 0
        if token != 0 { fosfuse_on_interrupt(r.raw, token) }
        let task = rt.loop.spawn {
            do {
                try await body()
                fosfuse_reply_err(r.raw, 0)
            } catch FosError.remote(let e) where e == .timedOut {
                fosfuse_reply_err(r.raw, EINTR)
            } catch {
                fosfuse_reply_err(r.raw, Task.isCancelled ? EINTR : Daemon.errno(of: error))
            }
            if token != 0 { self.waits.ended(token) }
        }
        if token != 0 { waits.started(token, task) }
    }
}

/// Requests that wait (F_SETLKW, flock) by token, so that an interrupt from
/// the kernel cancels the task that serves it. The token names the task and
/// does not keep it: an interrupt may come before the task exists (it was
/// registered first) or after the answer (then it is ignored).
final class Interruptible: Sendable {
    private struct State {
        var next: UInt64 = 1
        var pending: Set<UInt64> = []
        var cancelledEarly: Set<UInt64> = []
        var endedEarly: Set<UInt64> = []
        var live: [UInt64: Task<Void, Never>] = [:]
    }
    private let state = Mutex(State())

    func token() -> UInt64 {
        state.withLock { s in
            defer { s.next += 1 }
            s.pending.insert(s.next)
            return s.next
        }
    }

    func started(_ token: UInt64, _ task: Task<Void, Never>) {
        let cancel = state.withLock { s -> Bool in
            s.pending.remove(token)
            let c = s.cancelledEarly.remove(token) != nil
            if s.endedEarly.remove(token) == nil { s.live[token] = task }
            return c
        }
        if cancel { task.cancel() }
    }

    func ended(_ token: UInt64) {
        state.withLock { s in
            if s.live.removeValue(forKey: token) == nil && s.pending.contains(token) { s.endedEarly.insert(token) }
        }
    }

    func interrupt(_ token: UInt64) {
        let t = state.withLock { s -> Task<Void, Never>? in
            if let t = s.live[token] { return t }
            if s.pending.contains(token) { s.cancelledEarly.insert(token) }
            return nil
        }
        t?.cancel()
    }
}
