import CFosWire
import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The spawn service (/sys/spawn): programs started as their caller, with
/// the descriptors and cwd it gives, under global process ids; wait, kill,
/// `fosctl ps` and `fosctl spawn`.
@Suite("spawn service")
struct SpawnTests {
    /// The node's processes, as `fosctl ps` decodes them.
    static func processes(_ sp: SpawnClient) async throws -> [ProcessRow] {
        try JSONDecoder().decode([ProcessRow].self, from: Data(try await sp.listJSON()))
    }

    /// Everything readable from `fd` until EOF.
    static func drain(_ fd: CInt) -> String {
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    @Test("spawn with descriptors and cwd; exit status; kill; ps; bad requests")
    func spawnWaitKill() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let sp = try await SpawnClient.connect(rt)
            var outPipe: [CInt] = [0, 0], errPipe: [CInt] = [0, 0]
            #expect(pipe(&outPipe) == 0 && pipe(&errPipe) == 0)
            let (gpid, pid) = try await sp.spawn(SpawnRequest(
                path: "/bin/sh", arguments: ["sh", "-c", "echo out; echo err >&2; pwd; echo $GREETING; exit 7"],
                environment: ["GREETING=hello", "PATH=/usr/bin:/bin"], cwd: node.root,
                descriptors: [(outPipe[1], 1), (errPipe[1], 2)]))
            close(outPipe[1])
            close(errPipe[1])
            #expect(pid > 0 && gpid >> 32 != 0)
            #expect(try await sp.wait(gpid, timeout: .seconds(10)) == .exited(7))
            #expect(Self.drain(outPipe[0]) == "out\n\(node.root)\nhello\n")
            #expect(Self.drain(errPipe[0]) == "err\n")
            close(outPipe[0])
            close(errPipe[0])

            // A long runner: listed, killed, its end reported.
            let (sleeper, _) = try await sp.spawn(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"]))
            #expect(try await sp.wait(sleeper, timeout: .milliseconds(100)) == nil)
            let row = try #require(try await Self.processes(sp).first { $0.command == "sleep 30" })
            #expect(row.state == "running" && row.uid == getuid())
            let ps = try await node.fosctl(["ps"])
            #expect(ps.status == 0 && ps.stdout.contains("sleep 30") && ps.stdout.contains(row.gpid), "\(ps.stdout)")
            try await sp.kill(sleeper, signal: SIGTERM)
            #expect(try await sp.wait(sleeper, timeout: .seconds(10)) == .signaled(SIGTERM))
            #expect(try await Self.processes(sp).first { $0.command == "sleep 30" }?.state == "killed by signal 15")

            // Errors: a missing program, a relative path, a bad descriptor,
            // another node, an unknown process.
            #expect(await remoteErrnoOf { _ = try await sp.spawn(SpawnRequest(path: "/no/such/program")) } == ENOENT)
            #expect(await remoteErrnoOf { _ = try await sp.spawn(SpawnRequest(path: "bin/sh")) } == EINVAL)
            #expect(await remoteErrnoOf {
                _ = try await sp.spawn(SpawnRequest(path: "/bin/true", descriptors: [(999, 1)]))
            } == EBADF)
            #expect(await remoteErrnoOf { _ = try await sp.spawn(SpawnRequest(path: "/bin/true", node: "ffff")) } == EHOSTUNREACH)
            #expect(await remoteErrnoOf { try await sp.kill(gpid | 0xFFFF, signal: SIGTERM) } == ESRCH)
            #expect(await remoteErrnoOf { try await sp.kill(gpid, signal: SIGTERM) } == ESRCH, "already ended")
            // Malformed payloads.
            let raw = { (p: [UInt8]) async -> Int32 in
                let ch = try! await rt.connect(try! await rt.lookup("/sys/spawn").addr, key: try! await rt.lookup("/sys/spawn").key)
                return (try? await rt.call(ch, opcode: UInt16(FOS_OP_SPAWN), payload: p).status) ?? -1
            }
            #expect(await raw([1, 2, 3]) == EINVAL)
            var p = [UInt8]()
            appendStruct(fos_spawn_req(path_len: 7, cwd_len: 0, argc: 2, envc: 0, nfds: 0, cpu: -1, node_len: 0, flags: 0), to: &p)
            p += Array("/bin/sh".utf8) + Array("sh\0".utf8)  // argc says 2, one string follows
            #expect(await raw(p) == EINVAL)

