import CFosSys
import CFosWire
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Who is on the other end of a channel, as the kernel told fosd.
public struct PeerInfo: Sendable, Hashable {
    public var pid: Int32
    public var uid: UInt32
    public var gid: UInt32
    public var core: Int32
    /// Fleet the peer is a member of, as attested by fosd ("" if none).
    public var fleet: String
    public init(pid: Int32, uid: UInt32, gid: UInt32, core: Int32 = -1, fleet: String = "") {
        self.pid = pid
        self.uid = uid
        self.gid = gid
        self.core = core
        self.fleet = fleet
    }
}

extension PeerInfo {
    /// A process's supplementary groups, best effort, from /proc/<pid>/status
    /// ("Groups:"): fosd attests uid and gid only. Empty when the entry
    /// cannot be read (another pid namespace, a process that is gone).
    public static func supplementaryGroups(of pid: Int32, max: Int) -> [UInt32] {
        guard pid > 0 else { return [] }
        let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var bytes = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while bytes.count < 1 << 16 {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        for line in bytes.split(separator: 0x0A) where line.starts(with: Array("Groups:".utf8)) {
            return String(decoding: line.dropFirst(7), as: UTF8.self)
                .split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { UInt32($0) }
                .prefix(max).map { $0 }
        }
        return []
    }
}

/// One side of a channel: a memfd holding two single-producer rings, plus the
/// eventfd this side sleeps on and the eventfd that wakes the peer.
///
/// `@unchecked Sendable`: the producer ring is only touched under `sendLock`;
/// the consumer ring is only touched by the one thread that receives on this
/// channel (the event loop that owns it, or the thread that detached it), which
/// the API states and the event loop enforces by never handing out owned
/// channels. The mapping lives until `deinit`, after the last reference.
public final class Channel: @unchecked Sendable {
    public enum Side: Sendable { case client, server }

    public let id: UInt64
    public let mailbox: UInt64
    public let side: Side
    public let peer: PeerInfo
    public let ringBytes: UInt32

    let base: UnsafeMutableRawPointer
    let mapSize: Int
    /// Eventfd this side waits on; eventfd that wakes the peer.
    public let waitFD: CInt
    let wakeFD: CInt
    let memFD: CInt

    private var tx = fos_ring()
    private var rx = fos_ring()
    private let sendLock = Mutex(())
    private let closedFlag = Atomic<Bool>(false)

    /// Maps the channel. Takes ownership of the three descriptors.
    init(id: UInt64, mailbox: UInt64, side: Side, peer: PeerInfo, ringBytes: UInt32,
         memFD: CInt, serverFD: CInt, clientFD: CInt) throws {
        guard fos_ring_bytes_valid(ringBytes) != 0 else {
            closeFD(memFD); closeFD(serverFD); closeFD(clientFD)
            throw FosError.badMessage("ring size \(ringBytes) out of range")
        }
        let size = Int(fos_chan_size(ringBytes))
        // A memfd smaller than advertised would fault on access: check first.
        var st = stat()
        // Only a size-sealed memfd is safe to map: otherwise the peer could
        // shrink it and our next access would die of SIGBUS.
        guard fos_sys_check_sealed(memFD) == 0, fstat(memFD, &st) == 0, Int(st.st_size) >= size,
              let p = fos_sys_map_shared(memFD, size, 1)
        else {
            closeFD(memFD); closeFD(serverFD); closeFD(clientFD)
            throw FosError.badMessage("channel memory unusable")
        }
        self.id = id
        self.mailbox = mailbox
        self.side = side
        self.peer = peer
        self.ringBytes = ringBytes
        self.base = p
        self.mapSize = size
        // The mapping outlives the descriptor. A server closes it at once:
        // it holds thousands of channels and descriptors are its scarce
        // resource; a client keeps it (tests check the memfd is sealed).
        if side == .server {
            closeFD(memFD)
            self.memFD = -1
        } else {
            self.memFD = memFD
        }
        let shm = p.assumingMemoryBound(to: fos_chan_shm.self)
        let reqCtl = UnsafeMutableRawPointer(p).advanced(by: MemoryLayout<fos_chan_shm>.offset(of: \fos_chan_shm.req)!)
            .assumingMemoryBound(to: fos_ring_ctl.self)
        let repCtl = UnsafeMutableRawPointer(p).advanced(by: MemoryLayout<fos_chan_shm>.offset(of: \fos_chan_shm.rep)!)
            .assumingMemoryBound(to: fos_ring_ctl.self)
        _ = shm
        let reqData = fos_chan_req_data(p)!
        let repData = fos_chan_rep_data(p, ringBytes)!
        switch side {
        case .client:
            fos_ring_init(&tx, reqCtl, reqData, ringBytes)
            fos_ring_init(&rx, repCtl, repData, ringBytes)
            waitFD = clientFD
            wakeFD = serverFD
        case .server:
            fos_ring_init(&rx, reqCtl, reqData, ringBytes)
            fos_ring_init(&tx, repCtl, repData, ringBytes)
            waitFD = serverFD
            wakeFD = clientFD
        }
    }

    deinit {
        _ = fos_sys_unmap(base, mapSize)
        closeFD(memFD)
        closeFD(waitFD)
        closeFD(wakeFD)
    }

    public var isClosed: Bool { closedFlag.load(ordering: .acquiring) }
    func markClosed() { closedFlag.store(true, ordering: .releasing) }

    public enum SendResult: Sendable { case sent, full }

