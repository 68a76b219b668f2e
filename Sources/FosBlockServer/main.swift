import CFosWire
import FosBlock
import FosCore
import Foundation

/// fos-blk: the block device server of a node, started by fosd as the fleet
/// /sys/blk/0 with FOS_BLK_DISK (and FOS_BLK_QUEUE_DEPTH) in its environment.
func die(_ s: String) -> Never {
    FileHandle.standardError.write(Data("fos-blk: \(s)\n".utf8))
    exit(1)
}

let env = ProcessInfo.processInfo.environment
guard let path = env["FOS_BLK_DISK"], !path.isEmpty else { die("FOS_BLK_DISK is not set (fos-blk is started by fosd)") }
let depth = env["FOS_BLK_QUEUE_DEPTH"].flatMap(Int.init) ?? 64
guard (1...4096).contains(depth) else { die("FOS_BLK_QUEUE_DEPTH must be 1...4096") }

do {
    let disk = try Disk(path: path)
    let rt = try FosRuntime.connect(ownThread: false)
    let name = rt.isMember ? rt.fleet : "/sys/blk/0"
    let server = try BlockServer(disk: disk, queueDepth: depth, loop: rt.loop)
    rt.loop.spawn {
        do {
            // The raw disk is for the node's own uid (root, fs members, tools), nobody else.
            let key = Capability.random()
            let a = try await rt.createMailbox(key: key, flags: UInt32(FOS_MBOX_SAME_UID), service: server)
            try await rt.register(name: name, addr: a, key: key)
        } catch {
            die("cannot register \(name): \(error)")
        }
    }
    rt.run()
} catch {
    die("\(error)")
}
