import CFosSys
import CFosWire
import FosCore
import Foundation
import Synchronization
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A flag and counters shared by load tasks.
final class LoadState: Sendable {
    let stop = Atomic<Bool>(false)
    let ok = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let wrong = Atomic<Int>(0)
    let firstProblems = Mutex<[String]>([])

    func problem(_ s: String) {
        firstProblems.withLock { if $0.count < 10 { $0.append(s) } }
    }

    /// One ECHO through the name cache, counted as ok, wrong or failed.
    func echo(_ rt: FosRuntime, _ p: [UInt8], _ what: String, since start: UInt64? = nil) async {
        do {
            let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
            if r.status == 0 && r.payload == p {
                ok.add(1, ordering: .relaxed)
            } else {
                wrong.add(1, ordering: .relaxed)
                problem("\(what): status \(r.status), \(r.payload.count) bytes back for \(p.count)")
            }
        } catch {
            failed.add(1, ordering: .relaxed)
            let at = start.map { " at \(String(format: "%.3f", seconds(since: $0))) s" } ?? ""
            problem("\(what)\(at): \(error)")
        }
    }
}

/// Records when a process exits, from a thread blocked on its pidfd.
final class DeathWatch: Sendable {
    let time = Mutex<UInt64?>(nil)

    init(pid: Int32) throws {
        let fd = fos_sys_pidfd_open(pid)
        guard fd >= 0 else { throw TestFailure("pidfd_open(\(pid)): errno \(-fd)") }
        let t = Thread { [self] in
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let deadline = monotonicNanos() + 30_000_000_000
            while monotonicNanos() < deadline {
                if poll(&pfd, 1, 100) > 0 {
                    let now = monotonicNanos()
                    time.withLock { $0 = now }
                    break
                }
            }
            closeFD(fd)
        }
        t.start()
    }
}

func payloadFor(task: Int, call: Int) -> [UInt8] {
    var p = Array("task\(task)-call\(call)-".utf8)
    if call % 50 == 7 {
        // Now and then a big one, so that the rings wrap around.
        p += (0..<40_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ task &+ call) }
    } else {
        p += (0..<((call * 37 + task) % 300)).map { UInt8(truncatingIfNeeded: $0 ^ call) }
    }
    return p
}

@Suite("Load and supervision", .timeLimit(.minutes(2)))
struct LoadTests {
    @Test("many concurrent clients: 8 tasks x 500 ECHO over 3 runtimes, plus 3 fosctl client processes")
    func manyClients() async throws {
        try await TestNode.with(members: 3, slots: 2) { node in
            let rts = try (0..<3).map { _ in try node.runtime() }
            let tasks = 8, calls = 500

            // Client processes, concurrently with the in-process clients.
            let cli = Task { () -> [String] in
                await withTaskGroup(of: [String].self) { g in
                    for p in 0..<3 {
                        g.addTask {
                            var bad: [String] = []
                            for i in 0..<6 {
                                let text = "proc\(p)-call\(i)"
                                do {
                                    let r = try await node.fosctl(["call", "/app/echo", "echo", text])
                                    if r.status != 0 || !r.stdout.hasPrefix(text + " (") {
                                        bad.append("\(text): exit \(r.status) out \(r.stdout) err \(r.stderr)")
                                    }
                                } catch {
                                    bad.append("\(text): \(error)")
                                }
                            }
                            return bad
                        }
                    }
                    var all: [String] = []
                    for await b in g { all += b }
                    return all
                }
            }

            let state = LoadState()
            let t0 = monotonicNanos()
            await withTaskGroup(of: Void.self) { g in
                for t in 0..<tasks {
                    g.addTask {
                        let rt = rts[t % rts.count]
                        for i in 0..<calls {
                            let p = payloadFor(task: t, call: i)
                            await state.echo(rt, p, "task \(t) call \(i)")
                        }
                    }
                }
            }
            let elapsed = seconds(since: t0)
            let cliProblems = await cli.value
            let ok = state.ok.load(ordering: .relaxed)
            print("IntegrationTests: \(tasks * calls) concurrent ECHO calls in \(String(format: "%.2f", elapsed)) s")
            #expect(ok == tasks * calls, "problems: \(state.firstProblems.withLock { $0 })")
            #expect(state.failed.load(ordering: .relaxed) == 0)
            #expect(state.wrong.load(ordering: .relaxed) == 0)
            #expect(cliProblems.isEmpty, "fosctl clients: \(cliProblems)")

            // More than one member carried that load.
            let ms = try await eventually("stats of the echo members", timeout: .seconds(5), every: .milliseconds(50)) {
                let ms = try node.quickFleets(rts[0]).filter { $0.fleet == "/app/echo" }
                return ms.map(\.handled).reduce(0, +) >= UInt64(tasks * calls) ? ms : nil
            }
            #expect(ms.filter { $0.handled > 0 }.count > 1, "handled: \(ms.map { ($0.member, $0.handled) })")

            // Round robin across clients: fresh runtimes land on different members.
            let memberPids = Set(ms.map(\.pid))
            var served: [Int32] = []
            for _ in 0..<6 {
                let rt = try node.runtime()
                let r = try await rt.call(name: "/app/echo", opcode: opWhoami)
                let w = try #require(whoami(r.payload), "bad WHOAMI reply (status \(r.status))")
                served.append(w.pid)
                #expect(memberPids.contains(w.pid))
                #expect(w.mailbox != 0)
                node.retire(rt)
            }
            #expect(Set(served).count > 1, "every fresh client was sent to the same member: \(served)")
        }
    }

