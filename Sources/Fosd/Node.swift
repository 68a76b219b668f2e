import CFosSys
import CFosWire
import FosCore
import Foundation
import SystemPackage

/// A process connected to the control socket.
final class Conn {
    let fd: CInt
    let pid: Int32
    let uid: UInt32
    let gid: UInt32
    var member: Member?
    var hello = false
    var statsFD: CInt = -1
    var stats: UnsafeMutablePointer<fos_stats_page>?
    var mailboxes: Set<UInt64> = []
    var channels: Set<UInt64> = []
    /// Datagrams the socket could not take yet, with descriptors we own.
    var outq: [(bytes: [UInt8], fds: [CInt])] = []
    var outqBytes = 0
    /// CHANNEL_CLOSE notifications still owed (no descriptors, so never refused).
    var pendingCloses: [UInt64] = []
    /// Channels this process opened, per owning connection (a quota).
    var channelsTo: [CInt: Int] = [:]
    /// Channels into this process's mailboxes, per client uid (a quota).
    var channelsFromUID: [UInt32: Int] = [:]
    /// When fosd accepted the connection: a member's own connection is
    /// always younger than the member (guards against pid reuse).
    let acceptedAt = monotonicNanos()
    init(fd: CInt, pid: Int32, uid: UInt32, gid: UInt32) {
        self.fd = fd
        self.pid = pid
        self.uid = uid
        self.gid = gid
    }
}

struct MailboxRec {
    var id: UInt64
    var owner: CInt  // conn fd
    var key: Capability
    var flags: UInt32
}

struct ChannelRec {
    var id: UInt64
    var mailbox: UInt64
    var client: CInt
    var server: CInt
    var clientUID: UInt32
}

enum Tag: UInt64 {
    case listen = 1, conn = 2, pidfd = 3, signal = 4, timer = 5
    static func make(_ t: Tag, _ v: UInt64) -> UInt64 { t.rawValue << 56 | (v & 0x00ff_ffff_ffff_ffff) }
    static func split(_ d: UInt64) -> (Tag?, UInt64) { (Tag(rawValue: d >> 56), d & 0x00ff_ffff_ffff_ffff) }
}

/// The node: owns the runtime directory and control socket, checks
/// capabilities and credentials, hands out channels, supervises members.
/// Single-threaded: everything runs on the main thread's epoll loop (which
/// is also what PR_SET_PDEATHSIG of the members is tied to).
final class Node {
    let config: NodeConfig
    let nodeID: UInt64
    let ep: CInt
    var listenFD: CInt = -1
    var lockFD: CInt = -1
    var signalFD: CInt = -1
    var conns: [CInt: Conn] = [:]
    var mailboxes: [UInt64: MailboxRec] = [:]
    var channels: [UInt64: ChannelRec] = [:]
    var nextMailbox: UInt64 = 1
    var nextChannel: UInt64 = 1
    var nameService: UInt64?
    var supervisor: Supervisor!
    var rejected: UInt64 = 0
    /// Descriptors handed from one process to another (FOS_CTL_DEPOSIT), by tag.
    var deposits: [[UInt8]: Deposit] = [:]
    var stopping = false
    var listenPausedUntil: UInt64 = 0
    /// Every control datagram is received into this (`controlReceive`),
    /// not into a new zeroed 64 KiB buffer each (a malloc and a 64 KiB
    /// memset for a request of a few dozen bytes).
    var rxBuffer: [UInt8] = []
    let started = Date()
    let myUID = getuid()

    init(config: NodeConfig) throws {
        self.config = config
        try Node.makeDirectory(config.runtimeDir, mode: 0o755)
        try Node.checkPrivate(config.runtimeDir)
        try Node.makeDirectory(config.stateDir, mode: 0o700)
        nodeID = try Node.loadNodeID(stateDir: config.stateDir)
        ep = try sys(fos_sys_epoll_create())
    }

