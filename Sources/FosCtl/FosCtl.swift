import ArgumentParser
import CFosWire
import FosCore
import Foundation

struct Common: ParsableArguments {
    @Option(help: "Runtime directory of the node (default: $FOS_RUNTIME, $XDG_RUNTIME_DIR/fos, /run/fos for root).")
    var runtime: String?

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func connect() throws -> FosRuntime {
        do {
            return try FosRuntime.connect(runtime: runtime ?? NodePaths.defaultRuntime(), spinMicros: 0)
        } catch let e as FosError {
            fail(e.description)
        }
    }
}

func fail(_ s: String) -> Never {
    FileHandle.standardError.write(Data("fosctl: \(s)\n".utf8))
    exit(1)
}

func printJSON<T: Encodable>(_ v: T) {
    let enc = JSONEncoder()
    enc.outputFormatting = [.prettyPrinted, .sortedKeys]
    print(String(decoding: try! enc.encode(v), as: UTF8.self))
}

/// Left-aligned columns.
func table(_ header: [String], _ rows: [[String]]) {
    var w = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { w[i] = max(w[i], c.count) } }
    func line(_ r: [String]) -> String {
        r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: w[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    print(line(header))
    for r in rows { print(line(r)) }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show the node: id, pid, directories, counts, and its fos mounts (live, detached, or stale: left by a killed daemon).")
    @OptionGroup var common: Common

    func run() throws {
        let rt = try common.connect()
        let text = try rt.query(Int32(FOS_CTL_STATUS))
        let s = try JSONDecoder().decode(NodeStatus.self, from: Data(text.utf8))
        let mounts = mountRows(runtime: s.runtimeDir, node: rt.node)
        if common.json {
            var all = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(s)) as? [String: Any] ?? [:]
            all["mounts"] = try JSONSerialization.jsonObject(with: try JSONEncoder().encode(mounts))
            let out = try JSONSerialization.data(withJSONObject: all, options: [.prettyPrinted, .sortedKeys])
            return print(String(decoding: out, as: UTF8.self))
        }
        print("node        \(s.node) (fosd pid \(s.pid), up \(String(format: "%.1f", s.uptimeSeconds)) s)")
        print("runtime     \(s.runtimeDir)")
        print("state       \(s.stateDir)")
        print("cores       \(s.cores)")
        print("members     \(s.members)")
        print("processes   \(s.connections) connected, \(s.mailboxes) mailboxes, \(s.channels) channels")
        print("names       \(s.nameService ? "name service up" : "name service DOWN")")
        print("rejected    \(s.rejectedMessages) messages")
        for (i, m) in mounts.enumerated() {
            let what = m.state == "live" ? "(fos-fuse pid \(m.pid ?? 0))"
                : m.state == "detached" ? "(detached; fos-fuse pid \(m.pid ?? 0) serves the processes still in it)"
                : "STALE: its daemon is gone (clean it with `fosctl umount \(m.mountpoint)`)"
            print("\(i == 0 ? "mounts " : "       ")     \(m.mountpoint) \(what)")
        }
    }
}

struct Fleets: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List every fleet member with its load and restarts.")
    @OptionGroup var common: Common

    func run() throws {
        let rt = try common.connect()
        let text = try rt.query(Int32(FOS_CTL_FLEETS))
        let ms = try JSONDecoder().decode([MemberInfo].self, from: Data(text.utf8))
        if common.json { return printJSON(ms) }
        table(["MEMBER", "FLEET", "NODE", "PID", "CORE", "STATE", "QUEUE", "HANDLED", "RESTARTS"],
              ms.map { m in
                  [m.member, m.fleet, m.node, m.pid > 0 ? String(m.pid) : "-", m.core >= 0 ? String(m.core) : "-",
                   m.state, String(m.queueLength), String(m.handled), String(m.restarts)]
              })
    }
}

struct Ps: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the processes the spawn service started (running, and recently ended).")
    @OptionGroup var common: Common

    func run() async throws {
        let rt = try common.connect()
        let rows: [ProcessRow]
        do {
            rows = try JSONDecoder().decode([ProcessRow].self, from: Data(try await SpawnClient.connect(rt).listJSON()))
        } catch {
            fail("cannot list processes: \(error)")
        }
        if common.json { return printJSON(rows) }
        table(["GPID", "NODE", "PID", "UID", "STATE", "COMMAND"],
              rows.map { [$0.gpid, $0.node, String($0.pid), String($0.uid), $0.state, $0.command] })
    }
}

struct Spawn: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a program through the spawn service, as you, with this terminal's stdin, stdout and stderr.",
        discussion: "Prints the global process id; with --wait, waits and exits with the program's status (128+N if signal N killed it).")
    @OptionGroup var common: Common
    @Option(help: "Working directory of the program (default: the current one).")
    var cwd: String?
    @Option(help: "Pin the program to this CPU.")
    var cpu: Int32?
    @Flag(help: "Wait for the program and exit with its status.")
    var wait = false
    @Argument(parsing: .captureForPassthrough, help: "The program (a path, or a name looked up in PATH) and its arguments.")
    var command: [String] = []

    func run() async throws {
        var argv = command
        if argv.first == "--" { argv.removeFirst() }
        guard let name = argv.first else { fail("spawn: no program given") }
        guard let path = Spawn.resolve(name) else { fail("spawn: \(name): command not found") }
        let rt = try common.connect()
        let client: SpawnClient
        do {
            client = try await SpawnClient.connect(rt)
        } catch {
            fail("spawn: the spawn service is not running: \(error)")
        }
        let env = Foundation.ProcessInfo.processInfo.environment.map { "\($0.key)=\($0.value)" }
        let request = SpawnRequest(path: path, arguments: argv, environment: env,
                                   cwd: cwd ?? FileManager.default.currentDirectoryPath,
                                   descriptors: [(0, 0), (1, 1), (2, 2)], cpu: cpu)
        let gpid: UInt64
        do {
            gpid = try await client.spawn(request).gpid
        } catch {
            fail("spawn: \(path): \(error)")
        }
        guard wait else {
            print(ProcessRow.format(gpid, node: String(rt.node, radix: 16)))
            return
        }
        switch try await client.wait(gpid, timeout: .seconds(365 * 86400)) {
        case .exited(let c): throw ExitCode(c)
        case .signaled(let s): throw ExitCode(128 + s)
        case nil: throw ExitCode(1)
        }
    }

    /// execvp's lookup: a name with a slash as is, else the first executable in PATH.
    static func resolve(_ name: String) -> String? {
        if name.contains("/") {
            return name.hasPrefix("/") ? name : FileManager.default.currentDirectoryPath + "/" + name
        }
        let path = Foundation.ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":") where access("\(dir)/\(name)", X_OK) == 0 {
            return "\(dir)/\(name)"
        }
        return nil
    }
}

