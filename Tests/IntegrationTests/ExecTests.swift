import FosCore
import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

// Programs stored under /fos, started from programs under fos-run: the
// shim sends them to the spawn service and fos-exec stands in for them
// (Shim/src/w_exec.c, standin.c). And programs the shim cannot reach
// (static, Go), refused when /fos is in view of them.

enum ExecFixtures {
    /// A program that shows what it got: argv, an environment variable,
    /// its cwd, a line of stdin; exits with the code in $CODE.
    static let show = #"""
        #include <stdio.h>
        #include <stdlib.h>
        #include <string.h>
        #include <unistd.h>
        int main(int argc, char **argv) {
            char cwd[4096], line[256] = "";
            if (!fgets(line, sizeof line, stdin)) line[0] = 0;
            line[strcspn(line, "\n")] = 0;
            printf("argc=%d", argc);
            for (int i = 0; i < argc; i++) printf(" [%s]", argv[i]);
            printf(" greeting=%s cwd=%s in=%s\n", getenv("GREETING") ? getenv("GREETING") : "-", getcwd(cwd, sizeof cwd), line);
            fprintf(stderr, "to stderr\n");
            return getenv("CODE") ? atoi(getenv("CODE")) : 0;
        }
        """#

    /// Compiles `source` into dir/name with cc.
    static func cc(_ source: String, _ name: String, in dir: String, flags: [String] = []) async throws -> String {
        let src = dir + "/" + name + ".c", out = dir + "/" + name
        try source.write(toFile: src, atomically: true, encoding: .utf8)
        let r = try await runCommand("/usr/bin/cc", flags + ["-o", out, src], outputIn: dir, timeout: .seconds(60))
        guard r.status == 0 else { throw TestFailure("cc \(name) failed:\n\(r.stderr)") }
        return out
    }

    /// A Go program that prints a file (static with cgo off; with `external`,
    /// dynamically linked through cgo, and still Go).
    static func go(_ name: String, in dir: String, external: Bool) async throws -> String {
        let src = dir + "/" + name + ".go", out = dir + "/" + name
        try """
            package main

            import (
            \t"fmt"
            \t"os"
            )

