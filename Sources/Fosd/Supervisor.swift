import CFosSys
import CFosWire
import FosCore
import Foundation
import SystemPackage

/// A fleet as fosd runs it: a name, an executable, a member count, and the
/// key of its internal mailboxes.
final class Fleet {
    let name: String
    let executable: String
    let count: Int
    let env: [String: String]
    let key = Capability.random()
    init(name: String, executable: String, count: Int, env: [String: String]) {
        self.name = name
        self.executable = executable
        self.count = count
        self.env = env
    }
}

final class Member {
    let fleet: Fleet
    let index: Int
    let core: Int32
    var pid: Int32 = 0
    var pidfd: CInt = -1
    var restarts = 0
    var startedAt: UInt64 = 0
    var quickDeaths = 0
    var restartAt: UInt64?
    var lastExit: String?
    var failed: String?
    weak var conn: Conn?
    init(fleet: Fleet, index: Int, core: Int32) {
        self.fleet = fleet
        self.index = index
        self.core = core
    }
    var executable: String { fleet.executable }
    var label: String { "\(fleet.name)#\(index)" }
}

/// Starts, pins and watches (pidfd) every member; restarts the dead.
final class Supervisor {
    unowned let node: Node
    var fleets: [Fleet] = []
    var members: [Member] = []

    init(node: Node) {
        self.node = node
        let cores = Int(fos_sys_cpu_count())
        var k = 0
        for spec in node.config.fleets {
            let f = Fleet(name: spec.name, executable: spec.executable, count: spec.count, env: spec.env)
            fleets.append(f)
            for i in 0..<spec.count {
                // Space multiplexing: spread members over the cores.
                // The k-th CPU fosd itself may use (it may run inside a cpuset).
                let cpu = node.config.pin ? fos_sys_nth_allowed_cpu(Int32(k % cores)) : -1
                members.append(Member(fleet: f, index: i, core: cpu >= 0 ? cpu : -1))
                k += 1
            }
        }
    }

    func startAll() throws {
        for m in members {
            guard FileManager.default.isExecutableFile(atPath: m.executable) else {
                throw NodeError("fleet \(m.fleet.name): \(m.executable) is not an executable file")
            }
        }
        for (i, m) in members.enumerated() { start(m, index: i) }
        node.writeMemberList()
    }

    func start(_ m: Member, index: Int) {
        var env = ProcessInfo.processInfo.environment
        env["FOS_RUNTIME"] = node.config.runtimeDir
        env["FOS_STATE"] = node.config.stateDir
        env["FOS_FLEET"] = m.fleet.name
        env["FOS_MEMBER"] = String(m.index)
        env.merge(m.fleet.env) { _, new in new }
        if m.fleet.name == "/sys/name" {
            // Names at or under a fleet's name belong to that fleet alone.
            env["FOS_FLEETS"] = fleets.map(\.name).joined(separator: ",")
        }
        let argv = [m.executable]
        let envp = env.map { "\($0.key)=\($0.value)" }
        var pidfd: CInt = -1
        let pid = withCStrings(argv) { a in
            withCStrings(envp) { e in
                fos_sys_spawn(m.executable, a, e, m.core, nil, 0, &pidfd)
            }
        }
        if pid < 0 {
            m.failed = "spawn: \(Errno(rawValue: -pid))"
            m.restartAt = monotonicNanos() + 1_000_000_000
            log("\(m.label): cannot start \(m.executable): \(Errno(rawValue: -pid))")
            return
        }
        m.pid = pid
        m.pidfd = pidfd
        m.startedAt = monotonicNanos()
        m.failed = nil
        _ = fos_sys_epoll_add(node.ep, pidfd, UInt32(FOS_EPOLLIN), Tag.make(.pidfd, UInt64(index)))
    }

    func exited(index: Int) {
        guard index < members.count else { return }
        let m = members[index]
        guard m.pid > 0 else { return }
        let st = fos_sys_reap(m.pid, 1)
        if st == -EAGAIN { return }
        _ = fos_sys_epoll_del(node.ep, m.pidfd)
        closeFD(m.pidfd)
        m.pidfd = -1
        let how: String
        if st >= 0 && (st & 0x7f) == 0 {
            how = "exit \((st >> 8) & 0xff)"
        } else if st >= 0 {
            how = "signal \(st & 0x7f)"
        } else {
            how = "unknown"
        }
        m.lastExit = how
        let lived = monotonicNanos() - m.startedAt
        let oldPid = m.pid
        m.pid = 0
        if node.stopping { return }
        // A member that keeps dying at once is restarted with a growing delay.
        m.quickDeaths = lived < 1_000_000_000 ? m.quickDeaths + 1 : 0
        let delay: UInt64 = m.quickDeaths >= 3 ? min(UInt64(m.quickDeaths - 2), 10) * 1_000_000_000 : 0
        log("\(m.label) (pid \(oldPid)) ended: \(how); restarting\(delay > 0 ? " in \(delay / 1_000_000_000)s" : "")")
        m.restarts += 1
        m.restartAt = monotonicNanos() + delay
        tick()
    }

