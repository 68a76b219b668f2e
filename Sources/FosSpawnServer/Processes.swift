import CFosSys
import CFosWire
import FosCore
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The processes a spawn server started: its table, reaping and waiting.
///
/// Children are watched through pidfds: SIGCHLD is blocked in every thread
/// and read from a signalfd that wakes the event loop, which then reaps with
/// waitid(P_PIDFD) (so only our own spawns, never a stray child).
final class ProcessTable: Sendable {
    struct Entry: Sendable {
        var gpid: UInt64
        var pid: Int32
        var pidfd: CInt
        var uid: UInt32
        var command: String
        var started: Date
        var state: UInt32 = UInt32(FOS_SPAWN_RUNNING)
        var code: Int32 = 0
        var ended: Date?
        /// A pidfd of the caller it is tied to (-1: none), in `ties`.
        var tie: CInt = -1
    }

    struct State {
        var entries: [UInt64: Entry] = [:]
        /// Per process: waiting WAITs, each resumed exactly once — by the
        /// reaper or by its timer, whichever takes it out of here first.
        var waiters: [UInt64: [(ticket: UInt64, resume: CheckedContinuation<Void, Never>)]] = [:]
        var nextTicket: UInt64 = 1
        var next: UInt32 = 1
    }

    let state = Mutex(State())
    let nodeTag: UInt64
    /// Exited processes kept for WAIT and ps, oldest dropped first.
    static let keepEnded = 1024
    static let maxRunningPerUID = 4096

    /// Epoll set of the callers that running processes are tied to; its
    /// own descriptor wakes the event loop when one of them ends.
    let ties: CInt

    init(node: UInt64) {
        nodeTag = UInt64(UInt32(truncatingIfNeeded: node ^ (node >> 32))) << 32
        ties = fos_sys_epoll_create()
    }

    /// Kills `gpid` (SIGKILL) when the process behind `callerPidfd` ends
    /// while it runs. Takes the pidfd.
    func tie(_ gpid: UInt64, to callerPidfd: CInt) {
        state.withLock { s in
            guard ties >= 0, s.entries[gpid]?.state == UInt32(FOS_SPAWN_RUNNING) else {
                close(callerPidfd)
                return
            }
            s.entries[gpid]?.tie = callerPidfd
            _ = fos_sys_epoll_add(ties, callerPidfd, UInt32(FOS_EPOLLIN), gpid)
        }
    }

    private func untie(_ s: inout State, _ gpid: UInt64) {
        guard let fd = s.entries[gpid]?.tie, fd >= 0 else { return }
        _ = fos_sys_epoll_del(ties, fd)
        close(fd)
        s.entries[gpid]?.tie = -1
    }

    /// Callers that ended: their tied processes die with them. Loop thread.
    func checkTies() {
        var data = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        let n = fos_sys_epoll_wait(ties, &data, &events, 64, 0)
        guard n > 0 else { return }
        state.withLock { s in
            for gpid in data[0..<Int(n)] {
                if let e = s.entries[gpid], e.state == UInt32(FOS_SPAWN_RUNNING) { _ = fos_sys_pidfd_kill(e.pidfd, SIGKILL) }
                untie(&s, gpid)
            }
        }
    }

    func add(pid: Int32, pidfd: CInt, uid: UInt32, command: String) -> UInt64 {
        state.withLock { s in
            let gpid = nodeTag | UInt64(s.next)
            s.next = s.next == UInt32.max ? 1 : s.next + 1
            s.entries[gpid] = Entry(gpid: gpid, pid: pid, pidfd: pidfd, uid: uid, command: command, started: Date())
            return gpid
        }
    }

    func running(uid: UInt32) -> Int {
        state.withLock { s in s.entries.values.filter { $0.uid == uid && $0.state == UInt32(FOS_SPAWN_RUNNING) }.count }
    }

    func entry(_ gpid: UInt64) -> Entry? { state.withLock { $0.entries[gpid] } }

    /// Reaps every child that ended and wakes its waiters. Loop thread.
    func reap() {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            var woken: [CheckedContinuation<Void, Never>] = []
            for (gpid, e) in s.entries where e.state == UInt32(FOS_SPAWN_RUNNING) {
                var code: Int32 = 0, signaled: Int32 = 0
                guard fos_sys_pidfd_wait(e.pidfd, &code, &signaled) == 1 else { continue }
                close(e.pidfd)
                untie(&s, gpid)
                s.entries[gpid]?.pidfd = -1
                s.entries[gpid]?.state = UInt32(signaled != 0 ? FOS_SPAWN_SIGNALED : FOS_SPAWN_EXITED)
                s.entries[gpid]?.code = code
                s.entries[gpid]?.ended = Date()
                woken += (s.waiters.removeValue(forKey: gpid) ?? []).map(\.resume)
            }
            let ended = s.entries.values.filter { $0.state != UInt32(FOS_SPAWN_RUNNING) }
            if ended.count > ProcessTable.keepEnded {
                for e in ended.sorted(by: { $0.ended! < $1.ended! }).prefix(ended.count - ProcessTable.keepEnded / 2) {
                    s.entries[e.gpid] = nil
                }
            }
            return woken
        }
        for c in woken { c.resume() }
    }

    /// Suspends until `gpid` ends or `wait` passes.
    func waitForEnd(_ gpid: UInt64, wait: Duration) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let ticket = state.withLock { s -> UInt64? in
                guard s.entries[gpid]?.state == UInt32(FOS_SPAWN_RUNNING) else { return nil }
                let t = s.nextTicket
                s.nextTicket += 1
                s.waiters[gpid, default: []].append((t, c))
                return t
            }
            guard let ticket else { return c.resume() }
            Task {
                try? await Task.sleep(for: wait)
                let mine = self.state.withLock { s -> CheckedContinuation<Void, Never>? in
                    guard let k = s.waiters[gpid]?.firstIndex(where: { $0.ticket == ticket }) else { return nil }
                    return s.waiters[gpid]!.remove(at: k).resume
                }
                mine?.resume()
            }
        }
    }

    /// SIGTERM to every running process, SIGKILL to those still there after
    /// 2 s, then exit.
    func endAll() -> Never {
        let running = state.withLock { $0.entries.values.filter { $0.state == UInt32(FOS_SPAWN_RUNNING) } }
        for e in running { _ = fos_sys_pidfd_kill(e.pidfd, SIGTERM) }
        let deadline = monotonicNanos() + 2_000_000_000
        while monotonicNanos() < deadline {
            reap()
            if state.withLock({ s in !s.entries.values.contains { $0.state == UInt32(FOS_SPAWN_RUNNING) } }) { exit(0) }
            usleep(10_000)
        }
        for e in state.withLock({ $0.entries.values.filter { $0.state == UInt32(FOS_SPAWN_RUNNING) } }) {
            _ = fos_sys_pidfd_kill(e.pidfd, SIGKILL)
        }
        exit(0)
    }
}
