import CFosSys
import CFosWire
import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

@Suite("Node lifecycle", .timeLimit(.minutes(2)))
struct NodeTests {
    @Test("status, fleets and names as JSON; one fosd per runtime directory; SIGTERM leaves nothing behind")
    func basics() async throws {
        try await TestNode.with(members: 3) { node in
            // status
            let s = try await node.status()
            #expect(s.nameService)
            #expect(s.pid == node.pid)
            #expect(s.runtimeDir == node.runtimeDir)
            #expect(s.stateDir == node.stateDir)
            #expect(s.members == 7)  // name, spawn, blk, one fs member, three echo members
            #expect(s.cores >= 1)

            // fleets
            let fleets = try await node.fleets()
            #expect(Set(fleets.map(\.member)) == ["/sys/name#0", "/sys/spawn#0", "/sys/blk/0#0", "/sys/fs#0",
                                                  "/app/echo#0", "/app/echo#1", "/app/echo#2"])
            #expect(fleets.count == 7)
            let pids = fleets.map(\.pid)
            #expect(pids.allSatisfy { $0 > 0 })
            #expect(Set(pids).count == pids.count, "member pids must be distinct: \(pids)")
            #expect(!pids.contains(s.pid))
            for m in fleets {
                #expect((0..<Int32(s.cores)).contains(m.core), "\(m.member) core \(m.core)")
                #expect(m.state == "running")
                #expect(m.restarts == 0)
                #expect(m.node == s.node)
                #expect(processAlive(m.pid), "\(m.member) pid \(m.pid) not alive")
            }
            let echoPids = Set(fleets.filter { $0.fleet == "/app/echo" }.map(\.pid))
            #expect(fleets.filter { $0.fleet == "/app/echo" }.map(\.index).sorted() == [0, 1, 2])

            // names
            let rows = try await node.names().filter { $0.name == "/app/echo" }
            let ext = rows.filter(\.isExternal)
            let int = rows.filter(\.isInternal)
            #expect(ext.count == 3)
            #expect(int.count == 3)
            #expect(Set(ext.map(\.pid)) == echoPids)
            #expect(Set(int.map(\.pid)) == echoPids)
            #expect(Set(rows.map(\.mailbox)).count == 6, "every mailbox is its own")
            #expect(rows.allSatisfy { $0.policy == "round-robin" })

