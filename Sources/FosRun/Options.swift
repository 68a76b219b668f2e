#if canImport(Glibc)
import Glibc
#endif

// fos-run's command line, parsed by hand. It starts before every program run
// on fos, and swift-argument-parser's reflection took about 2 ms of its
// 3.2 ms over a plain exec (perf: 78% of fos-run's own time); the options
// are three and a command.

extension FosRun {
    static let usage = "fos-run [--prefix <prefix>] [--cwd <cwd>] [--runtime <runtime>] -- COMMAND [ARGS...]"

    static let help = """
        OVERVIEW: Run a program on the fos file system.

        Starts COMMAND with the fos shim (libfosshim.so, from fos-run's own directory)
        preloaded: its file calls on paths under the prefix go to the fs fleet of the
        node on the runtime directory; every other path goes to the host as usual.
        stdin, stdout, stderr and the environment pass through; fos-run exits with
        COMMAND's status, or 128+N if a signal N killed it. SIGTERM and SIGHUP are
        passed on to COMMAND.

        A program stored under the prefix (a binary, or a #! script) is started by the
        node's spawn service, with fos-exec standing in for it. Only dynamically linked
        programs that call libc see the shim: a static binary or a Go program sees the
        host's paths only, so fos-run (and the shim, at every exec) refuses one whose
        cwd or arguments are under the prefix, naming the node's FUSE mount (or fosctl
        mount DIR, if it has none) as the way for it; FOS_ALLOW_UNREACHABLE=1 lets it
        run anyway.

        USAGE: \(usage)

        ARGUMENTS:
          COMMAND [ARGS...]       The program and its arguments, after -- (or after the
                                  options).

        OPTIONS:
          --prefix <prefix>       Where the fos file system appears to the program.
                                  (default: /fos)
          --cwd <cwd>             Working directory of the program; under the prefix it
                                  is a fos directory.
          --runtime <runtime>     The node's runtime directory (default: FOS_RUNTIME,
                                  $XDG_RUNTIME_DIR/fos, /run/fos for root).
          -h, --help              Show help information.

        """

    /// Options up to `--` or the first argument that is not one; everything
    /// from there is the command. `--name value` and `--name=value` both work.
    static func parse(_ args: [String]) -> FosRun {
        var o = FosRun()
        var i = 0
        func usageError(_ what: String) -> Never {
            fail("\(what)\nusage: \(usage)\n  See 'fos-run --help' for more information.", code: 64)
        }
        while i < args.count {
            let a = args[i]
            if a == "--" {
                i += 1
                break
            }
            if a == "-h" || a == "--help" {
                var out = Array(help.utf8)[...]
                while !out.isEmpty {
                    let n = out.withUnsafeBytes { write(1, $0.baseAddress, $0.count) }
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { break }
                    out = out.dropFirst(n)
                }
                exit(0)
            }
            guard a.hasPrefix("-"), a != "-" else { break }
            let name: Substring, inline: String?
            if let eq = a.firstIndex(of: "=") {
                (name, inline) = (a[..<eq], String(a[a.index(after: eq)...]))
            } else {
                (name, inline) = (a[...], nil)
            }
            guard ["--prefix", "--cwd", "--runtime"].contains(name) else { usageError("unknown option '\(name)'") }
            let value: String
            if let v = inline {
                value = v
            } else {
                guard i + 1 < args.count else { usageError("missing value for '\(name) <\(name.dropFirst(2))>'") }
                i += 1
                value = args[i]
            }
            switch name {
            case "--prefix": o.prefix = value
            case "--cwd": o.cwd = value
            default: o.runtime = value
            }
            i += 1
        }
        o.command = Array(args[i...])
        // "fos-run -- -- CMD": the second -- too (as swift-argument-parser did).
        if o.command.first == "--" { o.command.removeFirst() }
        return o
    }
}
