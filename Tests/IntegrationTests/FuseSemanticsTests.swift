import FosCore
import FosFS
import FosFSClient
import FosMounts
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The fos file system through its FUSE mount, used by ordinary programs.
@Suite("FUSE mount semantics", .serialized)
struct FuseSemanticsTests {
    @Test("coreutils: cp, cat, ls -l, mv, rm -r, mkdir -p, ln, ln -s, stat, touch, chmod, truncate")
    func coreutils() async throws {
        try await TestNode.with(members: 1) { node in
            try await withMount(node) { mp in
                _ = try await sh(node, """
                    cd '\(mp)'
                    mkdir -p a/b/c
                    echo hello > a/b/c/f.txt
                    seq 1 200000 > a/seq.txt
                    seq 1 200000 > '\(node.root)/seq.host'
                    cmp a/seq.txt '\(node.root)/seq.host'
                    cp a/b/c/f.txt a/copy.txt
                    test "$(cat a/copy.txt)" = hello
                    cp -r a a2
                    diff -r a a2
                    mv a/copy.txt a/moved.txt
                    test ! -e a/copy.txt && test -f a/moved.txt
                    mv a2 a/inside
                    test -d a/inside/b/c
                    ln a/moved.txt a/hard.txt
                    test "$(stat -c %h a/moved.txt)" = 2
                    test "$(stat -c %i a/moved.txt)" = "$(stat -c %i a/hard.txt)"
                    ln -s moved.txt a/sym
                    test "$(readlink a/sym)" = moved.txt
                    test "$(cat a/sym)" = hello
                    test "$(stat -c %F a/sym)" = "symbolic link"
                    touch -d '2001-02-03 04:05:06 UTC' a/moved.txt
                    test "$(stat -c %Y a/moved.txt)" = 981173106
                    touch a/new-empty
                    test "$(stat -c %s a/new-empty)" = 0
                    chmod 640 a/moved.txt
                    test "$(stat -c %a a/moved.txt)" = 640
                    truncate -s 100 a/moved.txt
                    test "$(stat -c %s a/moved.txt)" = 100
                    truncate -s 2 a/moved.txt
                    test "$(cat a/moved.txt)" = he
                    ls -l a > '\(node.root)/ls.out'
                    grep -q '^-rw-r----- 2 root root *2 .* moved.txt$' '\(node.root)/ls.out'
                    grep -q '^l.* sym -> moved.txt$' '\(node.root)/ls.out'
                    grep -q '^d.* inside$' '\(node.root)/ls.out'
                    test "$(ls a | wc -l)" = 7
                    rm -r a/inside
                    test ! -e a/inside
                    rm -r a
                    test -z "$(ls -A)"
                    """)
            }
        }
    }

    @Test("255-byte names, paths deeper than PATH_MAX")
    func namesAndDepth() async throws {
        try await TestNode.with(members: 1) { node in
            try await withMount(node) { mp in
                let name255 = String(repeating: "n", count: 255)
                let name256 = name255 + "x"
                try await sh(node, """
                    cd '\(mp)'
                    echo max > \(name255)
                    test "$(cat \(name255))" = max
                    ls | grep -qx \(name255)
                    mkdir d\(String(repeating: "d", count: 254))
                    echo inside > d\(String(repeating: "d", count: 254))/\(name255)
                    rm -r \(name255) d\(String(repeating: "d", count: 254))
                    """)
                let long = try await sh(node, "cd '\(mp)' && touch \(name256)", check: false)
                #expect(long.status != 0 && long.stderr.contains("File name too long"), "\(long.stderr)")

                // 300 levels of 24-byte names: 7500 bytes of path, made and
                // walked relative to a descriptor of each level (no path that
                // long can be passed to the kernel whole).
                var fd = open(mp, O_RDONLY | O_DIRECTORY)
                #expect(fd >= 0)
                for i in 0..<300 {
                    let name = "level-\(String(format: "%05d", i))-abcdefghijkl"
                    #expect(mkdirat(fd, name, 0o755) == 0, "mkdir at level \(i): \(errno)")
                    let next = openat(fd, name, O_RDONLY | O_DIRECTORY)
                    #expect(next >= 0, "open at level \(i): \(errno)")
                    close(fd)
                    fd = next
                    if fd < 0 { return }
                }
                let f = openat(fd, "bottom.txt", O_CREAT | O_WRONLY, 0o644)
                #expect(f >= 0 && write(f, "deep", 4) == 4)
                close(f)
                var buf = [UInt8](repeating: 0, count: 8)
                let g = openat(fd, "bottom.txt", O_RDONLY)
                #expect(g >= 0 && read(g, &buf, 8) == 4 && Array(buf.prefix(4)) == Array("deep".utf8))
                close(g)
                close(fd)
                _ = try await sh(node, """
                    cd '\(mp)'
                    find . -name bottom.txt | grep -q level-00299
                    rm -r level-00000-abcdefghijkl
                    test -z "$(ls -A)"
                    """, timeout: .seconds(120))
            }
        }
    }