struct NameRow: Codable {
    var name: String
    var mailbox: String
    var policy: String
    var kind: String
    var pid: Int32
    var core: Int32
    var queueLength: UInt64
    var handled: UInt64
}

struct Names: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List registered names and their members.")
    @OptionGroup var common: Common
    @Argument(help: "Only names starting with this prefix.")
    var prefix: String = "/"

    func run() async throws {
        let rt = try common.connect()
        let entries: [NameEntry]
        do {
            entries = try await rt.listNames(prefix: prefix)
        } catch {
            fail("cannot list names: \(error)")
        }
        let rows = entries.map {
            NameRow(name: $0.name, mailbox: $0.addr.description, policy: $0.policy.description,
                    kind: $0.isInternal ? "internal" : ($0.flags & UInt32(FOS_NAME_POLICY) != 0 ? "policy" : "external"), pid: $0.pid, core: $0.core, queueLength: $0.queueLength, handled: $0.handled)
        }
        if common.json { return printJSON(rows) }
        table(["NAME", "MAILBOX", "POLICY", "KIND", "PID", "CORE", "QUEUE", "HANDLED"],
              rows.map { r in
                  [r.name, r.mailbox, r.policy, r.kind, String(r.pid),
                   r.core >= 0 ? String(r.core) : "-", String(r.queueLength), String(r.handled)]
              })
    }
}

struct Kill: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Kill a fleet member with SIGKILL (to test supervision); fosd restarts it.")
    @OptionGroup var common: Common
    @Argument(help: "FLEET#INDEX (as `fosctl fleets` shows it), a pid, or a fleet name (its first member).")
    var member: String

    func run() throws {
        let rt = try common.connect()
        let text: String
        do {
            text = try rt.query(Int32(FOS_CTL_KILL), member)
        } catch FosError.remote(let e) where e == .noSuchProcess {
            fail("no running member \(member)")
        } catch FosError.remote(let e) where e == .notPermitted {
            fail("only the node's owner or root may kill members")
        }
        let k = try JSONDecoder().decode(KillResult.self, from: Data(text.utf8))
        if common.json { return printJSON(k) }
        print("killed \(k.member) (pid \(k.pid))")
    }
}

struct Call: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send one request to a fleet by name and print the reply (ping, or an opcode with text).")
    @OptionGroup var common: Common
    @Argument(help: "Fleet name, e.g. /app/echo.")
    var name: String
    @Argument(help: "ping, echo, whoami, relay, or a numeric opcode.")
    var op: String = "ping"
    @Argument(help: "Payload text.")
    var text: String = ""

    func run() async throws {
        let rt = try common.connect()
        let opcode: UInt16
        switch op {
        case "ping": opcode = UInt16(FOS_OP_PING)
        case "echo": opcode = UInt16(FOS_OP_ECHO)
        case "whoami": opcode = UInt16(FOS_OP_ECHO_WHOAMI)
        case "relay": opcode = UInt16(FOS_OP_ECHO_RELAY)
        default:
            guard let n = UInt16(op) else { fail("unknown operation \(op)") }
            opcode = n
        }
        let start = monotonicNanos()
        let r: Reply
        do {
            r = try await rt.call(name: name, opcode: opcode, payload: Array(text.utf8))
        } catch {
            fail("\(name): \(error)")
        }
        let us = Double(monotonicNanos() - start) / 1000
        if r.status != 0 { fail("\(name): \(String(cString: strerror(r.status)))") }
        if opcode == UInt16(FOS_OP_ECHO_WHOAMI) || opcode == UInt16(FOS_OP_ECHO_RELAY),
           let w = r.payload.withUnsafeBytes({ loadStruct(fos_echo_whoami.self, from: $0) }) {
            print("pid \(w.pid) core \(w.core) mailbox \(w.mailbox) (\(String(format: "%.0f", us)) µs)")
        } else {
            // Reply bytes come from another process: never let them drive the terminal.
            let shown = String(decoding: r.payload, as: UTF8.self).unicodeScalars.map { u -> String in
                u.value < 0x20 || u.value == 0x7f || (0x80..<0xa0).contains(u.value)
                    ? "\\x" + String(u.value, radix: 16) : String(u)
            }.joined()
            print("\(shown) (\(String(format: "%.0f", us)) µs)")
        }
    }
}

@main
struct FosCtl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fosctl",
        abstract: "Inspect and steer a fos node and its fleets.",
        subcommands: [Status.self, Fleets.self, Names.self, Ps.self, Spawn.self, Kill.self, Call.self, FS.self, Mount.self,
                      Umount.self, Mkfs.self, Fsck.self])
}