    @Test("concurrent callers on one runtime share its bindings: renewals leak no channels")
    func bindingsDoNotLeak() async throws {
        try await TestNode.with(members: 3) { node in
            let rt = try node.runtime()
            let watcher = try node.runtime()
            _ = try await rt.call(name: "/app/echo", opcode: opEcho, payload: [0]).checked()
            let base = try node.quickStatus(watcher).channels
            // ~1 s of 8 concurrent callers: the binding expires (250 ms) a few times under them.
            let state = LoadState()
            let t0 = monotonicNanos()
            await withTaskGroup(of: Void.self) { g in
                for t in 0..<8 {
                    g.addTask {
                        var i = 0
                        while seconds(since: t0) < 1.0 {
                            let p = Array("binder\(t)-\(i)".utf8)
                            i += 1
                            do {
                                let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                                if r.payload == p { state.ok.add(1, ordering: .relaxed) } else { state.wrong.add(1, ordering: .relaxed) }
                            } catch {
                                state.failed.add(1, ordering: .relaxed)
                                state.problem("\(error)")
                            }
                        }
                    }
                }
            }
            #expect(state.failed.load(ordering: .relaxed) == 0, "\(state.firstProblems.withLock { $0 })")
            #expect(state.wrong.load(ordering: .relaxed) == 0)
            #expect(state.ok.load(ordering: .relaxed) > 100)
            // One name channel and one binding, as before the load.
            let after = try await eventually("the channel count back at \(base)", timeout: .seconds(2)) { () -> Int? in
                let c = try node.quickStatus(watcher).channels
                return c == base ? c : nil
            }
            #expect(after == base)
        }
    }

