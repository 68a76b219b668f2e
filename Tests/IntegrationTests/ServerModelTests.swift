import CFosSys
import CFosWire
import FosCore
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Server model", .timeLimit(.minutes(2)))
struct ServerModelTests {
    @Test("a slow handler suspends alone: ECHO on the same channel is answered while ECHO_SLOW waits")
    func slowHandlerDoesNotBlock() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            let e = try await rt.lookup("/app/echo")
            let ch = try await rt.connect(e.addr, key: e.key)
            let warm = try await rt.call(ch, opcode: opEcho, payload: [1, 2, 3])
            #expect(warm.status == 0 && warm.payload == [1, 2, 3])
            let member = try #require(node.quickFleets(rt).first { $0.pid == e.pid })

            let t0 = monotonicNanos()
            let slow = Task { () throws -> (Reply, UInt64) in
                let r = try await rt.call(ch, opcode: opSlow, payload: u32(300) + Array("slow".utf8))
                return (r, monotonicNanos())
            }
            // Wait until the member holds the slow request (its queue shows it).
            try await eventually("the slow request to be queued", timeout: .milliseconds(250), every: .milliseconds(2)) {
                try node.quickFleets(rt).first { $0.member == member.member }.map { $0.queueLength >= 1 ? true : nil } ?? nil
            }
            var worst: UInt64 = 0
            for i in 0..<20 {
                let p = Array("fast-\(i)".utf8)
                let t = monotonicNanos()
                let r = try await rt.call(ch, opcode: opEcho, payload: p)
                worst = max(worst, monotonicNanos() - t)
                #expect(r.status == 0 && r.payload == p)
            }
            let fastDone = monotonicNanos()
            let (sr, slowDone) = try await slow.value
            #expect(sr.status == 0 && sr.payload == Array("slow".utf8))
            let slowTook = Double(slowDone - t0) / 1e9
            let fastTook = Double(fastDone - t0) / 1e9
            print(String(format: "IntegrationTests: 20 ECHO during ECHO_SLOW(300 ms): done at %.1f ms, worst %.2f ms; slow done at %.1f ms",
                         fastTook * 1000, Double(worst) / 1e6, slowTook * 1000))
            #expect(slowTook >= 0.3)
            #expect(fastDone < slowDone, "the ECHO calls waited for the slow one")
            #expect(fastTook < 0.2, "ECHO calls finished only after \(fastTook) s")
            #expect(Double(worst) / 1e9 < 0.1)
        }
    }

    @Test("a call in flight survives the renewal of its name binding, and runs exactly once")
    func callSurvivesRebinding() async throws {
        try await TestNode.with(members: 3) { node in
            let rt = try node.runtime()
            let t0 = monotonicNanos()
            // No retries: a call that lost its channel would fail, not hide it.
            let slow = Task {
                try await rt.call(name: "/app/echo", opcode: opSlow, payload: u32(600) + Array("once".utf8), attempts: 1)
            }
            // Past the binding's lifetime (250 ms), other calls on the same runtime rebind the name.
            await pause(.milliseconds(350))
            for i in 0..<5 {
                let p = Array("meanwhile \(i)".utf8)
                let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                #expect(r.status == 0 && r.payload == p)
            }
            let r = try await slow.value
            #expect(r.status == 0 && r.payload == Array("once".utf8))
            let took = seconds(since: t0)
            #expect(took >= 0.6 && took < 1.1, "slow call took \(took) s")
            // Six requests reached the fleet, each handled once.
            let handled = try await eventually("the handled counts", timeout: .seconds(3), every: .milliseconds(20)) { () -> UInt64? in
                let h = try node.quickFleets(rt).filter { $0.fleet == "/app/echo" }.map(\.handled).reduce(0, +)
                return h >= 6 ? h : nil
            }
            #expect(handled == 6)
        }
    }

    /// Replies that do not fit the ring wait in the server's backlog; a
    /// server with nothing else to do sleeps until the client frees space.
    /// Its sleep used to end only at its timeout: 1 ms meant, but replaced
    /// by the deadline of any call it had made in the last few seconds (a
    /// RELAY here: the member's own call to a peer), up to a second a wait.
    @Test("replies that overfill the ring reach a client as fast as it reads them, also after the server made calls of its own")
    func backlogFlowsWhenTheClientReads() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            let e = try await rt.lookup("/app/echo")
            // The member calls its peer: a call of its own, with a 5 s deadline.
            let ch0 = try await rt.connect(e.addr, key: e.key)
            #expect(try await rt.call(ch0, opcode: opRelay, payload: Array("relay".utf8)).status == 0)
            // A channel this test reads itself, late: the replies pile up in the member.
            let ch = try rt.connectDetached(e.addr, key: e.key)
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(FOS_MAX_PAYLOAD) + 64, alignment: 16)
            defer { buf.deallocate() }
            let count = 24, size = 60_000
            var expected: [UInt64: [UInt8]] = [:]
            for rid in 1...UInt64(count) {
                let p = (0..<size).map { UInt8(truncatingIfNeeded: ($0 &* 31) ^ Int(rid)) }
                expected[rid] = p
                let h = fos_msg_hdr(version: UInt16(FOS_WIRE_VERSION), opcode: opEcho, flags: 0, request_id: rid,
                                    payload_len: UInt32(size), status: 0)
                try p.withUnsafeBytes { try ch.send(h, $0, deadline: monotonicNanos() + 5_000_000_000) }
            }
            // Past the member's spin: it sleeps with its backlog.
            await pause(.milliseconds(200))
            let t0 = monotonicNanos()
            let hsize = MemoryLayout<fos_msg_hdr>.size
            for _ in 0..<count {
                let n = try ch.receiveBlocking(into: buf, deadline: monotonicNanos() + 10_000_000_000)
                ch.release()
                let h = try #require(loadStruct(fos_msg_hdr.self, from: UnsafeRawBufferPointer(rebasing: buf[0..<n])))
                #expect(h.status == 0 && Array(buf[hsize..<n]) == expected.removeValue(forKey: h.request_id))
            }
            let took = Double(monotonicNanos() - t0) / 1e6
            print(String(format: "IntegrationTests: %d replies of %d bytes (%.1f MiB) read after a pause in %.2f ms",
                         count, size, Double(count * size) / 1048576, took))
            #expect(expected.isEmpty)
            // About 8 ms here; waiting out the 10 ms fallback at each of the
            // six ringfuls instead of being woken would take 60 ms or more.
            #expect(took < 50, "the backlog took \(took) ms to arrive")
            rt.closeDetached(ch)
            try await rt.close(ch0)
        }
    }

    /// The loop knows a channel by its id, which both ends share: a process
    /// connected to its own mailbox lost one end, and its call waited out
    /// its timeout (a one-member echo fleet's RELAY took 5 s and failed).
    @Test("connecting to one's own mailbox is EDEADLK at once; a one-member fleet's RELAY answers as its own peer")
    func selfConnection() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let t0 = monotonicNanos()
            let r = try await rt.call(name: "/app/echo", opcode: opRelay, payload: Array("alone".utf8), timeout: .seconds(3))
            let who = try #require(whoami(try r.checked()))
            let e = try await rt.lookup("/app/echo")
            #expect(who.pid == e.pid)
            #expect(seconds(since: t0) < 1)

            let key = Capability.random()
            let server = FosServer(runtime: rt, handlers: [opEcho: { Reply(payload: $0.payload) }])
            let addr = try await rt.createMailbox(key: key, service: server)
            do {
                _ = try await rt.connect(addr, key: key)
                Issue.record("connected to a mailbox of its own")
            } catch FosError.remote(let err) {
                #expect(err == .deadlock)
            }
            // The mailbox serves others still.
            let other = try node.runtime()
            let ch = try await other.connect(addr, key: key)
            #expect(try await other.call(ch, opcode: opEcho, payload: [4, 2]).payload == [4, 2])
        }
    }

    /// FOS_MSG_AHEAD (FosCore/AheadOrder.swift): B's ordinary request,
    /// sent after A's ahead ones, is served after them although B's ring
    /// is polled first (B connected first) and A's handlers suspend.
    /// Without taking A's records first, or without waiting for their
    /// answers, "read" comes before the writes. The same for B's request
    /// sent ahead, whichever ring is polled first (without the stamps
    /// that order requests sent ahead, "b" comes first in one order).
    @Test("requests sent ahead are served before a later request, ordinary or ahead, on another channel")
    func aheadBeforeLater() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let opBlock: UInt16 = 0x7001, opWrite: UInt16 = 0x7002, opRead: UInt16 = 0x7003
            let log = Mutex<[String]>([])
            let server = FosServer(runtime: rt, handlers: [
                // Holds the server's loop, so that both rings fill meanwhile.
                opBlock: { _ in usleep(400_000); return Reply() },
                opWrite: { r in
                    try? await Task.sleep(for: .milliseconds(20))
                    log.withLock { $0.append(String(decoding: r.payload, as: UTF8.self)) }
                    return Reply()
                },
                opRead: { _ in
                    log.withLock { $0.append("read") }
                    return Reply()
                },
            ], ahead: FosServer.AheadPolicy(takes: { $0.opcode == opWrite }, welcomes: { _ in true }))

            // A's writes w<first>...w<first+2> sent ahead while the loop is
            // held, then B's request (ahead or not), which must come last.
            // Generous pauses: on a loaded machine the writes must still be
            // sent before B's request (or it rightly comes first).
            typealias Client = (FosRuntime, Channel)
            func threeThenB(_ a: Client, _ b: Client, _ c: Client, first: Int, ahead: Bool, _ name: String) async throws {
                log.withLock { $0.removeAll() }
                let blocked = Task { try await c.0.call(c.1, opcode: opBlock) }
                try await Task.sleep(for: .milliseconds(100))
                let writes = (first..<first + 3).map { i in
                    Task { try await a.0.callAhead(a.1, opcode: opWrite, payload: Array("w\(i)".utf8)) }
                }
                try await Task.sleep(for: .milliseconds(100))
                let r = ahead ? try await b.0.callAhead(b.1, opcode: opWrite, payload: Array(name.utf8))
                    : try await b.0.call(b.1, opcode: opRead)
                #expect(r.status == 0)
                for w in writes { #expect(try await w.value.status == 0) }
                _ = try await blocked.value
                let order = log.withLock { $0 }
                #expect(order.count == 4)
                #expect(order.last == name, "served in the order \(order)")
            }
            // B connects first: its ring is polled first.
            let (b, a, c) = try await threeClients(of: server, on: rt, node)
            try await threeThenB(a, b, c, first: 1, ahead: false, "read")
            try await threeThenB(a, b, c, first: 4, ahead: true, "b")
            // A connects first.
            let (a2, b2, c2) = try await threeClients(of: server, on: rt, node)
            try await threeThenB(a2, b2, c2, first: 7, ahead: true, "b2")
        }
    }

    /// Three runtimes, each with a channel to a new mailbox of `server`.
    func threeClients(of server: FosServer, on rt: FosRuntime, _ node: TestNode) async throws
        -> ((FosRuntime, Channel), (FosRuntime, Channel), (FosRuntime, Channel)) {
        let key = Capability.random()
        let addr = try await rt.createMailbox(key: key, service: server)
        var made: [(FosRuntime, Channel)] = []
        for _ in 0..<3 {
            let r = try node.runtime()
            made.append((r, try await r.connect(addr, key: key)))
        }
        return (made[0], made[1], made[2])
    }

    @Test("a sender's run of requests sent ahead is settled once (by its own next request, if that follows it), before any of its answers and a later request")
    func aheadRunSettledOnce() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let opBlock: UInt16 = 0x7001, opWrite: UInt16 = 0x7002, opRead: UInt16 = 0x7003
            struct State {
                var log: [String] = []
                var unsettled = false
                var failSettle = false
            }
            let state = Mutex(State())
            let server = FosServer(runtime: rt, handlers: [
                // Holds the server's loop, so that the rings fill meanwhile.
                opBlock: { _ in usleep(400_000); return Reply() },
                opWrite: { r in
                    state.withLock {
                        $0.log.append(String(decoding: r.payload, as: UTF8.self))
                        $0.unsettled = r.ahead
                    }
                    return Reply()
                },
                // Settles with its own work, as the fs member's commit does.
                opRead: { _ in
                    state.withLock {
                        $0.log.append("read")
                        $0.unsettled = false
                    }
                    return Reply()
                },
            ], ahead: FosServer.AheadPolicy(takes: { $0.opcode == opWrite }, welcomes: { _ in true },
                                            settled: { !state.withLock { $0.unsettled } },
                                            settle: {
                                                state.withLock {
                                                    $0.log.append("settle")
                                                    $0.unsettled = false
                                                    return !$0.failSettle
                                                }
                                            },
                                            follows: { op, _ in op == opRead }))
            let ((a, chA), (b, chB), (c, chC)) = try await threeClients(of: server, on: rt, node)

            /// The loop held, and A's writes w1...wn sent ahead one at a
            /// time into its ring meanwhile, in order.
            func heldWithWrites(_ n: Int) async throws -> (Task<Reply, any Error>, [Task<Reply, any Error>]) {
                let blocked = Task { try await c.call(chC, opcode: opBlock) }
                try await Task.sleep(for: .milliseconds(100))
                var writes: [Task<Reply, any Error>] = []
                for i in 1...n {
                    writes.append(Task { try await a.callAhead(chA, opcode: opWrite, payload: Array("w\(i)".utf8)) })
                    try await Task.sleep(for: .milliseconds(20))
                }
                return (blocked, writes)
            }

            for fail in [false, true] {
                state.withLock {
                    $0.log.removeAll()
                    $0.failSettle = fail
                }
                let (blocked, writes) = try await heldWithWrites(3)
                try await Task.sleep(for: .milliseconds(60))
                let read = try await b.call(chB, opcode: opRead)
                #expect(read.status == 0)
                var statuses: [Int32] = []
                for w in writes { statuses.append(try await w.value.status) }
                _ = try await blocked.value
                let log = state.withLock { $0.log }
                #expect(log == ["w1", "w2", "w3", "settle", "read"], "served in the order \(log)")
                // Work that could not be settled is not reported done.
                #expect(statuses == Array(repeating: fail ? EIO : 0, count: 3), "fail \(fail): \(statuses)")
            }

            // A's own ordinary request right after its run follows it in
            // turn: its work settles the run, no settling of its own.
            state.withLock {
                $0.log.removeAll()
                $0.failSettle = false
            }
            let (blocked, writes) = try await heldWithWrites(2)
            let follower = try await a.call(chA, opcode: opRead)
            #expect(follower.status == 0)
            for w in writes { #expect(try await w.value.status == 0) }
            _ = try await blocked.value
            let log = state.withLock { $0.log }
            #expect(log == ["w1", "w2", "read"], "served in the order \(log)")
        }
    }

    @Test("ECHO_RELAY: a member asks a fleet peer over the internal mailbox")
    func relay() async throws {
        try await TestNode.with(members: 3) { node in
            let rt = try node.runtime()
            let entries = try await node.echoEntries(rt)
            let external = entries.filter { !$0.isInternal }
            let pids = Set(external.map(\.pid))
            #expect(pids.count == 3)
            for listed in external {
                // Keys are withheld in listings; a lookup gives one. Connect to this very member.
                let key = try await eventually("a lookup that returns \(listed.addr)", timeout: .seconds(3), every: .zero) {
                    let e = try await rt.lookup("/app/echo")
                    return e.addr == listed.addr ? e.key : nil
                }
                let ch = try await rt.connect(listed.addr, key: key)
                let me = try #require(whoami(try await rt.call(ch, opcode: opWhoami).checked()))
                #expect(me.pid == listed.pid)
                #expect(me.mailbox == listed.addr.mailbox)
                let r = try await rt.call(ch, opcode: opRelay, payload: Array("relay".utf8))
                #expect(r.status == 0, "relay status \(r.status)")
                let peer = try #require(whoami(r.payload), "bad relay reply: \(r.payload.count) bytes")
                #expect(pids.contains(peer.pid), "relay answered by \(peer.pid), not a member")
                #expect(peer.pid != me.pid, "a member relayed to itself although it has peers")
                #expect(external.contains { $0.pid == peer.pid && $0.addr.mailbox == peer.mailbox })
                try await rt.close(ch)
            }
            // Through the name as well.
            let r = try await rt.call(name: "/app/echo", opcode: opRelay)
            #expect(pids.contains(try #require(whoami(try r.checked())).pid))
        }
    }

    @Test("a call past its timeout throws .timeout; the runtime keeps working, also after the late reply")
    func callTimeout() async throws {
        try await TestNode.with(members: 2) { node in
            let rt = try node.runtime()
            let t0 = monotonicNanos()
            do {
                let r = try await rt.call(name: "/app/echo", opcode: opSlow, payload: u32(2000) + Array("late".utf8),
                                          timeout: .milliseconds(200))
                Issue.record("ECHO_SLOW 2000 ms returned (status \(r.status)) despite a 200 ms timeout")
            } catch {
                #expect(error as? FosError == .timeout, "threw \(error)")
            }
            let took = seconds(since: t0)
            #expect(took >= 0.19 && took < 1.0, "timed out after \(took) s")

            for i in 0..<20 {
                let p = Array("after timeout \(i)".utf8)
                let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                #expect(r.status == 0 && r.payload == p)
            }
            // The late reply lands (at ~2 s) on a request nobody waits for.
            let lateAt = t0 + 2_100_000_000
            let now = monotonicNanos()
            if lateAt > now { await pause(.milliseconds(Int((lateAt - now) / 1_000_000))) }
            for i in 0..<20 {
                let p = Array("after the late reply \(i)".utf8)
                let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                #expect(r.status == 0 && r.payload == p)
            }
            let w = try await rt.call(name: "/app/echo", opcode: opWhoami)
            #expect(whoami(w.payload) != nil)
        }
    }
}
