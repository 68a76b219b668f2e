import CFosSys
import CFosWire
import FosCore
import Foundation
import SystemPackage

extension Node {
    static let maxMailboxesPerConn = 1024
    static let maxChannelsPerConn = 4096
    static let maxChannelsPerPair = 128
    /// Each channel costs its server two descriptors: stay well inside a
    /// default RLIMIT_NOFILE (which libfos raises to the hard limit).
    static let maxChannelsPerOwner = 8192
    static let maxChannelsPerUIDPerOwner = 1024

    func handleRequest(_ c: Conn, _ msg: ControlMessage) {
        let op = Int(msg.header.op)
        if op == FOS_CTL_ATTACH {
            return attach(c, msg)
        }
        if op == FOS_CTL_DEPOSIT {
            return deposit(c, msg)
        }
        if !c.hello && op != FOS_CTL_HELLO {
            reply(c, msg, status: EPERM)
            return
        }
        switch op {
        case FOS_CTL_HELLO: hello(c, msg)
        case FOS_CTL_MAILBOX_CREATE: createMailbox(c, msg)
        case FOS_CTL_MAILBOX_DESTROY: destroyMailbox(c, msg)
        case FOS_CTL_CONNECT: connect(c, msg)
        case FOS_CTL_NAME_SERVICE:
            guard let m = nameService else { return reply(c, msg, status: EAGAIN) }
            var p = [UInt8]()
            appendStruct(fos_mailbox_addr(node: nodeID, mailbox: m), to: &p)
            reply(c, msg, payload: p)
        case FOS_CTL_STATUS: replyJSON(c, msg, status())
        case FOS_CTL_FLEETS: replyJSON(c, msg, supervisor.memberInfos())
        case FOS_CTL_KILL: killMember(c, msg)
        case FOS_CTL_FETCH: fetch(c, msg)
        default:
            rejected &+= 1
            reply(c, msg, status: EOPNOTSUPP)
        }
    }

    func replyJSON<T: Encodable>(_ c: Conn, _ msg: ControlMessage, _ v: T) {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        guard let d = try? enc.encode(v), d.count <= Int(FOS_MAX_PAYLOAD) else { return reply(c, msg, status: E2BIG) }
        reply(c, msg, payload: Array(d))
    }

    func hello(_ c: Conn, _ msg: ControlMessage) {
        if c.hello { return reply(c, msg, status: EALREADY) }
        // The stats page: written by the process, read by fosd and the name service.
        let fd = fos_sys_memfd("fos-stats")
        guard fd >= 0, ftruncate(fd, 4096) == 0, fos_sys_seal_size(fd) == 0,
              let p = fos_sys_map_shared(fd, MemoryLayout<fos_stats_page>.size, 1)
        else {
            closeFD(fd)
            return reply(c, msg, status: ENOMEM)
        }
        let s = p.assumingMemoryBound(to: fos_stats_page.self)
        s.pointee.magic = FOS_STATS_MAGIC
        s.pointee.version = 1
        c.stats = s
        c.statsFD = fd
        c.hello = true
        // Membership is attested by pid: fosd started this very process.
        if let m = supervisor.member(pid: c.pid), c.acceptedAt > m.startedAt {
            c.member = m
            m.conn = c
        }
        var r = fos_ctl_hello_reply()
        r.node = nodeID
        r.core = c.member?.core ?? -1
        r.member_index = c.member.map { UInt32($0.index) } ?? UInt32.max
        r.ring_bytes = config.ringBytes
        let fleet = Array((c.member?.fleet.name ?? "").utf8)
        r.fleet_len = UInt32(fleet.count)
        if let m = c.member { r.fleet_key = m.fleet.key.wire }
        var payload = [UInt8]()
        appendStruct(r, to: &payload)
        payload += fleet
        reply(c, msg, payload: payload, fds: [fd])
    }