            // A second fosd on the same runtime directory refuses to start.
            let second = try await runCommand(
                node.fosdPath,
                ["--runtime", node.runtimeDir, "--state", node.stateDir, "--fleet", "/app/echo=fos-echo:1"],
                outputIn: node.root, timeout: .seconds(10))
            #expect(!second.signaled, "second fosd did not exit by itself: \(second.stderr)")
            #expect(second.status != 0)
            #expect(second.stderr.contains("already running"), "stderr: \(second.stderr)")
            // ...and leaves the first one alone.
            let rt = try node.runtime()
            let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: Array("still here".utf8))
            #expect(r.status == 0 && r.payload == Array("still here".utf8))
            #expect(try await node.fleets().map(\.pid).sorted() == pids.sorted())

            // SIGTERM: fosd exits 0, members are gone, the socket is removed.
            let st = await node.terminate()
            #expect(st == 0, "fosd wait status \(st ?? -1); log:\n\(node.log)")
            try await eventually("members to be gone after SIGTERM", timeout: .seconds(3)) {
                pids.allSatisfy { !processAlive($0) } ? true : nil
            }
            #expect(!FileManager.default.fileExists(atPath: node.socketPath))
            #expect(node.survivingMembers().isEmpty)
        }
    }

    @Test("fosctl without a node: exit 1 and one line on stderr")
    func noNode() async throws {
        var template = Array("/tmp/fos-it-none-XXXXXX".utf8CString)
        let dir = try #require(mkdtemp(&template).map { String(cString: $0) })
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let fosctl = try BuildProducts.path("fosctl")
        // An empty runtime directory, and one that does not exist.
        for (runtime, args) in [(dir, ["status"]), (dir, ["status", "--json"]), (dir + "/missing", ["status"]),
                                (dir, ["fleets"]), (dir, ["call", "/app/echo", "echo", "x"])] {
            let r = try await runCommand(fosctl, args + ["--runtime", runtime], outputIn: dir)
            #expect(r.status == 1, "fosctl \(args): exit \(r.status)")
            #expect(!r.signaled)
            let lines = r.stderr.split(separator: "\n", omittingEmptySubsequences: true)
            #expect(lines.count == 1, "fosctl \(args) stderr: \(r.stderr)")
            #expect(r.stderr.contains("no fos node"), "fosctl \(args) stderr: \(r.stderr)")
            #expect(r.stdout.isEmpty)
        }
    }

    @Test("kill -9 of fosd: its members die too; a new fosd on the same directories starts and serves")
    func leftovers() async throws {
        try await TestNode.with(members: 2) { node in
            let before = try await node.status()
            let oldPids = try await node.fleets().map(\.pid)
            #expect(oldPids.count == 6)  // name, spawn, blk, fs, two echo members

            await node.killHard()
            // The members die with it (PR_SET_PDEATHSIG)...
            try await eventually("the members of a SIGKILLed fosd to die", timeout: .seconds(3)) {
                oldPids.allSatisfy { !processAlive($0) } ? true : nil
            }
            // ...and leave a stale socket and member list behind.
            #expect(FileManager.default.fileExists(atPath: node.socketPath))
            let stale = try await node.fosctl(["status"])
            #expect(stale.status == 1 && stale.stderr.contains("no fos node"), "\(stale.stderr)")

            try node.launch()
            try await node.waitReady()
            let after = try await node.status()
            #expect(after.pid == node.pid)
            #expect(after.pid != before.pid)
            #expect(after.node == before.node, "the node id persists in the state directory")
            #expect(after.nameService)
            let newPids = try await node.fleets().map(\.pid)
            #expect(newPids.count == 6)
            #expect(Set(newPids).isDisjoint(with: oldPids))
            #expect(node.log.contains("recovered leftovers"))

            let rt = try node.runtime()
            for i in 0..<20 {
                let p = Array("after restart \(i)".utf8)
                let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                #expect(r.status == 0 && r.payload == p)
            }
            let cli = try await node.fosctl(["call", "/app/echo", "echo", "cli-after-restart"])
            #expect(cli.status == 0 && cli.stdout.hasPrefix("cli-after-restart ("), "\(cli.stdout) \(cli.stderr)")
        }
    }

    @Test("an idle node sleeps: fosd and its members use next to no CPU")
    func idleNodeSleeps() async throws {
        try await TestNode.with(members: 3) { node in
            // Give every member channels (to the name service, from a client) first.
            let rt = try node.runtime()
            let external = try await node.echoEntries(rt).filter { !$0.isInternal }
            for listed in external {
                let key = try await eventually("a lookup of \(listed.addr)", timeout: .seconds(3), every: .zero) {
                    let e = try await rt.lookup("/app/echo")
                    return e.addr == listed.addr ? e.key : nil
                }
                let ch = try await rt.connect(listed.addr, key: key)
                #expect(try await rt.call(ch, opcode: opEcho, payload: [7]).payload == [7])
            }
            let pids = [node.pid] + (try await node.fleets().map(\.pid))
            await pause(.milliseconds(100))
            let before = pids.map(cpuTicks)
            await pause(.seconds(1))
            let used = zip(pids.map(cpuTicks), before).map { $0 - $1 }
            let hz = Int(sysconf(Int32(_SC_CLK_TCK)))
            // 1 s idle: a spinning process would show ~hz ticks.
            #expect(used.allSatisfy { $0 <= hz / 10 }, "CPU ticks (of \(hz)/s) used while idle: \(zip(pids, used).map { "\($0): \($1)" })")
        }
    }

    @Test("stats: handled counts in fosctl fleets add up to the calls made")
    func handledCounts() async throws {
        try await TestNode.with(members: 3) { node in
            let rt = try node.runtime()
            let n = 300
            for i in 0..<n {
                let p = Array("count-\(i)".utf8)
                let r = try await rt.call(name: "/app/echo", opcode: opEcho, payload: p)
                #expect(r.status == 0 && r.payload == p)
            }
            let ms = try await eventually("handled counts to reach \(n)", timeout: .seconds(5), every: .milliseconds(50)) {
                let ms = try await node.fleets().filter { $0.fleet == "/app/echo" }
                return ms.map(\.handled).reduce(0, +) >= UInt64(n) ? ms : nil
            }
            // Only this test's calls reached the echo fleet: exactly n.
            #expect(ms.map(\.handled).reduce(0, +) == UInt64(n), "\(ms.map { ($0.member, $0.handled) })")
            #expect(ms.allSatisfy { $0.queueLength == 0 })
            let rows = try await node.names().filter { $0.name == "/app/echo" && $0.isExternal }
            #expect(rows.map(\.handled).reduce(0, +) == UInt64(n))
        }
    }
}
