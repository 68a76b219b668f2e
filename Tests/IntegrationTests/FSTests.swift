import CFosWire
import FosCore
import FosFS
import FosFSClient
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The file system fleet (/sys/fs) on real nodes: FSClient against fos-fs
// members over the blk server and a disk image in the node's state directory.

/// Bytes that differ at every offset (so a misplaced block shows).
func pattern(_ n: Int, seed: UInt8 = 7) -> [UInt8] {
    (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed) &+ ($0 >> 12)) }
}

/// Runs `body` and returns the errno of the `FosError.remote` it throws (nil if none).
func errnoOf(_ body: () async throws -> Void) async -> Int32? {
    do {
        try await body()
        return nil
    } catch {
        return remoteErrno(error) ?? -1
    }
}

/// fosctl mkfs/fsck: offline tools, no --runtime.
func offline(_ node: TestNode, _ args: [String]) async throws -> CLIResult {
    try await runCommand(node.fosctlPath, args, outputIn: node.root)
}

@Suite("fs fleet", .serialized)
struct FSTests {
    /// The change log (FOS_OP_FS_WATCH, FosFSServer/Watch.swift) joins a
    /// process's consecutive changes of one inode into one event, but never
    /// an event a watcher was already given.
    @Test("the change log joins one process's consecutive changes of an inode, not ones a watcher has")
    func watchJoins() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try await FSClient.connect(try node.runtime())
            let f = try await fs.create(parent: FSClient.rootIno, name: "joined", mode: 0o644)
            let start = try await fs.watch(after: 0, wait: .zero)
            _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(5000))
            _ = try await fs.write(ino: f.ino, offset: 5000, data: pattern(3000))
            _ = try await fs.chmod(ino: f.ino, mode: 0o600)
            let first = try await fs.watch(after: start.cursor, wait: .seconds(5))
            let mine = { (b: FSWatchBatch) in
                b.events.compactMap { e -> (UInt64, UInt64)? in
                    if case .inode(let ino, let off, let len, _) = e, ino == f.ino { return (off, len) }
                    return nil
                }
            }
            let joined = mine(first)
            #expect(joined.count == 1 && joined.first?.0 == 0 && joined.first?.1 == 8000, "\(first.events)")
            // Given to a watcher: the next change is an event of its own.
            _ = try await fs.write(ino: f.ino, offset: 8000, data: pattern(100))
            let second = try await fs.watch(after: first.cursor, wait: .seconds(5))
            let next = mine(second)
            #expect(next.count == 1 && next.first?.0 == 8000 && next.first?.1 == 100, "\(second.events)")
        }
    }

    @Test("POSIX operations through FSClient; credentials are the kernel's")
    func operations() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try await FSClient.connect(try node.runtime())
            let root = FSClient.rootIno

            // Directories and files.
            let d = try await fs.mkdir(parent: root, name: "docs", mode: 0o755)
            #expect(d.type == .directory && d.nlink == 2)
            let f = try await fs.create(parent: d.ino, name: "a.txt", mode: 0o644)
            #expect(f.type == .regular && f.size == 0 && f.uid == 0)
            #expect(await errnoOf { _ = try await fs.create(parent: d.ino, name: "a.txt") } == EEXIST)
            let text = Array("hello, fos".utf8)
            #expect(try await fs.write(ino: f.ino, offset: 0, data: text) == text.count)
            #expect(try await fs.read(ino: f.ino, offset: 0, count: 100) == text)
            #expect(try await fs.read(ino: f.ino, offset: 7, count: 3) == Array("fos".utf8))
            #expect(try await fs.getattr(ino: f.ino).size == UInt64(text.count))
            #expect(try await fs.lookup(parent: d.ino, name: "a.txt").ino == f.ino)
            #expect(await errnoOf { _ = try await fs.lookup(parent: d.ino, name: "missing") } == ENOENT)

            // Larger than one message: split into several, read back whole.
            let big = pattern(300 * 1024 + 123)
            let b = try await fs.create(parent: d.ino, name: "big.bin")
            #expect(try await fs.write(ino: b.ino, offset: 0, data: big) == big.count)
            #expect(try await fs.read(ino: b.ino, offset: 0, count: big.count + 4096) == big)
            #expect(try await fs.read(ino: b.ino, offset: 70_000, count: 100_000) == Array(big[70_000..<170_000]))
            let ap = try await fs.append(ino: f.ino, data: Array("!".utf8))
            #expect(ap.offset == UInt64(text.count) && ap.count == 1)
            #expect(try await fs.truncate(ino: b.ino, size: 5000).size == 5000)
            try await fs.fsync(ino: b.ino)
            try await fs.fsync(ino: b.ino, dataOnly: true)

            // Paths.
            #expect(try await fs.stat(path: "/docs/a.txt").ino == f.ino)
            #expect(try await fs.readFile(path: "/docs/a.txt") == text + Array("!".utf8))
            try await fs.writeFile(path: "/docs/w.txt", data: pattern(70_000, seed: 3), sync: true)
            #expect(try await fs.readFile(path: "/docs/w.txt") == pattern(70_000, seed: 3))
            let o = try await fs.open(path: "/docs/new", flags: [.create, .exclusive, .writeOnly], mode: 0o600)
            #expect(o.mode & 0o777 == 0o600)
            #expect(await errnoOf { _ = try await fs.open(path: "/docs/nothere") } == ENOENT)
            #expect(await errnoOf { _ = try await fs.open(path: "/docs/a.txt/x") } == ENOTDIR)

            // readdir, with a cookie across several calls.
            for i in 0..<40 { _ = try await fs.create(parent: d.ino, name: "f\(i)") }
            var names: [String] = []
            var cookie: UInt64 = 0
            while true {
                let batch = try await fs.readdir(ino: d.ino, cookie: cookie, max: 7)
                guard let last = batch.last else { break }
                #expect(batch.count <= 7)
                names += batch.map(\.name)
                cookie = last.nextCookie
            }
            #expect(Set(names) == Set([".", "..", "a.txt", "big.bin", "w.txt", "new"] + (0..<40).map { "f\($0)" }))
            #expect(names.count == 46)
            #expect(Set(try await fs.listDirectory(path: "/docs").map(\.name)).count == 44)

            // rename, link, unlink, rmdir.
            try await fs.rename(oldParent: d.ino, oldName: "f0", newParent: root, newName: "moved")
            #expect(await errnoOf { _ = try await fs.lookup(parent: d.ino, name: "f0") } == ENOENT)
            let moved = try await fs.stat(path: "/moved")
            #expect(try await fs.link(ino: moved.ino, newParent: d.ino, name: "hard").nlink == 2)
            try await fs.unlink(parent: root, name: "moved")
            #expect(try await fs.getattr(ino: moved.ino).nlink == 1)
            #expect(await errnoOf { try await fs.rename(oldParent: d.ino, oldName: "f1", newParent: d.ino, newName: "f2",
                                                        flags: .noReplace) } == EEXIST)
            #expect(await errnoOf { try await fs.rmdir(parent: root, name: "docs") } == ENOTEMPTY)
            let e = try await fs.mkdir(path: "/empty")
            try await fs.rmdir(parent: root, name: "empty")
            #expect(await errnoOf { _ = try await fs.getattr(ino: e.ino) } == ESTALE)
            #expect(await errnoOf { try await fs.unlink(parent: root, name: "docs") } == EISDIR)

            // Symlinks.
            let l = try await fs.symlink(parent: root, name: "link", target: "/docs/a.txt")
            #expect(l.type == .symlink)
            #expect(try await fs.readlink(ino: l.ino) == "/docs/a.txt")
            #expect(try await fs.stat(path: "/link").ino == f.ino)
            #expect(try await fs.stat(path: "/link", followLast: false).ino == l.ino)
            #expect(try await fs.readFile(path: "/link") == text + Array("!".utf8))

            // chmod, chown, xattrs, statfs.
            #expect(try await fs.chmod(ino: f.ino, mode: 0o600).mode & 0o7777 == 0o600)
            let owned = try await fs.chown(ino: f.ino, uid: 1000, gid: 1000)
            #expect(owned.uid == 1000 && owned.gid == 1000)
            try await fs.setxattr(ino: f.ino, name: "user.color", value: Array("blue".utf8))
            #expect(try await fs.getxattr(ino: f.ino, name: "user.color") == Array("blue".utf8))
            #expect(try await fs.listxattr(ino: f.ino) == ["user.color"])
            try await fs.removexattr(ino: f.ino, name: "user.color")
            #expect(await errnoOf { _ = try await fs.getxattr(ino: f.ino, name: "user.color") } == ENODATA)
            let st = try await fs.statfs()
            #expect(st.fs.blockSize == 4096 && st.fs.totalBlocks > 0 && st.fs.freeBlocks <= st.fs.totalBlocks)
            #expect(st.member == 0 && st.members == 1)

            // The caller is root as the kernel says (this test process): it
            // reads a 0600 file of uid 1000. The same file is refused to an
            // unprivileged process (fosctl fs cat as nobody), whose
            // credentials fosd attests — no message field can claim root.
            #expect(try await fs.readFile(path: "/docs/a.txt") == text + Array("!".utf8))
            chmod(node.root, 0o755)  // let nobody reach the socket
            let ctl = try BuildProducts.path("fosctl")
            let nobody = ["--reuid=65534", "--regid=65534", "--clear-groups", ctl]
            let denied = try await runCommand("/usr/bin/setpriv", nobody + ["fs", "cat", "/docs/a.txt", "--runtime", node.runtimeDir],
                                              outputIn: node.root)
            #expect(denied.status == 1 && denied.stderr.contains("ermission denied"), "nobody cat: \(denied.status) \(denied.stderr)")
            _ = try await fs.chmod(ino: f.ino, mode: 0o644)
            let allowed = try await runCommand("/usr/bin/setpriv", nobody + ["fs", "cat", "/docs/a.txt", "--runtime", node.runtimeDir],
                                               outputIn: node.root)
            #expect(allowed.status == 0 && allowed.stdout == "hello, fos!", "nobody cat 0644: \(allowed.status) \(allowed.stderr)")
            let put = try await runCommand("/usr/bin/setpriv", nobody + ["fs", "put", "/docs/a.txt", "x", "--runtime", node.runtimeDir],
                                           outputIn: node.root)
            #expect(put.status == 1 && put.stderr.contains("ermission denied"), "nobody put: \(put.status) \(put.stderr)")
            let mk = try await runCommand("/usr/bin/setpriv", nobody + ["fs", "mkdir", "/nope", "--runtime", node.runtimeDir],
                                          outputIn: node.root)
            #expect(mk.status == 1 && mk.stderr.contains("ermission denied"), "nobody mkdir: \(mk.status) \(mk.stderr)")
            #expect(try await node.fleets().allSatisfy { $0.restarts == 0 })
        }
    }

    @Test("malformed requests get error replies; the member keeps serving")
    func garbage() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let fs = try await FSClient.connect(rt)
            let a = try await fs.create(parent: FSClient.rootIno, name: "ok")
            func call(_ op: UInt32, _ p: [UInt8]) async throws -> Int32 {
                try await rt.call(name: "/sys/fs", opcode: UInt16(op), payload: p).status
            }
            func bytes<T>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v) { Array($0) } }
            let name = Array("x".utf8)
            // Too short, too long, lengths that disagree with the payload.
            #expect(try await call(FOS_OP_FS_GETATTR, [1, 2, 3]) == EPROTO)
            #expect(try await call(FOS_OP_FS_GETATTR, bytes(fos_fs_ino(ino: a.ino)) + [0]) == EPROTO)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 1, name_len: 5, flags: 0)) + name) == EPROTO)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 1, name_len: UInt32.max, flags: 0)) + name) == EPROTO)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 1, name_len: 300, flags: 0))
                                   + [UInt8](repeating: 0x61, count: 300)) == ENAMETOOLONG)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 1, name_len: 2, flags: 0)) + [0xff, 0xfe]) == EINVAL)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 1, name_len: 3, flags: 0)) + Array("a/b".utf8)) == EINVAL)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 1, name_len: 2, flags: 0)) + [0x61, 0]) == EINVAL)
            #expect(try await call(FOS_OP_FS_LOOKUP, bytes(fos_fs_name_req(dir: 0xdead_beef_0000_0001, name_len: 1, flags: 0)) + name) == ESTALE)
            #expect(try await call(FOS_OP_FS_READ, bytes(fos_fs_io(ino: a.ino, offset: 0, count: 1 << 20, flags: 0))) == EINVAL)
            #expect(try await call(FOS_OP_FS_READ, bytes(fos_fs_io(ino: a.ino, offset: UInt64.max, count: 1, flags: 0))) == EINVAL)
            #expect(try await call(FOS_OP_FS_WRITE, bytes(fos_fs_io(ino: a.ino, offset: 0, count: 10, flags: 0)) + [1, 2]) == EPROTO)
            #expect(try await call(FOS_OP_FS_WRITE, bytes(fos_fs_io(ino: a.ino, offset: 0, count: 2, flags: 0x80)) + [1, 2]) == EINVAL)
            #expect(try await call(FOS_OP_FS_RENAME, bytes(fos_fs_rename(old_dir: 1, new_dir: 1, flags: 0, old_len: 1, new_len: 9)) + name + name) == EPROTO)
            #expect(try await call(FOS_OP_FS_READDIR, bytes(fos_fs_readdir(ino: 1, cookie: 0, max: 0, reserved: 0))) == EINVAL)
            #expect(try await call(FOS_OP_FS_SETATTR, bytes(fos_fs_setattr(ino: a.ino, valid: 0x100, mode: 0, uid: 0, gid: 0, size: 0,
                                                                          atime_ns: 0, mtime_ns: 0))) == EINVAL)
            #expect(try await call(FOS_OP_FS_OPEN, bytes(fos_fs_open(flags: 0, mode: 0, path_len: 5000, reserved: 0))) == ENAMETOOLONG)
            #expect(try await call(FOS_OP_FS_SYMLINK, bytes(fos_fs_create(dir: 1, rdev: 0, mode: 0, flags: 0, name_len: 1,
                                                                         target_len: 40)) + name + name) == EPROTO)
            #expect(try await call(FOS_OP_FS_STATFS, [1]) == EPROTO)
            // UNLINK's flags and its list of the caller's open files.
            _ = try await fs.create(parent: FSClient.rootIno, name: "x")
            func unlinkX(_ flags: UInt32, _ tail: [UInt8]) async throws -> Int32 {
                try await call(FOS_OP_FS_UNLINK, bytes(fos_fs_name_req(dir: FSClient.rootIno, name_len: 1, flags: flags)) + name + tail)
            }
            let listed = FOS_FS_UNLINK_HOLDS_LISTED
            #expect(try await unlinkX(0x8, []) == EINVAL)
            #expect(try await unlinkX(FOS_FS_UNLINK_HOLDS_NONE | FOS_FS_UNLINK_SHARED_NONE, []) == EINVAL)
            #expect(try await unlinkX(listed, []) == EPROTO)
            #expect(try await unlinkX(listed, bytes(UInt32(2)) + bytes(a.ino)) == EPROTO)
            #expect(try await unlinkX(listed, bytes(UInt32(1)) + bytes(a.ino) + [0]) == EPROTO)
            #expect(try await unlinkX(listed, bytes(UInt32(33)) + [UInt8](repeating: 0, count: 33 * 8)) == EINVAL)
            #expect(try await unlinkX(FOS_FS_UNLINK_HOLDS_NONE, bytes(UInt32(0))) == EPROTO)
            #expect(try await unlinkX(listed, bytes(UInt32(1)) + bytes(a.ino)) == 0)
            // Shared mappings: flags, reserved bits, sizes, what may be mapped.
            #expect(try await call(FOS_OP_FS_MAP, bytes(fos_fs_map(ino: a.ino, flags: 0x80, reserved: 0))) == EINVAL)
            #expect(try await call(FOS_OP_FS_MAP, bytes(fos_fs_map(ino: a.ino, flags: 0, reserved: 1))) == EINVAL)
            #expect(try await call(FOS_OP_FS_MAP, bytes(fos_fs_map(ino: a.ino, flags: 0, reserved: 0)) + [0]) == EPROTO)
            #expect(try await call(FOS_OP_FS_MAP, bytes(fos_fs_map(ino: FSClient.rootIno, flags: 0, reserved: 0))) == ENODEV)
            #expect(try await call(FOS_OP_FS_MSYNC, bytes(fos_fs_msync(ino: a.ino, memfd_ino: 0, flags: 2, reserved: 0))) == EINVAL)
            #expect(try await call(FOS_OP_FS_MSYNC, [1, 2, 3]) == EPROTO)
            // Not mapped: no memfd to name.
            #expect(try await call(FOS_OP_FS_MSYNC, bytes(fos_fs_msync(ino: a.ino, memfd_ino: 7, flags: 0, reserved: 0))) == EIO)
            // HOLD: a regular file that exists, and nothing more.
            #expect(try await call(FOS_OP_FS_HOLD, bytes(fos_fs_ino(ino: a.ino))) == 0)
            #expect(try await call(FOS_OP_FS_HOLD, bytes(fos_fs_ino(ino: a.ino)) + [0]) == EPROTO)
            #expect(try await call(FOS_OP_FS_HOLD, [1, 2]) == EPROTO)
            #expect(try await call(FOS_OP_FS_HOLD, bytes(fos_fs_ino(ino: FSClient.rootIno))) == EINVAL)
            #expect(try await call(FOS_OP_FS_HOLD, bytes(fos_fs_ino(ino: 0xdead_0000_beef))) != 0)
            #expect(try await call(0x4fe, []) == ENOSYS)
            // FORWARD is for fleet peers on the internal mailbox only.
            var fwd = bytes(fos_fs_forward(opcode: UInt16(FOS_OP_FS_GETATTR), ngroups: 0, uid: 0, gid: 0, hops: 1, pid: 0))
            fwd += bytes(fos_fs_ino(ino: a.ino))
            #expect(try await call(FOS_OP_FS_FORWARD, fwd) == EPERM)
            // Random junk for every opcode.
            var rng = SystemRandomNumberGenerator()
            for op in Array(UInt32(FOS_OP_FS_LOOKUP)...UInt32(FOS_OP_FS_RESOLVE)) + [FOS_OP_FS_MAP, FOS_OP_FS_MSYNC] {
                for len in [0, 1, 7, 8, 23, 24, 40, 100] {
                    let junk = (0..<len).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    _ = try await call(op, junk)
                }
            }
            // Still serving, never restarted. A member that gave up leaves
            // 100 ms after its last answer (FSService.fatal): wait past that.
            #expect(try await fs.getattr(ino: a.ino).ino == a.ino)
            try await fs.writeFile(path: "/after", data: Array("fine".utf8))
            #expect(try await fs.readFile(path: "/after") == Array("fine".utf8))
            try await Task.sleep(for: .milliseconds(500))
            #expect(try await node.fleets().filter { $0.fleet == "/sys/fs" }.allSatisfy { $0.restarts == 0 })
        }
    }

    @Test("data survives SIGTERM of fosd; fsync'd data survives SIGKILL; fsck says clean; mkfs refuses")
    func persistence() async throws {
        try await TestNode.with(members: 1) { node in
            let disk = node.stateDir + "/disk.img"
            var fs = try await FSClient.connect(try node.runtime())
            let unsynced = pattern(100_000, seed: 11)
            try await fs.mkdir(path: "/keep")
            try await fs.writeFile(path: "/keep/plain", data: unsynced)

            // While the node runs, the offline tools refuse its disk.
            let busy = try await offline(node, ["fsck", "--disk", disk])
            #expect(busy.status == 1 && busy.stderr.contains("in use by a running node"), "\(busy.stderr)")

            // SIGTERM: the member unmounts (commit, checkpoint, flush) before the blk server stops.
            let st = await node.terminate()
            #expect(st == 0, "fosd wait status \(st ?? -1); log:\n\(node.log)")
            let clean1 = try await offline(node, ["fsck", "--disk", disk])
            #expect(clean1.status == 0 && clean1.stdout == "clean\n", "fsck after SIGTERM: \(clean1.stdout) \(clean1.stderr)")

            try node.launch()
            try await node.waitReady()
            fs = try await FSClient.connect(try node.runtime())
            #expect(try await fs.readFile(path: "/keep/plain") == unsynced)

            // Write and fsync, then SIGKILL fosd: its members die with it, nothing flushes.
            let synced = pattern(200_000, seed: 5)
            let f = try await fs.open(path: "/keep/synced", flags: [.create, .writeOnly], mode: 0o640)
            try await fs.write(ino: f.ino, offset: 0, data: synced)
            try await fs.fsync(ino: f.ino)
            try await fs.mkdir(path: "/keep/dir")
            let d = try await fs.stat(path: "/keep")
            try await fs.fsync(ino: d.ino)
            await node.killHard()
            // The blk server's lock goes with it (PR_SET_PDEATHSIG).
            let check = try await eventually("fsck of the crashed disk", timeout: .seconds(5)) { () -> CLIResult? in
                let r = try await offline(node, ["fsck", "--disk", disk, "--json"])
                return r.stderr.contains("in use") ? nil : r
            }
            #expect(check.status == 0 && check.stdout.contains("\"clean\" : true"), "fsck after SIGKILL: \(check.stdout) \(check.stderr)")

            // mkfs refuses a fos disk without --force.
            let mk = try await offline(node, ["mkfs", "--disk", disk])
            #expect(mk.status == 1 && mk.stderr.contains("already holds a fos file system"), "\(mk.stderr)")

            try node.launch()
            try await node.waitReady()
            fs = try await FSClient.connect(try node.runtime())
            #expect(try await fs.readFile(path: "/keep/synced") == synced)
            #expect(try await fs.stat(path: "/keep/dir").type == .directory)
            #expect(try await fs.readFile(path: "/keep/plain") == unsynced)
        }
    }

    @Test("kill -9 of the fs member, then of the whole node: every acknowledged change is there, no fsync needed")
    func acknowledgedSurvivesKill() async throws {
        try await TestNode.with(members: 1) { node in
            var fs = try await FSClient.connect(try node.runtime())
            var expected: [String: [UInt8]] = [:]
            for round in 0..<2 {
                let dir = "/r\(round)"
                _ = try await fs.mkdir(path: dir)
                for k in 0..<20 {
                    let data = pattern(1000 + 4099 * k, seed: UInt8(round * 20 + k))
                    _ = try await fs.writeFile(path: "\(dir)/f\(k)", data: data)
                    expected["\(dir)/f\(k)"] = data
                }
                let d = try await fs.resolve(path: dir)
                try await fs.rename(oldParent: d, oldName: "f0", newParent: d, newName: "renamed")
                expected["\(dir)/renamed"] = expected.removeValue(forKey: "\(dir)/f0")
                try await fs.unlink(path: "\(dir)/f1")
                expected["\(dir)/f1"] = nil
                if round == 0 {
                    // The member alone: fosd restarts it, the client reconnects.
                    fs = try await killFSMember(node)
                } else {
                    await node.killHard()
                    try node.launch()
                    try await node.waitReady()
                    fs = try await FSClient.connect(try node.runtime())
                }
                for (path, data) in expected {
                    #expect(try await fs.readFile(path: path) == data, "round \(round): \(path)")
                }
                #expect(await errnoOf { _ = try await fs.stat(path: "\(dir)/f1") } == ENOENT)
                #expect(await errnoOf { _ = try await fs.stat(path: "\(dir)/f0") } == ENOENT)
            }
        }
    }

    /// A large file's blocks are not kept in the member's cache (it holds
    /// 32 MiB, and only the last of what was written). Read past the host's
    /// page cache with O_DIRECT they stayed out of it too, and every later
    /// read went to the device again (about 200 µs a request).
    @Test("a large file read once from the device is in the host's page cache after: the next read needs no device")
    func coldReadsFillThePageCache() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try await FSClient.connect(try node.runtime())
            let (ino, data, img) = try await coldBigFile(node, fs, seed: 7)
            defer { close(img) }
            let before = try residentPages(img)
            #expect(try await readInMessages(fs, ino, data.count) == data)
            let after = try residentPages(img)
            // At least the part that was not in the member's cache. (On a
            // tmpfs the page cache is the disk: nothing to drop or fill.)
            if try onTmpfs(node.stateDir) {
                print("IntegrationTests: the disk image is on a tmpfs: page cache residency not checked")
            } else {
                #expect(after - before >= (32 << 20) / 4096 * 3 / 4, "pages of the image cached: \(before) before the read, \(after) after")
            }
        }
    }

    /// The blk server's direct writes drop the cached pages they cover; a
    /// member that reads the page cache (a fresh one, without a cache of its
    /// own) must see what was written over pages it filled before.
    @Test("pages cached by a read and then written over: a restarted member reads the new data")
    func cachedPagesFollowWrites() async throws {
        try await TestNode.with(members: 1) { node in
            var fs = try await FSClient.connect(try node.runtime())
            var (ino, data, img) = try await coldBigFile(node, fs, seed: 3)
            close(img)
            let size = data.count
            #expect(try await readInMessages(fs, ino, size) == data)  // the file's blocks now in the page cache
            // Over the front of the file, which the member's cache no longer holds.
            let over = (4 << 20)..<(20 << 20)
            let fresh = pattern(over.count, seed: 99)
            data.replaceSubrange(over, with: fresh)
            try await writeInMessages(fs, ino, data, over)
            fs = try await killFSMember(node)
            let back = try await readInMessages(fs, ino, size)
            let wrong = stride(from: 0, to: size, by: 4096).filter { back[$0..<min($0 + 4096, size)] != data[$0..<min($0 + 4096, size)] }
            #expect(wrong.isEmpty, "\(wrong.count) blocks differ, the first at offset \(wrong.first ?? 0)")
        }
    }

    @Test("a root client acting for a user (FOS_OP_FS_AS): that user's permissions and ownership")
    func actingAs() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try await FSClient.connect(try node.runtime())
            _ = try await fs.mkdir(path: "/closed", mode: 0o755)
            _ = try await fs.mkdir(path: "/open", mode: 0o777)
            let nobody = Credentials(uid: 65534, gid: 65534, groups: [100])
            try await FSClient.$actingAs.withValue(nobody) {
                #expect(await errnoOf { _ = try await fs.writeFile(path: "/closed/x", data: [1]) } == EACCES)
                let a = try await fs.writeFile(path: "/open/mine", data: [1, 2, 3])
                #expect(a.uid == 65534 && a.gid == 65534)
                #expect(await errnoOf { _ = try await fs.chown(ino: a.ino, uid: 0) } == EPERM)
                _ = try await fs.chown(ino: a.ino, gid: 100)  // a supplementary group of the user
            }
            let a = try await fs.stat(path: "/open/mine")
            #expect(a.uid == 65534 && a.gid == 100)
        }
    }

    /// As Linux: a write or truncation by someone without CAP_FSETID drops
    /// setuid, and setgid where the group may execute; root's does not.
    @Test("a write or truncation by a user drops setuid and setgid (setgid only with group execute); root's keeps them")
    func writesDropSetID() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try await FSClient.connect(try node.runtime())
            func file(_ name: String, _ mode: UInt32) async throws -> UInt64 {
                let a = try await fs.writeFile(path: "/" + name, data: [0])
                _ = try await fs.chmod(ino: a.ino, mode: mode)
                return a.ino
            }
            let rootWrite = try await file("root-write", 0o6777)
            _ = try await fs.write(ino: rootWrite, offset: 0, data: [1])
            #expect(try await fs.getattr(ino: rootWrite).mode & 0o7777 == 0o6777)

            let both = try await file("both", 0o6777), lockGid = try await file("lock-gid", 0o2666)
            let appended = try await file("appended", 0o4777), truncated = try await file("truncated", 0o6776)
            let opened = try await file("opened", 0o4666)
            let nobody = Credentials(uid: 65534, gid: 65534)
            await FSClient.$actingAs.withValue(nobody) {
                #expect(await errnoOf { _ = try await fs.write(ino: both, offset: 1, data: [2]) } == nil)
                #expect(await errnoOf { _ = try await fs.write(ino: lockGid, offset: 1, data: [2]) } == nil)
                #expect(await errnoOf { _ = try await fs.write(ino: rootWrite, offset: 0, data: []) } == nil)  // nothing written
                #expect(await errnoOf { _ = try await fs.append(ino: appended, data: [3]) } == nil)
                #expect(await errnoOf { _ = try await fs.truncate(ino: truncated, size: 0) } == nil)
                #expect(await errnoOf { _ = try await fs.open(path: "/opened", flags: [.writeOnly, .truncate]) } == nil)
            }
            #expect(try await fs.getattr(ino: rootWrite).mode & 0o7777 == 0o6777)
            #expect(try await fs.getattr(ino: both).mode & 0o7777 == 0o0777)
            #expect(try await fs.getattr(ino: lockGid).mode & 0o7777 == 0o2666)
            #expect(try await fs.getattr(ino: appended).mode & 0o7777 == 0o0777)
            #expect(try await fs.getattr(ino: truncated).mode & 0o7777 == 0o0776)
            #expect(try await fs.getattr(ino: opened).mode & 0o7777 == 0o0666)
        }
    }

    @Test("two members: files in several directories, written and read through both")
    func twoMembers() async throws {
        try await TestNode.with(members: 1, fsMembers: 2) { node in
            let rt = try node.runtime()
            let c0 = try await FSClient.connect(rt)
            let c1 = try await FSClient.connect(rt, excluding: [c0.member])
            let s0 = try await c0.statfs(), s1 = try await c1.statfs()
            #expect(s0.members == 2 && s1.members == 2)
            #expect(Set([s0.member, s1.member]) == [0, 1], "one client per member")
            let clients = [c0, c1]

            // Directories made through alternating members, files in each
            // written through the other one.
            for i in 0..<4 {
                let dir = try await clients[i % 2].mkdir(path: "/d\(i)")
                for j in 0..<5 {
                    let c = clients[(i + j + 1) % 2]
                    let f = try await c.create(parent: dir.ino, name: "f\(j)")
                    try await c.write(ino: f.ino, offset: 0, data: pattern(5000 + 997 * j, seed: UInt8(i * 5 + j)))
                }
                try await clients[i % 2].fsync(ino: dir.ino)
            }
            // Everything reads back through both members.
            for c in clients {
                #expect(Set(try await c.listDirectory(path: "/").map(\.name)).isSuperset(of: ["d0", "d1", "d2", "d3"]))
                for i in 0..<4 {
                    #expect(try await c.listDirectory(path: "/d\(i)").count == 5)
                    for j in 0..<5 {
                        #expect(try await c.readFile(path: "/d\(i)/f\(j)") == pattern(5000 + 997 * j, seed: UInt8(i * 5 + j)))
                    }
                }
            }
            try await c1.rename(oldParent: try await c1.resolve(path: "/d0"), oldName: "f0",
                                newParent: try await c1.resolve(path: "/d0"), newName: "renamed")
            #expect(try await c0.readFile(path: "/d0/renamed") == pattern(5000, seed: 0))
            try await c0.unlink(path: "/d1/f1")
            #expect(await errnoOf { _ = try await c1.stat(path: "/d1/f1") } == ENOENT)
            #expect(try await node.fleets().filter { $0.fleet == "/sys/fs" }.allSatisfy { $0.restarts == 0 })

            // A clean stop of both members leaves a clean file system.
            let st = await node.terminate()
            #expect(st == 0)
            let r = try await offline(node, ["fsck", "--disk", node.stateDir + "/disk.img"])
            #expect(r.status == 0 && r.stdout == "clean\n", "\(r.stdout) \(r.stderr)")
        }
    }
}

