import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// A file whose last name goes while a process under the shim has it open
// stays readable and writable until its last close (FosFS Orphans.swift),
// through fork and a restart of the fs member, and is freed after it; a
// crash of the whole node leaks nothing.

@Suite("shim: files unlinked while open", .serialized, .enabled(if: ShimTests.installed("/usr/bin/python3")))
struct ShimOrphanTests {
    static let helpers = """
        import os, sys, time
        d = '/fos/orph'
        os.makedirs(d, exist_ok=True)
        def used():
            s = os.statvfs(d)
            return s.f_files - s.f_ffree
        def freed(u0):
            for _ in range(100):
                if used() == u0: return 'freed'
                time.sleep(0.1)
            return 'still held: %d' % (used() - u0)

        """

    @Test("open, unlink, use: the file lives until its last close, in a forked child too and across a member restart")
    func unlinkedWhileOpen() async throws {
        try await TestNode.with(members: 1) { node in
            let script = Self.helpers + """
                u0 = used()
                fd = os.open(d + '/a', os.O_CREAT | os.O_RDWR, 0o600)
                os.write(fd, b'0123456789' * 1000)
                os.unlink(d + '/a')
                print(os.path.exists(d + '/a'), os.fstat(fd).st_nlink, used() - u0)
                time.sleep(0.5)  # past a pass of the member's reaper
                os.write(fd, b'tail')
                os.lseek(fd, 0, 0)
                print(len(os.read(fd, 20000)))
                pid = os.fork()
                if pid == 0:
                    time.sleep(0.7)  # the parent closed its copy meanwhile
                    os.lseek(fd, 9998, 0)
                    print('child', os.read(fd, 100), flush=True)
                    os._exit(0)
                os.close(fd)
                time.sleep(0.5)
                print('parent closed', used() - u0, flush=True)
                os.waitpid(pid, 0)
                print(freed(u0))
                # The fs member killed while an orphan is open: it comes back
                # with its orphan lists and keeps what is still held.
                fd = os.open(d + '/b', os.O_CREAT | os.O_RDWR, 0o600)
                os.write(fd, b'kept' * 1000)
                os.unlink(d + '/b')
                print('kill', os.system(sys.argv[1] + ' kill /sys/fs#0 --runtime ' + sys.argv[2] + ' >/dev/null'))
                time.sleep(1.5)
                os.lseek(fd, 0, 0)
                print(os.read(fd, 8), used() - u0)
                os.close(fd)
                print(freed(u0))
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script, node.fosctlPath, node.runtimeDir])
            let want = "False 0 1\n10004\nparent closed 1\nchild b'89tail'\nfreed\nkill 0\nb'keptkept' 1\nfreed\n"
            #expect(r.status == 0 && r.stdout == want, "\(r)")
            #expect(try await node.fleets().first { $0.fleet == "/sys/fs" }?.restarts == 1)
        }
    }

    @Test("kept for a child after its parent closed, for an open made before a member restart; freed at once for a process that holds nothing")
    func holders() async throws {
        try await TestNode.with(members: 1) { node in
            let script = Self.helpers + """
                u0 = used()
                # subprocess.Popen(stdin=f); f.close(): the child holds it, the parent unlinks later.
                fd = os.open(d + '/p', os.O_CREAT | os.O_RDWR, 0o600)
                os.write(fd, b'popen' * 100)
                pid = os.fork()
                if pid == 0:
                    time.sleep(2.5)
                    os.lseek(fd, 0, 0)
                    print('child', os.read(fd, 5), flush=True)
                    os._exit(0)
                os.close(fd)
                time.sleep(1.5)
                os.unlink(d + '/p')
                os.waitpid(pid, 0)
                print(freed(u0))
                # Opened before the member restarts, unlinked after.
                fd = os.open(d + '/r', os.O_CREAT | os.O_RDWR, 0o600)
                os.write(fd, b'restart')
                print('kill', os.system(sys.argv[1] + ' kill /sys/fs#0 --runtime ' + sys.argv[2] + ' >/dev/null'))
                os.unlink(d + '/r')
                os.lseek(fd, 0, 0)
                print(os.read(fd, 7))
                os.close(fd)
                print(freed(u0))
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script, node.fosctlPath, node.runtimeDir])
            let want = "child b'popen'\nfreed\nkill 0\nb'restart'\nfreed\n"
            #expect(r.status == 0 && r.stdout == want, "\(r)")
            // Created, closed and unlinked by a process that holds no fos file
            // (and never forked while it did): no orphan, gone at once.
            let quick = Self.helpers + """
                def churn():
                    u0 = used()
                    for k in range(20):
                        f = os.open(d + '/t%d' % k, os.O_CREAT | os.O_WRONLY, 0o600)
                        os.close(f)
                        os.unlink(d + '/t%d' % k)
                    return used() - u0
                print('at once', churn())
                # The same while it holds another fos file: its descriptors say.
                log = open(d + '/log', 'w')
                print('holding another', churn())
                """
            let q = try await Shim.run(node, ["/usr/bin/python3", "-c", quick])
            #expect(q.status == 0 && q.stdout == "at once 0\nholding another 0\n", "\(q)")
        }
    }

    @Test("two fs members: files homed on either are kept while open")
    func twoMembers() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let script = Self.helpers + """
                for k in range(8):  # top-level directories are spread over the members
                    os.makedirs('/fos/m%d' % k, exist_ok=True)
                u0 = used()
                fds = []
                for k in range(8):
                    fd = os.open('/fos/m%d/f' % k, os.O_CREAT | os.O_RDWR, 0o600)
                    os.write(fd, b'%d' % k * 3000)
                    os.unlink('/fos/m%d/f' % k)
                    fds.append(fd)
                time.sleep(1.5)
                out = []
                for k, fd in enumerate(fds):
                    os.lseek(fd, 0, 0)
                    out.append(len(os.read(fd, 10000)))
                    os.close(fd)
                print(out)
                print(freed(u0))
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script])
            #expect(r.status == 0 && r.stdout == "[3000, 3000, 3000, 3000, 3000, 3000, 3000, 3000]\nfreed\n", "\(r)")
        }
    }

    /// Nodes on one host number their inodes alike: a placeholder names its
    /// node, and a member counts only its own node's.
    @Test("a placeholder of another node with the same inode number does not keep an orphan")
    func otherNodesPlaceholder() async throws {
        try await TestNode.with(members: 1) { node in
            let script = Self.helpers + """
                u0 = used()
                fd = os.open(d + '/x', os.O_CREAT | os.O_RDWR, 0o600)
                ino = os.fstat(fd).st_ino
                mine = [os.readlink('/proc/self/fd/%d' % fd)]
                # What a process of another node holding its inode `ino` shows.
                fake = os.memfd_create('fos-%x-2-81a4-%x' % (ino, 0xfeedface), 0)
                os.unlink(d + '/x')
                print(used() - u0, mine[0].startswith('/memfd:fos-%x-' % ino))
                os.close(fd)
                print(freed(u0))
                os.close(fake)
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script])
            #expect(r.status == 0 && r.stdout == "1 True\nfreed\n", "\(r)")
        }
    }

    @Test("the node and the holder killed with an orphan open: fsck is clean, and the next start frees it")
    func nodeCrashFreesOrphans() async throws {
        try await TestNode.with(members: 1) { node in
            let marker = node.root + "/held"
            let script = Self.helpers + """
                u0 = used()
                fd = os.open(d + '/c', os.O_CREAT | os.O_RDWR, 0o600)
                os.write(fd, b'x' * 100000)
                os.fsync(fd)
                os.unlink(d + '/c')
                open(sys.argv[1] + '.new', 'w').write('%d %d' % (u0, os.getpid()))
                os.rename(sys.argv[1] + '.new', sys.argv[1])
                time.sleep(120)
                """
            let holder = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/usr/bin/python3", "-c",
                                                          script, marker], outputIn: node.root)
            let held = try await eventually("the orphan to be held", timeout: .seconds(30)) {
                // Both numbers or not yet (the marker appears whole, by rename;
                // an empty list is "not yet" too, not a value to index).
                let n = (try? String(contentsOfFile: marker, encoding: .utf8))?.split(separator: " ").compactMap { Int32($0) }
                return n?.count == 2 ? n : nil
            }
            // fos-run's program is not its child: kill that process itself.
            kill(held[1], SIGKILL)
            holder.kill()
            await node.killHard()
            _ = await holder.wait()
            try await eventually("the holder to be gone") { processAlive(held[1]) ? nil : true }
            let u0 = String(held[0])
            let disk = node.stateDir + "/disk.img"
            let check = try await eventually("fsck", timeout: .seconds(10)) { () -> CLIResult? in
                let r = try await offline(node, ["fsck", "--disk", disk])
                return r.stderr.contains("in use") ? nil : r
            }
            #expect(check.status == 0 && check.stdout == "clean\n", "fsck: \(check.stdout) \(check.stderr)")
            try node.launch()
            try await node.waitReady()
            let after = Self.helpers + "print(freed(int(sys.argv[1])))"
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", after, u0])
            #expect(r.status == 0 && r.stdout == "freed\n", "\(r)")
        }
    }
}