    func createMailbox(_ c: Conn, _ msg: ControlMessage) {
        guard let req = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_mailbox_create.self, from: $0) }),
              msg.payload.count == MemoryLayout<fos_ctl_mailbox_create>.size
        else { return reply(c, msg, status: EINVAL) }
        let known = UInt32(FOS_MBOX_PUBLIC | FOS_MBOX_FLEET_INTERNAL | FOS_MBOX_SAME_UID | FOS_MBOX_NAME_SERVICE)
        guard req.flags & ~known == 0 else { return reply(c, msg, status: EINVAL) }
        guard c.mailboxes.count < Node.maxMailboxesPerConn else { return reply(c, msg, status: EMFILE) }
        let key = Capability(wire: req.key)
        if req.flags & UInt32(FOS_MBOX_FLEET_INTERNAL) != 0 && c.member == nil {
            return reply(c, msg, status: EPERM)
        }
        if req.flags & UInt32(FOS_MBOX_PUBLIC) == 0 && key.isNone {
            return reply(c, msg, status: EINVAL)  // a keyed mailbox needs a real key
        }
        if req.flags & UInt32(FOS_MBOX_NAME_SERVICE) != 0 {
            guard c.member?.fleet.name == "/sys/name" else { return reply(c, msg, status: EPERM) }
        }
        let id = nextMailbox
        nextMailbox += 1
        mailboxes[id] = MailboxRec(id: id, owner: c.fd, key: key, flags: req.flags)
        c.mailboxes.insert(id)
        if req.flags & UInt32(FOS_MBOX_NAME_SERVICE) != 0 { nameService = id }
        var p = [UInt8]()
        appendStruct(fos_ctl_mailbox_reply(mailbox: id), to: &p)
        reply(c, msg, payload: p)
    }

    func destroyMailbox(_ c: Conn, _ msg: ControlMessage) {
        guard let req = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_mailbox_reply.self, from: $0) }),
              c.mailboxes.contains(req.mailbox)
        else { return reply(c, msg, status: ENOENT) }
        c.mailboxes.remove(req.mailbox)
        mailboxes[req.mailbox] = nil
        if nameService == req.mailbox { nameService = nil }
        for (id, ch) in channels where ch.mailbox == req.mailbox { endChannel(id, by: c.fd) }
        reply(c, msg)
    }

    /// The capability check, then a channel: memfd with two rings and two
    /// eventfds, given to both ends over SCM_RIGHTS.
    func connect(_ c: Conn, _ msg: ControlMessage) {
        guard let req = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_connect.self, from: $0) }),
              msg.payload.count == MemoryLayout<fos_ctl_connect>.size
        else { return reply(c, msg, status: EINVAL) }
        // Remote mailboxes are reached through the proxy (later); the API is the same.
        guard req.addr.node == nodeID else { return reply(c, msg, status: EHOSTUNREACH) }
        guard let mb = mailboxes[req.addr.mailbox], let owner = conns[mb.owner] else {
            return reply(c, msg, status: ENOENT)
        }
        if mb.flags & UInt32(FOS_MBOX_PUBLIC) == 0 && !(Capability(wire: req.key) == mb.key) {
            rejected &+= 1
            return reply(c, msg, status: EACCES)
        }
        if mb.flags & UInt32(FOS_MBOX_FLEET_INTERNAL) != 0 && (c.member == nil || c.member?.fleet !== owner.member?.fleet) {
            rejected &+= 1
            return reply(c, msg, status: EACCES)
        }
        if mb.flags & UInt32(FOS_MBOX_SAME_UID) != 0 && c.uid != owner.uid && c.uid != 0 {
            rejected &+= 1
            return reply(c, msg, status: EACCES)
        }
        // Quotas: per client, per (client, owner) pair, and per owner — so one
        // client cannot use up a server's descriptors for everyone else.
        let trusted = c.uid == 0 || c.uid == myUID
        guard c.channels.count < Node.maxChannelsPerConn, owner.channels.count < Node.maxChannelsPerOwner,
              c.channelsTo[owner.fd, default: 0] < Node.maxChannelsPerPair,
              trusted || owner.channelsFromUID[c.uid, default: 0] < Node.maxChannelsPerUIDPerOwner
        else {
            return reply(c, msg, status: EMFILE)
        }
        let ring = config.ringBytes
        let mem = fos_sys_memfd("fos-chan")
        let efdServer = fos_sys_eventfd()
        let efdClient = fos_sys_eventfd()
        var extra: CInt = -1
        defer {
            closeFD(mem); closeFD(efdServer); closeFD(efdClient); closeFD(extra)
        }
        guard mem >= 0, efdServer >= 0, efdClient >= 0, ftruncate(mem, off_t(fos_chan_size(ring))) == 0,
              fos_sys_seal_size(mem) == 0  // a peer that could shrink it would crash the other with SIGBUS
        else {
            return reply(c, msg, status: ENOMEM)
        }
        if let p = fos_sys_map_shared(mem, 4096, 1) {
            let shm = p.assumingMemoryBound(to: fos_chan_shm.self)
            shm.pointee.magic = FOS_CHAN_MAGIC
            shm.pointee.version = FOS_WIRE_VERSION
            shm.pointee.ring_bytes = ring
            _ = fos_sys_unmap(p, 4096)
        }
        let id = nextChannel
        nextChannel += 1

        // Tell the owner who is calling: credentials from the kernel, not the message.
        var toOwner = fos_ctl_channel()
        toOwner.channel = id
        toOwner.mailbox = mb.id
        toOwner.ring_bytes = ring
        toOwner.pid = c.pid
        toOwner.uid = c.uid
        toOwner.gid = c.gid
        toOwner.sender_core = c.member?.core ?? -1
        let fleet = Array((c.member?.fleet.name ?? "").utf8)
        toOwner.fleet_len = UInt32(fleet.count)
        var p1 = [UInt8]()
        appendStruct(toOwner, to: &p1)
        p1 += fleet
        var ownerFDs = [mem, efdServer, efdClient]
        if mb.id == nameService, c.statsFD >= 0 {
            // The name service reads live queue lengths: a read-only view of the page.
            extra = open("/proc/self/fd/\(c.statsFD)", O_RDONLY | O_CLOEXEC)
            if extra >= 0 { ownerFDs.append(extra) }
        }
        guard deliver(owner, ControlMessage.encode(op: Int32(FOS_CTL_NEW_CHANNEL), requestID: 0, payload: p1),
                      fds: ownerFDs)
        else { return reply(c, msg, status: ECONNREFUSED) }
        channels[id] = ChannelRec(id: id, mailbox: mb.id, client: c.fd, server: owner.fd, clientUID: c.uid)
        c.channels.insert(id)
        c.channelsTo[owner.fd, default: 0] += 1
        owner.channelsFromUID[c.uid, default: 0] += 1
        owner.channels.insert(id)

        var toClient = fos_ctl_channel()
        toClient.channel = id
        toClient.mailbox = mb.id
        toClient.ring_bytes = ring
        toClient.pid = owner.pid
        toClient.uid = owner.uid
        toClient.gid = owner.gid
        toClient.sender_core = owner.member?.core ?? -1
        var p2 = [UInt8]()
        appendStruct(toClient, to: &p2)
        reply(c, msg, payload: p2, fds: [mem, efdServer, efdClient])
    }

    /// A bulk region for a channel: the client's size-sealed memfd, passed to
    /// the server side. Only the channel's client may attach, to its own channel.
    func attach(_ c: Conn, _ msg: ControlMessage) {
        defer { msg.closeFDs() }
        guard c.hello, msg.fds.count == 1,
              let a = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_attach.self, from: $0) }),
              msg.payload.count == MemoryLayout<fos_ctl_attach>.size
        else { return reply(c, msg, status: EINVAL) }
        guard let ch = channels[a.channel], ch.client == c.fd, let server = conns[ch.server] else {
            return reply(c, msg, status: ENOENT)
        }
        var st = stat()
        guard a.slot < FOS_MAX_ATTACH_SLOTS, a.bytes > 0, a.bytes % 4096 == 0, a.bytes <= FOS_MAX_ATTACH_BYTES,
              fos_sys_check_sealed(msg.fds[0]) == 0, fstat(msg.fds[0], &st) == 0, UInt64(st.st_size) == a.bytes
        else {
            rejected &+= 1
            return reply(c, msg, status: EINVAL)
        }
        var p = [UInt8]()
        appendStruct(a, to: &p)
        guard deliver(server, ControlMessage.encode(op: Int32(FOS_CTL_ATTACHED), requestID: 0, payload: p),
                      fds: [msg.fds[0]])
        else { return reply(c, msg, status: ECONNREFUSED) }
        reply(c, msg)
    }

    /// A descriptor held for one process (FOS_CTL_DEPOSIT): the giver chose
    /// the tag at random and told the taker; only the taker's pid, as the
    /// kernel attests it, gets it, once. Givers are fleet members, root and
    /// the node's owner: anyone else could use up a taker's quota.
    func deposit(_ c: Conn, _ msg: ControlMessage) {
        guard c.member != nil || c.uid == 0 || c.uid == myUID else {
            msg.closeFDs()
            rejected &+= 1
            return reply(c, msg, status: EPERM)
        }
        guard c.hello, msg.fds.count == 1,
              msg.payload.count == MemoryLayout<fos_ctl_deposit>.size,
              let d = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_deposit.self, from: $0) }), d.pid > 0
        else {
            msg.closeFDs()
            rejected &+= 1
            return reply(c, msg, status: EINVAL)
        }
        sweepDeposits()
        let tag = withUnsafeBytes(of: d.tag) { Array($0) }
        // Counted per taker (one that never fetches blocks only itself)
        // and per giver (bounds what one process makes fosd hold).
        var forTaker = 0, fromGiver = 0
        for e in deposits.values {
            if e.pid == d.pid { forTaker += 1 }
            if e.giver == c.fd { fromGiver += 1 }
        }
        guard deposits[tag] == nil, forTaker < Int(FOS_DEPOSIT_MAX_PER_PID),
              fromGiver < Int(FOS_DEPOSIT_MAX_PER_CONN)
        else {
            msg.closeFDs()
            return reply(c, msg, status: deposits[tag] == nil ? EAGAIN : EEXIST)
        }
        deposits[tag] = Deposit(fd: msg.fds[0], pid: d.pid, giver: c.fd,
                                expires: monotonicNanos() &+ UInt64(FOS_DEPOSIT_TTL_MS) * 1_000_000)
        reply(c, msg)
    }

    func fetch(_ c: Conn, _ msg: ControlMessage) {
        guard msg.payload.count == MemoryLayout<fos_ctl_fetch>.size,
              let f = msg.payload.withUnsafeBytes({ loadStruct(fos_ctl_fetch.self, from: $0) })
        else {
            rejected &+= 1
            return reply(c, msg, status: EINVAL)
        }
        sweepDeposits()
        let tag = withUnsafeBytes(of: f.tag) { Array($0) }
        // Someone else's tag reads as no tag: a guess learns nothing.
        guard let d = deposits[tag], d.pid == c.pid else { return reply(c, msg, status: ENOENT) }
        deposits[tag] = nil
        reply(c, msg, fds: [d.fd])
        closeFD(d.fd)
    }

    func sweepDeposits() {
        let now = monotonicNanos()
        for (tag, d) in deposits where d.expires <= now {
            closeFD(d.fd)
            deposits[tag] = nil
        }
    }

    func status() -> NodeStatus {
        NodeStatus(node: String(nodeID, radix: 16), pid: getpid(), runtimeDir: config.runtimeDir,
                   stateDir: config.stateDir, uptimeSeconds: Date().timeIntervalSince(started),
                   cores: Int(fos_sys_cpu_count()), connections: conns.count, mailboxes: mailboxes.count,
                   channels: channels.count, members: supervisor.members.count, nameService: nameService != nil,
                   rejectedMessages: rejected)
    }

    /// `fosctl kill`: for testing supervision. Owner of the node or root only.
    func killMember(_ c: Conn, _ msg: ControlMessage) {
        guard c.uid == 0 || c.uid == myUID else { return reply(c, msg, status: EPERM) }
        let spec = String(decoding: msg.payload, as: UTF8.self)
        guard let m = supervisor.find(spec), m.pid > 0 else { return reply(c, msg, status: ESRCH) }
        let pid = m.pid
        _ = fos_sys_pidfd_kill(m.pidfd, SIGKILL)
        replyJSON(c, msg, KillResult(member: m.label, pid: pid))
    }
}

struct Deposit {
    var fd: CInt
    var pid: Int32
    /// The giving connection (its quota).
    var giver: CInt
    /// monotonic ns
    var expires: UInt64
}
