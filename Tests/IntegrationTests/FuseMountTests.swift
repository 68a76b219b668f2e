import FosCore
import FosFSClient
import FosMounts
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// fosctl mount and umount: the daemon's life, and the mounts it leaves.
@Suite("FUSE mount lifecycle", .serialized)
struct FuseMountTests {
    struct StatusJSON: Decodable {
        struct Row: Decodable {
            var mountpoint: String
            var pid: Int32?
            var state: String
        }
        var mounts: [Row]
    }

    /// A mount watches every member's change log with a long poll; a member
    /// whose log is still empty once answered it at once, forever, and the
    /// daemon and that member each burned a core.
    @Test("an idle node with a mount sleeps: the daemon and every member use almost no CPU")
    func idleMountSleeps() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            try await withMount(node) { mp in
                let rec = try #require(FuseMounts.read(runtime: node.runtimeDir, mountpoint: mp))
                // The daemon finds every member within its 2 s scan.
                await pause(.seconds(3))
                let pids = [rec.pid] + (try await node.fleets().map(\.pid))
                let before = pids.map(cpuTicks)
                await pause(.seconds(1))
                let used = zip(pids.map(cpuTicks), before).map { $0 - $1 }
                let hz = Int(sysconf(Int32(_SC_CLK_TCK)))
                #expect(used.allSatisfy { $0 <= hz / 10 },
                        "CPU ticks (of \(hz)/s) used while idle: \(zip(pids, used).map { "\($0): \($1)" })")
            }
        }
    }

    /// A 1 MiB read is 17 messages whose replies overfill the ring between
    /// the member and the daemon. The member waits for the daemon to make
    /// room; that wait once lasted until the member's next timer (its sleep
    /// took the deadline of a call of its own instead of the 1 ms it meant),
    /// and every such read took about 100 ms.
    @Test("a read of more than a ring's worth is answered at once: 1 MiB reads past the page cache")
    func largeReadsDoNotStall() async throws {
        try await TestNode.with(members: 1) { node in
            try await withMount(node) { mp in
                let path = mp + "/big"
                var data = [UInt8](repeating: 0, count: 4 << 20)
                for i in data.indices { data[i] = UInt8(truncatingIfNeeded: (i &* 2654435761) >> 13) }
                try Data(data).write(to: URL(fileURLWithPath: path))
                let fd = open(path, O_RDONLY | O_CLOEXEC)
                try #require(fd >= 0)
                defer { close(fd) }
                var buf = [UInt8](repeating: 0, count: 1 << 20)
                var took: [Double] = []
                for i in 0..<12 {
                    // The kernel's copy goes; the read asks the daemon.
                    #expect(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED) == 0)
                    let off = (i % 4) << 20
                    let t = monotonicNanos()
                    let n = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(off)) }
                    took.append(Double(monotonicNanos() - t) / 1e6)
                    try #require(n == buf.count)
                    #expect(buf[...] == data[off..<(off + (1 << 20))])
                }
                took.sort()
                print(String(format: "IntegrationTests: 1 MiB read through the mount past the page cache: median %.2f ms, worst %.2f ms",
                             took[took.count / 2], took.last!))
                #expect(took[took.count / 2] < 30, "1 MiB reads took \(took) ms")
            }
        }
    }

    @Test("mount, status, umount; a killed daemon's mount is stale until umount; the daemon leaves with the node")
    func lifecycle() async throws {
        try await TestNode.with(members: 1) { node in
            try await withMount(node) { mp in
                let mount = try await runCommand("/bin/mount", [], outputIn: node.root)
                #expect(mount.stdout.contains("on \(mp) type fuse.fos"), "\(mount.stdout)")
                let s = try await node.fosctlJSON(StatusJSON.self, ["status"])
                #expect(s.mounts.count == 1 && s.mounts.first?.mountpoint == mp && s.mounts.first?.state == "live")
                let again = try await node.fosctl(["mount", mp])
                #expect(again.status == 1 && again.stderr.contains("is a fos mount already"), "\(again.stderr)")
                #expect(again.stderr.split(separator: "\n").count == 1)
                // Through a symbolic link to it: the same mount point.
                let link = node.root + "/link-to-mount"
                #expect(symlink(mp, link) == 0)
                let viaLink = try await node.fosctl(["mount", link])
                #expect(viaLink.status == 1 && viaLink.stderr.contains("\(mp) is a fos mount already"), "\(viaLink.stderr)")
                #expect(try await node.fosctlJSON(StatusJSON.self, ["status"]).mounts.count == 1)
                let log = mountLog(node, mp)
                #expect(log.contains("max_write 1048576"), "\(log)")
            }

            // Errors are one clear line.
            let missing = try await node.fosctl(["mount", node.root + "/nowhere"])
            #expect(missing.status == 1 && missing.stderr == "fosctl: mount: \(node.root)/nowhere: no such directory\n")
            let notMounted = try await node.fosctl(["umount", node.root])
            #expect(notMounted.status == 1 && notMounted.stderr.contains("is not a fos mount"))

            // kill -9 of the daemon: the mount stays, stale; umount cleans it.
            let mp = node.root + "/killed"
            try FileManager.default.createDirectory(atPath: mp, withIntermediateDirectories: false)
            let m = try await node.fosctl(["mount", mp])
            #expect(m.status == 0 && m.stdout.isEmpty && m.stderr.isEmpty, "\(m.stderr)")
            do {
                let rec = try #require(FuseMounts.read(runtime: node.runtimeDir, mountpoint: mp))
                #expect(FuseMounts.daemonAlive(rec.pid))
                kill(rec.pid, SIGKILL)
                try await eventually("the daemon to die") { FuseMounts.daemonAlive(rec.pid) ? nil : true }
                #expect(FuseMounts.isMounted(mp))
                let s = try await node.fosctlJSON(StatusJSON.self, ["status"])
                #expect(s.mounts.first { $0.mountpoint == mp }?.state == "stale")
                let text = try await node.fosctl(["status"])
                #expect(text.stdout.contains("STALE") && text.stdout.contains("fosctl umount \(mp)"))
                let u = try await node.fosctl(["umount", mp])
                #expect(u.status == 0, "\(u.stderr)")
                #expect(!FuseMounts.isMounted(mp))
                #expect(try await node.fosctlJSON(StatusJSON.self, ["status"]).mounts.isEmpty)
            } catch {
                await forceUnmount(node, mp)
                throw error
            }

            // A mount in use: umount is refused, as umount(8) refuses, and
            // the user keeps working; --lazy detaches it, and its daemon
            // serves the user to its last write, then leaves.
            let busy = node.root + "/busy"
            try FileManager.default.createDirectory(atPath: busy, withIntermediateDirectories: false)
            let mb = try await node.fosctl(["mount", busy])
            #expect(mb.status == 0, "\(mb.stderr)")
            do {
                let fd = open(busy + "/held", O_CREAT | O_WRONLY | O_TRUNC, 0o644)
                try #require(fd >= 0)
                #expect(write(fd, "before\n", 7) == 7)
                let refused = try await node.fosctl(["umount", busy])
                #expect(refused.status == 1 && refused.stderr.contains("target is busy")
                        && refused.stderr.contains("fosctl umount --lazy"), "\(refused.stderr)")
                #expect(FuseMounts.isMounted(busy))
                let rec = try #require(FuseMounts.read(runtime: node.runtimeDir, mountpoint: busy))
                let lazy = try await node.fosctl(["umount", "--lazy", busy])
                #expect(lazy.status == 0, "\(lazy.stderr)")
                #expect(!FuseMounts.isMounted(busy))
                let s = try await node.fosctlJSON(StatusJSON.self, ["status"])
                #expect(s.mounts.first { $0.mountpoint == busy }?.state == "detached")
                #expect(write(fd, "after\n", 6) == 6)
                #expect(close(fd) == 0)
                try await eventually("the detached mount's daemon to leave") {
                    FuseMounts.daemonAlive(rec.pid) || FuseMounts.read(runtime: node.runtimeDir, mountpoint: busy) != nil
                        ? nil : true
                }
                let fs = try await FSClient.connect(try node.runtime())
                #expect(try await fs.readFile(path: "/held") == Array("before\nafter\n".utf8))
            } catch {
                await forceUnmount(node, busy)
                throw error
            }

            // The node stops: the daemon unmounts and exits.
            let m2 = try await node.fosctl(["mount", mp])
            #expect(m2.status == 0, "\(m2.stderr)")
            let rec = FuseMounts.read(runtime: node.runtimeDir, mountpoint: mp)
            await node.terminate()
            do {
                try await eventually("the daemon to leave with the node") {
                    (rec.map { FuseMounts.daemonAlive($0.pid) } ?? false) || FuseMounts.isMounted(mp) ? nil : true
                }
                #expect(FuseMounts.read(runtime: node.runtimeDir, mountpoint: mp) == nil)
                #expect(mountLog(node, mp).contains("the node stopped"))
            } catch {
                await forceUnmount(node, mp)
                throw error
            }
        }
    }
}
