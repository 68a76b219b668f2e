import CFosSys
import CFosWire
import FosCore
import Foundation
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// fos-spawn: the spawn service of a node (/sys/spawn). Starts programs on
/// behalf of its clients, as them (uid, gid and groups as the kernel attests
/// them), with the descriptors they hand over, and tracks them under global
/// process ids until they are waited for.
func die(_ s: String) -> Never {
    FileHandle.standardError.write(Data("fos-spawn: \(s)\n".utf8))
    exit(1)
}

final class SpawnService: Sendable {
    let rt: FosRuntime
    let table: ProcessTable
    let nodeName: String

    init(rt: FosRuntime) {
        self.rt = rt
        table = ProcessTable(node: rt.node)
        nodeName = String(rt.node, radix: 16)
    }

    func handle(_ r: Request) async -> Reply {
        do {
            switch UInt32(r.opcode) {
            case FOS_OP_SPAWN: return try spawn(r)
            case FOS_OP_SPAWN_WAIT: return try await wait(r)
            case FOS_OP_SPAWN_KILL: return try kill(r)
            case FOS_OP_SPAWN_LIST: return try list(r)
            default: return Reply(status: ENOSYS)
            }
        } catch let e as Errno {
            return Reply(status: e.rawValue)
        } catch {
            return Reply(status: EIO)
        }
    }

    // MARK: SPAWN

    func spawn(_ r: Request) throws -> Reply {
        let q = try SpawnRequestParser(r.payload)
        if !q.node.isEmpty, q.node != nodeName { throw Errno.noRouteToHost }
        if q.cpu >= fos_sys_cpu_count() || q.cpu < -1 { throw Errno.invalidArgument }
        let caller = r.sender
        guard table.running(uid: caller.uid) < ProcessTable.maxRunningPerUID else { throw Errno.resourceTemporarilyUnavailable }

        // Who the child runs as: the caller. A spawn server that is not root
        // can only start programs for its own uid.
        var identity: fos_sys_identity?
        if geteuid() == 0 {
            var id = fos_sys_identity()
            id.uid = caller.uid
            id.gid = caller.gid
            let groups = PeerInfo.supplementaryGroups(of: caller.pid, max: Int(FOS_SYS_MAX_GROUPS))
            id.ngroups = Int32(groups.count)
            withUnsafeMutableBytes(of: &id.groups) { b in
                for (k, g) in groups.enumerated() { b.storeBytes(of: g, toByteOffset: k * 4, as: UInt32.self) }
            }
            identity = id
        } else if caller.uid != geteuid() {
            throw Errno.notPermitted
        }

        // The caller's descriptors, copied from its process (same open file
        // descriptions), and the program it materialised, if any.
        var src: [CInt] = []
        var execFD: CInt = -1
        defer {
            for fd in src { close(fd) }
            if execFD >= 0 { close(execFD) }
        }
        if !q.fds.isEmpty || q.execFD >= 0 {
            let pidfd = fos_sys_pidfd_open(caller.pid)
            guard pidfd >= 0 else { throw Errno.noSuchProcess }
            defer { close(pidfd) }
            for f in q.fds {
                let fd = fos_sys_pidfd_getfd(pidfd, f.from)
                guard fd >= 0 else { throw Errno(rawValue: fd == -EBADF ? EBADF : -fd) }
                src.append(fd)
            }
            if q.execFD >= 0 {
                execFD = fos_sys_pidfd_getfd(pidfd, q.execFD)
                guard execFD >= 0 else { throw Errno(rawValue: execFD == -EBADF ? EBADF : -execFD) }
            }
        }
        // A tie watches the caller from before the start: one already gone
        // gets nothing started.
        var tie: CInt = -1
        if q.tied {
            tie = fos_sys_pidfd_open(caller.pid)
            guard tie >= 0 else { throw Errno.noSuchProcess }
        }
        let dst = q.fds.map { CInt($0.to) }
        var extra = fos_sys_spawn_extra(exec_fd: execFD, sigmask: q.signalMask, sigign: q.ignoredSignals, umask: q.umask,
                                        limits_from: q.rlimits ? caller.pid : 0)
        let hasExtra = q.execFD >= 0 || q.signalMask != 0 || q.ignoredSignals != 0 || q.umask >= 0 || q.rlimits
        var pidfd: CInt = -1
        let pid: pid_t = withCStrings(q.arguments) { argv in
            withCStrings(q.environment) { envp in
                src.withUnsafeBufferPointer { s in
                    dst.withUnsafeBufferPointer { d in
                        withUnsafePointer(to: &extra) { x in
                            let ex = hasExtra ? x : nil
                            let cwd = q.cwd.isEmpty ? "/" : q.cwd
                            if var id = identity {
                                return fos_sys_spawn_as(q.path, argv, envp, cwd, &id, s.baseAddress, d.baseAddress,
                                                        CInt(s.count), q.cpu, ex, &pidfd)
                            }
                            return fos_sys_spawn_as(q.path, argv, envp, cwd, nil, s.baseAddress, d.baseAddress,
                                                    CInt(s.count), q.cpu, ex, &pidfd)
                        }
                    }
                }
            }
        }
        guard pid > 0 else {
            if tie >= 0 { close(tie) }
            throw Errno(rawValue: -pid)
        }
        let command = String(q.arguments.joined(separator: " ").prefix(200))
        let gpid = table.add(pid: pid, pidfd: pidfd, uid: caller.uid, command: command)
        if tie >= 0 { table.tie(gpid, to: tie) }
        var out = [UInt8]()
        appendStruct(fos_spawn_reply(gpid: gpid, pid: pid, reserved: 0), to: &out)
        return Reply(payload: out)
    }