    @Test("a sparse file over 4 GiB: written at the end, read back, few blocks")
    func bigSparse() async throws {
        try await TestNode.with(members: 1) { node in
            try await withMount(node) { mp in
                _ = try await sh(node, """
                    cd '\(mp)'
                    truncate -s 5G big
                    printf 'at the end' | dd of=big bs=1 seek=$((5*1024*1024*1024)) conv=notrunc status=none
                    printf 'past 4G' | dd of=big bs=1 seek=$((4*1024*1024*1024+12345)) conv=notrunc status=none
                    test "$(stat -c %s big)" = $((5*1024*1024*1024+10))
                    test "$(tail -c 10 big)" = 'at the end'
                    test "$(dd if=big bs=1 skip=$((4*1024*1024*1024+12345)) count=7 status=none)" = 'past 4G'
                    test "$(dd if=big bs=4096 skip=1000 count=1 status=none | tr -d '\\0' | wc -c)" = 0
                    test "$(stat -c %b big)" -lt 64
                    """)
            }
        }
    }

    @Test("mmap, FIFOs, record locks and flock, xattrs, renameat2, 1 MiB requests, telldir/seekdir, open unlinked files")
    func probes() async throws {
        try await TestNode.with(members: 1) { node in
            let probe = try await FuseC.program("fuse_probe")
            let mp = try await withMount(node) { mp in
                for (what, path) in [("mmap", "m"), ("fifo", "fifo"), ("locks", "locked"), ("xattr", "x"),
                                     ("rename2", "."), ("bigio", "big"), ("unlinked", ".")] {
                    let r = try await runCommand(probe, [what, "\(mp)/\(path)"], outputIn: node.root, timeout: .seconds(60))
                    #expect(r.status == 0, "fuse_probe \(what): \(r.stderr)")
                }
                try FileManager.default.createDirectory(atPath: mp + "/listing", withIntermediateDirectories: false)
                let r = try await runCommand(probe, ["seekdir", mp + "/listing"], outputIn: node.root, timeout: .seconds(60))
                #expect(r.status == 0, "fuse_probe seekdir: \(r.stderr)")
                // The same as nobody, in a directory of its own.
                try await sh(node, "mkdir '\(mp)/nobody' && chown 65534:65534 '\(mp)/nobody'")
                for what in ["mmap", "locks", "xattr"] {
                    let r = try await runCommand(asNobody[0], Array(asNobody.dropFirst()) + [probe, what, "\(mp)/nobody/\(what)"],
                                                 outputIn: node.root, timeout: .seconds(60))
                    #expect(r.status == 0, "fuse_probe \(what) as nobody: \(r.stderr)")
                }
                return mp
            }
            // One write(2) of 4 MiB reached the daemon as 1 MiB requests.
            #expect(mountLog(node, mp).contains("largest write 1048576 B"), "\(mountLog(node, mp))")
            // Hidden links of unlinked open files went at their last close.
            let fs = try await FSClient.connect(try node.runtime())
            #expect(try await fs.listDirectory(path: "/.fos-fuse-orphans").isEmpty)
        }
    }

    @Test("permissions as nobody: EACCES and EPERM where Linux gives them; created files belong to their creator")
    func permissions() async throws {
        try await TestNode.with(members: 1) { node in
            try await withMount(node) { mp in
                try await sh(node, """
                    cd '\(mp)'
                    mkdir pub priv sticky && chmod 777 pub && chmod 700 priv && chmod 1777 sticky
                    echo secret > priv/f && echo ro > ro && chmod 444 ro && echo root > sticky/rootfile && chmod 666 sticky/rootfile
                    echo a > pub/setuid && chmod 4777 pub/setuid && echo a > pub/setgid && chmod 2777 pub/setgid
                    """)
                try await sh(node, """
                    cd '\(mp)'
                    echo mine > pub/mine && mkdir pub/mydir && ln -s mine pub/mylink && mkfifo pub/myfifo
                    test "$(stat -c %u:%g pub/mine pub/mydir pub/myfifo | sort -u)" = 65534:65534
                    test "$(stat -c %u pub/mylink)" = 65534
                    fails() { if "$@" 2>/dev/null; then echo "succeeded: $*" >&2; exit 1; fi; }
                    fails touch newfile
                    fails cat priv/f
                    fails ls priv
                    fails sh -c 'echo x > ro'
                    fails chmod 777 ro
                    fails rm -f sticky/rootfile
                    echo shared >> sticky/rootfile
                    chmod 600 pub/mine && test "$(stat -c %a pub/mine)" = 600
                    fails chmod u-s pub/setuid
                    # A write by another than the owner clears the set-id bits, as on Linux.
                    echo b >> pub/setuid && test "$(stat -c %a pub/setuid)" = 777
                    echo b >> pub/setgid && test "$(stat -c %a pub/setgid)" = 777
                    test "$(cat pub/setuid pub/setgid)" = "$(printf 'a\nb\na\nb')"
                    """, nobody: true)
                // What the kernel said matches what the fleet holds.
                let fs = try await FSClient.connect(try node.runtime())
                let mine = try await fs.stat(path: "/pub/mine")
                #expect(mine.uid == 65534 && mine.gid == 65534 && mine.mode & 0o777 == 0o600)
                #expect(try await fs.readFile(path: "/sticky/rootfile") == Array("root\nshared\n".utf8))
            }
        }
    }

