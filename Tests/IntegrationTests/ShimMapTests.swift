import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Shared mappings of fos files between processes (Shim/src/w_mmap.c,
// FosFSServer/SharedMaps.swift): one memfd per mapped file at its home
// member, which every mapping on the machine shares and read and write go
// through.

@Suite("shim: shared mappings between processes", .serialized,
       .enabled(if: ShimTests.installed("/usr/bin/python3")))
struct ShimMapTests {
    @Test("a member restart: it takes the mapped pages back (msync works), and a new mapper meets the old one again; unlinked while mapped, the file lives until unmapped")
    func memberRestart() async throws {
        try await TestNode.with(members: 1) { node in
            let script = """
                import mmap, os, subprocess, sys, time
                d = '/fos/m'
                os.makedirs(d)
                def used():
                    s = os.statvfs(d)
                    return s.f_files - s.f_ffree
                fd = os.open(d + '/f', os.O_CREAT | os.O_RDWR, 0o644)
                os.write(fd, b'.' * 8192)
                m = mmap.mmap(fd, 8192)
                m[0:6] = b'BEFORE'
                print('kill', os.system(sys.argv[1] + ' kill /sys/fs#0 --runtime ' + sys.argv[2] + ' >/dev/null'))
                time.sleep(1.5)
                m[100:105] = b'AFTER'
                m.flush()  # msync on a channel the kill broke: reconnects, and the new member has the memfd
                other = "import mmap, os; fd = os.open('/fos/m/f', os.O_RDWR); m = mmap.mmap(fd, 8192); " \\
                        "print(bytes(m[0:6]), bytes(m[100:105])); m[200:205] = b'OTHER'"
                print(subprocess.run([sys.executable, '-c', other], capture_output=True, text=True).stdout, end='')
                print(bytes(m[200:205]), os.pread(fd, 6, 0), os.pread(fd, 5, 100))
                u0 = used()
                os.unlink(d + '/f')
                os.close(fd)
                m[300:304] = b'LIVE'
                time.sleep(2.5)
                print(bytes(m[300:304]), used() - u0)
                m.close()
                for _ in range(100):
                    if used() == u0 - 1: break
                    time.sleep(0.1)
                print('freed', u0 - used())
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script, node.fosctlPath, node.runtimeDir])
            let want = "kill 0\nb'BEFORE' b'AFTER'\nb'OTHER' b'BEFORE' b'AFTER'\nb'LIVE' 0\nfreed 1\n"
            #expect(r.status == 0 && r.stdout == want, "\(r)")
            #expect(try await node.fleets().first { $0.fleet == "/sys/fs" }?.restarts == 1)
        }
    }

    /// A read-only taker must not reopen the memfd writable through
    /// /proc/self/fd, and no taker may seal it against the member's writes.
    @Test("the member's memfd: mode 0400, sealed against further seals")
    func memfdLockedDown() async throws {
        try await TestNode.with(members: 1) { node in
            let marker = node.root + "/mapped"
            let script = """
                import mmap, os, sys, time
                fd = os.open('/fos/f', os.O_CREAT | os.O_RDWR, 0o644)
                os.write(fd, b'x' * 4096)
                m = mmap.mmap(fd, 4096)
                open(sys.argv[1], 'w').write('%d' % os.getpid())
                time.sleep(60)
                """
            let holder = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/usr/bin/python3", "-c",
                                                          script, marker], outputIn: node.root)
            // fos-run's program is not its child: that process itself goes too.
            let pid = try await eventually("the file to be mapped", timeout: .seconds(30)) {
                (try? String(contentsOfFile: marker, encoding: .utf8)).flatMap { Int32($0) }
            }
            defer {
                kill(pid, SIGKILL)
                holder.kill()
            }
            let member = try #require(try await node.fleets().first { $0.fleet == "/sys/fs" })
            let fdDir = "/proc/\(member.pid)/fd"
            let memfds = try FileManager.default.contentsOfDirectory(atPath: fdDir).filter {
                ((try? FileManager.default.destinationOfSymbolicLink(atPath: fdDir + "/" + $0)) ?? "").contains("fosmap-")
            }
            #expect(memfds.count == 1, "\(memfds)")
            for n in memfds {
                let fd = open(fdDir + "/" + n, O_RDONLY | O_CLOEXEC)
                #expect(fd >= 0)
                var st = stat()
                #expect(fstat(fd, &st) == 0 && st.st_mode & 0o7777 == 0o400)
                #expect(fcntl(fd, 1034 /* F_GET_SEALS */) & 1 /* F_SEAL_SEAL */ != 0)
                close(fd)
            }
        }
    }

    @Test("two fs members: mappings of files homed on either member are shared (t_mapshare)")
    func twoMembers() async throws {
        try await TestNode.with(members: 2) { node in
            let exe = try await Shim.compile("t_mapshare", into: node.root)
            for i in 0..<4 {
                let r = try await Shim.run(node, [exe, "/fos/ms\(i)"])
                #expect(r.status == 0 && r.stdout.hasSuffix("ok\n"), "\(r.status)\n\(r.stdout)\n\(r.stderr)")
            }
        }
    }
}
