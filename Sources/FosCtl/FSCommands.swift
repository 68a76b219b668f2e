import ArgumentParser
import FosCore
import FosFS
import FosFSClient
import Foundation

// Offline tools for a fos disk (the node stopped), and a few file commands
// through the fs fleet (/sys/fs) of a running node.

struct DiskJSON: Codable {
    var disk: String
    var clean: Bool
    var problems: [String]
}

/// Opens a disk image or block device for offline work, refusing one a
/// running node holds (the blk server's exclusive flock).
func openDisk(_ path: String) -> FileBlockDevice {
    do {
        return try FileBlockDevice(path: path)
    } catch let e as FileBlockDevice.Problem {
        fail(e.description)
    } catch {
        fail("disk \(path): \(error)")
    }
}

struct Mkfs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a fos file system on a disk image or block device (with the node stopped).")
    @Option(help: "The disk: an image file (disk.img in the node's state directory) or a block device.")
    var disk: String
    @Flag(help: "Overwrite a disk that already holds a fos file system.")
    var force = false

    func run() async throws {
        let dev = openDisk(disk)
        do {
            if try await FileSystem.probe(device: dev) == .fos, !force {
                fail("disk \(disk) already holds a fos file system (use --force to make a new one, losing its contents)")
            }
            try await FileSystem.mkfs(device: dev)
        } catch {
            fail("mkfs on \(disk): \(error)")
        }
        print("made a fos file system on \(disk) (\(dev.blockCount) blocks of 4 KiB)")
    }
}

struct Fsck: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check the fos file system on a disk (with the node stopped); exit 1 if it has problems.",
        discussion: "Committed journal transactions are replayed first, exactly as a mount would.")
    @Option(help: "The disk: an image file or a block device.")
    var disk: String
    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let dev = openDisk(disk)
        let problems: [String]
        do {
            problems = try await FileSystem.fsck(device: dev)
        } catch {
            problems = ["cannot check: \(error)"]
        }
        if json {
            printJSON(DiskJSON(disk: disk, clean: problems.isEmpty, problems: problems))
        } else if problems.isEmpty {
            print("clean")
        } else {
            for p in problems { print(p) }
        }
        if !problems.isEmpty { throw ExitCode(1) }
    }
}

struct FS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fs",
        abstract: "Files through the node's file system fleet (/sys/fs), as the calling user.",
        subcommands: [Ls.self, Cat.self, Put.self, MkdirCmd.self, StatCmd.self, Rm.self])

    static func client(_ common: Common) async -> FSClient {
        let rt = try! common.connect()
        do {
            return try await FSClient.connect(rt, wait: .seconds(5))
        } catch {
            fail("/sys/fs: \(error)")
        }
    }

    static func run<T>(_ path: String, _ body: () async throws -> T) async -> T {
        do {
            return try await body()
        } catch FosError.remote(let e) {
            fail("\(path): \(e)")
        } catch {
            fail("\(path): \(error)")
        }
    }

    struct Ls: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List a directory.")
        @OptionGroup var common: Common
        @Argument var path: String = "/"
        func run() async throws {
            let c = await FS.client(common)
            let es = await FS.run(path) { try await c.listDirectory(path: path) }
            if common.json {
                struct Row: Codable { var name: String; var ino: UInt64; var type: UInt8 }
                return printJSON(es.map { Row(name: $0.name, ino: $0.ino, type: $0.type) })
            }
            for e in es.sorted(by: { $0.name < $1.name }) { print(e.type == 4 ? e.name + "/" : e.name) }
        }
    }

    struct Cat: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a file.")
        @OptionGroup var common: Common
        @Argument var path: String
        func run() async throws {
            let c = await FS.client(common)
            let data = await FS.run(path) { try await c.readFile(path: path) }
            FileHandle.standardOutput.write(Data(data))
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write a file (TEXT, or standard input) and fsync it.")
        @OptionGroup var common: Common
        @Argument var path: String
        @Argument var text: String?
        func run() async throws {
            let c = await FS.client(common)
            let data = text.map { Array($0.utf8) } ?? Array(FileHandle.standardInput.readDataToEndOfFile())
            _ = await FS.run(path) { try await c.writeFile(path: path, data: data, sync: true) }
        }
    }

    struct MkdirCmd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "mkdir", abstract: "Make a directory.")
        @OptionGroup var common: Common
        @Argument var path: String
        func run() async throws {
            let c = await FS.client(common)
            _ = await FS.run(path) { try await c.mkdir(path: path) }
        }
    }

    struct Rm: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a file.")
        @OptionGroup var common: Common
        @Argument var path: String
        func run() async throws {
            let c = await FS.client(common)
            await FS.run(path) { try await c.unlink(path: path) }
        }
    }

    struct StatCmd: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "stat", abstract: "Show a file's attributes.")
        @OptionGroup var common: Common
        @Argument var path: String
        func run() async throws {
            let c = await FS.client(common)
            let a = await FS.run(path) { try await c.stat(path: path, followLast: false) }
            if common.json {
                struct Row: Codable { var ino: UInt64; var mode: String; var nlink: UInt32; var uid: UInt32; var gid: UInt32; var size: UInt64 }
                return printJSON(Row(ino: a.ino, mode: String(a.mode, radix: 8), nlink: a.nlink, uid: a.uid, gid: a.gid, size: a.size))
            }
            print("ino \(a.ino) mode \(String(a.mode, radix: 8)) nlink \(a.nlink) uid \(a.uid) gid \(a.gid) size \(a.size)")
        }
    }
}
