import CFosWire
import FosCore
import FosFS
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// The shim (libfosshim.so) and fos-run on real nodes: the C tests of
// Shim/tests, compiled here with cc, and unmodified coreutils, each checked
// against the same commands on a host directory.

enum Shim {
    static var library: String { get throws { try BuildProducts.path("libfosshim.so") } }
    static var fosRun: String { get throws { try BuildProducts.path("fos-run") } }
    static let sources = ((#filePath as NSString).deletingLastPathComponent as NSString)
        .appendingPathComponent("../../Shim/tests")

    /// Compiles Shim/tests/<name>.c into dir; returns the executable.
    static func compile(_ name: String, into dir: String) async throws -> String {
        let out = dir + "/" + name
        let r = try await runCommand("/usr/bin/cc", ["-std=c11", "-O1", "-Wall", "-o", out,
                                                     sources + "/" + name + ".c", "-lpthread"], outputIn: dir,
                                     timeout: .seconds(60))
        guard r.status == 0 else { throw TestFailure("cc \(name).c failed:\n\(r.stderr)") }
        return out
    }

    /// `fos-run --runtime <node> -- argv`.
    static func run(_ node: TestNode, _ argv: [String], timeout: Duration = .seconds(60)) async throws -> CLIResult {
        try await runCommand(try fosRun, ["--runtime", node.runtimeDir, "--"] + argv, outputIn: node.root,
                             timeout: timeout)
    }

    /// The node's only fs member, and `python3 -c script` started under
    /// fos-run on another core (on the member's own core a write waits for
    /// its answer: nothing would overlap).
    static func pythonBesideMember(_ node: TestNode, _ script: String) async throws -> (MemberInfo, Subprocess) {
        _ = try await sh(node, "true")  // the fs fleet is up
        let member = try #require(try await node.fleets().first { $0.fleet == "/sys/fs" })
        try #require(sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2, "needs two cores")
        let other = member.core == 0 ? 1 : 0
        let p = try Subprocess("/usr/bin/taskset", ["-c", String(other), try fosRun, "--runtime", node.runtimeDir,
                                                    "--", "/usr/bin/python3", "-c", script], outputIn: node.root)
        return (member, p)
    }

    /// Python for a script that waits for the test: `wait(f)` returns
    /// once the file f exists in `dir` (exit status 3 after a minute).
    static func pythonWaits(_ dir: String) -> String {
        """
        import os, sys, time
        def wait(f):
            for _ in range(3000):
                if os.path.exists("\(dir)/" + f): return
                time.sleep(0.02)
            sys.exit(3)

        """
    }

    /// Kills `member` (fosd restarts it), tells the script so (the file
    /// `killed` in `dir`), and expects it to print `expected` and the
    /// member to have restarted once.
    static func killMember(_ node: TestNode, _ member: MemberInfo, _ p: Subprocess, tell dir: String,
                           expect expected: String, sourceLocation: SourceLocation = #_sourceLocation) async throws {
        #expect(kill(member.pid, SIGKILL) == 0, sourceLocation: sourceLocation)
        _ = FileManager.default.createFile(atPath: dir + "/killed", contents: nil)
        let r = await p.wait(timeout: .seconds(60))
        #expect(r.status == 0 && r.stdout == expected, "\(r.status) \(r.stdout) \(r.stderr.prefix(2000))",
                sourceLocation: sourceLocation)
        #expect(try await node.fleets().first { $0.fleet == "/sys/fs" }?.restarts == 1, sourceLocation: sourceLocation)
    }

    /// A shell command line under fos-run.
    static func sh(_ node: TestNode, _ script: String) async throws -> CLIResult {
        try await run(node, ["/bin/sh", "-c", script])
    }

    /// A process with exactly `env`, its output collected (for the shim without fos-run).
    static func runWithEnv(_ exe: String, _ args: [String], env: [String: String]) async throws -> CLIResult {
        try await Subprocess(exe, args, outputIn: NSTemporaryDirectory(), env: env).wait(timeout: .seconds(60))
    }
}

@Suite("shim and fos-run", .serialized)
struct ShimTests {
    @Test("libfosshim.so needs only libc: no Swift runtime, only the wrappers exported")
    func linkage() async throws {
        let lib = try Shim.library
        // -r: every symbol it uses resolves, too.
        let ldd = try await runCommand("/usr/bin/ldd", ["-r", lib], outputIn: NSTemporaryDirectory())
        #expect(ldd.status == 0 && !ldd.stderr.contains("undefined"), "\(ldd.stderr)")
        let deps = ldd.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }
            .compactMap { $0.split(separator: " ").first.map(String.init) }
        let libcFamily: Set<String> = ["linux-vdso.so.1", "libc.so.6", "/lib64/ld-linux-x86-64.so.2",
                                       "libdl.so.2", "libpthread.so.0", "/lib/ld-linux-aarch64.so.1"]
        for d in deps {
            #expect(libcFamily.contains(d) || d.hasPrefix("/lib/ld-linux"), "unexpected dependency: \(d)")
        }
        #expect(!ldd.stdout.contains("swift"))
        let nm = try await runCommand("/usr/bin/nm", ["-D", "--defined-only", lib], outputIn: NSTemporaryDirectory())
        let exported = nm.stdout.split(separator: "\n").compactMap { line -> String? in
            let f = line.split(separator: " ")
            return f.count == 3 && f[1] == "T" ? String(f[2]) : nil
        }
        #expect(exported.contains("open") && exported.contains("__xstat") && exported.contains("statx"))
        #expect(!exported.contains { $0.hasPrefix("fos_") }, "internal symbols exported")
    }