    static func makeDirectory(_ path: String, mode: mode_t) throws {
        do {
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: mode])
        } catch {
            throw NodeError("cannot create \(path): \(error.localizedDescription)")
        }
    }

    /// The runtime directory holds the socket, lock and member list: it must
    /// be ours and writable by nobody else, or another user could plant files
    /// there (a symlinked lock, a fake member list, an impostor socket).
    static func checkPrivate(_ path: String) throws {
        var st = stat()
        guard lstat(path, &st) == 0 else { throw NodeError("cannot stat \(path): \(Errno(rawValue: errno))") }
        guard (st.st_mode & S_IFMT) == S_IFDIR else { throw NodeError("\(path) is not a directory") }
        guard st.st_uid == geteuid() else {
            throw NodeError("\(path) belongs to uid \(st.st_uid), not to this user (\(geteuid())): refusing to use it")
        }
        guard st.st_mode & 0o022 == 0 else {
            throw NodeError("\(path) is writable by group or others (mode \(String(st.st_mode & 0o777, radix: 8))): refusing to use it")
        }
    }

    /// The node id persists in the state directory across restarts.
    static func loadNodeID(stateDir: String) throws -> UInt64 {
        let path = stateDir + "/node-id"
        if let s = try? String(contentsOfFile: path, encoding: .utf8),
           let v = UInt64(s.trimmingCharacters(in: .whitespacesAndNewlines), radix: 16), v != 0 {
            return v
        }
        var v: UInt64 = 0
        while v == 0 { v = Capability.random().bytes.0 & 0x00ff_ffff_ffff_ffff }
        let tmp = path + ".tmp"
        try String(v, radix: 16).write(toFile: tmp, atomically: false, encoding: .utf8)
        guard rename(tmp, path) == 0 else { throw NodeError("cannot write \(path): \(Errno(rawValue: errno))") }
        return v
    }

    // MARK: Start and stop

    func start() throws {
        try takeLock()
        recoverLeftovers()
        let sock = NodePaths.controlSocket(runtime: config.runtimeDir)
        unlink(sock)  // we hold the lock: any socket file here is a dead node's
        listenFD = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        try sys(listenFD)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let u = Array(sock.utf8)
        guard u.count < MemoryLayout.size(ofValue: addr.sun_path) else {
            throw NodeError("runtime path too long for a socket: \(sock)")
        }
        withUnsafeMutableBytes(of: &addr.sun_path) { $0.copyBytes(from: u + [0]) }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(listenFD, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        guard r == 0 else { throw NodeError("cannot bind \(sock): \(Errno(rawValue: errno))") }
        // Any local user may talk to fosd: keys and credentials decide what they reach.
        chmod(sock, 0o666)
        guard listen(listenFD, 128) == 0 else { throw NodeError("listen: \(Errno(rawValue: errno))") }
        try sys(fos_sys_epoll_add(ep, listenFD, UInt32(FOS_EPOLLIN), Tag.make(.listen, 0)))
        var sigs: [CInt] = [SIGTERM, SIGINT, SIGHUP]
        signalFD = try sys(fos_sys_signalfd(&sigs, CInt(sigs.count)))
        try sys(fos_sys_epoll_add(ep, signalFD, UInt32(FOS_EPOLLIN), Tag.make(.signal, 0)))
        signal(SIGPIPE, SIG_IGN)
        supervisor = Supervisor(node: self)
        try supervisor.startAll()
        log("node \(String(nodeID, radix: 16)) up on \(config.runtimeDir) (state \(config.stateDir)), \(supervisor.members.count) members")
    }

    /// One fosd per runtime directory: an flock that dies with the process.
    func takeLock() throws {
        let path = config.runtimeDir + "/fosd.lock"
        lockFD = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard lockFD >= 0 else { throw NodeError("cannot open \(path): \(Errno(rawValue: errno))") }
        let r = fos_sys_flock_exclusive(lockFD)
        if r == -EWOULDBLOCK {
            var buf = [UInt8](repeating: 0, count: 32)
            let n = pread(lockFD, &buf, 31, 0)
            let pid = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
            throw NodeError("a node is already running on \(config.runtimeDir) (fosd pid \(pid))")
        }
        try sys(r)
        let s = Array("\(getpid())\n".utf8)
        _ = ftruncate(lockFD, 0)
        _ = pwrite(lockFD, s, s.count, 0)
    }

    /// A node killed with SIGKILL leaves its socket file and the list of its
    /// members (who died with it through PR_SET_PDEATHSIG; any survivor that
    /// still runs one of our binaries is ended here).
    func recoverLeftovers() {
        let path = config.runtimeDir + "/members"
        guard FileManager.default.fileExists(atPath: path) else { return }
        let killed = Self.endLeftovers(runtimeDir: config.runtimeDir, wait: .seconds(5))
        unlink(path)
        log("recovered leftovers of a previous node\(killed > 0 ? " (ended \(killed) stray members)" : "")")
    }

    /// Ends the members that a node killed on `runtimeDir` left running, and
    /// waits up to `wait` for them to be gone. Why wait: they die with their
    /// fosd (PR_SET_PDEATHSIG), but on a loaded machine that took over the
    /// 2 s a new node waits for the disk's lock, which the blk server holds,
    /// and the new node then refused the disk as in use. Returns how many.
    static func endLeftovers(runtimeDir: String, wait: Duration) -> Int {
        guard let text = try? String(contentsOfFile: runtimeDir + "/members", encoding: .utf8) else { return 0 }
        // Same pid, same start time, same executable: the very process it
        // started (a zombie, already gone, has no executable).
        func alive(_ pid: Int32, _ start: Substring, _ exe: Substring) -> Bool {
            let now = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/exe")) ?? ""
            return !now.isEmpty && now == String(exe) && processStartTime(pid) == String(start)
        }
        var ended: [(Int32, Substring, Substring)] = []
        for line in text.split(separator: "\n") {
            let parts = line.split(separator: " ", maxSplits: 2)
            guard parts.count == 3, let pid = Int32(parts[0]), pid > 1, alive(pid, parts[1], parts[2]),
                  kill(pid, SIGKILL) == 0 else { continue }
            ended.append((pid, parts[1], parts[2]))
        }
        let deadline = ContinuousClock.now + wait
        while ContinuousClock.now < deadline, ended.contains(where: { alive($0.0, $0.1, $0.2) }) {
            usleep(10_000)
        }
        return ended.count
    }

    func writeMemberList() {
        let lines = supervisor.members.filter { $0.pid > 0 }.map { "\($0.pid) \(processStartTime($0.pid) ?? "0") \($0.executable)" }
        let path = config.runtimeDir + "/members"
        try? (lines.joined(separator: "\n") + "\n").write(toFile: path + ".tmp", atomically: false, encoding: .utf8)
        rename(path + ".tmp", path)
    }

    func run() {
        var data = [UInt64](repeating: 0, count: 64)
        var events = [UInt32](repeating: 0, count: 64)
        while !(stopping && supervisor.allGone) {
            var timeout = supervisor.nextTimerMs()
            if listenPausedUntil != 0 { timeout = timeout < 0 ? 100 : min(timeout, 100) }
            // Unfetched deposits go when they expire, requests or not.
            if !deposits.isEmpty { timeout = timeout < 0 ? 1000 : min(timeout, 1000) }
            let n = fos_sys_epoll_wait(ep, &data, &events, 64, timeout)
            if n < 0 {
                log("epoll_wait: \(Errno(rawValue: -n))")
                break
            }
            for i in 0..<Int(n) {
                let (tag, v) = Tag.split(data[i])
                switch tag {
                case .listen: acceptAll()
                case .conn: connReadable(CInt(v), events[i])
                case .pidfd: supervisor.exited(index: Int(v))
                case .signal: handleSignal()
                case .timer, .none: break
                }
            }
            supervisor.tick()
            if !deposits.isEmpty { sweepDeposits() }
            if listenPausedUntil != 0 && monotonicNanos() >= listenPausedUntil {
                listenPausedUntil = 0
                _ = fos_sys_epoll_mod(ep, listenFD, UInt32(FOS_EPOLLIN), Tag.make(.listen, 0))
            }
        }
        shutdownFinish()
    }

    func handleSignal() {
        while true {
            let s = fos_sys_signalfd_read(signalFD)
            if s <= 0 { return }
            if !stopping {
                log("signal \(s): stopping the node")
                beginShutdown()
            }
        }
    }

    func beginShutdown() {
        stopping = true
        // The supervisor says goodbye (broadcastShutdown) once the fleets
        // that need others to stop cleanly (/sys/fs needs /sys/blk/0) are gone.
        supervisor.stopAll()
    }

    /// Tells every connected process that the node is stopping.
    func broadcastShutdown() {
        let bye = ControlMessage.encode(op: Int32(FOS_CTL_SHUTDOWN), requestID: 0, payload: [])
        for c in conns.values { _ = deliver(c, bye) }
    }

    func shutdownFinish() {
        for fd in Array(conns.keys) { closeConn(fd) }
        unlink(NodePaths.controlSocket(runtime: config.runtimeDir))
        unlink(config.runtimeDir + "/members")
        unlink(config.runtimeDir + "/fosd.lock")
        log("node stopped")
    }

    // MARK: Connections

    static let maxConnsPerUID = 256

    func acceptAll() {
        while true {
            let fd = fos_sys_accept(listenFD)
            if fd == -EMFILE || fd == -ENFILE || fd == -ENOMEM {
                // Out of descriptors: stop listening for a moment rather than
                // spin on a socket that stays readable.
                _ = fos_sys_epoll_mod(ep, listenFD, 0, Tag.make(.listen, 0))
                listenPausedUntil = monotonicNanos() + 100_000_000
                log("out of descriptors: not accepting connections for 100 ms")
                return
            }
            if fd < 0 { return }
            var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
            guard fos_sys_peercred(fd, &pid, &uid, &gid) == 0, !stopping, conns.count < 8192 else {
                closeFD(fd)
                continue
            }
            // One user cannot take every connection (members run as fosd's uid).
            if uid != 0 && uid != myUID && conns.values.lazy.filter({ $0.uid == uid }).count >= Node.maxConnsPerUID {
                closeFD(fd)
                continue
            }
            conns[fd] = Conn(fd: fd, pid: pid, uid: uid, gid: gid)
            if fos_sys_epoll_add(ep, fd, UInt32(FOS_EPOLLIN), Tag.make(.conn, UInt64(fd))) != 0 {
                conns[fd] = nil
                closeFD(fd)
            }
        }
    }

    func connReadable(_ fd: CInt, _ ev: UInt32) {
        guard let c = conns[fd] else { return }
        if ev & UInt32(FOS_EPOLLOUT) != 0 {
            flushQueue(c)
            if conns[fd] == nil { return }
        }
        // Backpressure: a process that does not read its answers is not
        // served further until it does.
        if !c.outq.isEmpty || !c.pendingCloses.isEmpty { return }
        for _ in 0..<64 {
            let got: ControlMessage??
            do {
                got = try controlReceive(fd, dontWait: true, buffer: &rxBuffer)
            } catch {
                if (error as? Errno) == .resourceTemporarilyUnavailable { return }
                closeConn(fd)
                return
            }
            guard let maybe = got else {
                closeConn(fd)  // end of stream: the process closed or died
                return
            }
            guard let msg = maybe else {
                // Malformed datagram: refuse the connection, keep the node going.
                rejected &+= 1
                closeConn(fd)
                return
            }
            // Only ATTACH and DEPOSIT carry a descriptor (they take it); close any other.
            if Int(msg.header.op) != FOS_CTL_ATTACH && Int(msg.header.op) != FOS_CTL_DEPOSIT { msg.closeFDs() }
            if msg.header.request_id == 0 && Int(msg.header.op) == FOS_CTL_CHANNEL_CLOSE {
                handleChannelClose(c, msg)
                continue
            }
            handleRequest(c, msg)
            if conns[fd] == nil || !c.outq.isEmpty { return }
        }
    }

    func reply(_ c: Conn, _ req: ControlMessage, status: Int32 = 0, payload: [UInt8] = [], fds: [CInt] = []) {
        let bytes = ControlMessage.encode(op: Int32(req.header.op), requestID: req.header.request_id,
                                          status: status, payload: payload)
        if deliver(c, bytes, fds: fds) || conns[c.fd] == nil { return }
        // The answer could not go (queue full, or descriptors refused): say so
        // without descriptors, or give up on a process that reads nothing.
        let err = ControlMessage.encode(op: Int32(req.header.op), requestID: req.header.request_id,
                                        status: fds.isEmpty ? EAGAIN : ENFILE, payload: [])
        if !deliver(c, err) { closeConn(c.fd) }
    }

    /// Sends a datagram now, or queues it (with duplicates of its descriptors)
    /// until the socket drains. Returns false if it was not accepted: the
    /// queue is at its bound, descriptors could not be passed (the caller
    /// answers with an error), or the connection broke (then it is closed).
    /// A receiver is never disconnected for being slow.
    static let maxQueued = 64
    static let maxQueuedBytes = 1 << 20

    @discardableResult
    func deliver(_ c: Conn, _ bytes: [UInt8], fds: [CInt] = []) -> Bool {
        if c.outq.isEmpty {
            do {
                try controlSend(c.fd, bytes, fds: fds)
                return true
            } catch let e as Errno where e == .resourceTemporarilyUnavailable || e == .noBufferSpace {
                // fall through: queue it
            } catch let e as Errno where e == .tooManyReferences || e == .tooManyOpenFiles
                || e == .tooManyOpenFilesInSystem || e == .noMemory {
                return false
            } catch {
                closeConn(c.fd)
                return false
            }
        }
        guard c.outq.count < Node.maxQueued, c.outqBytes + bytes.count <= Node.maxQueuedBytes else { return false }
        var dups: [CInt] = []
        for fd in fds {
            let d = fcntl(fd, F_DUPFD_CLOEXEC, 0)
            guard d >= 0 else {
                dups.forEach(closeFD)
                return false
            }
            dups.append(d)
        }
        c.outq.append((bytes, dups))
        c.outqBytes += bytes.count
        watchWritable(c)
        return true
    }

    /// Owes `c` a CHANNEL_CLOSE: sent now if possible, else when it drains.
    func notifyClosed(_ c: Conn, _ id: UInt64) {
        if c.outq.isEmpty && c.pendingCloses.isEmpty {
            var p = [UInt8]()
            appendStruct(fos_ctl_channel_close(channel: id), to: &p)
            do {
                try controlSend(c.fd, ControlMessage.encode(op: Int32(FOS_CTL_CHANNEL_CLOSE), requestID: 0, payload: p))
                return
            } catch let e as Errno where e == .resourceTemporarilyUnavailable || e == .noBufferSpace {
            } catch {
                closeConn(c.fd)
                return
            }
        }
        c.pendingCloses.append(id)
        watchWritable(c)
    }

    /// While output waits, watch only for writability (no new requests).
    func watchWritable(_ c: Conn) {
        _ = fos_sys_epoll_mod(ep, c.fd, UInt32(FOS_EPOLLOUT), Tag.make(.conn, UInt64(c.fd)))
    }

    func flushQueue(_ c: Conn) {
        while let first = c.outq.first {
            do {
                try controlSend(c.fd, first.bytes, fds: first.fds)
            } catch let e as Errno where e == .resourceTemporarilyUnavailable || e == .noBufferSpace {
                return
            } catch let e as Errno where e == .tooManyReferences || e == .tooManyOpenFiles
                || e == .tooManyOpenFilesInSystem || e == .noMemory {
                // Its descriptors cannot travel (the system is short of them):
                // this datagram is lost; the waiting side times out.
                log("dropped a message with descriptors to pid \(c.pid): \(e)")
            } catch {
                closeConn(c.fd)
                return
            }
            first.fds.forEach(closeFD)
            c.outqBytes -= first.bytes.count
            c.outq.removeFirst()
        }
        while let id = c.pendingCloses.first {
            var p = [UInt8]()
            appendStruct(fos_ctl_channel_close(channel: id), to: &p)
            do {
                try controlSend(c.fd, ControlMessage.encode(op: Int32(FOS_CTL_CHANNEL_CLOSE), requestID: 0, payload: p))
            } catch let e as Errno where e == .resourceTemporarilyUnavailable || e == .noBufferSpace {
                return
            } catch {
                closeConn(c.fd)
                return
            }
            c.pendingCloses.removeFirst()
        }
        _ = fos_sys_epoll_mod(ep, c.fd, UInt32(FOS_EPOLLIN), Tag.make(.conn, UInt64(c.fd)))
        // Requests that arrived meanwhile are still in the socket.
        connReadable(c.fd, 0)
    }

    func closeConn(_ fd: CInt) {
        guard let c = conns.removeValue(forKey: fd) else { return }
        _ = fos_sys_epoll_del(ep, fd)
        for ch in c.channels { endChannel(ch, by: fd) }
        for m in c.mailboxes {
            mailboxes[m] = nil
            if nameService == m { nameService = nil }
        }
        if let s = c.stats { _ = fos_sys_unmap(s, MemoryLayout<fos_stats_page>.size) }
        closeFD(c.statsFD)
        if let m = c.member, m.conn === c { m.conn = nil }
        for q in c.outq { q.fds.forEach(closeFD) }
        c.outq.removeAll()
        c.pendingCloses.removeAll()
        closeFD(fd)
    }

    /// Removes a channel and tells the party that did not end it.
    func endChannel(_ id: UInt64, by fd: CInt) {
        guard let ch = channels.removeValue(forKey: id) else { return }
        let other = ch.client == fd ? ch.server : ch.client
        if let cl = conns[ch.client] {
            cl.channels.remove(id)
            if let n = cl.channelsTo[ch.server] { cl.channelsTo[ch.server] = n > 1 ? n - 1 : nil }
        }
        if let sv = conns[ch.server] {
            sv.channels.remove(id)
            if let n = sv.channelsFromUID[ch.clientUID] { sv.channelsFromUID[ch.clientUID] = n > 1 ? n - 1 : nil }
        }
        if let o = conns[other] { notifyClosed(o, id) }
    }

    func handleChannelClose(_ c: Conn, _ msg: ControlMessage) {
        guard let cc = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_channel_close.self, from: $0) }),
              c.channels.contains(cc.channel) else { return }
        endChannel(cc.channel, by: c.fd)
    }
}

struct NodeError: Error, CustomStringConvertible {
    var description: String
    init(_ s: String) { description = s }
}

/// Logs to stderr with write(2): a closed or broken stderr must never take
/// the node down (FileHandle.write traps on errors).
func log(_ s: String) {
    let line = Array("fosd: \(s)\n".utf8)
    line.withUnsafeBytes { _ = write(2, $0.baseAddress, $0.count) }
}

/// Field 22 of /proc/PID/stat (start time in clock ticks), to tell a process
/// from a later one that reused its pid.
func processStartTime(_ pid: Int32) -> String? {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = s.lastIndex(of: ")") else { return nil }
    let fields = s[s.index(after: close)...].split(separator: " ")
    return fields.count > 19 ? String(fields[19]) : nil
}

