import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Directory leases (fos_wire.h, Sources/FosFSServer/Leases.swift,
// Shim/src/lease.c): a process that made a directory creates its files
// without waiting. The member's lease lasts FOS_FS_LEASE_US here, long
// enough that a slow test machine still makes its creates under it.

@Suite("fs: directory leases", .serialized)
struct LeaseTests {
    /// A node whose leases last `leaseUs` µs, its fs fleet up, and a host
    /// directory for the scripts' signals.
    static func withNode(leaseUs: Int, _ body: (TestNode, String) async throws -> Void) async throws {
        try await TestNode.with(members: 1, env: ["FOS_FS_LEASE_US": String(leaseUs)]) { node in
            let d = node.root + "/sync"
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            _ = try await Shim.sh(node, "true")  // the fs fleet is up
            try await body(node, d)
        }
    }

    static func member(_ node: TestNode) async throws -> MemberInfo {
        try #require(try await node.fleets().first { $0.fleet == "/sys/fs" })
    }
    /// With the member stopped right after the MKDIR, ten exclusive creates
    /// (and their writes), and root's chmod and utime of the directory by
    /// its path, return at once: none waits for the member. The member is
    /// then killed before it saw them; the shim sends them again, with the
    /// same inode numbers, to its successor.
    @Test("creates under a lease do not wait, and are sent again to the member's successor")
    func leasedCreatesReplayed() async throws {
        try await Self.withNode(leaseUs: 800000) { node, d in
            let member = try await Self.member(node)
            let script = Shim.pythonWaits(d) + """
                import signal
                os.mkdir("/fos/leased")
                os.kill(\(member.pid), signal.SIGSTOP)
                t0 = time.monotonic()
                inos = []
                for i in range(10):
                    fd = os.open("/fos/leased/f%d" % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                    os.write(fd, b"file %d\\n" % i)
                    os.close(fd)
                # The directory's own path needs no lookup while leased:
                # root's changes of it go ahead too.
                os.chmod("/fos/leased", 0o750)
                os.utime("/fos/leased", ns=(10**18, 10**18))
                quick = time.monotonic() - t0 < 0.5
                open("\(d)/wrote", "w").close()
                wait("killed")
                names = sorted(os.listdir("/fos/leased"))
                good = all(open("/fos/leased/f%d" % i).read() == "file %d\\n" % i for i in range(10))
                modes = {oct(os.stat("/fos/leased/" + n).st_mode & 0o7777) for n in names}
                st = os.stat("/fos/leased")
                print(len(names), good, quick, modes, oct(st.st_mode & 0o7777), st.st_mtime_ns)
                """
            let (_, p) = try await Shim.pythonBesideMember(node, script)
            defer { p.kill() }
            // The creates went ahead if the script wrote while the member
            // was stopped; either way the member is killed, so a create
            // that waited would not hang the test.
            let wrote = try? await eventually("the script to write", timeout: .seconds(20)) {
                FileManager.default.fileExists(atPath: d + "/wrote") ? true : nil
            }
            #expect(wrote == true, "the creates waited for the stopped member")
            try await Shim.killMember(node, member, p, tell: d,
                                      expect: "10 True True {'0o640'} 0o750 \(1_000_000_000_000_000_000)\n")
        }
    }

    /// A create sent under a lease to a member killed before it served it
    /// may find its inode number taken by the successor's own creates: the
    /// holder then sends nothing more for that number (its writes would
    /// land in another process's file). The holder's descriptor says
    /// ESTALE; the other files keep their contents.
    @Test("a create replayed after a restart that finds its inode number taken sends nothing more for it")
    func replayedCreateLosesItsNumber() async throws {
        try await Self.withNode(leaseUs: 800000) { node, d in
            let member = try await Self.member(node)
            let script = Shim.pythonWaits(d) + """
                import errno, signal
                os.mkdir("/fos/p")
                os.kill(\(member.pid), signal.SIGSTOP)
                fd = os.open("/fos/p/a", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                os.write(fd, b"A" * 100)
                # The inode number its placeholder names (Shim/src/fdtable.c).
                ino = int(os.readlink("/proc/self/fd/%d" % fd).split("fos-")[1].split("-")[0], 16)
                print(ino)
                sys.stdout.flush()
                open("\(d)/wrote", "w").close()
                wait("taken")
                def attempt(f):
                    try:
                        f()
                        return "ok"
                    except OSError as e:
                        return errno.errorcode[e.errno]
                # fsync waits for what went ahead: the replay finds the
                # create failed, and the file is gone for good.
                print(attempt(lambda: os.fsync(fd)), attempt(lambda: os.write(fd, b"more")),
                      attempt(lambda: os.fstat(fd)))
                print(os.path.exists("/fos/p/a"))
                """
            let (_, p) = try await Shim.pythonBesideMember(node, script)
            defer { p.kill() }
            try await eventually("the script to write", timeout: .seconds(20)) {
                FileManager.default.fileExists(atPath: d + "/wrote") ? true : nil
            }
            #expect(kill(member.pid, SIGKILL) == 0)
            // The successor's creates in the same directory take the
            // numbers from the first free one on.
            let made = try await Shim.sh(node, "for i in $(seq 1 20); do echo B$i > /fos/p/f$i; done"
                                             + " && stat -c %i /fos/p/f*")
            #expect(made.status == 0, "\(made.stderr)")
            _ = FileManager.default.createFile(atPath: d + "/taken", contents: nil)
            let r = await p.wait(timeout: .seconds(60))
            let lines = r.stdout.split(separator: "\n").map(String.init)
            #expect(r.status == 0 && lines.count == 3, "\(r.stdout) \(r.stderr.prefix(2000))")
            let inos = Set(made.stdout.split(separator: "\n").map(String.init))
            // Only meaningful if a file of the successor's got the number.
            try #require(inos.contains(lines.first ?? ""), "the number \(lines.first ?? "?") was not reused: \(inos)")
            #expect(lines.dropFirst() == ["ESTALE ESTALE ESTALE", "False"])
            let check = try await Shim.sh(node, "cd /fos/p && for i in $(seq 1 20); do cat f$i; done | tr -d '\\n'")
            #expect(check.stdout == (1...20).map { "B\($0)" }.joined(), "\(check.stdout)")
        }
    }

    /// While one process holds a lease, another's writes sent ahead are
    /// still served in the order sent (taken in turn, not each served on
    /// its own), and its next read sees the last of them.
    @Test("another process's writes sent ahead keep their order while a lease is held")
    func othersAheadWritesKeepOrder() async throws {
        try await Self.withNode(leaseUs: 300000) { node, d in
            let writer = Shim.pythonWaits(d) + """
                fd = os.open("/fos/order.txt", os.O_RDWR | os.O_CREAT, 0o644)
                open("\(d)/opened", "w").close()
                wait("leased")
                bad = 0
                for round in range(20):
                    for i in range(50):
                        os.pwrite(fd, b"%02d-%03d" % (round, i), 0)
                    if os.pread(fd, 6, 0) != b"%02d-049" % round: bad += 1
                print(bad)
                """
            let holder = Shim.pythonWaits(d) + """
                wait("go")
                os.mkdir("/fos/held")
                open("\(d)/leased", "w").close()
                # A run of requests taken in turn that the writer's come among.
                for i in range(30):
                    fd = os.open("/fos/held/f%d" % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    os.write(fd, b"x" * 60000)
                    os.close(fd)
                print("ok")
                """
            let (_, w) = try await Shim.pythonBesideMember(node, writer)
            defer { w.kill() }
            try await eventually("the writer to open", timeout: .seconds(20)) {
                FileManager.default.fileExists(atPath: d + "/opened") ? true : nil
            }
            try await Task.sleep(for: .milliseconds(50))  // quiet before the MKDIR: a lease is granted
            let h = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/usr/bin/python3", "-c", holder],
                                   outputIn: node.root)
            defer { h.kill() }
            _ = FileManager.default.createFile(atPath: d + "/go", contents: nil)
            let rh = await h.wait(timeout: .seconds(60)), rw = await w.wait(timeout: .seconds(60))
            #expect(rh.status == 0 && rh.stdout == "ok\n", "\(rh.stderr.prefix(1000))")
            #expect(rw.status == 0 && rw.stdout == "0\n", "\(rw.stdout) \(rw.stderr.prefix(1000))")
        }
    }

    /// Another process's creates in a leased directory wait until the
    /// lease has expired and the holder's creates sent under it have been
    /// served: each name is created by exactly one of the two, and holds
    /// what its creator wrote. (Without the wait, the second process,
    /// creating from the other end, would take names the holder had been
    /// told were free; the holder's creates would then fail after it was
    /// told they succeeded.)
    @Test("an exclusive create stays exclusive against another process's creates in a leased directory")
    func leaseKeepsCreatesExclusive() async throws {
        try await Self.withNode(leaseUs: 300000) { node, d in
            func creator(_ tag: String, first: String, order: String) -> String {
                """
                import errno, json, os, sys, time
                \(first)
                mine = []
                for i in \(order):
                    try:
                        fd = os.open("/fos/race/n%d" % i, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                    except FileExistsError:
                        continue
                    os.write(fd, b"\(tag)")
                    os.close(fd)
                    mine.append(i)
                print(json.dumps(mine))
                """
            }
            let holder = creator("A", first: """
                os.mkdir("/fos/race")
                open("\(d)/made", "w").close()
                time.sleep(0.05)
                """, order: "range(40)")
            let rival = creator("B", first: """
                while not os.path.exists("\(d)/made"): time.sleep(0.001)
                """, order: "range(39, -1, -1)")
            let b = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/usr/bin/python3", "-c", rival],
                                   outputIn: node.root)
            defer { b.kill() }
            let a = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/usr/bin/python3", "-c", holder],
                                   outputIn: node.root)
            defer { a.kill() }
            let ra = await a.wait(timeout: .seconds(60)), rb = await b.wait(timeout: .seconds(60))
            #expect(ra.status == 0 && rb.status == 0, "\(ra.stderr.prefix(1000)) \(rb.stderr.prefix(1000))")
            let mineA = try JSONDecoder().decode([Int].self, from: Data(ra.stdout.utf8))
            let mineB = try JSONDecoder().decode([Int].self, from: Data(rb.stdout.utf8))
            #expect(Set(mineA).isDisjoint(with: mineB))
            #expect(Set(mineA).union(mineB) == Set(0..<40))
            let r = try await Shim.sh(node, "cd /fos/race && for i in $(seq 0 39); do printf '%s' \"$(cat n$i)\"; done")
            let expected = (0..<40).map { mineA.contains($0) ? "A" : "B" }.joined()
            #expect(r.status == 0 && r.stdout == expected, "\(r.stdout) \(r.stderr)")
        }
    }
}
