import CFosSys
import CFosWire
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// A process's presence on a fos node: its fosd connection, its identity as
/// fosd attests it, and its event loop.
public final class FosRuntime: Sendable {
    public let control: ControlConnection
    public let loop: EventLoop
    public let node: UInt64
    /// Core fosd pinned this process to (-1 if not a fleet member).
    public let core: Int32
    /// Fleet this process is a member of ("" if none) and its index there.
    public let fleet: String
    public let memberIndex: UInt32
    /// Key of the fleet's internal mailboxes (members only).
    public let fleetKey: Capability
    public let ringBytes: UInt32
    let names: NameClient

    /// Connects to the node on `runtime` and says hello. The loop runs on a
    /// thread of its own unless `ownThread` is false (servers call `run()`).
    /// With `spinYields`, the loop's spin lets any other thread that wants
    /// its core run first (a process whose callers share its cores).
    public static func connect(runtime: String = NodePaths.defaultRuntime(), ownThread: Bool = true,
                               spinMicros: UInt64? = nil, spinYields: Bool = false) throws -> FosRuntime {
        // A server holds two descriptors a channel: allow what the system allows.
        _ = fos_sys_raise_nofile()
        let control = try ControlConnection.connect(runtime: runtime)
        let hello = try control.request(Int32(FOS_CTL_HELLO))
        guard let h = hello.payload.withUnsafeBytes({ loadStruct(fos_ctl_hello_reply.self, from: $0) }),
              fos_ring_bytes_valid(h.ring_bytes) != 0
        else {
            hello.closeFDs()
            throw FosError.badMessage("bad HELLO reply")
        }
        let start = MemoryLayout<fos_ctl_hello_reply>.size
        let flen = min(Int(h.fleet_len), max(0, hello.payload.count - start))
        let fleet = String(decoding: hello.payload[start..<(start + flen)], as: UTF8.self)
        let envSpin = getenv("FOS_SPIN_US").flatMap { UInt64(String(cString: $0)) }.flatMap { $0 <= 1_000_000 ? $0 : nil }
        let spin = (spinMicros ?? envSpin ?? 50) * 1000
        let loop = try EventLoop(control: control, spinNanos: spin, spinYields: spinYields)
        if let fd = hello.fds.first {
            if fos_sys_check_sealed(fd) == 0, let p = fos_sys_map_shared(fd, MemoryLayout<fos_stats_page>.size, 1) {
                loop.stats = p.assumingMemoryBound(to: fos_stats_page.self)
            }
            hello.fds.forEach(closeFD)
        }
        let rt = FosRuntime(control: control, loop: loop, node: h.node, core: h.core, fleet: fleet,
                            memberIndex: h.member_index, fleetKey: Capability(wire: h.fleet_key),
                            ringBytes: h.ring_bytes)
        if ownThread { loop.startThread() }
        return rt
    }

    private init(control: ControlConnection, loop: EventLoop, node: UInt64, core: Int32, fleet: String,
                 memberIndex: UInt32, fleetKey: Capability, ringBytes: UInt32) {
        self.control = control
        self.loop = loop
        self.node = node
        self.core = core
        self.fleet = fleet
        self.memberIndex = memberIndex
        self.fleetKey = fleetKey
        self.ringBytes = ringBytes
        self.names = NameClient()
    }

    public var isMember: Bool { !fleet.isEmpty }

    /// Runs the loop on this thread (servers). Returns when the node goes away.
    public func run() {
        loop.onNodeGone { [loop] in loop.stop() }
        loop.run()
    }

    public func stop() { loop.stop() }

    /// Leaves the node: stops the loop and closes the connection to fosd,
    /// which closes every channel of this process and drops its registrations.
    public func shutdown() {
        _ = Glibc.shutdown(control.fd, Int32(SHUT_RDWR))
        // The loop stays up (idle, asleep) so that any later call still runs
        // and fails at once instead of waiting forever on a stopped executor;
        // it fails whatever waits and closes every channel.
        loop.spawn { [loop] in loop.leaveNode() }
    }

    // MARK: Mailboxes and channels

