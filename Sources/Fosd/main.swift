import ArgumentParser
import CFosSys
import CFosWire
import FosBlock
import FosCore
import Foundation

struct FleetSpec {
    var name: String
    var executable: String
    var count: Int
    var env: [String: String] = [:]
}

struct NodeConfig {
    var runtimeDir: String
    var stateDir: String
    var fleets: [FleetSpec]
    var ringBytes: UInt32
    var pin: Bool
}

struct Fosd: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fosd",
        abstract: "Run a fos node: the trusted core that checks capabilities, grants channels and supervises fleets.",
        discussion: """
            fosd owns a runtime directory (control socket, lock) and a state directory (node id, data). \
            It starts the system fleets (/sys/name) and any --fleet given, pins each member to a core, \
            restarts members that die, and stops them all on SIGTERM or SIGINT. Clients find the node \
            through FOS_RUNTIME or the default runtime directory.
            """)

    @Option(help: "Persistent data directory (default: $FOS_STATE, $XDG_DATA_HOME/fos, /var/lib/fos for root).")
    var state: String?

    @Option(help: "Runtime directory for sockets (default: $FOS_RUNTIME, $XDG_RUNTIME_DIR/fos, /run/fos for root).")
    var runtime: String?

    @Option(name: .customLong("fleet"),
            help: ArgumentHelp("Start a fleet: NAME=EXECUTABLE[:MEMBERS], e.g. /app/echo=fos-echo:3. Repeatable. A relative executable is looked up beside fosd.",
                               valueName: "spec"))
    var fleets: [String] = []

    @Option(help: "Capacity of each ring of a channel, in KiB (power of two, 256...65536).")
    var ringKib: UInt32 = 256

    @Flag(help: "Do not pin members to cores.")
    var noPin = false

    @Option(help: "Disk for the block server: an image file or a block device (default: disk.img in the state directory).")
    var disk: String?

    @Option(help: "Size of the disk image created at the first start (K, M, G, T suffixes).")
    var diskSize: String = "8G"

    @Option(help: "io_uring queue depth of the block server (1...4096).")
    var blkQueueDepth: Int = 64

    @Flag(help: "Run without a disk (no block server, no file system): messaging only.")
    var noDisk = false

    @Option(help: "Members of the file system fleet /sys/fs (1...4; default: one per two cores, at most 4).")
    var fsMembers: Int?

    @Flag(help: "Start the block server but no file system fleet (raw-disk benchmarks).")
    var noFs = false

    func validate() throws {
        guard ringKib <= 65536, fos_ring_bytes_valid(ringKib * 1024) != 0 else {
            throw ValidationError("--ring-kib must be a power of two between 256 and 65536")
        }
        for f in fleets { _ = try Fosd.parseFleet(f) }
        guard let size = Disk.parseSize(diskSize), size >= Disk.minimumBytes else {
            throw ValidationError("--disk-size \(diskSize): expected a size of at least 64M, like 8G")
        }
        _ = size
        guard (1...4096).contains(blkQueueDepth) else { throw ValidationError("--blk-queue-depth must be 1...4096") }
        if let n = fsMembers, !(1...4).contains(n) { throw ValidationError("--fs-members must be 1...4") }
    }

    static func selfDirectory() -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return (exe as NSString).deletingLastPathComponent
    }

    /// A node that just stopped may still hold its disk for a moment: the
    /// kernel tears the blk server's io_uring (and with it the disk's flock)
    /// down asynchronously. Wait up to `seconds` for that before opening the
    /// disk, which then refuses a disk that is really in use.
    static func waitForDiskLock(_ path: String, seconds: Int = 2) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        for _ in 0..<(seconds * 50) {
            if flock(fd, LOCK_EX | LOCK_NB) == 0 {
                flock(fd, LOCK_UN)
                return
            }
            if errno != EWOULDBLOCK { return }
            usleep(20_000)
        }
    }

    /// The pid in the runtime directory's lock file if a fosd holds it.
    static func runningNode(_ runtimeDir: String) -> String? {
        let fd = open(runtimeDir + "/fosd.lock", O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        if flock(fd, LOCK_SH | LOCK_NB) == 0 {
            flock(fd, LOCK_UN)
            return nil
        }
        guard errno == EWOULDBLOCK else { return nil }
        var buf = [UInt8](repeating: 0, count: 32)
        let n = pread(fd, &buf, 31, 0)
        return n > 0 ? String(decoding: buf[0..<n], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) : "?"
    }

    static func parseFleet(_ s: String) throws -> FleetSpec {
        guard let eq = s.firstIndex(of: "=") else { throw ValidationError("--fleet \(s): expected NAME=EXECUTABLE[:MEMBERS]") }
        let name = String(s[..<eq])
        var rest = String(s[s.index(after: eq)...])
        var count = 1
        if let colon = rest.lastIndex(of: ":"), let n = Int(rest[rest.index(after: colon)...]) {
            count = n
            rest = String(rest[..<colon])
        }
        guard validateName(name), name != "/sys", !name.hasPrefix("/sys/") else {
            throw ValidationError("--fleet \(s): '\(name)' is not a valid fleet name (absolute, not under /sys)")
        }
        guard (1...64).contains(count) else { throw ValidationError("--fleet \(s): members must be 1...64") }
        guard !rest.isEmpty else { throw ValidationError("--fleet \(s): missing executable") }
        let exe = rest.hasPrefix("/") ? rest : selfDirectory() + "/" + rest
        return FleetSpec(name: name, executable: exe, count: count)
    }

    func run() throws {
        _ = fos_sys_raise_nofile()
        var specs = [FleetSpec(name: "/sys/name", executable: Fosd.selfDirectory() + "/fos-name", count: 1)]
        let stateDir = state ?? NodePaths.defaultState()
        let runtimeDir = runtime ?? NodePaths.defaultRuntime()
        if !noDisk {
            // A node already running here holds the disk too: say which one is in the way.
            if let pid = Fosd.runningNode(runtimeDir) {
                FileHandle.standardError.write(Data("fosd: a node is already running on \(runtimeDir) (fosd pid \(pid))\n".utf8))
                throw ExitCode(1)
            }
            // Check the disk here, so a bad one is one clear line, not a crash loop.
            let path = disk ?? stateDir + "/disk.img"
            do {
                try Node.makeDirectory(stateDir, mode: 0o700)
                // A node killed here may have left members that still hold
                // the disk. Only while holding the runtime directory's lock
                // (briefly: the node takes it for good later): a fosd
                // starting here at the same time must not lose its members.
                var ended = 0
                let lock = open(runtimeDir + "/fosd.lock", O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0o644)
                if lock >= 0 {
                    if flock(lock, LOCK_EX | LOCK_NB) == 0 { ended = Node.endLeftovers(runtimeDir: runtimeDir, wait: .seconds(10)) }
                    close(lock)
                }
                if ended > 0 {
                    FileHandle.standardError.write(Data("fosd: ended \(ended) members a killed node left running\n".utf8))
                }
                // Gone, their io_uring (holding the disk's lock) may still be
                // torn down in the kernel for a while.
                Fosd.waitForDiskLock(path, seconds: ended > 0 ? 10 : 2)
                _ = try Disk(path: path, createBytes: disk == nil ? Disk.parseSize(diskSize) : nil)
            } catch let e as Disk.Problem {
                FileHandle.standardError.write(Data("fosd: \(e.description)\n".utf8))
                throw ExitCode(1)
            } catch let e as NodeError {
                FileHandle.standardError.write(Data("fosd: \(e.description)\n".utf8))
                throw ExitCode(1)
            }
            specs.append(FleetSpec(name: "/sys/blk/0", executable: Fosd.selfDirectory() + "/fos-blk", count: 1,
                                   env: ["FOS_BLK_DISK": path, "FOS_BLK_QUEUE_DEPTH": String(blkQueueDepth)]))
            // The file system on that disk: a fleet whose members each home a
            // share of the allocation groups (at most 4: one journal slot each).
            // One per two cores: a busy member spins on its core, and its
            // clients, the blk server and the requests members forward to
            // each other need cores too (on two cores, two members made
            // every request for the other member's files several times slower).
            let n = fsMembers ?? min(max(Int(fos_sys_cpu_count()) / 2, 1), 4)
            if !noFs {
                specs.append(FleetSpec(name: "/sys/fs", executable: Fosd.selfDirectory() + "/fos-fs", count: n,
                                       env: ["FOS_FS_MEMBERS": String(n), "FOS_FS_DISK": path]))
            }
        }
        // After the disk's fleets: members are spread over the cores in this
        // order, and the blk server is best off a core away from the name server.
        specs.append(FleetSpec(name: "/sys/spawn", executable: Fosd.selfDirectory() + "/fos-spawn", count: 1))
        specs += try fleets.map(Fosd.parseFleet)
        let config = NodeConfig(runtimeDir: runtimeDir,
                                stateDir: stateDir,
                                fleets: specs, ringBytes: ringKib * 1024, pin: !noPin)
        do {
            let node = try Node(config: config)
            try node.start()
            node.run()
        } catch let e as NodeError {
            FileHandle.standardError.write(Data("fosd: \(e.description)\n".utf8))
            throw ExitCode(1)
        }
    }
}

Fosd.main()
