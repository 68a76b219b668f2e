import CFosSys
import CFosWire
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// One datagram of the fosd control protocol. Owns `fds` until taken.
public struct ControlMessage: Sendable {
    public var header: fos_ctl_hdr
    public var payload: [UInt8]
    public var fds: [CInt]

    public var op: Int { Int(header.op) }

    /// Closes every descriptor that nobody took.
    public func closeFDs() { fds.forEach(closeFD) }

    /// Parses a received datagram; nil for anything malformed (fds closed).
    static func parse(_ bytes: UnsafeRawBufferPointer, fds: [CInt]) -> ControlMessage? {
        guard fos_ctl_validate(bytes.baseAddress, bytes.count) == 0,
              let h = loadStruct(fos_ctl_hdr.self, from: bytes)
        else {
            fds.forEach(closeFD)
            return nil
        }
        let size = MemoryLayout<fos_ctl_hdr>.size
        return ControlMessage(header: h, payload: Array(bytes[size...]), fds: fds)
    }

    public static func encode(op: Int32, requestID: UInt64, status: Int32 = 0, payload: [UInt8]) -> [UInt8] {
        let h = fos_ctl_hdr(version: UInt16(FOS_WIRE_VERSION), op: UInt16(op),
                            len: UInt32(MemoryLayout<fos_ctl_hdr>.size + payload.count),
                            request_id: requestID, status: status, reserved: 0)
        var out = [UInt8]()
        out.reserveCapacity(Int(h.len))
        appendStruct(h, to: &out)
        out += payload
        return out
    }
}

/// Sends one datagram with descriptors (retrying EINTR). Shared with fosd.
public func controlSend(_ fd: CInt, _ bytes: [UInt8], fds: [CInt] = []) throws {
    let r = bytes.withUnsafeBytes { b in
        fds.withUnsafeBufferPointer { f in
            fos_sys_send(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
        }
    }
    try sys(r)
}

/// Receives one datagram. nil at end of stream; `.some(nil)` for a malformed one.
/// Into a buffer the caller keeps (sized here on first use): the event loop
/// looks at its control socket every few hundred passes, and a fresh 64 KiB
/// buffer each time (allocated, zeroed) was 5% of a busy fs member's time.
public func controlReceive(_ fd: CInt, dontWait: Bool, buffer buf: inout [UInt8]) throws -> ControlMessage?? {
    if buf.count < Int(FOS_CTL_MAX_DATAGRAM) { buf = [UInt8](repeating: 0, count: Int(FOS_CTL_MAX_DATAGRAM)) }
    var fds = [CInt](repeating: -1, count: Int(FOS_SYS_MAX_FDS))
    var nfds: Int32 = 0
    let n = buf.withUnsafeMutableBytes { b in
        fds.withUnsafeMutableBufferPointer { f in
            fos_sys_recv(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count), &nfds, dontWait ? 1 : 0)
        }
    }
    if n == -Int(EMSGSIZE) { return .some(nil) }
    try sys(n)
    if n == 0 { return nil }
    let got = Array(fds.prefix(Int(nfds)))
    return .some(buf.withUnsafeBytes { ControlMessage.parse(UnsafeRawBufferPointer(rebasing: $0[0..<n]), fds: got) })
}

/// A process's connection to its node's fosd.
public final class ControlConnection: Sendable {
    public let fd: CInt
    public let runtimeDir: String

    private struct State {
        var nextID: UInt64 = 1
        var notifications: [ControlMessage] = []
        var eof = false
        /// Datagrams are received into this (`controlReceive`).
        var buffer: [UInt8] = []
    }
    private let state = Mutex(State())
    /// Eventfd of the event loop, poked when a blocking request read a notification.
    let loopWake = Atomic<Int32>(-1)
    /// Set when a blocking request queued a notification the loop has not seen.
    let pending = Atomic<Bool>(false)

    public static func connect(runtime: String = NodePaths.defaultRuntime()) throws -> ControlConnection {
        let path = NodePaths.controlSocket(runtime: runtime)
        let fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        try sys(fd)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let ok = withUnsafeMutableBytes(of: &addr.sun_path) { p -> Bool in
            let u = Array(path.utf8)
            guard u.count < p.count else { return false }
            p.copyBytes(from: u)
            p[u.count] = 0
            return true
        }
        guard ok else {
            closeFD(fd)
            throw FosError.noNode(runtimeDir: runtime)
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r != 0 {
            closeFD(fd)
            throw FosError.noNode(runtimeDir: runtime)
        }
        // Only a fosd of root or of our own user is trusted with our keys.
        var pid: Int32 = 0, uid: UInt32 = 0, gid: UInt32 = 0
        guard fos_sys_peercred(fd, &pid, &uid, &gid) == 0, uid == 0 || uid == geteuid() else {
            closeFD(fd)
            throw FosError.untrustedNode(runtimeDir: runtime, uid: uid)
        }
        return ControlConnection(fd: fd, runtime: runtime)
    }

    private init(fd: CInt, runtime: String) {
        self.fd = fd
        self.runtimeDir = runtime
    }

    deinit { closeFD(fd) }

    /// Sends a request and waits for its reply (at most `timeoutMs`).
    /// Notifications read meanwhile are queued for the event loop.
    public func request(_ op: Int32, payload: [UInt8] = [], fds: [CInt] = [],
                        timeoutMs: Int32 = 10_000) throws -> ControlMessage {
        try state.withLock { st in
            if st.eof { throw FosError.peerGone }
            let id = st.nextID
            st.nextID += 1
            try controlSend(fd, ControlMessage.encode(op: op, requestID: id, payload: payload), fds: fds)
            let deadline = monotonicNanos() &+ UInt64(max(0, timeoutMs)) * 1_000_000
            while true {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                let now = monotonicNanos()
                guard deadline > now else { throw FosError.timeout }
                let left = Int32(clamping: (deadline - now) / 1_000_000 + 1)
                let pr = poll(&pfd, 1, left)
                if pr < 0 && errno == EINTR { continue }
                if pr == 0 { continue }
                guard let got = try controlReceive(fd, dontWait: true, buffer: &st.buffer) else {
                    st.eof = true
                    throw FosError.peerGone
                }
                guard let msg = got else { continue }  // fosd never sends junk; ignore if it did
                if msg.header.request_id == 0 {
                    st.notifications.append(msg)
                    pending.store(true, ordering: .releasing)
                    let w = loopWake.load(ordering: .relaxed)
                    if w >= 0 { _ = fos_sys_eventfd_signal(w) }
                    continue
                }
                guard msg.header.request_id == id, Int32(msg.header.op) == op else {
                    msg.closeFDs()
                    continue
                }
                if msg.header.status != 0 {
                    msg.closeFDs()
                    throw FosError.remote(Errno(rawValue: msg.header.status))
                }
                return msg
            }
        }
    }

    /// Reads what is waiting without blocking and returns queued notifications.
    /// Returns nil once fosd has closed the connection.
    func drainNotifications() -> [ControlMessage]? {
        pending.store(false, ordering: .relaxed)
        return state.withLock { st in
            while !st.eof {
                do {
                    guard let got = try controlReceive(fd, dontWait: true, buffer: &st.buffer) else {
                        st.eof = true
                        break
                    }
                    guard let msg = got else { continue }
                    if msg.header.request_id == 0 { st.notifications.append(msg) } else { msg.closeFDs() }
                } catch {
                    break  // EAGAIN: nothing more now
                }
            }
            if st.eof && st.notifications.isEmpty { return nil }
            let out = st.notifications
            st.notifications.removeAll()
            return out
        }
    }
}