    /// Creates a mailbox served by `service` at `priority`.
    public func createMailbox(key: Capability, flags: UInt32 = 0, priority: MailboxPriority = .external,
                              service: MailboxService) async throws -> MailboxAddress {
        try await loop.onLoop {
            let id = try self.createMailboxID(key: key, flags: flags)
            self.loop.registerMailbox(id, .service(service, priority))
            return MailboxAddress(node: self.node, mailbox: id)
        }
    }

    /// Creates a mailbox whose channels are handed to `accept` and never
    /// polled by the loop: the receiving thread owns them (benchmarks, tests).
    public func createRawMailbox(key: Capability, flags: UInt32 = 0,
                                 accept: @escaping @Sendable (Channel) -> Void) async throws -> MailboxAddress {
        try await loop.onLoop {
            let id = try self.createMailboxID(key: key, flags: flags)
            self.loop.registerMailbox(id, .raw(accept))
            return MailboxAddress(node: self.node, mailbox: id)
        }
    }

    private func createMailboxID(key: Capability, flags: UInt32) throws -> UInt64 {
        var req = fos_ctl_mailbox_create()
        req.key = key.wire
        req.flags = flags
        var payload = [UInt8]()
        appendStruct(req, to: &payload)
        let r = try control.request(Int32(FOS_CTL_MAILBOX_CREATE), payload: payload)
        r.closeFDs()
        guard let m = r.payload.withUnsafeBytes({ loadStruct(fos_ctl_mailbox_reply.self, from: $0) }), m.mailbox != 0 else {
            throw FosError.badMessage("bad MAILBOX_CREATE reply")
        }
        return m.mailbox
    }

    /// Asks fosd for a channel to `addr`; fosd checks `key` and our credentials.
    func openChannel(_ addr: MailboxAddress, key: Capability) throws -> Channel {
        var req = fos_ctl_connect()
        req.addr = addr.wire
        req.key = key.wire
        var payload = [UInt8]()
        appendStruct(req, to: &payload)
        let r = try control.request(Int32(FOS_CTL_CONNECT), payload: payload)
        guard r.fds.count == 3, let c = r.payload.withUnsafeBytes({ loadStruct(fos_ctl_channel.self, from: $0) }) else {
            r.closeFDs()
            throw FosError.badMessage("bad CONNECT reply")
        }
        return try Channel(id: c.channel, mailbox: c.mailbox, side: .client,
                           peer: PeerInfo(pid: c.pid, uid: c.uid, gid: c.gid, core: c.sender_core),
                           ringBytes: c.ring_bytes, memFD: r.fds[0], serverFD: r.fds[1], clientFD: r.fds[2])
    }

    /// A channel to `addr` whose replies the loop polls (for `call`).
    /// Not to a mailbox of this process (EDEADLK): the loop knows a channel
    /// by its id, which both ends share, so it cannot hold both.
    public func connect(_ addr: MailboxAddress, key: Capability) async throws -> Channel {
        try await loop.onLoop {
            let ch = try self.openChannel(addr, key: key)
            if self.loop.ownsMailbox(ch.mailbox) {
                self.closeDetached(ch)
                throw FosError.remote(.deadlock)
            }
            self.loop.adoptClient(ch)
            return ch
        }
    }

    /// Closes a channel from `connectDetached` (or a raw mailbox): fosd tells
    /// the other side. The calling thread must be done with it.
    public func closeDetached(_ ch: Channel) {
        ch.markClosed()
        var payload = [UInt8]()
        appendStruct(fos_ctl_channel_close(channel: ch.id), to: &payload)
        try? controlSend(control.fd, ControlMessage.encode(op: Int32(FOS_CTL_CHANNEL_CLOSE), requestID: 0, payload: payload))
    }

    /// A channel the calling thread owns: the loop never reads it.
    public func connectDetached(_ addr: MailboxAddress, key: Capability) throws -> Channel {
        let ch = try openChannel(addr, key: key)
        loop.trackDetached(ch)
        return ch
    }

