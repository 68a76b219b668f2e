import CFosSys
import FosCore
import FosFSClient
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// The regular files open through the mount, as the fleet counts holders
/// (FosFSServer/Openers.swift): while one is open here the daemon holds a
/// placeholder memfd named for it, as a process under the shim does, and
/// has told the file's member so once (FOS_OP_FS_HOLD). Another client
/// removing the file's last name then leaves it an orphan, readable and
/// writable through the mount's descriptors, until the last close here
/// closes the placeholder and the member frees it.
///
/// The member is told without waiting: the open is answered at once, and
/// the member counts a holder it was told of in the last second as one
/// whether or not its placeholder is seen yet.
final class Holds: Sendable {
    private let placeholders = Mutex<[UInt64: Int32]>([:])
    private let rt: FosRuntime
    private let fs: FSClient

    init(rt: FosRuntime, fs: FSClient) {
        self.rt = rt
        self.fs = fs
    }

    /// The first open of `ino` here: the placeholder, and the member told.
    func opened(_ ino: UInt64, mode: UInt32) {
        guard mode & UInt32(S_IFMT) == UInt32(S_IFREG) else { return }
        let made = placeholders.withLock { p -> Bool in
            guard p[ino] == nil else { return false }
            let name = "fos-" + String(ino, radix: 16) + "-0-0-" + String(rt.node, radix: 16)
            let fd = fos_sys_memfd(name)
            guard fd >= 0 else { return false }
            p[ino] = fd
            return true
        }
        guard made else { return }
        rt.loop.spawn { [fs] in await FSClient.$actingAs.withValue(nil) { try? await fs.hold(ino: ino) } }
    }

    /// The last close of `ino` here.
    func closed(_ ino: UInt64) {
        if let fd = placeholders.withLock({ $0.removeValue(forKey: ino) }) { close(fd) }
    }
}
