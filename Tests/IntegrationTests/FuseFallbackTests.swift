import FosCore
import FosFSClient
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// Programs no LD_PRELOAD shim reaches — statically linked ones, Go's raw
/// system calls — use the fos file system through the mount.
@Suite("FUSE fallback for static and Go programs", .serialized)
struct FuseFallbackTests {
    /// A Go program: writes, reads back, renames, lists and removes files,
    /// through Go's own syscall layer (CGO_ENABLED=0: no libc at all).
    static let goSource = """
        package main

        import (
        \t"bytes"
        \t"crypto/sha256"
        \t"fmt"
        \t"os"
        \t"path/filepath"
        )

        func check(err error) {
        \tif err != nil {
        \t\tfmt.Fprintln(os.Stderr, err)
        \t\tos.Exit(1)
        \t}
        }

        func main() {
        \tdir := os.Args[1]
        \tdata := make([]byte, 3<<20+17)
        \tfor i := range data {
        \t\tdata[i] = byte(i*31 + i>>12)
        \t}
        \tcheck(os.MkdirAll(filepath.Join(dir, "go", "deep"), 0o755))
        \tp := filepath.Join(dir, "go", "deep", "data.bin")
        \tcheck(os.WriteFile(p, data, 0o640))
        \tback, err := os.ReadFile(p)
        \tcheck(err)
        \tif !bytes.Equal(back, data) {
        \t\tfmt.Fprintln(os.Stderr, "read back differs")
        \t\tos.Exit(1)
        \t}
        \tcheck(os.Rename(p, filepath.Join(dir, "go", "moved.bin")))
        \tst, err := os.Stat(filepath.Join(dir, "go", "moved.bin"))
        \tcheck(err)
        \tif st.Size() != int64(len(data)) || st.Mode().Perm() != 0o640 {
        \t\tfmt.Fprintln(os.Stderr, "bad stat", st.Size(), st.Mode())
        \t\tos.Exit(1)
        \t}
        \tentries, err := os.ReadDir(filepath.Join(dir, "go"))
        \tcheck(err)
        \tfor _, e := range entries {
        \t\tfmt.Println(e.Name())
        \t}
        \tcheck(os.WriteFile(filepath.Join(dir, "from-go.txt"), []byte("written by Go\\n"), 0o644))
        \tcheck(os.RemoveAll(filepath.Join(dir, "go", "deep")))
        \tfmt.Printf("%x\\n", sha256.Sum256(data))
        }
        """

    @Test("busybox (statically linked) and a Go program read and write through the mount")
    func staticAndGo() async throws {
        try await TestNode.with(members: 1) { node in
            let elf = try await runCommand("/usr/bin/readelf", ["-l", "/bin/busybox"], outputIn: node.root)
            #expect(elf.status == 0 && elf.stdout.contains("LOAD") && !elf.stdout.contains("INTERP"),
                    "/bin/busybox is not statically linked")
            let goDir = node.root + "/gosrc"
            try FileManager.default.createDirectory(atPath: goDir, withIntermediateDirectories: false)
            try Self.goSource.write(toFile: goDir + "/main.go", atomically: true, encoding: .utf8)
            let env = ["/usr/bin/env", "HOME=\(node.root)", "GOCACHE=\(node.root)/gocache", "GOPATH=\(node.root)/gopath",
                       "GO111MODULE=off", "CGO_ENABLED=0", "GOFLAGS="]
            let build = try await runCommand(env[0], Array(env.dropFirst()) + ["/usr/bin/go", "build", "-o", goDir + "/prog", goDir + "/main.go"],
                                             outputIn: node.root, timeout: .seconds(300))
            #expect(build.status == 0, "go build: \(build.stderr)")
            let goElf = try await runCommand("/usr/bin/readelf", ["-l", goDir + "/prog"], outputIn: node.root)
            #expect(!goElf.stdout.contains("INTERP"), "the Go program is not static")

            try await withMount(node) { mp in
                _ = try await sh(node, """
                    cd '\(mp)'
                    /bin/busybox mkdir -p bb/sub
                    /bin/busybox sh -c 'seq 1 50000 > bb/sub/seq.txt'
                    /bin/busybox cp bb/sub/seq.txt bb/copy.txt
                    /bin/busybox cmp bb/sub/seq.txt bb/copy.txt
                    test "$(/bin/busybox wc -l < bb/copy.txt)" -eq 50000
                    /bin/busybox mv bb/copy.txt bb/moved.txt
                    /bin/busybox ln -s moved.txt bb/link
                    test "$(/bin/busybox cat bb/link | /bin/busybox tail -n 1)" = 50000
                    /bin/busybox ls -l bb | /bin/busybox grep -q 'link -> moved.txt'
                    /bin/busybox rm -r bb/sub
                    """)
                let go = try await runCommand(goDir + "/prog", [mp], outputIn: node.root, timeout: .seconds(60))
                #expect(go.status == 0, "Go program: \(go.stderr)")
                #expect(go.stdout.hasPrefix("deep\nmoved.bin\n"), "\(go.stdout)")
                let sum = try await runCommand("/usr/bin/sha256sum", [mp + "/go/moved.bin"], outputIn: node.root)
                #expect(sum.stdout.split(separator: " ").first.map(String.init) == go.stdout.split(separator: "\n").last.map(String.init))
                // Both wrote to the one file system the fleet serves.
                let fs = try await FSClient.connect(try node.runtime())
                #expect(try await fs.readFile(path: "/from-go.txt") == Array("written by Go\n".utf8))
                #expect(try await fs.stat(path: "/bb/moved.txt").size == 288_894)
                #expect(try await fs.stat(path: "/go/moved.bin").mode & 0o777 == 0o640)

                // Under the shim they cannot see /fos: fos-run refuses one,
                // and the shim an exec of one, naming this node's mount.
                let line = "/bin/busybox is statically linked, so it cannot see /fos through the shim, and its arguments "
                    + "are in it: run it on the FUSE mount at \(mp), or set FOS_ALLOW_UNREACHABLE=1 if it does not use /fos"
                let direct = try await Shim.run(node, ["/bin/busybox", "cat", "/fos/from-go.txt"])
                #expect(direct.status == 126 && direct.stderr == "fos-run: \(line)\n", "\(direct.stderr)")
                let viaShell = try await Shim.sh(node, "cat /fos/from-go.txt && exec /bin/busybox cat /fos/from-go.txt")
                #expect(viaShell.status != 0 && viaShell.stdout == "written by Go\n" && viaShell.stderr.hasPrefix("fos: \(line)\n"),
                        "\(viaShell.stderr)")
            }
        }
    }
}
