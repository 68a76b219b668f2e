import CFosSys
import CFosWire
@testable import FosCore  // Channel.base / wakeFD: the ring-corruption test writes into the shared memory
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

// MARK: - A raw control-socket client that speaks (or mangles) the protocol by hand

final class RawControl {
    let fd: CInt
    let path: String

    init(_ path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: errno \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let u = Array(path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            p.copyBytes(from: u)
            p[u.count] = 0
        }
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
        if r != 0 {
            let e = errno
            Glibc.close(fd)
            throw TestFailure("connect \(path): errno \(e)")
        }
    }

    deinit { Glibc.close(fd) }

    /// Sends one datagram (MSG_NOSIGNAL); bytes sent or -errno.
    @discardableResult
    func send(_ bytes: [UInt8], fds: [CInt] = []) -> Int {
        bytes.withUnsafeBytes { b in
            fds.withUnsafeBufferPointer { f in
                fos_sys_send(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count))
            }
        }
    }

    enum Outcome {
        case reply(fos_ctl_hdr, [UInt8])
        case closed
        case timeout
        case junk(Int)
    }

    /// Next datagram from fosd (descriptors it carries are closed).
    func receive(timeoutMs: Int32 = 3000) -> Outcome {
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        var pr: Int32
        repeat { pr = poll(&pfd, 1, timeoutMs) } while pr < 0 && errno == EINTR
        if pr == 0 { return .timeout }
        var buf = [UInt8](repeating: 0, count: Int(FOS_CTL_MAX_DATAGRAM) + 64)
        var fds = [CInt](repeating: -1, count: Int(FOS_SYS_MAX_FDS))
        var nfds: Int32 = 0
        let n = buf.withUnsafeMutableBytes { b in
            fds.withUnsafeMutableBufferPointer { f in
                fos_sys_recv(fd, b.baseAddress, b.count, f.baseAddress, Int32(f.count), &nfds, 1)
            }
        }
        for i in 0..<Int(max(0, nfds)) { closeFD(fds[i]) }
        if n == 0 || n == -Int(ECONNRESET) || n == -Int(EPIPE) { return .closed }
        if n < 0 { return .junk(n) }
        guard let h = buf.withUnsafeBytes({ loadStruct(fos_ctl_hdr.self, from: UnsafeRawBufferPointer(rebasing: $0[0..<n])) })
        else { return .junk(n) }
        return .reply(h, Array(buf[MemoryLayout<fos_ctl_hdr>.size..<n]))
    }

    /// A well-formed request; `version`/`len` can be forged.
    static func datagram(op: Int32, rid: UInt64, payload: [UInt8] = [], version: UInt16 = UInt16(FOS_WIRE_VERSION),
                         len: UInt32? = nil) -> [UInt8] {
        let h = fos_ctl_hdr(version: version, op: UInt16(truncatingIfNeeded: op),
                            len: len ?? UInt32(MemoryLayout<fos_ctl_hdr>.size + payload.count),
                            request_id: rid, status: 0, reserved: 0)
        var out = [UInt8]()
        appendStruct(h, to: &out)
        return out + payload
    }

    func request(_ op: Int32, rid: UInt64, payload: [UInt8] = []) -> Outcome {
        let n = send(RawControl.datagram(op: op, rid: rid, payload: payload))
        if n < 0 { return n == -Int(EPIPE) || n == -Int(ECONNRESET) ? .closed : .junk(n) }
        return receive()
    }

    func hello() throws {
        guard case .reply(let h, _) = request(Int32(FOS_CTL_HELLO), rid: 1), h.status == 0 else {
            throw TestFailure("HELLO refused on a raw connection")
        }
    }
}

func randomBytes(_ n: Int) -> [UInt8] {
    var g = SystemRandomNumberGenerator()
    return (0..<n).map { _ in UInt8.random(in: 0...255, using: &g) }
}