            // Stopping the node stops what it started.
            let (_, lastPid) = try await sp.spawn(SpawnRequest(path: "/bin/sleep", arguments: ["sleep", "30"]))
            #expect(processAlive(lastPid))
            #expect(await node.terminate() == 0)
            _ = try await eventually("the spawned sleep to end with the node", timeout: .seconds(5)) {
                processAlive(lastPid) ? nil : true
            }
        }
    }

    @Test("SPAWN of a descriptor (a program no path reaches), with the caller's blocked and ignored signals and umask; bad extensions")
    func execDescriptor() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let sp = try await SpawnClient.connect(rt)
            let grep = open("/usr/bin/grep", O_RDONLY | O_CLOEXEC)
            var outPipe: [CInt] = [0, 0]
            #expect(grep >= 0 && pipe(&outPipe) == 0)
            var r = SpawnRequest(path: "/named/by/descriptor",
                                 arguments: ["grep", "-E", "^(Sig(Blk|Ign)|Umask)", "/proc/self/status"],
                                 descriptors: [(outPipe[1], 1)], execDescriptor: grep)
            r.umask = 0o027
            r.signalMask = 1 << (SIGUSR1 - 1)
            r.ignoredSignals = 1 << (SIGUSR2 - 1)
            let (gpid, _) = try await sp.spawn(r)
            close(outPipe[1])
            #expect(try await sp.wait(gpid, timeout: .seconds(10)) == .exited(0))
            // Umask (octal), SigBlk, SigIgn (hex), in /proc's order.
            let lines = Self.drain(outPipe[0]).split(separator: "\n").map { $0.split(separator: "\t").last ?? "" }
            close(outPipe[0])
            #expect(lines.count == 3 && lines[0] == "0027", "\(lines)")
            let masks = lines.dropFirst().map { UInt64($0, radix: 16) ?? 0 }
            #expect(masks.count == 2 && masks[0] & 0x200 != 0 && masks[1] & 0x800 != 0, "\(masks)")
            // The descriptor must be the caller's; extension bits it does not know are refused.
            #expect(await remoteErrnoOf {
                _ = try await sp.spawn(SpawnRequest(path: "/x", execDescriptor: 999))
            } == EBADF)
            var p = [UInt8]()
            appendStruct(fos_spawn_req(path_len: 7, cwd_len: 0, argc: 1, envc: 0, nfds: 0, cpu: -1, node_len: 0,
                                       flags: FOS_SPAWN_F_EXT), to: &p)
            p += Array("/bin/sh".utf8) + Array("sh\0".utf8)
            appendStruct(fos_spawn_ext(exec_fd: -1, flags: 0x80, sigmask: 0, sigign: 0, umask: 0, reserved: 0), to: &p)
            let ch = try await rt.connect(try await rt.lookup("/sys/spawn").addr, key: try await rt.lookup("/sys/spawn").key)
            #expect(try await rt.call(ch, opcode: UInt16(FOS_OP_SPAWN), payload: p).status == EINVAL)
            close(grep)
        }
    }

    @Test("fosctl spawn runs the program as the calling user, with its stdio and exit status")
    func spawnAsCaller() async throws {
        try await TestNode.with(members: 1) { node in
            chmod(node.root, 0o755)  // let nobody reach the socket
            let ctl = try BuildProducts.path("fosctl")
            let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", ctl, "spawn", "--runtime", node.runtimeDir,
                          "--wait", "--cwd", "/tmp", "--"]
            let id = try await runCommand("/usr/bin/setpriv", nobody + ["/bin/sh", "-c", "id -u; id -g; pwd; exit 3"],
                                          outputIn: node.root)
            #expect(id.status == 3 && id.stdout == "65534\n65534\n/tmp\n", "\(id.status) \(id.stdout) \(id.stderr)")
            let killed = try await runCommand(ctl, ["spawn", "--runtime", node.runtimeDir, "--wait", "--", "sh", "-c", "kill -9 $$"],
                                              outputIn: node.root)
            #expect(killed.status == 128 + 9, "\(killed.status) \(killed.stderr)")
            let missing = try await runCommand(ctl, ["spawn", "--runtime", node.runtimeDir, "--", "no-such-command-here"],
                                               outputIn: node.root)
            #expect(missing.status == 1 && missing.stderr.contains("command not found"))
        }
    }
}