    /// Appends one message without blocking. Wakes the peer if it sleeps.
    /// Throws `FosError.peerGone` on a closed channel and `.badMessage` if the
    /// peer corrupted the ring.
    @inline(__always)
    public func trySend(_ header: fos_msg_hdr, _ payload: UnsafeRawBufferPointer) throws -> SendResult {
        if isClosed { throw FosError.peerGone }
        var h = header
        let r: Int32 = sendLock.withLock { _ in
            withUnsafeBytes(of: &h) { hb in
                fos_ring_write2(&tx, hb.baseAddress, UInt32(hb.count), payload.baseAddress, UInt32(payload.count))
            }
        }
        switch r {
        case 0:
            if fos_ring_consumer_asleep(&tx) != 0 {
                _ = fos_sys_eventfd_signal(wakeFD)
            } else if fos_ring_consumer_yielding(&tx) != 0 {
                // The peer waits on our core for this: let it run now.
                sched_yield()
            }
            return .sent
        case -EAGAIN:
            return .full
        case -EMSGSIZE:
            throw FosError.remote(.messageTooLong)
        default:
            throw FosError.badMessage("peer corrupted the ring")
        }
    }

    /// Sends, spinning and then sleeping while the ring is full, up to `deadline`.
    public func send(_ header: fos_msg_hdr, _ payload: UnsafeRawBufferPointer,
                     deadline: UInt64 = .max) throws {
        var spins = 0
        while true {
            if try trySend(header, payload) == .sent { return }
            spins += 1
            if spins < 2000 { fos_cpu_relax(); continue }
            if monotonicNanos() > deadline { throw FosError.timeout }
            let space = sendLock.withLock { _ in
                fos_ring_prepare_wait_space(&tx, UInt32(MemoryLayout<fos_msg_hdr>.size + payload.count))
            }
            if space == 0 { waitReadable(timeoutMs: 1) }
            sendLock.withLock { _ in fos_ring_space_done(&tx) }
        }
    }

    /// Copies the next message into `buffer`. Returns its length, 0 if none.
    /// Only the receiving thread may call this.
    @inline(__always)
    public func receive(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = fos_ring_read(&rx, buffer.baseAddress, UInt32(buffer.count))
        if n < 0 { throw FosError.badMessage("peer corrupted the ring") }
        return Int(n)
    }

    /// The header of the next record, without taking it; false if there is
    /// none (or it is shorter than a header, or the ring is corrupt: the
    /// next receive says so).
    func peekHeader(_ h: inout fos_msg_hdr) -> Bool {
        let size = MemoryLayout<fos_msg_hdr>.size
        return withUnsafeMutableBytes(of: &h) { fos_ring_peek(&rx, $0.baseAddress, UInt32(size)) } == Int64(size)
    }

    /// Publishes consumed space; wakes a producer waiting for it.
    @inline(__always)
    public func release() {
        if fos_ring_release(&rx) != 0 { _ = fos_sys_eventfd_signal(wakeFD) }
    }

    /// Before the loop sleeps with a message of `bytes` (header included)
    /// queued for this ring: the consumer's next release wakes this side.
    /// True if the space is there already.
    func prepareWaitSpace(bytes: Int) -> Bool {
        sendLock.withLock { _ in fos_ring_prepare_wait_space(&tx, UInt32(clamping: bytes)) != 0 }
    }
    func spaceDone() { sendLock.withLock { _ in fos_ring_space_done(&tx) } }

    /// Before sleeping: returns true if a message is already waiting.
    func prepareSleep() -> Bool { fos_ring_prepare_sleep(&rx) != 0 }
    func wakeDone() { fos_ring_wake_done(&rx) }
    var hasInput: Bool { fos_ring_readable(&rx) != 0 }
    /// The receive ring's shared control block: mapped as long as this
    /// channel lives (for EventLoop's look at every ring without ARC traffic).
    var rxControl: UnsafeMutablePointer<fos_ring_ctl> { rx.ctl }
    var backlogBytes: UInt64 { fos_ring_backlog(&rx) }

    /// Blocks on this side's eventfd (used by detached channels).
    public func waitReadable(timeoutMs: Int32) {
        var pfd = pollfd(fd: waitFD, events: Int16(POLLIN), revents: 0)
        _ = poll(&pfd, 1, timeoutMs)
        _ = fos_sys_eventfd_drain(waitFD)
    }

    /// Receives one message on a detached channel, spinning first, then
    /// sleeping on the eventfd. Returns the length or throws on timeout.
    public func receiveBlocking(into buffer: UnsafeMutableRawBufferPointer,
                                spinNanos: UInt64 = 50_000, deadline: UInt64 = .max) throws -> Int {
        var n = try receive(into: buffer)
        if n > 0 { return n }
        let spinUntil = monotonicNanos() &+ spinNanos
        var i = 0
        while true {
            n = try receive(into: buffer)
            if n > 0 { return n }
            if isClosed { throw FosError.peerGone }
            if spinNanos > 0 {
                i &+= 1
                if i & 63 != 0 { fos_cpu_relax(); continue }
            }
            let now = monotonicNanos()
            if now > deadline { throw FosError.timeout }
            if now < spinUntil { continue }
            release()
            if !prepareSleep() { waitReadable(timeoutMs: 10) }
            wakeDone()
        }
    }
}

extension fos_msg_hdr {
    public init(opcode: UInt16, requestID: UInt64, payloadLength: Int, flags: UInt32 = 0, status: Int32 = 0) {
        self.init(version: UInt16(FOS_WIRE_VERSION), opcode: opcode, flags: flags, request_id: requestID,
                  payload_len: UInt32(payloadLength), status: status)
    }
}