    @Test("supervision under load: a killed member is replaced fast, idempotent calls never fail; the name server restarts too")
    func supervisionUnderLoad() async throws {
        try await TestNode.with(members: 3, slots: 2) { node in
            let fleets0 = try await node.fleets()
            let victim = try #require(fleets0.first { $0.member == "/app/echo#1" })
            let oldEchoPids = Set(fleets0.filter { $0.fleet == "/app/echo" }.map(\.pid))
            let watcher = try node.runtime()
            let clients = [try node.runtime(), try node.runtime()]

            let state = LoadState()
            let loadStart = monotonicNanos()
            let load = Task {
                await withTaskGroup(of: Void.self) { g in
                    for t in 0..<4 {
                        g.addTask {
                            let rt = clients[t % clients.count]
                            var i = 0
                            while !state.stop.load(ordering: .relaxed) {
                                let p = Array("worker\(t)-\(i)".utf8) + u32(UInt32(i))
                                i += 1
                                await state.echo(rt, p, "worker \(t) call \(i)", since: loadStart)
                            }
                        }
                    }
                }
            }
            // Let the load settle, then kill a member with fosctl.
            await pause(.milliseconds(700))
            let okBeforeKill = state.ok.load(ordering: .relaxed)
            let death = try DeathWatch(pid: victim.pid)
            let tLaunch = monotonicNanos()
            let killed = try await node.fosctl(["kill", "/app/echo#1", "--json"])
            let tReturned = monotonicNanos()
            #expect(killed.status == 0, "fosctl kill: \(killed.stderr)")
            let k = try JSONDecoder().decode(KillResult.self, from: Data(killed.stdout.utf8))
            #expect(k.pid == victim.pid)
            #expect(k.member == "/app/echo#1")

            // The replacement registers its external mailbox under /app/echo.
            let (tRepoint, fresh) = try await eventually("the restarted member to register", timeout: .seconds(5),
                                                          every: .milliseconds(1)) { () -> (UInt64, NameEntry)? in
                let es = try await node.echoEntries(watcher)
                guard let e = es.first(where: { !$0.isInternal && !oldEchoPids.contains($0.pid) }) else { return nil }
                return (monotonicNanos(), e)
            }
            let tDeath = try #require(death.time.withLock { $0 }, "never saw the victim exit")
            let repoint = Double(tRepoint &- tDeath) / 1e9
            print(String(format: "IntegrationTests: kill-to-repoint %.1f ms (from victim exit); %.1f ms from launching `fosctl kill`, %.1f ms after it returned",
                         repoint * 1000, Double(tRepoint &- tLaunch) / 1e6, Double(tRepoint &- tReturned) / 1e6))
            #expect(repoint < 0.5, "kill-to-repoint \(repoint) s")
            #expect(tDeath >= tLaunch)

            // Keep the load going to ~3 s in all, then stop it.
            let remaining = 3.0 - seconds(since: loadStart)
            if remaining > 0 { await pause(.milliseconds(Int(remaining * 1000))) }
            state.stop.store(true, ordering: .relaxed)
            await load.value
            let ok = state.ok.load(ordering: .relaxed)
            print("IntegrationTests: \(ok) ECHO calls under supervision load (\(ok - okBeforeKill) after the kill)")
            #expect(state.failed.load(ordering: .relaxed) == 0, "failed calls: \(state.firstProblems.withLock { $0 })")
            #expect(state.wrong.load(ordering: .relaxed) == 0, "\(state.firstProblems.withLock { $0 })")
            #expect(ok > 200)
            #expect(ok > okBeforeKill, "no call completed after the kill")

            // The member came back with a new pid and one restart.
            let fleets1 = try await node.fleets()
            let back = try #require(fleets1.first { $0.member == "/app/echo#1" })
            #expect(back.pid > 0 && back.pid != victim.pid)
            #expect(back.pid == fresh.pid)
            #expect(back.restarts == 1)
            #expect(back.state == "running")
            #expect(back.lastExit == "signal 9")
            #expect(!processAlive(victim.pid))
            for m in fleets1 where m.member != "/app/echo#1" {
                #expect(m.restarts == 0, "\(m.member) restarted")
                #expect(fleets0.first { $0.member == m.member }?.pid == m.pid)
            }

            // Kill the name server: members re-register with the new one.
            let ns = try #require(fleets1.first { $0.member == "/sys/name#0" })
            let echoPids = Set(fleets1.filter { $0.fleet == "/app/echo" }.map(\.pid))
            let nsDeath = try DeathWatch(pid: ns.pid)
            let tKill = monotonicNanos()
            let nk = try await node.fosctl(["kill", "/sys/name#0"])
            #expect(nk.status == 0, "\(nk.stderr)")
            try await eventually("the old name server to exit", timeout: .seconds(2), every: .milliseconds(1)) {
                nsDeath.time.withLock { $0 } != nil ? true : nil
            }
            let recovered = try await eventually("the /app/echo registrations to come back", timeout: .seconds(5),
                                                 every: .milliseconds(2)) { () -> Double? in
                let es = try await node.echoEntries(watcher)
                let ext = es.filter { !$0.isInternal }, int = es.filter(\.isInternal)
                guard ext.count == 3, int.count == 3, Set(ext.map(\.pid)) == echoPids, Set(int.map(\.pid)) == echoPids
                else { return nil }
                return seconds(since: tKill)
            }
            print(String(format: "IntegrationTests: name server kill-to-reregistered %.1f ms", recovered * 1000))
            #expect(recovered < 1.0, "registrations back after \(recovered) s")
            let fleets2 = try await node.fleets()
            let ns2 = try #require(fleets2.first { $0.member == "/sys/name#0" })
            #expect(ns2.pid != ns.pid && ns2.restarts == 1)
            let status = try await node.status()
            #expect(status.nameService)

            // Calls work again, from the loaded clients and from a newcomer.
            let newcomer = try node.runtime()
            for (n, rt) in (clients + [newcomer]).enumerated() {
                for i in 0..<20 {
                    let p = Array("after the name server \(n)-\(i)".utf8)
                    let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                    #expect(r.status == 0 && r.payload == p)
                }
            }
            let w = try await newcomer.call(name: "/app/echo", opcode: opWhoami)
            #expect(echoPids.contains(try #require(whoami(w.payload)).pid))
        }
    }
}