            func main() {
            \tb, err := os.ReadFile(os.Args[1])
            \tif err != nil {
            \t\tfmt.Println(err)
            \t\tos.Exit(1)
            \t}
            \tfmt.Print(string(b))
            }
            """.write(toFile: src, atomically: true, encoding: .utf8)
        var args = ["HOME=" + dir, "GOCACHE=" + dir + "/gocache", "GOPATH=" + dir + "/gopath",
                    "CGO_ENABLED=" + (external ? "1" : "0"), "/usr/bin/go", "build", "-o", out]
        if external { args += ["-ldflags=-linkmode=external"] }
        let r = try await runCommand("/usr/bin/env", args + [src], outputIn: dir, timeout: .seconds(300))
        guard r.status == 0 else { throw TestFailure("go build \(name) failed:\n\(r.stderr)") }
        return out
    }
}

@Suite("exec of programs stored under /fos", .serialized)
struct ExecTests {
    static func installed(_ p: String) -> Bool { FileManager.default.isExecutableFile(atPath: p) }

    @Test("a program and #! scripts stored under /fos run from bash: stdio, arguments, environment, cwd, exit status")
    func fromBash() async throws {
        try await TestNode.with(members: 1) { node in
            let show = try await ExecFixtures.cc(ExecFixtures.show, "show", in: node.root)
            let setup = try await Shim.run(node, ["/bin/bash", "-c", """
                set -e; mkdir -p /fos/bin /fos/work; cp \(show) /fos/bin/show; cp /bin/dash /fos/bin/dash
                printf '#!/bin/sh\\necho "sh: $0 $# $1"; cat; exit 5\\n' > /fos/bin/s.sh
                printf '#!/fos/bin/dash -e\\necho "fos dash: $0 $1"\\n' > /fos/bin/fosint
                printf '#!/fos/bin/s.sh\\n' > /fos/bin/nested
                printf '#!/usr/bin/env python3\\nimport os, sys\\nprint("py", sys.argv[1:], os.getcwd())\\n' > /fos/bin/p.py
                chmod 755 /fos/bin/*
                """])
            #expect(setup.status == 0, "\(setup)")
            let r = try await Shim.run(node, ["/bin/bash", "-c", """
                cd /fos/work
                echo line | GREETING=hi CODE=3 /fos/bin/show a 'b c'; echo "status $?"
                ../bin/show rel < /dev/null; echo "status $?"
                echo in | /fos/bin/s.sh x; echo "status $?"
                /fos/bin/fosint y; echo "status $?"
                echo n | /fos/bin/nested z; echo "status $?"
                /fos/bin/p.py q
                PATH=/fos/bin:$PATH; show viapath < /dev/null 2>/dev/null | tr a-z A-Z
                echo piped | show > /fos/work/out 2>&1; cat /fos/work/out
                (exec /fos/bin/show replaced < /dev/null 2>/dev/null; echo never); echo "status $?"
                """])
            let want = """
                argc=3 [/fos/bin/show] [a] [b c] greeting=hi cwd=/fos/work in=line
                status 3
                argc=2 [../bin/show] [rel] greeting=- cwd=/fos/work in=
                status 0
                sh: /fos/bin/s.sh 1 x
                in
                status 5
                fos dash: /fos/bin/fosint y
                status 0
                sh: /fos/bin/s.sh 2 /fos/bin/nested
                n
                status 5
                py ['q'] /fos/work
                ARGC=2 [SHOW] [VIAPATH] GREETING=- CWD=/FOS/WORK IN=
                to stderr
                argc=1 [show] greeting=- cwd=/fos/work in=piped
                argc=2 [/fos/bin/show] [replaced] greeting=- cwd=/fos/work in=
                status 0

                """
            #expect(r.status == 0 && r.stdout == want && r.stderr == "to stderr\nto stderr\n", "\(r)")
        }
    }

    @Test("python's subprocess (vfork), make and a host script with a fos interpreter run programs from /fos")
    func otherCallers() async throws {
        try await TestNode.with(members: 1) { node in
            let show = try await ExecFixtures.cc(ExecFixtures.show, "show", in: node.root)
            let r = try await Shim.run(node, ["/bin/bash", "-c", """
                set -e; mkdir /fos/bin; cp \(show) /fos/bin/show; cd \(node.root)
                printf '#!/fos/bin/show\\n' > \(node.root)/hostscript; chmod 755 \(node.root)/hostscript
                \(node.root)/hostscript arg < /dev/null 2>/dev/null
                python3 -c '
                import subprocess
                r = subprocess.run(["/fos/bin/show", "sub"], input=b"x\\n", capture_output=True, cwd="/fos/bin")
                print(r.returncode, r.stdout.decode().strip(), r.stderr.decode().strip())
                try:
                    subprocess.run(["/fos/bin/missing"])
                except FileNotFoundError as e:
                    print("missing:", e.errno)
                '
                printf 'all:\\n\\t/fos/bin/show made < /dev/null\\n' > /fos/Makefile; make -s -C /fos 2>/dev/null
                """])
            let root = node.root
            #expect(r.status == 0 && r.stdout == """
                argc=3 [/fos/bin/show] [\(root)/hostscript] [arg] greeting=- cwd=\(root) in=
                0 argc=2 [/fos/bin/show] [sub] greeting=- cwd=/fos/bin in=x to stderr
                missing: 2
                argc=2 [/fos/bin/show] [made] greeting=- cwd=/fos in=

                """, "\(r)")
        }
    }

    @Test("the stand-in passes signals on and ends as the program ended; kill -9 of it ends the program; fosctl ps lists it")
    func signals() async throws {
        try await TestNode.with(members: 1) { node in
            let r = try await Shim.run(node, ["/bin/bash", "-c", """
                mkdir /fos/bin
                printf '#!/bin/bash\\ntrap "echo got USR1; exit 9" USR1\\necho ready; while :; do sleep 0.05; done\\n' > /fos/bin/waiter
                printf '#!/bin/sh\\nkill -s "$1" $$\\n' > /fos/bin/die
                chmod 755 /fos/bin/*
                /fos/bin/die TERM; echo "status $?"
                /fos/bin/die SEGV; echo "status $?"
                /fos/bin/waiter > /fos/w.out & p=$!; until grep -q ready /fos/w.out 2>/dev/null; do sleep 0.05; done
                kill -USR1 $p; wait $p; echo "status $?"; cat /fos/w.out
                /fos/bin/waiter > /dev/null & p=$!; sleep 0.5
                kill -STOP $p; sleep 0.1; kill -CONT $p; kill -9 $p; wait $p; echo "status $?"
                """], timeout: .seconds(60))
            #expect(r.status == 0 && r.stdout == "status 143\nstatus 139\nstatus 9\nready\ngot USR1\nstatus 137\n", "\(r)")
            // The program behind the killed stand-in died with it.
            let rows = try await eventually("the tied program to be killed") {
                let ps = try await node.fosctl(["ps"])
                return ps.stdout.contains("running") ? nil : ps.stdout
            }
            #expect(rows.contains("/bin/bash /fos/bin/waiter") && rows.contains("killed by signal 9")
                    && rows.contains("exited 9") && rows.contains("killed by signal 11"), "\(rows)")
        }
    }

    @Test("^C at a terminal ends a program stored in /fos and its children, as it would end the job",
          .enabled(if: installed("/usr/bin/python3")))
    func terminal() async throws {
        try await TestNode.with(members: 1) { node in
            // bash -i on a pty runs a fos script that runs sleep; ^C on the pty.
            let script = #"""
                import os, pty, sys, time, subprocess, select
                fosrun, rt = sys.argv[1], sys.argv[2]
                pid, fd = pty.fork()
                if pid == 0:
                    os.execv(fosrun, [fosrun, '--runtime', rt, '--', '/bin/bash', '--norc', '--noprofile', '-i'])
                out = b''
                def until(cond, t=20):
                    global out
                    end = time.time() + t
                    while time.time() < end and not cond():
                        r, _, _ = select.select([fd], [], [], 0.05)
                        if r:
                            try: out += os.read(fd, 4096)
                            except OSError: break
                    return cond()
                sleeping = lambda: subprocess.run(['pgrep', '-f', '^sleep 3171$'], capture_output=True).returncode == 0
                os.write(fd, b"printf '#!/bin/sh\nsleep 3171\necho after\n' > /fos/sl; chmod +x /fos/sl; /fos/sl\n")
                print('started', until(sleeping))
                os.write(fd, b'\x03')
                print('ended', until(lambda: not sleeping()))
                os.write(fd, b'echo st""atus=$?\n')
                print('status', until(lambda: b'status=' in out) and b'status=130' in out)
                print('after', b'\nafter\r\n' in out)  # the script's own line, not the echo of its text
                os.write(fd, b'exit\n')
                until(lambda: False, 0.3)
                """#
            let r = try await runCommand("/usr/bin/python3", ["-c", script, try Shim.fosRun, node.runtimeDir],
                                         outputIn: node.root, timeout: .seconds(60))
            #expect(r.stdout == "started True\nended True\nstatus True\nafter False\n", "\(r)")
        }
    }

    @Test("static and Go programs: refused in one line naming fosctl mount when /fos is in view; run otherwise",
          .enabled(if: installed("/usr/bin/busybox") && installed("/usr/bin/go")))
    func unreachable() async throws {
        try await TestNode.with(members: 1) { node in
            let goStatic = try await ExecFixtures.go("gostatic", in: node.root, external: false)
            let goDynamic = try await ExecFixtures.go("godynamic", in: node.root, external: true)
            let setup = try await Shim.sh(node, "echo hello > /fos/f; mkdir /fos/bin; cp /usr/bin/busybox /fos/bin/busybox")
            #expect(setup.status == 0, "\(setup)")
            let fosRun = try Shim.fosRun
            func refusal(_ prog: String, _ why: String, _ where_: String, tool: String = "fos-run") -> String {
                "\(tool): \(prog) \(why), so it cannot see /fos through the shim, and \(where_) in it: run it on the FUSE "
                    + "mount (fosctl mount DIR), or set FOS_ALLOW_UNREACHABLE=1 if it does not use /fos\n"
            }
            // fos-run itself: an argument or the cwd under /fos.
            for (prog, why) in [("/usr/bin/busybox", "is statically linked"),
                                (goStatic, "is a Go program (it makes its own system calls)"),
                                (goDynamic, "is a Go program (it makes its own system calls)")] {
                let arg = prog.hasSuffix("busybox") ? [prog, "cat", "/fos/f"] : [prog, "/fos/f"]
                let r = try await Shim.run(node, arg)
                #expect(r.status == 126 && r.stdout.isEmpty && r.stderr == refusal(prog, why, "its arguments are"), "\(r)")
                let c = try await runCommand(fosRun, ["--runtime", node.runtimeDir, "--cwd", "/fos", "--"] + arg,
                                             outputIn: node.root)
                #expect(c.status == 126 && c.stderr == refusal(prog, why, "its cwd is"), "\(c)")
                // Nothing of /fos in view: it runs (and sees the host).
                let host = try await Shim.run(node, prog.hasSuffix("busybox") ? [prog, "echo", "hi"] : [prog, "/etc/hostname"])
                #expect(host.status == 0, "\(host)")
                // Opted out: it runs, and does not find /fos/f on the host.
                let opt = try await runCommand("/usr/bin/env", ["FOS_ALLOW_UNREACHABLE=1", fosRun, "--runtime", node.runtimeDir,
                                                                "--"] + arg, outputIn: node.root)
                #expect(opt.status == 1 && !opt.stderr.contains("fosctl mount"), "\(opt)")
            }
            // Stored under /fos and started by fos-run: the shim in fos-exec says it, once.
            let stored = try await Shim.run(node, ["/fos/bin/busybox", "cat", "/fos/f"])
            #expect(stored.status == 126 && stored.stderr == refusal("/fos/bin/busybox", "is statically linked",
                                                                      "its arguments are", tool: "fos"), "\(stored)")
            // At exec inside: EPERM, after the same line from the shim.
            let r = try await Shim.run(node, ["/bin/bash", "-c", """
                busybox cat /fos/f; echo "status $?"
                cd /fos; \(goDynamic) /etc/hostname > /dev/null; echo "status $?"; cd /
                busybox cat < /fos/f; echo "status $?"
                FOS_ALLOW_UNREACHABLE=1 busybox cat /fos/f 2>/dev/null; echo "status $?"
                busybox echo host only; /fos/bin/busybox echo from the store; /fos/bin/busybox cat /fos/f; echo "status $?"
                python3 -c 'import os
                try:
                    os.execv("/usr/bin/busybox", ["busybox", "cat", "/fos/f"])
                except OSError as e:
                    print("errno", e.errno)'
                """])
            #expect(r.status == 0 && r.stdout == """
                status 126
                status 126
                status 126
                status 1
                host only
                from the store
                status 126
                errno \(EPERM)

                """, "\(r)")
            let lines = r.stderr.split(separator: "\n").map(String.init)
            #expect(lines.filter { $0.hasPrefix("fos: ") }.count == 5, "\(r.stderr)")
            #expect(lines.contains(String(refusal("/usr/bin/busybox", "is statically linked", "its arguments are", tool: "fos").dropLast())))
            #expect(lines.contains(String(refusal(goDynamic, "is a Go program (it makes its own system calls)", "its cwd is",
                                                  tool: "fos").dropLast())))
            #expect(lines.contains(String(refusal("/usr/bin/busybox", "is statically linked", "descriptors it inherits are",
                                                  tool: "fos").dropLast())))
        }
    }
}