    @Test("C tests of Shim/tests under fos-run: files, descriptors, fork, exec, cwd, threads, signals, credentials, links, stdio, mmap (shared between processes), programs stored in /fos")
    func cTests() async throws {
        try await TestNode.with(members: 1) { node in
            chmod(node.root, 0o755)  // t_threads drops to nobody, who must reach the socket
            for name in ["t_files", "t_fds", "t_exec", "t_cwd", "t_threads", "t_links", "t_stdio", "t_mmap", "t_mapshare",
                         "t_spawn"] {
                let exe = try await Shim.compile(name, into: node.root)
                let r = try await Shim.run(node, [exe, "/fos/" + name])
                #expect(r.status == 0 && r.stdout.hasSuffix("ok\n"), "\(name): \(r.status)\n\(r.stdout)\n\(r.stderr)")
            }
        }
    }

    /// On a node of its own: while a file is mapped shared (t_mapshare's,
    /// until the member has written it back) nothing goes ahead, so
    /// nothing is held, and t_held says its checks would show nothing. On
    /// a core other than the member's, where calls go ahead.
    @Test("writes and attribute changes the shim holds back reach another process once told, waited for or closed (t_held)")
    func heldBack() async throws {
        try await TestNode.with(members: 1) { node in
            let exe = try await Shim.compile("t_held", into: node.root)
            _ = try await Shim.sh(node, "true")  // the fs fleet is up
            let member = try #require(try await node.fleets().first { $0.fleet == "/sys/fs" })
            var argv = [exe, "/fos/t_held"]
            if member.core >= 0, sysconf(Int32(_SC_NPROCESSORS_ONLN)) >= 2 {
                argv = ["/usr/bin/taskset", "-c", String(member.core == 0 ? 1 : 0)] + argv
            }
            let r = try await Shim.run(node, argv)
            #expect(r.status == 0 && r.stdout.hasSuffix("ok\n"), "\(r.status)\n\(r.stdout)\n\(r.stderr)")
        }
    }