    @Test("one file system: written through FSClient, read through the mount, and the other way round")
    func oneFileSystem() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try await FSClient.connect(try node.runtime())
            try await fs.mkdir(path: "/shared")
            let data = pattern(300_000, seed: 9)
            try await fs.writeFile(path: "/shared/from-client", data: data)
            try await withMount(node) { mp in
                #expect(FileManager.default.contents(atPath: mp + "/shared/from-client") == Data(data))
                let back = pattern(200_000, seed: 4)
                #expect(FileManager.default.createFile(atPath: mp + "/shared/from-mount", contents: Data(back)))
                #expect(try await fs.readFile(path: "/shared/from-mount") == back)
                let a = try await fs.stat(path: "/shared/from-mount")
                var st = stat()
                #expect(lstat(mp + "/shared/from-mount", &st) == 0)
                #expect(UInt64(st.st_ino) == a.ino && UInt64(st.st_size) == a.size)

                // Open through the mount, its last name removed by another
                // client: the descriptors keep working (POSIX), past the
                // second in which the fleet counts a holder it was just told
                // of, and the file goes at their last close.
                for (i, created) in [false, true].enumerated() {
                    let path = "/shared/held\(i)"
                    if !created { try await fs.writeFile(path: path, data: Array("kept\n".utf8)) }
                    let fd = created ? open(mp + path, O_CREAT | O_EXCL | O_RDWR, 0o644) : open(mp + path, O_RDWR)
                    try #require(fd >= 0)
                    if created { #expect(pwrite(fd, "kept\n", 5, 0) == 5) }
                    let ino = try await fs.stat(path: path).ino
                    try await fs.unlink(path: path)
                    await pause(.milliseconds(1500))
                    var buf = [UInt8](repeating: 0, count: 64)
                    #expect(pread(fd, &buf, 64, 0) == 5 && Array(buf.prefix(5)) == Array("kept\n".utf8), "\(String(cString: strerror(errno)))")
                    #expect(pwrite(fd, "more\n", 5, 5) == 5)
                    #expect(pread(fd, &buf, 64, 0) == 10)
                    var fst = stat()
                    #expect(fstat(fd, &fst) == 0 && fst.st_nlink == 0)
                    #expect(close(fd) == 0)
                    try await eventually("the orphan to be freed after the last close", timeout: .seconds(5)) { () async -> Bool? in
                        (try? await fs.getattr(ino: ino)) == nil ? true : nil
                    }
                }

                // A name another client has just removed, which the kernel
                // still caches: opened for writing, it is made anew (or
                // missing), never the removed file written to no one.
                for i in 0..<10 {
                    let path = "/shared/again\(i)"
                    try await fs.writeFile(path: path, data: Array("old".utf8))
                    var st = stat()
                    #expect(lstat(mp + path, &st) == 0)
                    try await fs.unlink(path: path)
                    if i % 2 == 0 {
                        let fd = open(mp + path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
                        #expect(fd >= 0 && write(fd, "new", 3) == 3 && close(fd) == 0)
                        #expect(try await fs.readFile(path: path) == Array("new".utf8))
                    } else {
                        let fd = open(mp + path, O_WRONLY | O_APPEND)
                        #expect(fd < 0 && errno == ENOENT, "open of a removed name: \(fd) \(String(cString: strerror(errno)))")
                        if fd >= 0 { close(fd) }
                    }
                }

                // A FIFO is the kernel's: a process under the shim opens it
                // through this mount, and meets processes using the mount.
                #expect(mkfifo(mp + "/shared/fifo", 0o644) == 0)
                let reader = try Subprocess("/bin/sh", ["-c", "exec timeout 10 cat '\(mp)/shared/fifo'"], outputIn: node.root)
                let writer = try await Shim.sh(node, "echo through the shim > /fos/shared/fifo")
                let read = await reader.wait(timeout: .seconds(15))
                #expect(writer.status == 0 && read.status == 0 && read.stdout == "through the shim\n", "\(writer.stderr) \(read.stderr)")
                let shimReader = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/bin/sh", "-c",
                                                              "exec timeout 10 cat /fos/shared/fifo"], outputIn: node.root)
                await pause(.milliseconds(300))
                try await sh(node, "echo through the mount > '\(mp)/shared/fifo'")
                let shimRead = await shimReader.wait(timeout: .seconds(15))
                #expect(shimRead.status == 0 && shimRead.stdout == "through the mount\n", "\(shimRead.stderr)")
            }
            // No mount, no pipe to meet: a clear error, not a file of data.
            let none = try await Shim.sh(node, "echo lost > /fos/shared/fifo")
            #expect(none.status != 0 && none.stderr.contains("No such device or address"), "\(none.stderr)")
        }
    }
}