    /// Restarts members whose time has come.
    func tick() {
        guard !node.stopping else { return }
        let now = monotonicNanos()
        var changed = false
        for (i, m) in members.enumerated() where m.pid == 0 {
            if let t = m.restartAt, t <= now {
                m.restartAt = nil
                start(m, index: i)
                changed = true
            }
        }
        if changed { node.writeMemberList() }
    }

    func nextTimerMs() -> Int32 {
        if node.stopping {
            return 50
        }
        let now = monotonicNanos()
        var next: UInt64 = .max
        for m in members { if let t = m.restartAt { next = min(next, t) } }
        if next == .max { return -1 }
        return next <= now ? 0 : Int32((next - now) / 1_000_000 + 1)
    }

    var stopDeadline: UInt64 = 0
    /// Fleets stopped first, each alone, before the rest are told: the file
    /// system unmounts (commit, checkpoint, flush) through the block server,
    /// which must still be there.
    static let stopFirst: Set<String> = ["/sys/fs"]
    var firstStageDone = false

    func stopAll() {
        let early = members.filter { Supervisor.stopFirst.contains($0.fleet.name) && $0.pid > 0 }
        if early.isEmpty {
            stopRest()
            return
        }
        stopDeadline = monotonicNanos() + 6_000_000_000
        for m in early { _ = fos_sys_pidfd_kill(m.pidfd, SIGTERM) }
    }

    private func stopRest() {
        firstStageDone = true
        node.broadcastShutdown()
        stopDeadline = monotonicNanos() + 3_000_000_000
        for m in members where m.pid > 0 { _ = fos_sys_pidfd_kill(m.pidfd, SIGTERM) }
    }

    var allGone: Bool {
        if !firstStageDone {
            let early = members.filter { Supervisor.stopFirst.contains($0.fleet.name) && $0.pid > 0 }
            if !early.isEmpty && monotonicNanos() <= stopDeadline { return false }
            if !early.isEmpty {
                log("\(early.map(\.label).joined(separator: ", ")) did not stop in time: killing")
                for m in early { kill(m) }
            }
            stopRest()
        }
        if members.allSatisfy({ $0.pid == 0 }) { return true }
        if monotonicNanos() > stopDeadline {
            for m in members where m.pid > 0 { kill(m) }
            return true
        }
        return false
    }

    private func kill(_ m: Member) {
        _ = fos_sys_pidfd_kill(m.pidfd, SIGKILL)
        // Never block here: a member stuck in the kernel (D state)
        // must not keep the node from stopping; init reaps it later.
        _ = fos_sys_reap(m.pid, 1)
        m.pid = 0
    }

    func member(pid: Int32) -> Member? { members.first { $0.pid == pid && pid > 0 } }

    /// "FLEET#i", "FLEET/i", "FLEET" (its first live member) or a pid.
    func find(_ spec: String) -> Member? {
        if let pid = Int32(spec) { return member(pid: pid) }
        for sep in ["#", "/"] {
            if let r = spec.range(of: sep, options: .backwards), let i = Int(spec[r.upperBound...]) {
                let name = String(spec[..<r.lowerBound])
                if let m = members.first(where: { $0.fleet.name == name && $0.index == i }) { return m }
            }
        }
        return members.first { $0.fleet.name == spec && $0.pid > 0 }
    }

    func memberInfos() -> [MemberInfo] {
        members.map { m in
            let s = m.conn?.stats?.pointee
            let state = m.pid > 0 ? "running" : (m.failed != nil ? "failed" : "restarting")
            return MemberInfo(fleet: m.fleet.name, index: m.index, member: m.label,
                              node: String(node.nodeID, radix: 16), pid: m.pid, core: m.core, state: state,
                              queueLength: s?.queue_len ?? 0, handled: s?.handled ?? 0,
                              restarts: m.restarts, lastExit: m.lastExit)
        }
    }
}

/// Runs `body` with a NULL-terminated C string array.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}
