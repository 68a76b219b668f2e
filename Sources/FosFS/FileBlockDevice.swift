// A disk image or block device opened directly (no blk server): what the
// offline tools (fosctl mkfs/fsck) use while the node is stopped.
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// `BlockDevice` over a file descriptor: pread/pwrite of 4 KiB blocks and
/// fdatasync for `flush`. Holds an exclusive flock on the file, the same lock
/// a running blk server holds (FosBlock.Disk), so the two refuse each other.
public final class FileBlockDevice: BlockDevice {
    // `@unchecked`-free Sendable: every stored property is immutable; pread,
    // pwrite and fdatasync on one descriptor are safe from any thread.
    public let path: String
    public let blockSize = 4096
    public let blockCount: UInt64
    private let fd: CInt

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// Opens `path` read-write and locks it (LOCK_EX | LOCK_NB). A lock
    /// still held is retried for `lockWait` first: the kernel tears down
    /// a stopped blk server's io_uring (which holds the disk, and so its
    /// lock) asynchronously, shortly after the process is gone.
    public init(path: String, lockWait: Duration = .seconds(2)) throws {
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            throw Problem(description: "cannot open disk \(path): \(String(cString: strerror(errno)))")
        }
        let deadline = ContinuousClock.now + lockWait
        while flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK && ContinuousClock.now < deadline {
            usleep(20_000)
        }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            close(fd)
            throw Problem(description: e == EWOULDBLOCK ? "disk \(path) is in use by a running node"
                                                        : "cannot lock disk \(path): \(String(cString: strerror(e)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            close(fd)
            throw Problem(description: "disk \(path): \(String(cString: strerror(errno)))")
        }
        var bytes: UInt64
        if (st.st_mode & S_IFMT) == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            guard end >= 0 else {
                close(fd)
                throw Problem(description: "disk \(path): cannot read the block device's size")
            }
            bytes = UInt64(end)
        } else if (st.st_mode & S_IFMT) == S_IFREG {
            bytes = UInt64(st.st_size)
        } else {
            close(fd)
            throw Problem(description: "disk \(path) is neither a regular file nor a block device")
        }
        bytes -= bytes % 4096
        guard bytes >= 4 * 4096 else {
            close(fd)
            throw Problem(description: "disk \(path) is too small (\(bytes) bytes)")
        }
        self.path = path
        self.fd = fd
        self.blockCount = bytes / 4096
    }

    deinit { close(fd) }

    private func check(_ block: UInt64, _ count: Int) throws {
        guard count >= 0, block <= blockCount, UInt64(count) <= blockCount - block else {
            throw FSError.posix(.invalidArgument)
        }
    }

    public func read(block: UInt64, count: Int) async throws -> [UInt8] {
        try check(block, count)
        let n = count * blockSize
        var out = [UInt8](repeating: 0, count: n)
        var done = 0
        try out.withUnsafeMutableBytes { p in
            while done < n {
                let r = pread(fd, p.baseAddress! + done, n - done, off_t(block) * 4096 + off_t(done))
                if r < 0 {
                    if errno == EINTR { continue }
                    throw FSError.posix(.ioError)
                }
                if r == 0 { break }  // past the end of a file: zeros
                done += r
            }
        }
        return out
    }

    public func write(block: UInt64, data: [UInt8]) async throws {
        guard data.count % blockSize == 0 else { throw FSError.posix(.invalidArgument) }
        try check(block, data.count / blockSize)
        var done = 0
        try data.withUnsafeBytes { p in
            while done < data.count {
                let r = pwrite(fd, p.baseAddress! + done, data.count - done, off_t(block) * 4096 + off_t(done))
                if r < 0 {
                    if errno == EINTR { continue }
                    throw FSError.posix(.ioError)
                }
                done += r
            }
        }
    }

    public func flush() async throws {
        guard fdatasync(fd) == 0 else { throw FSError.posix(.ioError) }
    }

    public func discard(block: UInt64, count: Int) async throws {
        try check(block, count)
    }
}

/// What a disk holds, judged by its superblock and the backup.
public enum DiskContents: Sendable, Equatable {
    /// Both superblock blocks are all zeros: a fresh disk.
    case empty
    /// A fos file system (a valid primary or backup superblock).
    case fos
    /// Something else: not ours to format without being told.
    case foreign
}

extension FileSystem {
    /// Looks at blocks 0 and 1 of `device` (the superblock and its backup).
    public static func probe(device: any BlockDevice) async throws -> DiskContents {
        let b0 = try await device.read(block: 0, count: 1)
        let b1 = try await device.read(block: Layout.superblockBackup, count: 1)
        if Superblock.decode(b0) != nil || Superblock.decode(b1) != nil { return .fos }
        if b0.allSatisfy({ $0 == 0 }) && b1.allSatisfy({ $0 == 0 }) { return .empty }
        return .foreign
    }

    /// Number of journal slots, hence the largest fleet that can mount.
    public static let maxMembers = Layout.journalSlots
}