/// How many pages of the file `fd` the page cache holds (mincore).
func residentPages(_ fd: Int32) throws -> Int {
    var st = stat()
    guard fstat(fd, &st) == 0, st.st_size > 0 else { throw TestFailure("fstat: \(String(cString: strerror(errno)))") }
    let len = Int(st.st_size)
    guard let p = mmap(nil, len, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else {
        throw TestFailure("mmap: \(String(cString: strerror(errno)))")
    }
    defer { munmap(p, len) }
    var vec = [UInt8](repeating: 0, count: (len + 4095) / 4096)
    guard mincore(p, len, &vec) == 0 else { throw TestFailure("mincore: \(String(cString: strerror(errno)))") }
    return vec.reduce(0) { $0 + Int($1 & 1) }
}

/// Whether `path` is on a tmpfs (where the page cache is the storage):
/// the type of the longest mount point above it in /proc/self/mounts.
func onTmpfs(_ path: String) throws -> Bool {
    let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
    var best: (point: String, type: String) = ("", "")
    for line in mounts.split(separator: "\n") {
        let f = line.split(separator: " ")
        guard f.count >= 3 else { continue }
        let point = f[1].replacingOccurrences(of: "\\040", with: " ")
        let under = point == "/" || path == point || path.hasPrefix(point + "/")
        if under, point.count >= best.point.count { best = (point, String(f[2])) }
    }
    return best.type == "tmpfs"
}

/// Writes `data[range]` at the same offsets, a message at a time, and fsyncs.
func writeInMessages(_ fs: FSClient, _ ino: UInt64, _ data: [UInt8], _ range: Range<Int>) async throws {
    var at = range.lowerBound
    while at < range.upperBound {
        let n = min(FSClient.maxIO, range.upperBound - at)
        let wrote = try await fs.write(ino: ino, offset: UInt64(at), data: Array(data[at..<(at + n)]))
        guard wrote == n else { throw TestFailure("wrote \(wrote) of \(n) bytes at \(at)") }
        at += n
    }
    try await fs.fsync(ino: ino)
}

/// The first `size` bytes of the file, read a message at a time.
func readInMessages(_ fs: FSClient, _ ino: UInt64, _ size: Int) async throws -> [UInt8] {
    var back = [UInt8]()
    while back.count < size {
        let part = try await fs.read(ino: ino, offset: UInt64(back.count), count: min(FSClient.maxIO, size - back.count))
        guard !part.isEmpty else { throw TestFailure("the file ends at \(back.count), not \(size)") }
        back += part
    }
    return back
}

/// A 64 MiB file written and fsync'd through `fs`, then the disk image's
/// pages dropped (clean after the fsync: the kernel drops them all), so
/// that its blocks are only on the device. The image stays open, read-only.
func coldBigFile(_ node: TestNode, _ fs: FSClient, seed: UInt8) async throws -> (ino: UInt64, data: [UInt8], image: Int32) {
    let f = try await fs.create(parent: FSClient.rootIno, name: "big")
    let data = pattern(64 << 20, seed: seed)
    try await writeInMessages(fs, f.ino, data, 0..<data.count)
    let img = open(node.stateDir + "/disk.img", O_RDONLY | O_CLOEXEC)
    guard img >= 0 else { throw TestFailure("open the disk image: \(String(cString: strerror(errno)))") }
    let r = posix_fadvise(img, 0, 0, POSIX_FADV_DONTNEED)
    guard r == 0 else {
        close(img)
        throw TestFailure("drop the disk image's pages: \(String(cString: strerror(r)))")
    }
    return (f.ino, data, img)
}

/// kill -9 of the node's (one) fs member; once fosd has it running again,
/// a client connected to the new one.
func killFSMember(_ node: TestNode) async throws -> FSClient {
    guard let m = try await node.fleets().first(where: { $0.fleet == "/sys/fs" }) else { throw TestFailure("no fs member") }
    kill(m.pid, SIGKILL)
    _ = try await eventually("the fs member back", timeout: .seconds(10)) { () -> Bool? in
        let now = try await node.fleets().first { $0.fleet == "/sys/fs" }
        return now.map { $0.pid != m.pid && $0.state == "running" } == true ? true : nil
    }
    return try await FSClient.connect(try node.runtime())
}