    // MARK: WAIT, KILL, LIST

    /// The process `gpid`, if the caller may see its fate or signal it.
    func owned(_ gpid: UInt64, by caller: PeerInfo) throws -> ProcessTable.Entry {
        guard let e = table.entry(gpid) else { throw Errno.noSuchProcess }
        guard caller.uid == 0 || caller.uid == e.uid else { throw Errno.notPermitted }
        return e
    }

    func wait(_ r: Request) async throws -> Reply {
        guard r.payload.count == MemoryLayout<fos_spawn_wait>.size,
              let w = r.payload.withUnsafeBytes({ loadStruct(fos_spawn_wait.self, from: $0) }), w.reserved == 0,
              w.wait_ms <= FOS_SPAWN_MAX_WAIT_MS else { throw Errno.invalidArgument }
        var e = try owned(w.gpid, by: r.sender)
        if e.state == FOS_SPAWN_RUNNING, w.wait_ms > 0 {
            await table.waitForEnd(w.gpid, wait: .milliseconds(Int(w.wait_ms)))
            e = try owned(w.gpid, by: r.sender)
            if e.state == FOS_SPAWN_RUNNING { throw Errno.timedOut }
        }
        var out = [UInt8]()
        appendStruct(fos_spawn_status(state: e.state, code: e.code), to: &out)
        return Reply(payload: out)
    }

    func kill(_ r: Request) throws -> Reply {
        guard r.payload.count == MemoryLayout<fos_spawn_kill>.size,
              let k = r.payload.withUnsafeBytes({ loadStruct(fos_spawn_kill.self, from: $0) }), k.reserved == 0,
              (0...64).contains(k.signal) else { throw Errno.invalidArgument }
        let e = try owned(k.gpid, by: r.sender)
        guard e.state == FOS_SPAWN_RUNNING else { throw Errno.noSuchProcess }
        let rc = fos_sys_pidfd_kill(e.pidfd, k.signal)
        if rc < 0 { throw Errno(rawValue: -rc) }
        return Reply()
    }

    func list(_ r: Request) throws -> Reply {
        guard r.payload.isEmpty else { throw Errno.invalidArgument }
        let rows = table.state.withLock { $0.entries.values.sorted { $0.gpid < $1.gpid } }.map { e in
            ProcessRow(gpid: ProcessRow.format(e.gpid, node: nodeName), node: nodeName, pid: e.pid, uid: e.uid,
                        command: e.command, state: ProcessRow.stateName(e.state, e.code),
                        startedSecondsAgo: Date().timeIntervalSince(e.started))
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        return Reply(payload: Array(try enc.encode(rows)))
    }
}

/// Runs `body` with a NULL-terminated array of C strings.
func withCStrings<R>(_ strings: [String], _ body: (UnsafePointer<UnsafeMutablePointer<CChar>?>) -> R) -> R {
    var ptrs: [UnsafeMutablePointer<CChar>?] = strings.map { strdup($0) }
    ptrs.append(nil)
    defer { for p in ptrs { free(p) } }
    return ptrs.withUnsafeBufferPointer { body($0.baseAddress!) }
}

// MARK: start-up

// SIGCHLD, SIGTERM and SIGINT are read from a signalfd; blocked before any thread starts.
let signals = fos_sys_signalfd([SIGCHLD, SIGTERM, SIGINT], 3)
guard signals >= 0 else { die("cannot watch children: \(Errno(rawValue: -signals))") }
let rt: FosRuntime
do {
    rt = try FosRuntime.connect(ownThread: false)
} catch {
    die("\(error)")
}
let service = SpawnService(rt: rt)
rt.loop.addPoller(wakeFD: signals) {
    var stop = false
    while true {
        let sig = fos_sys_signalfd_read(signals)
        if sig <= 0 { break }
        if sig == SIGTERM || sig == SIGINT { stop = true }
    }
    service.table.reap()
    // The node is stopping: so do the processes it started.
    if stop { service.table.endAll() }
    return false
}
if service.table.ties >= 0 {
    rt.loop.addPoller(wakeFD: service.table.ties) {
        service.table.checkTies()
        return false
    }
}
let name = rt.isMember ? rt.fleet : "/sys/spawn"
rt.loop.spawn {
    var handlers: [UInt16: FosServer.Handler] = [:]
    for op in [FOS_OP_SPAWN, FOS_OP_SPAWN_WAIT, FOS_OP_SPAWN_KILL, FOS_OP_SPAWN_LIST] {
        handlers[UInt16(op)] = { await service.handle($0) }
    }
    let server = FosServer(runtime: rt, handlers: handlers)
    do {
        _ = try await server.start(name: name, policy: .nearest)
    } catch {
        die("cannot register \(name): \(error)")
    }
}
rt.run()
// The node went away (fosd's shutdown notice comes before its SIGTERM).
service.table.endAll()