    /// Shares a new bulk region of `bytes` with the server end of `ch` (which
    /// this process opened). Usable in messages once this returns.
    public func attach(_ ch: Channel, bytes: Int, slot: UInt32 = 0) throws -> Region {
        guard ch.side == .client, slot < FOS_MAX_ATTACH_SLOTS, bytes > 0, UInt64(bytes) <= FOS_MAX_ATTACH_BYTES else {
            throw FosError.remote(.invalidArgument)
        }
        let r = try Region.create(bytes: bytes, slot: slot)
        var payload = [UInt8]()
        appendStruct(fos_ctl_attach(channel: ch.id, bytes: UInt64(r.size), slot: slot, reserved: 0), to: &payload)
        let reply = try control.request(Int32(FOS_CTL_ATTACH), payload: payload, fds: [r.fd])
        reply.closeFDs()
        return r
    }

    /// Hands `fd` to process `pid` through fosd (FOS_CTL_DEPOSIT): it takes
    /// it with FOS_CTL_FETCH and the returned tag, once, within
    /// FOS_DEPOSIT_TTL_MS. `fd` stays ours.
    public func deposit(_ fd: CInt, for pid: Int32) throws -> [UInt8] {
        var d = fos_ctl_deposit()
        var rng = SystemRandomNumberGenerator()
        let tag = (0..<Int(FOS_KEY_BYTES)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        withUnsafeMutableBytes(of: &d.tag) { $0.copyBytes(from: tag) }
        d.pid = pid
        var payload = [UInt8]()
        appendStruct(d, to: &payload)
        let reply = try control.request(Int32(FOS_CTL_DEPOSIT), payload: payload, fds: [fd])
        reply.closeFDs()
        return tag
    }

    /// Takes the descriptor deposited for this process under `tag`.
    public func fetch(_ tag: [UInt8]) throws -> CInt {
        guard tag.count == Int(FOS_KEY_BYTES) else { throw FosError.remote(.invalidArgument) }
        var f = fos_ctl_fetch()
        withUnsafeMutableBytes(of: &f.tag) { $0.copyBytes(from: tag) }
        var payload = [UInt8]()
        appendStruct(f, to: &payload)
        let reply = try control.request(Int32(FOS_CTL_FETCH), payload: payload)
        guard reply.fds.count == 1 else {
            reply.closeFDs()
            throw FosError.remote(.ioError)
        }
        return reply.fds[0]
    }

    /// Sends a request on a channel from `connect` and awaits the reply.
    public func call(_ ch: Channel, opcode: UInt16, payload: [UInt8] = [],
                     timeout: Duration = .seconds(5)) async throws -> Reply {
        try await loop.onLoop { try await self.loop.call(ch, opcode: opcode, payload: payload, timeout: timeout) }
    }

    /// A call sent ahead (FOS_MSG_AHEAD): a server that takes it so serves
    /// it before every request it gets later, from any channel
    /// (AheadOrder.swift). The caller may go on before the reply comes.
    public func callAhead(_ ch: Channel, opcode: UInt16, payload: [UInt8] = [],
                          timeout: Duration = .seconds(5)) async throws -> Reply {
        try await loop.onLoop {
            try await self.loop.call(ch, opcode: opcode, payload: payload, timeout: timeout, flags: UInt32(FOS_MSG_AHEAD))
        }
    }

    /// Sends a message that gets no reply.
    public func post(_ ch: Channel, opcode: UInt16, payload: [UInt8] = []) async throws {
        _ = try await loop.onLoop {
            try await self.loop.call(ch, opcode: opcode, payload: payload, timeout: .seconds(1), oneway: true)
        }
    }

    /// Runs `f` on the loop once `ch` closes (at once if it already has).
    public func whenClosed(_ ch: Channel, _ f: @escaping @Sendable (Channel) -> Void) async throws {
        try await loop.onLoop { self.loop.observeClose(ch, f) }
    }

    /// Closes a channel from this side.
    public func close(_ ch: Channel) async throws {
        try await loop.onLoop {
            if let e = self.loop.st.entries[ch.id] { self.loop.drop(e, reason: "closed") }
        }
    }

    // MARK: Control queries (fosctl)

    /// Sends a control request whose reply is JSON text.
    public func query(_ op: Int32, _ text: String = "") throws -> String {
        let r = try control.request(op, payload: Array(text.utf8))
        r.closeFDs()
        return String(decoding: r.payload, as: UTF8.self)
    }
}