/// fosd must refuse: an error status, or closing the connection.
func expectRefused(_ outcome: RawControl.Outcome, _ what: String, status: Int32? = nil, rid: UInt64? = nil,
                   sourceLocation: SourceLocation = #_sourceLocation) {
    switch outcome {
    case .closed:
        if let status { Issue.record("\(what): expected status \(status), fosd closed the connection", sourceLocation: sourceLocation) }
    case .reply(let h, _):
        #expect(h.status != 0, "\(what): fosd accepted it", sourceLocation: sourceLocation)
        if let status { #expect(h.status == status, "\(what): status \(h.status)", sourceLocation: sourceLocation) }
        if let rid { #expect(h.request_id == rid, "\(what): reply to request \(h.request_id)", sourceLocation: sourceLocation) }
    case .timeout:
        Issue.record("\(what): fosd neither answered nor closed the connection", sourceLocation: sourceLocation)
    case .junk(let n):
        Issue.record("\(what): unexpected receive result \(n)", sourceLocation: sourceLocation)
    }
}

func expectClosed(_ outcome: RawControl.Outcome, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    guard case .closed = outcome else {
        Issue.record("\(what): fosd kept the connection (\(outcome))", sourceLocation: sourceLocation)
        return
    }
}

/// Socket files in a directory.
func socketFiles(in dir: String) -> [String] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
    return names.map { dir + "/" + $0 }.filter { p in
        var st = stat()
        return lstat(p, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK
    }.sorted()
}

/// One good ECHO through the name: the node still serves.
func expectServing(_ rt: FosRuntime, _ tag: String, sourceLocation: SourceLocation = #_sourceLocation) async {
    let p = Array("still serving after \(tag)".utf8)
    do {
        let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p, timeout: .seconds(3))
        #expect(r.status == 0 && r.payload == p, "after \(tag): bad echo", sourceLocation: sourceLocation)
    } catch {
        Issue.record("after \(tag): echo failed: \(error)", sourceLocation: sourceLocation)
    }
}

func ctlPayload<T>(_ v: T) -> [UInt8] {
    var p = [UInt8]()
    appendStruct(v, to: &p)
    return p
}

// MARK: - Tests

@Suite("Hostile clients", .timeLimit(.minutes(2)))
struct HostileTests {
    @Test("CONNECT with no key or a wrong key: EACCES, for external and internal mailboxes")
    func wrongKeys() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            let before = try await node.status().rejectedMessages
            let entries = try await node.echoEntries(rt)
            let external = entries.filter { !$0.isInternal }
            let internals = entries.filter(\.isInternal)
            #expect(external.count == 2 && internals.count == 2)
            #expect(entries.allSatisfy { $0.key.isNone }, "a listing must never carry keys")

            var refusals = 0
            // a. External mailboxes: no key, random keys.
            for e in external {
                for key in [Capability.none, Capability.random(), Capability.random()] {
                    do {
                        let ch = try await rt.connect(e.addr, key: key)
                        Issue.record("connected to \(e.addr) with \(key): channel \(ch.id)")
                    } catch {
                        #expect(remoteErrno(error) == EACCES, "\(e.addr) with \(key): \(error)")
                        refusals += 1
                    }
                }
            }
            await expectServing(rt, "wrong external keys")
            // b. Internal mailboxes, from a non-member: random keys, no key, and the
            // (genuine) external key of the same member.
            for e in internals {
                let extKey = try await eventually("a lookup of the member \(e.pid)", timeout: .seconds(3), every: .zero) {
                    let x = try await rt.lookup("/app/echo")
                    return x.pid == e.pid ? x.key : nil
                }
                #expect(try await rt.lookup("/app/echo", fleetInternal: true).key.isNone, "internal lookups withhold the key")
                for key in [Capability.random(), Capability.none, extKey] {
                    do {
                        let ch = try await rt.connect(e.addr, key: key)
                        Issue.record("a non-member connected to the internal mailbox \(e.addr): channel \(ch.id)")
                    } catch {
                        #expect(remoteErrno(error) == EACCES, "internal \(e.addr) with \(key): \(error)")
                        refusals += 1
                    }
                }
                // A non-member cannot call the fleet-internal name either.
                do {
                    let r = try await rt.call(name: "/app/echo", opcode: opWhoami, fleetInternal: true, attempts: 1)
                    Issue.record("a non-member called the internal mailbox (status \(r.status))")
                } catch {
                    #expect(remoteErrno(error) == EACCES, "\(error)")
                    refusals += 1
                }
            }
            await expectServing(rt, "wrong internal keys")
            // Addresses that do not exist.
            let some = try #require(external.first)
            for (addr, want) in [(MailboxAddress(node: some.addr.node, mailbox: 999_999), ENOENT),
                                 (MailboxAddress(node: some.addr.node ^ 0x5a5a, mailbox: some.addr.mailbox), EHOSTUNREACH)] {
                do {
                    _ = try await rt.connect(addr, key: .random())
                    Issue.record("connected to \(addr)")
                } catch {
                    #expect(remoteErrno(error) == want, "\(addr): \(error)")
                }
            }
            let after = try await node.status()
            #expect(after.rejectedMessages >= before + UInt64(refusals), "rejected \(before) -> \(after.rejectedMessages), \(refusals) refusals")
            #expect(after.nameService)
            await expectServing(rt, "all refusals")
        }
    }

    @Test("raw control-socket abuse: garbage, forged headers, bad requests, descriptors, floods")
    func controlSocketAbuse() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            await expectServing(rt, "start")
            let entries = try await node.echoEntries(rt)
            let e = try await rt.lookup("/app/echo")
            let good = try await rt.connect(e.addr, key: e.key)
            let fosd = node.pid
            let base = try node.quickStatus(rt)
            let baseFDs = openFDCount(fosd)
            var malformed = 0

            let sockets = socketFiles(in: node.runtimeDir)
            #expect(sockets.contains(node.socketPath), "socket files: \(sockets)")
            for path in sockets {
                let name = (path as NSString).lastPathComponent
                // Random bytes of many lengths, on fresh connections and after HELLO.
                for len in [0, 1, 7, 23, 24, 25, 64, 1000, 4096, 65_535, 65_600, 65_601, 70_000] {
                    for afterHello in [false, true] {
                        let c = try RawControl(path)
                        if afterHello { try c.hello() }
                        let sent = c.send(randomBytes(len))
                        if sent < 0 {
                            // Too big for the socket: refused locally, fine.
                            #expect(sent == -Int(EMSGSIZE) || sent == -Int(ENOBUFS), "\(name) send \(len): \(sent)")
                            continue
                        }
                        if len > 0 { malformed += 1 }
                        expectClosed(c.receive(), "\(name): \(len) random bytes\(afterHello ? " after HELLO" : "")")
                    }
                }
                await expectServing(rt, "random bytes on \(name)")
                // A wrong version, and lengths that disagree with the datagram.
                let forged: [(String, [UInt8])] = [
                    ("version 2", RawControl.datagram(op: Int32(FOS_CTL_HELLO), rid: 7, version: 2)),
                    ("version 0", RawControl.datagram(op: Int32(FOS_CTL_STATUS), rid: 7, version: 0)),
                    ("len too big", RawControl.datagram(op: Int32(FOS_CTL_HELLO), rid: 7, len: 32)),
                    ("len too small", RawControl.datagram(op: Int32(FOS_CTL_HELLO), rid: 7, payload: [1, 2, 3, 4], len: 24)),
                    ("len 0", RawControl.datagram(op: Int32(FOS_CTL_HELLO), rid: 7, len: 0)),
                    ("len huge", RawControl.datagram(op: Int32(FOS_CTL_HELLO), rid: 7, len: .max)),
                    ("op 0", RawControl.datagram(op: 0, rid: 7)),
                ]
                for (what, bytes) in forged {
                    for afterHello in [false, true] {
                        let c = try RawControl(path)
                        if afterHello { try c.hello() }
                        #expect(c.send(bytes) == bytes.count)
                        malformed += 1
                        expectRefused(c.receive(), "\(name): \(what)\(afterHello ? " after HELLO" : "")")
                    }
                }
                await expectServing(rt, "forged headers on \(name)")
                // Datagrams with descriptors attached: fosd must close them.
                do {
                    let c = try RawControl(path)
                    try c.hello()
                    var efds = (0..<6).map { _ in fos_sys_eventfd() }
                    defer { efds.forEach(closeFD) }
                    for i in 0..<50 {
                        let n = c.send(RawControl.datagram(op: Int32(FOS_CTL_STATUS), rid: UInt64(100 + i)), fds: efds)
                        #expect(n > 0)
                        guard case .reply(let h, let body) = c.receive() else {
                            Issue.record("\(name): no STATUS reply with descriptors attached")
                            break
                        }
                        #expect(h.status == 0 && h.request_id == UInt64(100 + i))
                        #expect((try? JSONDecoder().decode(NodeStatus.self, from: Data(body))) != nil)
                    }
                    let g = try RawControl(path)
                    #expect(g.send(randomBytes(40), fds: efds) == 40)
                    malformed += 1
                    expectClosed(g.receive(), "\(name): garbage with descriptors")
                    efds.forEach(closeFD)
                    efds = []
                }
            }

            // Protocol-aware abuse on fosd.sock.
            do {
            let c = try RawControl(node.socketPath)
            expectRefused(c.request(Int32(FOS_CTL_STATUS), rid: 2), "STATUS before HELLO", status: EPERM, rid: 2)
            expectRefused(c.request(Int32(FOS_CTL_CONNECT), rid: 3, payload: randomBytes(40)), "CONNECT before HELLO", status: EPERM, rid: 3)
            try c.hello()
            expectRefused(c.request(Int32(FOS_CTL_HELLO), rid: 4), "second HELLO", status: EALREADY, rid: 4)
            // CONNECT with a truncated, an empty and an oversized payload.
            var conn = fos_ctl_connect()
            conn.addr = e.addr.wire
            conn.key = e.key.wire
            let full = ctlPayload(conn)
            expectRefused(c.request(Int32(FOS_CTL_CONNECT), rid: 5, payload: Array(full.prefix(10))), "truncated CONNECT", status: EINVAL, rid: 5)
            expectRefused(c.request(Int32(FOS_CTL_CONNECT), rid: 6, payload: []), "empty CONNECT", status: EINVAL, rid: 6)
            expectRefused(c.request(Int32(FOS_CTL_CONNECT), rid: 7, payload: full + [0]), "long CONNECT", status: EINVAL, rid: 7)
            // Unknown ops, including ones only fosd may send.
            let rejectedBefore = try node.quickStatus(rt).rejectedMessages
            for (i, op) in [200, 31, 32, 33, 0xffff].enumerated() {
                expectRefused(c.request(Int32(op), rid: UInt64(10 + i)), "op \(op)", status: EOPNOTSUPP, rid: UInt64(10 + i))
            }
            #expect(try node.quickStatus(rt).rejectedMessages >= rejectedBefore + 5)
            // Mailboxes a stranger may not create.
            for (what, flags, key, want) in [
                ("name-service mailbox", UInt32(FOS_MBOX_NAME_SERVICE | FOS_MBOX_PUBLIC), Capability.random(), EPERM),
                ("fleet-internal mailbox", UInt32(FOS_MBOX_FLEET_INTERNAL), Capability.random(), EPERM),
                ("unknown flags", UInt32(0x80), Capability.random(), EINVAL),
                ("keyed mailbox without a key", UInt32(0), Capability.none, EINVAL),
            ] {
                var m = fos_ctl_mailbox_create()
                m.key = key.wire
                m.flags = flags
                expectRefused(c.request(Int32(FOS_CTL_MAILBOX_CREATE), rid: 20, payload: ctlPayload(m)), what, status: want, rid: 20)
            }
            expectRefused(c.request(Int32(FOS_CTL_MAILBOX_CREATE), rid: 21, payload: [1, 2, 3]), "short MAILBOX_CREATE", status: EINVAL, rid: 21)
            // Other processes' mailboxes cannot be destroyed.
            for x in entries {
                expectRefused(c.request(Int32(FOS_CTL_MAILBOX_DESTROY), rid: 30, payload: ctlPayload(fos_ctl_mailbox_reply(mailbox: x.addr.mailbox))),
                              "destroying \(x.addr)", status: ENOENT, rid: 30)
            }
            // Nor other processes' channels closed (notifications get no answer).
            for id in UInt64(0)..<512 {
                #expect(c.send(RawControl.datagram(op: Int32(FOS_CTL_CHANNEL_CLOSE), rid: 0,
                                                   payload: ctlPayload(fos_ctl_channel_close(channel: id)))) > 0)
            }
            // fosd answers in order after all that.
            if case .reply(let sh, _) = c.request(Int32(FOS_CTL_STATUS), rid: 40) {
                #expect(sh.status == 0 && sh.request_id == 40)
            } else {
                Issue.record("no STATUS after the CHANNEL_CLOSE forgeries")
            }
            #expect(!good.isClosed, "a stranger closed our channel")
            let r = try await rt.call(good, opcode: opEcho, payload: [9, 9, 9])
            #expect(r.status == 0 && r.payload == [9, 9, 9])

            // A flood of requests without reading the replies: fosd answers a
            // bounded number, then stops reading this connection (backpressure)
            // until the replies are read, and keeps serving everyone else. The
            // flooder sends without blocking, until its socket is full.
            _ = fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK)
            var flood = 0
            for i in 0..<3000 {
                let n = c.send(RawControl.datagram(op: Int32(FOS_CTL_MAILBOX_DESTROY), rid: UInt64(1000 + i),
                                                   payload: ctlPayload(fos_ctl_mailbox_reply(mailbox: 0))))
                if n < 0 { break }
                flood += 1
            }
            #expect(flood >= 64, "only \(flood) requests went out")
            _ = fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) & ~O_NONBLOCK)
            await expectServing(rt, "a flood of unread requests")
            var got = 0
            var inOrder = true
            read: while got < flood {
                switch c.receive() {
                case .reply(let h, _):
                    if h.request_id != UInt64(1000 + got) || h.status != ENOENT { inOrder = false }
                    got += 1
                case .closed: break read
                case .timeout, .junk: break read
                }
            }
            #expect(got == flood, "\(got) of \(flood) replies")
            #expect(inOrder, "replies out of order or wrong")

            // Many idle connections, then gone.
            var idle: [RawControl] = []
            for _ in 0..<200 { idle.append(try RawControl(node.socketPath)) }
            try await eventually("fosd to count the idle connections", timeout: .seconds(3)) {
                try node.quickStatus(rt).connections >= base.connections + 200 ? true : nil
            }
            idle.removeAll()
            }

            // Still alive, still serving, every abusive connection forgotten and its descriptors closed.
            #expect(!node.fosdExited(), "fosd died; log:\n\(node.log)")
            let settled = try await eventually("fosd to forget the abusive connections", timeout: .seconds(5)) { () -> NodeStatus? in
                let s = try node.quickStatus(rt)
                return s.connections == base.connections ? s : nil
            }
            #expect(settled.channels == base.channels)
            #expect(settled.mailboxes == base.mailboxes)
            #expect(settled.nameService)
            let after = try await node.status()
            #expect(after.rejectedMessages >= base.rejectedMessages + UInt64(malformed),
                    "rejected \(base.rejectedMessages) -> \(after.rejectedMessages), \(malformed) malformed sent")
            try await eventually("fosd's descriptors back to \(baseFDs)", timeout: .seconds(3)) {
                openFDCount(fosd) == baseFDs ? true : nil
            }
            await expectServing(rt, "control socket abuse")
            let cli = try await node.fosctl(["call", "/app/echo", "echo", "cli-after-abuse"])
            #expect(cli.status == 0 && cli.stdout.hasPrefix("cli-after-abuse ("))
            #expect(try await node.fleets().allSatisfy { $0.restarts == 0 })
        }
    }

    @Test("forged messages on a real channel get error replies; the member keeps answering")
    func forgedChannelMessages() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            let e = try await rt.lookup("/app/echo")
            let ch = try rt.connectDetached(e.addr, key: e.key)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(FOS_MAX_PAYLOAD) + 64, alignment: 16)
            defer { buf.deallocate() }
            let hsize = MemoryLayout<fos_msg_hdr>.size

            func send(_ h: fos_msg_hdr, _ payload: [UInt8]) throws {
                let r = try payload.withUnsafeBytes { try ch.trySend(h, $0) }
                #expect(r == .sent)
            }
            func next() throws -> (fos_msg_hdr, [UInt8]) {
                let n = try ch.receiveBlocking(into: buf, deadline: monotonicNanos() + 3_000_000_000)
                ch.release()
                let h = try #require(loadStruct(fos_msg_hdr.self, from: UnsafeRawBufferPointer(rebasing: buf[0..<n])))
                return (h, Array(buf[hsize..<n]))
            }
            func hdr(version: UInt16 = UInt16(FOS_WIRE_VERSION), opcode: UInt16 = opEcho, flags: UInt32 = 0,
                     rid: UInt64, len: UInt32, status: Int32 = 0) -> fos_msg_hdr {
                fos_msg_hdr(version: version, opcode: opcode, flags: flags, request_id: rid, payload_len: len, status: status)
            }
            func goodEcho(_ rid: UInt64) throws {
                let p = Array("good \(rid)".utf8)
                try send(hdr(rid: rid, len: UInt32(p.count)), p)
                let (h, body) = try next()
                #expect(h.request_id == rid && h.opcode == opEcho && h.status == 0 && body == p,
                        "good echo \(rid): got op \(h.opcode) rid \(h.request_id) status \(h.status)")
                #expect(h.flags & UInt32(FOS_MSG_REPLY) != 0)
            }

            try goodEcho(1)
            let small = Array("abcdefghij".utf8)
            let cases: [(String, fos_msg_hdr, [UInt8], Int32)] = [
                ("bad version", hdr(version: 9, rid: 101, len: 10), small, EPROTO),
                ("version 0", hdr(version: 0, rid: 102, len: 10), small, EPROTO),
                ("opcode 0", hdr(opcode: 0, rid: 103, len: 10), small, EPROTO),
                ("payload_len larger than the record", hdr(rid: 104, len: 100), small, EBADMSG),
                ("payload_len smaller than the record", hdr(rid: 105, len: 3), small, EBADMSG),
                ("payload_len 0 with bytes", hdr(rid: 106, len: 0), small, EBADMSG),
                ("payload_len past the maximum", hdr(rid: 107, len: FOS_MAX_PAYLOAD + 1), small, EMSGSIZE),
                ("payload_len UINT32_MAX", hdr(rid: 108, len: .max), small, EMSGSIZE),
                ("unknown flags", hdr(flags: 0x80, rid: 109, len: 10), small, EPROTO),
            ]
            for (what, h, p, want) in cases {
                try send(h, p)
                let (rh, _) = try next()
                #expect(rh.request_id == h.request_id, "\(what): answer to \(rh.request_id)")
                #expect(rh.opcode == UInt16(FOS_OP_ERROR) || rh.status != 0, "\(what): accepted")
                #expect(rh.opcode == UInt16(FOS_OP_ERROR) && rh.status == want, "\(what): op \(rh.opcode) status \(rh.status)")
                #expect(rh.flags & UInt32(FOS_MSG_REPLY) != 0)
                try goodEcho(h.request_id + 1000)
            }
            // A valid message with an opcode nobody serves: ENOSYS.
            try send(hdr(opcode: 0x7777, rid: 200, len: 0), [])
            let (nh, _) = try next()
            #expect(nh.request_id == 200 && nh.status == ENOSYS)
            // A forged "reply" and a one-way echo get no answer: the next message is the good echo's.
            try send(hdr(flags: UInt32(FOS_MSG_REPLY), rid: 201, len: 10), small)
            try send(hdr(flags: UInt32(FOS_MSG_ONEWAY), rid: 202, len: 10), small)
            try goodEcho(203)

            // Pipelined: 200 messages, every other one forged, then all the answers.
            for i in 0..<200 {
                let rid = UInt64(10_000 + i)
                if i % 2 == 0 {
                    try send(hdr(rid: rid, len: UInt32(small.count)), small)
                } else {
                    try send(hdr(version: 3, rid: rid, len: 10), small)
                }
            }
            var answered = Set<UInt64>()
            for _ in 0..<200 {
                let (h, body) = try next()
                answered.insert(h.request_id)
                let i = Int(h.request_id) - 10_000
                if i % 2 == 0 {
                    #expect(h.status == 0 && body == small, "pipelined \(i)")
                } else {
                    #expect(h.opcode == UInt16(FOS_OP_ERROR) && h.status == EPROTO, "pipelined forged \(i)")
                }
            }
            #expect(answered.count == 200)
            try goodEcho(99_999)

            #expect(processAlive(e.pid))
            #expect(try await node.fleets().allSatisfy { $0.restarts == 0 })
            await expectServing(rt, "forged channel messages")
        }
    }

    @Test("a corrupted ring: the member drops that channel and keeps serving others")
    func ringCorruption() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            let other = try node.runtime()
            let e = try await rt.lookup("/app/echo")
            let reqCtl = MemoryLayout<fos_chan_shm>.offset(of: \fos_chan_shm.req)!
            let tailAt = reqCtl + MemoryLayout<fos_ring_ctl>.offset(of: \fos_ring_ctl.tail)!
            let before = try node.quickStatus(rt)

            let corruptions: [(String, (Channel) -> Void)] = [
                ("request tail far ahead", { ch in
                    ch.base.storeBytes(of: UInt64(1) << 40, toByteOffset: tailAt, as: UInt64.self)
                }),
                ("record with a bad check word", { ch in
                    // A fresh channel: the server's head is 0. One record whose check word lies.
                    let data = UnsafeMutableRawPointer(fos_chan_req_data(ch.base)!)
                    data.storeBytes(of: UInt32(40), toByteOffset: 0, as: UInt32.self)
                    data.storeBytes(of: UInt32(12345), toByteOffset: 4, as: UInt32.self)
                    ch.base.storeBytes(of: UInt64(48), toByteOffset: tailAt, as: UInt64.self)
                }),
                ("record longer than the maximum", { ch in
                    let data = UnsafeMutableRawPointer(fos_chan_req_data(ch.base)!)
                    let len = FOS_MAX_PAYLOAD + UInt32(MemoryLayout<fos_msg_hdr>.size) + 8  // FOS_RING_MAX_RECORD + 8
                    data.storeBytes(of: len, toByteOffset: 0, as: UInt32.self)
                    data.storeBytes(of: len ^ FOS_RING_CHECK, toByteOffset: 4, as: UInt32.self)
                    ch.base.storeBytes(of: UInt64(16), toByteOffset: tailAt, as: UInt64.self)
                }),
            ]
            for (what, corrupt) in corruptions {
                let ch = try await rt.connect(e.addr, key: e.key)
                if what == "request tail far ahead" {
                    let r = try await rt.call(ch, opcode: opEcho, payload: [1])
                    #expect(r.status == 0 && r.payload == [1])
                }
                corrupt(ch)
                _ = fos_sys_eventfd_signal(ch.wakeFD)
                try await eventually("the member to drop the channel (\(what))", timeout: .seconds(3), every: .milliseconds(5)) {
                    ch.isClosed ? true : nil
                }
                do {
                    let r = try await rt.call(ch, opcode: opEcho, payload: [2], timeout: .seconds(1))
                    Issue.record("\(what): a call on the dropped channel returned status \(r.status)")
                } catch {
                    #expect(error as? FosError == .peerGone, "\(what): \(error)")
                }
                // The member keeps serving: a new channel to it, and other clients.
                let again = try await rt.connect(e.addr, key: e.key)
                let r = try await rt.call(again, opcode: opEcho, payload: Array(what.utf8))
                #expect(r.status == 0 && r.payload == Array(what.utf8))
                try await rt.close(again)
                await expectServing(other, what)
            }
            #expect(processAlive(e.pid))
            #expect(try await node.fleets().allSatisfy { $0.restarts == 0 })
            // The dropped channels are gone from fosd too.
            try await eventually("fosd to forget the dropped channels", timeout: .seconds(3)) {
                try node.quickStatus(rt).channels <= before.channels + 4 ? true : nil
            }
        }
    }

    @Test("descriptor deposits: only the named process fetches, once; bad requests and floods refused; unfetched ones closed")
    func deposits() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let fosd = node.pid
            let baseFDs = openFDCount(fosd)
            var p: [Int32] = [0, 0]
            #expect(pipe(&p) == 0)
            defer { close(p[0]); close(p[1]) }
            func errno(_ body: () throws -> Void) -> Int32 {
                do { try body() } catch FosError.remote(let e) { return e.rawValue } catch { return -1 }
                return 0
            }
            // Ours: fetched once, and it is the same pipe.
            let tag = try rt.deposit(p[1], for: getpid())
            let got = try rt.fetch(tag)
            #expect(write(got, "x", 1) == 1)
            close(got)
            var b: UInt8 = 0
            #expect(read(p[0], &b, 1) == 1 && b == UInt8(ascii: "x"))
            #expect(errno { _ = try rt.fetch(tag) } == ENOENT)
            // Someone else's, or a guess: ENOENT alike.
            let theirs = try rt.deposit(p[1], for: 1)
            #expect(errno { _ = try rt.fetch(theirs) } == ENOENT)
            #expect(errno { _ = try rt.fetch([UInt8](repeating: 7, count: Int(FOS_KEY_BYTES))) } == ENOENT)
            // Malformed: no descriptor, two, a short payload, pid 0.
            var d = fos_ctl_deposit()
            d.pid = getpid()
            var payload = [UInt8]()
            appendStruct(d, to: &payload)
            #expect(errno { _ = try rt.control.request(Int32(FOS_CTL_DEPOSIT), payload: payload) } == EINVAL)
            #expect(errno { _ = try rt.control.request(Int32(FOS_CTL_DEPOSIT), payload: payload, fds: [p[0], p[1]]) } == EINVAL)
            #expect(errno { _ = try rt.control.request(Int32(FOS_CTL_DEPOSIT), payload: Array(payload.prefix(8)), fds: [p[1]]) } == EINVAL)
            #expect(errno { _ = try rt.control.request(Int32(FOS_CTL_FETCH), payload: [1, 2, 3]) } == EINVAL)
            d.pid = 0
            payload = []
            appendStruct(d, to: &payload)
            #expect(errno { _ = try rt.control.request(Int32(FOS_CTL_DEPOSIT), payload: payload, fds: [p[1]]) } == EINVAL)
            // A flood for one taker stops at its quota (one is held already);
            // another taker still gets its own.
            var held = 1
            while held < 1000, errno({ _ = try rt.deposit(p[1], for: 1) }) == 0 { held += 1 }
            #expect(held == Int(FOS_DEPOSIT_MAX_PER_PID))
            #expect(errno { _ = try rt.deposit(p[1], for: 1) } == EAGAIN)
            let mine = try rt.deposit(p[1], for: getpid())
            close(try rt.fetch(mine))
            // Someone else (not root, the node's owner or a member) may not
            // give: it could use up a taker's quota. Raw protocol, as nobody.
            chmod(node.root, 0o755)
            let script = """
                import array, os, socket, struct, sys
                s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                s.connect(sys.argv[1])
                def ask(op, payload=b'', fds=()):
                    h = struct.pack('<HHIQiI', 1, op, 24 + len(payload), op, 0, 0)
                    anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array('i', fds))] if fds else []
                    s.sendmsg([h + payload], anc)
                    return struct.unpack('<HHIQiI', s.recv(65536)[:24])[4]
                print(ask(1), ask(11, bytes([7]) * 16 + struct.pack('<iI', int(sys.argv[2]), 0), [0]))
                """
            let raw = try await runCommand("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups",
                                                                "/usr/bin/python3", "-c", script, node.socketPath,
                                                                String(getpid())], outputIn: node.root)
            #expect(raw.stdout == "0 \(EPERM)\n", "\(raw)")
            // Unfetched deposits are closed once they expire (noticed at the next request).
            await pause(.milliseconds(Int(FOS_DEPOSIT_TTL_MS) + 500))
            #expect(errno { _ = try rt.fetch(theirs) } == ENOENT)
            #expect(openFDCount(fosd) <= baseFDs, "fosd holds \(openFDCount(fosd)) descriptors, \(baseFDs) before")
        }
    }

    @Test("impostors: a non-member cannot take a fleet's name; another user cannot reach the raw disk")
    func impostors() async throws {
        try await TestNode.with(members: 2) { node in
            let echo = try BuildProducts.path("fos-echo")
            // A root process that fosd did not start claims /app/echo: refused, the fleet's names unchanged.
            let before = try await node.names().filter { $0.name == "/app/echo" }.count
            let claim = try await runCommand("/usr/bin/env", ["FOS_RUNTIME=\(node.runtimeDir)", "FOS_FLEET=/app/echo", echo],
                                             outputIn: node.root, timeout: .seconds(15))
            #expect(claim.status == 1, "impostor exit \(claim.status): \(claim.stderr)")
            #expect(claim.stderr.contains("cannot start"), "\(claim.stderr)")
            #expect(try await node.names().filter { $0.name == "/app/echo" }.count == before)
            // An unprivileged user reaches the echo fleet but not /sys/blk/0 (same-uid mailbox).
            chmod(node.root, 0o755)  // let it reach the socket at all
            let ctl = try BuildProducts.path("fosctl")
            let asNobody = ["--reuid=65534", "--regid=65534", "--clear-groups", ctl, "--runtime", node.runtimeDir]
            let ok = try await runCommand("/usr/bin/setpriv", asNobody.prefix(4) + ["call", "/app/echo", "echo", "hi", "--runtime", node.runtimeDir],
                                          outputIn: node.root)
            #expect(ok.status == 0 && ok.stdout.hasPrefix("hi"), "nobody → /app/echo: \(ok.status) \(ok.stderr)")
            let disk = try await runCommand("/usr/bin/setpriv", asNobody.prefix(4) + ["call", "/sys/blk/0", "ping", "--runtime", node.runtimeDir],
                                            outputIn: node.root)
            #expect(disk.status == 1 && disk.stderr.contains("ermission denied"), "nobody → /sys/blk/0: \(disk.status) \(disk.stderr)")
        }
    }

    @Test("a client cannot resize the shared memory of its channel (the server would die of SIGBUS)")
    func sealedChannelMemory() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let e = try await rt.lookup("/app/echo")
            let ch = try await rt.connect(e.addr, key: e.key)
            #expect(ftruncate(ch.memFD, 4096) != 0 && errno == EPERM, "shrinking a channel memfd must fail")
            #expect(ftruncate(ch.memFD, 1 << 30) != 0 && errno == EPERM, "growing a channel memfd must fail")
            let r = try await rt.call(ch, opcode: opEcho, payload: [9])
            #expect(r.status == 0 && r.payload == [9])
            #expect(processAlive(e.pid))
        }
    }

    @Test("clients killed mid-call: the node keeps serving and forgets their channels")
    func killedClients() async throws {
        try await TestNode.with(members: 2, slots: 2) { node in
            let rt = try node.runtime()
            await expectServing(rt, "start")
            let members0 = try await node.fleets()
            let base = try await node.status()  // counts this fosctl's connection too
            let baseQuick = try node.quickStatus(rt)

            func received() throws -> UInt64 {
                try node.quickFleets(rt).filter { $0.fleet == "/app/echo" }.map { $0.queueLength + $0.handled }.reduce(0, +)
            }
            var inFlightKills = 0
            var killed = 0
            for round in 0..<12 {
                await pause(.milliseconds(3))  // the members publish their stats when idle
                let seen = try received()
                var procs: [Subprocess] = []
                for k in 0..<4 {
                    // "513" is ECHO_SLOW; "XXXX" reads as a huge delay, capped at 10 s by the member.
                    let args = k % 2 == 0 ? ["call", "/app/echo", "513", "XXXX-\(round)-\(k)"]
                                          : ["call", "/app/echo", "echo", "r\(round)-\(k)"]
                    procs.append(try node.startFosctl(args))
                }
                if round % 2 == 0 {
                    // Kill once every request has reached a member.
                    do {
                        _ = try await eventually("round \(round): all four requests in", timeout: .seconds(5), every: .milliseconds(2)) {
                            try received() >= seen + 4 ? true : nil
                        }
                        inFlightKills += 2
                    } catch {
                        Issue.record("\(error)")
                    }
                } else {
                    // Kill at some point of start-up, connect, lookup or call.
                    await pause(.milliseconds(Int.random(in: 0...40)))
                }
                for p in procs { p.kill(SIGKILL) }
                for p in procs {
                    let r = await p.wait()
                    if r.signaled { killed += 1 }
                }
                await expectServing(rt, "round \(round)")
            }
            #expect(inFlightKills >= 10)
            #expect(killed >= 24, "only \(killed) fosctl processes were killed")

            let settled = try await eventually("channels and connections back to the baseline", timeout: .seconds(5)) { () -> NodeStatus? in
                let s = try node.quickStatus(rt)
                return s.channels == baseQuick.channels && s.connections == baseQuick.connections ? s : nil
            }
            #expect(settled.mailboxes == baseQuick.mailboxes)
            let after = try await node.status()
            #expect(after.channels == base.channels)
            #expect(after.connections == base.connections)
            let members1 = try await node.fleets()
            #expect(members1.map(\.pid) == members0.map(\.pid))
            #expect(members1.allSatisfy { $0.restarts == 0 && $0.state == "running" })
            await expectServing(rt, "all the killed clients")
            let cli = try await node.fosctl(["call", "/app/echo", "echo", "survivor"])
            #expect(cli.status == 0 && cli.stdout.hasPrefix("survivor ("))
        }
    }
}