    @Test("a program calling from the fs member's core moves to another and keeps its allowed cores")
    func leavesTheMembersCore() async throws {
        try await TestNode.with(members: 1) { node in
            let fs = try #require(try await node.fleets().first { $0.fleet == "/sys/fs" })
            try #require(fs.core >= 0, "the fs member is not pinned")
            let exe = try await Shim.compile("t_core", into: node.root)
            _ = try await Shim.run(node, ["/bin/mkdir", "/fos/core"])
            let r = try await Shim.run(node, [exe, "/fos/core", String(fs.core)])
            if r.status == 77 {  // cannot run here: it says why
                print("skipped t_core: \(r.stdout)")
                return
            }
            #expect(r.status == 0 && r.stdout.hasSuffix("ok\n"), "\(r.status)\n\(r.stdout)\n\(r.stderr)")
        }
    }

    @Test("no node: fos-run says so in one line; the shim fails fos calls with EHOSTDOWN")
    func noNode() async throws {
        let dir = NSTemporaryDirectory() + "fos-shim-nonode-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let r = try await runCommand(try Shim.fosRun, ["--runtime", dir, "--", "/bin/true"], outputIn: dir)
        #expect(r.status == 1)
        #expect(r.stderr == "fos-run: no fos node is running on \(dir) (start fosd, or give --runtime or FOS_RUNTIME)\n",
                "\(r.stderr)")
        let exe = try await Shim.compile("t_nonode", into: dir)
        let direct = try await Shim.runWithEnv(exe, [], env: ["LD_PRELOAD": try Shim.library, "FOS_RUNTIME": dir,
                                                         "PATH": "/usr/bin:/bin"])
        #expect(direct.status == 0 && direct.stdout == "ok\n", "\(direct.stdout)\(direct.stderr)")
    }

    @Test("fos-run passes stdin, stdout, stderr, the environment and the exit status; a signal gives 128+N")
    func passThrough() async throws {
        try await TestNode.with(members: 1) { node in
            let r = try await Shim.sh(node, "echo out; echo err >&2; echo \"$FOS_PREFIX $SHIM_T\"; exit 7")
            #expect(r.status == 7 && r.stdout == "out\n/fos \n" && r.stderr == "err\n", "\(r)")
            let k = try await Shim.sh(node, "kill -TERM $$")
            #expect(k.status == 128 + SIGTERM, "\(k)")
            let missing = try await Shim.run(node, ["/no/such/program"])
            #expect(missing.status == 127 && missing.stderr.hasPrefix("fos-run: /no/such/program:"))
            let prefix = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "--prefix", "/data",
                                                                 "--cwd", "/data", "--", "/bin/sh", "-c",
                                                                 "mkdir sub && cd sub && pwd && ls -d /data/sub"],
                                              outputIn: node.root)
            #expect(prefix.status == 0 && prefix.stdout == "/data/sub\n/data/sub\n", "\(prefix)")
            let help = try await runCommand(try Shim.fosRun, ["--help"], outputIn: node.root)
            #expect(help.status == 0 && help.stdout.contains("--prefix") && help.stdout.contains("128+N"))
            // fos-run's own parser: --name=value, a command without --, options after it are the command's.
            let inline = try await runCommand(try Shim.fosRun, ["--runtime=" + node.runtimeDir, "--prefix=/data", "/bin/sh", "-c",
                                                                 "echo $FOS_PREFIX"], outputIn: node.root)
            #expect(inline.status == 0 && inline.stdout == "/data\n", "\(inline)")
            let theirs = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "/bin/echo", "--prefix", "x"],
                                              outputIn: node.root)
            #expect(theirs.status == 0 && theirs.stdout == "--prefix x\n", "\(theirs)")
            let twice = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "--", "/bin/echo", "x"],
                                             outputIn: node.root)
            #expect(twice.status == 0 && twice.stdout == "x\n", "\(twice)")
            let bad = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "--bogus", "--", "/bin/true"],
                                           outputIn: node.root)
            #expect(bad.status == 64 && bad.stderr.hasPrefix("fos-run: unknown option '--bogus'"), "\(bad)")
            let noValue = try await runCommand(try Shim.fosRun, ["--cwd"], outputIn: node.root)
            #expect(noValue.status == 64 && noValue.stderr.contains("missing value for '--cwd"), "\(noValue)")
            // fos-run started by a program whose cwd is in /fos: a static
            // executable, but not one the shim refuses (it knows fos).
            let nested = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/bin/sh", "-c",
                                                                 "mkdir -p /fos/nest && cd /fos/nest && \"$0\" --runtime \"$1\" -- /bin/pwd",
                                                                 try Shim.fosRun, node.runtimeDir], outputIn: node.root)
            #expect(nested.status == 0 && nested.stdout == "/fos/nest\n", "\(nested)")
            let direct = try await runCommand(try Shim.fosRun, ["--runtime", node.runtimeDir, "--cwd", "/fos/nest", "--",
                                                                 try Shim.fosRun, "--runtime", node.runtimeDir, "--", "/bin/pwd"],
                                              outputIn: node.root)
            #expect(direct.status == 0 && direct.stdout == "/fos/nest\n", "\(direct)")
        }
    }

    @Test("the fs member killed under a shim workload: every call still succeeds, nothing fsync'd is lost")
    func memberKilled() async throws {
        try await TestNode.with(members: 1) { node in
            // Each file is fsync'd (sync FILE): the fs commits its journal
            // only then (or when a transaction grows large), and a member
            // killed with -9 loses what was not committed, so a file whose
            // sync met the kill is written again.
            let script = "mkdir /fos/loop && sync /fos/loop && i=0 && fails=0 && while [ $i -lt 300 ]; do "
                + "{ echo $i > /fos/loop/f$i && sync /fos/loop/f$i; } 2>/dev/null || "
                + "{ echo $i > /fos/loop/f$i && sync /fos/loop/f$i; } || fails=$((fails+1)); i=$((i+1)); done; "
                + "echo fails=$fails; ls /fos/loop | wc -l; cat /fos/loop/f299"
            let p = try Subprocess(try Shim.fosRun, ["--runtime", node.runtimeDir, "--", "/bin/sh", "-c", script],
                                   outputIn: node.root)
            try await eventually("the workload to be under way") {
                Int(try await Shim.sh(node, "ls /fos/loop | wc -l").stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0 > 20
                    ? true : nil
            }
            let k = try await node.fosctl(["kill", "/sys/fs#0"])
            #expect(k.status == 0, "\(k.stderr)")
            let r = await p.wait(timeout: .seconds(120))
            #expect(r.status == 0 && r.stdout == "fails=0\n300\n299\n", "\(r.status) \(r.stdout) \(r.stderr.prefix(2000))")
            #expect(try await node.fleets().first { $0.fleet == "/sys/fs" }?.restarts == 1)
        }
    }

    /// Writes and root's changes of mode, owner and times sent ahead
    /// (Shim/src/ahead.c) to a member that is stopped and then killed never
    /// reached it: the shim sends them again, in order, to the restarted
    /// member at its next call. While the member is stopped the script
    /// makes only calls that go ahead and close (any other fos call would
    /// wait for it; close does not wait for those sent ahead).
    @Test("writes and attribute changes sent ahead to a member killed before it served them are sent again to its successor")
    func aheadReplayedAfterMemberDeath() async throws {
        try await TestNode.with(members: 1) { node in
            let d = node.root + "/sync"
            try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true)
            let script = Shim.pythonWaits(d) + """
                fd = os.open("/fos/ahead.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                open("\(d)/opened", "w").close()
                wait("stopped")
                for i in range(1, 51): os.write(fd, b"line %d\\n" % i)
                os.fchmod(fd, 0o640)
                os.fchown(fd, 0, 4242)
                os.write(fd, b"last\\n")
                os.utime(fd, ns=(10**18, 10**18))
                os.close(fd)
                open("\(d)/wrote", "w").close()
                wait("killed")
                st = os.stat("/fos/ahead.txt")
                lines = open("/fos/ahead.txt").read().splitlines()
                print(len(lines), lines[-2], lines[-1], oct(st.st_mode & 0o7777), st.st_gid, st.st_mtime_ns)
                """
            // Off the member's core: a write from there would wait for the
            // stopped member.
            let (member, p) = try await Shim.pythonBesideMember(node, script)
            defer { p.kill() }
            func waitFor(_ f: String) async throws {
                try await eventually("the script to reach \(f)", timeout: .seconds(30)) {
                    FileManager.default.fileExists(atPath: d + "/" + f) ? true : nil
                }
            }
            try await waitFor("opened")
            #expect(kill(member.pid, SIGSTOP) == 0)
            _ = FileManager.default.createFile(atPath: d + "/stopped", contents: nil)
            try await waitFor("wrote")
            try await Shim.killMember(node, member, p, tell: d,
                                      expect: "51 line 50 last 0o640 4242 \(1_000_000_000_000_000_000)\n")
        }
    }

    /// The shim refuses writes past the largest file itself (EFBIG at the
    /// write, never late): its limit must be the file system's.
    @Test("the wire's largest file is FosFS's")
    func largestFile() {
        #expect(FileSystem.maxFileSize == FOS_FS_MAX_FILE_SIZE)
    }

    @Test("coreutils on /fos match the same commands on a host directory")
    func coreutils() async throws {
        try await TestNode.with(members: 1) { node in
            let host = node.root + "/host"
            let setup = """
                set -e
                mkdir -p \(host)/tree/sub/deep
                head -c 300000 /dev/urandom > \(host)/tree/big.bin
                head -c 4096 /dev/urandom > \(host)/tree/page.bin
                : > \(host)/tree/empty
                seq 1 20000 > \(host)/tree/sub/nums
                printf 'zeta\\nalpha\\nmu\\nbeta\\n' > \(host)/tree/sub/words
                echo deep > \(host)/tree/sub/deep/x
                ln -s nums \(host)/tree/sub/link
                """
            let s = try await runCommand("/bin/sh", ["-c", setup], outputIn: node.root)
            #expect(s.status == 0, "\(s.stderr)")

            /// The same script on the host tree and on the fos tree ($T), outputs compared.
            func same(_ what: String, _ script: String) async throws {
                let h = try await runCommand("/bin/sh", ["-c", "T=\(host)/tree; " + script], outputIn: node.root)
                let f = try await Shim.sh(node, "T=/fos/tree; " + script)
                let hostOut = h.stdout.replacingOccurrences(of: host + "/tree", with: "$T")
                let fosOut = f.stdout.replacingOccurrences(of: "/fos/tree", with: "$T")
                #expect(h.status == 0 && f.status == 0 && hostOut == fosOut,
                        "\(what): host \(h.status) fos \(f.status)\n--- host:\n\(hostOut)\(h.stderr)\n--- fos:\n\(fosOut)\(f.stderr)")
            }

            // cp into /fos, then out again: checksums equal the host's.
            let cpIn = try await Shim.run(node, ["cp", "-a", host + "/tree", "/fos/tree"])
            #expect(cpIn.status == 0, "cp -a in: \(cpIn.stderr)")
            try await same("sha256sum", "cd $T && sha256sum big.bin page.bin empty sub/nums sub/words sub/deep/x")
            let cpOut = try await Shim.run(node, ["cp", "/fos/tree/big.bin", host + "/big.back"])
            #expect(cpOut.status == 0, "cp out: \(cpOut.stderr)")
            let cmp = try await runCommand("/usr/bin/cmp", [host + "/tree/big.bin", host + "/big.back"], outputIn: node.root)
            #expect(cmp.status == 0, "cp out differs: \(cmp.stdout)")
            let cpBack = try await Shim.run(node, ["cp", "-a", "/fos/tree", host + "/back"])
            let diff = try await runCommand("/usr/bin/diff", ["-r", host + "/tree", host + "/back"], outputIn: node.root)
            #expect(cpBack.status == 0 && diff.status == 0, "cp -a out: \(cpBack.stderr) \(diff.stdout)")

            try await same("cat", "cat $T/sub/words $T/sub/deep/x | cat")
            try await same("head", "head -n 3 $T/sub/nums; head -c 10 $T/big.bin | od -An -tx1")
            try await same("tail", "tail -n 4 $T/sub/nums; tail -c 7 $T/sub/nums | od -c")
            try await same("wc", "wc $T/sub/nums $T/sub/words; wc -c < $T/big.bin")
            // cp -a kept modes, owners and times: ls -l shows the same, totals included.
            try await same("ls -l", "ls -lnR --time-style=+%s $T")
            try await same("stat", "cd $T && stat -c '%n %s %a %F %U %G' big.bin empty sub/nums sub/link sub")
            try await same("find", "cd $T && find . | sort && find . -type f -size +10k | sort")
            try await same("du", "cd $T && du -a --apparent-size -b . | sort -k2")
            try await same("sort into a file", "sort $T/sub/words > $T/sorted && cat $T/sorted && rm $T/sorted")
            try await same("readlink", "readlink $T/sub/link; cat $T/sub/link | head -1")
            try await same("mkdir -p", "mkdir -p $T/m/n/o && ls -d $T/m/n/o && mkdir -p $T/m/n/o && echo again")
            try await same("touch, chmod", "touch $T/t && chmod 600 $T/t && stat -c '%a %s' $T/t && touch -d @1000000000 $T/t && stat -c %Y $T/t")
            try await same("mv", "mv $T/m/n $T/moved && ls $T/m $T/moved && mv $T/t $T/moved/t2 && ls $T/moved")
            try await same("ln -s", "ln -s ../sub/words $T/moved/w && cat $T/moved/w | wc -l && ls -l $T/moved/w | awk '{print $NF}'")
            try await same("rm -r", "rm -r $T/m $T/moved && ls $T")
            try await same("tar and gzip", "cd $T && tar czf ../t.tgz . && mkdir ../un && cd ../un && tar xzf ../t.tgz && find . -type f | sort | xargs sha256sum && cd .. && rm -r un t.tgz")
            try await same("shell redirections, here-document, pipes", """
                cd $T && cat > here <<EOF
                line $((6*7))
                EOF
                echo more >> here && sort -r here | tee copy | wc -l && cat copy && rm here copy
                """)
        }
    }

    static func installed(_ p: String) -> Bool { FileManager.default.isExecutableFile(atPath: p) }

    @Test("sqlite3 on /fos: 10 000 inserts in transactions, rollback journal and WAL, integrity_check ok",
          .enabled(if: installed("/usr/bin/sqlite3")))
    func sqlite() async throws {
        try await TestNode.with(members: 1) { node in
            let sql = "create table t(a integer, b text); begin; "
                + "with recursive n(i) as (select 1 union all select i+1 from n where i < 10000) "
                + "insert into t select i, 'row ' || i from n; commit; "
                + "begin; delete from t where a > 5000; rollback; "
                + "select count(*), sum(a) from t; pragma integrity_check;"
            let r = try await Shim.run(node, ["sqlite3", "/fos/db.sqlite", sql])
            #expect(r.status == 0 && r.stdout == "10000|50005000\nok\n", "\(r)")
            let w = try await Shim.run(node, ["sqlite3", "/fos/db.sqlite",
                                              "pragma journal_mode=wal; insert into t values(0, 'wal'); "
                                              + "select count(*) from t; pragma integrity_check;"])
            #expect(w.status == 0 && w.stdout == "wal\n10001\nok\n", "\(w)")
        }
    }

    /// WAL between processes: the WAL index (-shm) is a shared mapping that
    /// every connection reads and writes; a process that saw only its own
    /// copy would miss the others' commits (and write over them).
    @Test("sqlite3 WAL on /fos with two processes at once: each sees the other's commits",
          .enabled(if: installed("/usr/bin/sqlite3") && installed("/usr/bin/python3")))
    func sqliteWALProcesses() async throws {
        try await TestNode.with(members: 1) { node in
            let script = """
                import sqlite3, subprocess
                a = sqlite3.connect('/fos/w.db')
                print(a.execute('pragma journal_mode=wal').fetchone()[0])
                a.execute('create table t(x)'); a.commit()
                a.execute('insert into t values(1)'); a.commit()
                for i in range(5):
                    subprocess.run(['sqlite3', '/fos/w.db', 'insert into t values(2); insert into t values(3);'], check=True)
                    print(a.execute('select count(*) from t').fetchone()[0])
                    a.execute('insert into t values(4)'); a.commit()
                print(subprocess.run(['sqlite3', '/fos/w.db', 'select count(*) from t; pragma integrity_check;'],
                                     capture_output=True, text=True, check=True).stdout, end='')
                a.close()
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script])
            #expect(r.status == 0 && r.stdout == "wal\n3\n6\n9\n12\n15\n16\nok\n", "\(r)")
        }
    }

    @Test("git on /fos: init, add, commit, log, status", .enabled(if: installed("/usr/bin/git")))
    func git() async throws {
        try await TestNode.with(members: 1) { node in
            let r = try await Shim.sh(node, """
                set -e; mkdir /fos/repo; cd /fos/repo; git init -q; echo one > a; mkdir d; echo two > d/b
                git add a d; git -c user.email=t@fos -c user.name=t commit -qm first
                echo more >> a; git -c user.email=t@fos -c user.name=t commit -qam second
                git log --format=%s; git status --short; git show HEAD~1:a; git ls-files
                """)
            #expect(r.status == 0 && r.stdout == "second\nfirst\none\na\nd/b\n", "\(r)")
        }
    }

    @Test("python3 on /fos: open, os.walk, shutil, tempfile", .enabled(if: installed("/usr/bin/python3")))
    func python() async throws {
        try await TestNode.with(members: 1) { node in
            let script = """
                import os, shutil, tempfile
                os.makedirs('/fos/py/a/b')
                with open('/fos/py/a/b/f.txt', 'w') as f: f.write('line\\n' * 1000)
                shutil.copytree('/fos/py/a', '/fos/py/c')
                print(sorted((r, sorted(fs)) for r, d, fs in os.walk('/fos/py')))
                with tempfile.NamedTemporaryFile(dir='/fos/py') as t:
                    t.write(b'x' * 100000); t.flush(); print(os.path.getsize(t.name))
                shutil.rmtree('/fos/py/c'); print(os.listdir('/fos/py'), open('/fos/py/a/b/f.txt').read().count('line'))
                """
            let r = try await Shim.run(node, ["/usr/bin/python3", "-c", script])
            let want = "[('/fos/py', []), ('/fos/py/a', []), ('/fos/py/a/b', ['f.txt']), ('/fos/py/c', []), "
                + "('/fos/py/c/b', ['f.txt'])]\n100000\n['a'] 1000\n"
            #expect(r.status == 0 && r.stdout == want, "\(r)")
        }
    }

    @Test("make and cc build a program whose sources live in /fos, which then runs from /fos")
    func make() async throws {
        try await TestNode.with(members: 1) { node in
            let r = try await Shim.sh(node, #"""
                set -e; mkdir /fos/mk; cd /fos/mk
                cat > main.c <<'EOF'
                #include <stdio.h>
                int twice(int);
                int main(void) { printf("%d\n", twice(21)); return 0; }
                EOF
                echo 'int twice(int x) { return 2 * x; }' > twice.c
                printf 'prog: main.o twice.o\n\tcc -o prog main.o twice.o\n' > Makefile
                make -s; ls; ./prog
                """#)
            #expect(r.status == 0 && r.stdout == "Makefile\nmain.c\nmain.o\nprog\ntwice.c\ntwice.o\n42\n", "\(r)")
        }
    }
}
