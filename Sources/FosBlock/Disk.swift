import CFosSys
import CFosWire
import FosCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The disk a blk server owns: an image file or a block device, opened for
/// O_DIRECT I/O, with its size in 4 KiB blocks.
public final class Disk: @unchecked Sendable {
    // `@unchecked Sendable`: immutable after init; the descriptor is only closed in deinit.
    public let path: String
    public let fd: CInt
    /// The same disk through the page cache, for writes that must only
    /// outlive the process that asked for them (FOS_OP_BLK_WRITE_CACHED).
    public let cachedFD: CInt
    public let blocks: UInt64
    /// An image file (not a block device): its page cache stays true to
    /// direct writes, which drop the pages they cover.
    public let isImageFile: Bool

    /// Smallest disk fos accepts: room for a superblock, journals and data.
    public static let minimumBytes: UInt64 = 64 << 20

    public struct Problem: Error, CustomStringConvertible {
        public var description: String
    }

    /// Opens `path`. With `createBytes`, a missing image file is created
    /// sparse at that size. Errors name the path and what is wrong.
    public init(path: String, createBytes: UInt64? = nil, exclusive: Bool = true) throws {
        var st = stat()
        if stat(path, &st) != 0 {
            guard errno == ENOENT, let size = createBytes else {
                throw Problem(description: "disk \(path): \(String(cString: strerror(errno)))")
            }
            let fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            guard fd >= 0 else { throw Problem(description: "cannot create disk image \(path): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            guard ftruncate(fd, off_t(size)) == 0 else {
                let e = String(cString: strerror(errno))
                unlink(path)
                throw Problem(description: "cannot size disk image \(path) to \(size) bytes: \(e)")
            }
            guard fsync(fd) == 0 else { throw Problem(description: "cannot sync new disk image \(path)") }
        }
        let fd = open(path, O_RDWR | fos_sys_o_direct() | O_CLOEXEC)
        guard fd >= 0 else {
            let e = errno
            let why = e == EINVAL ? "the file system under it does not support O_DIRECT" : String(cString: strerror(e))
            throw Problem(description: "cannot open disk \(path) for direct I/O: \(why)")
        }
        // One owner at a time: a running blk server holds this lock, so offline
        // tools (fosctl mkfs/fsck) and a second node refuse the disk.
        if exclusive {
            let r = fos_sys_flock_exclusive(fd)
            guard r == 0 else {
                close(fd)
                throw Problem(description: r == -EWOULDBLOCK ? "disk \(path) is in use by a running node"
                                                             : "cannot lock disk \(path): \(String(cString: strerror(-r)))")
            }
        }
        var bytes: UInt64 = 0
        guard fstat(fd, &st) == 0 else {
            close(fd)
            throw Problem(description: "disk \(path): \(String(cString: strerror(errno)))")
        }
        if (st.st_mode & S_IFMT) == S_IFBLK {
            var size: UInt64 = 0
            guard fos_sys_blockdev_bytes(fd, &size) == 0 else {
                close(fd)
                throw Problem(description: "disk \(path): cannot read the block device's size")
            }
            bytes = size
        } else if (st.st_mode & S_IFMT) == S_IFREG {
            bytes = UInt64(st.st_size)
        } else {
            close(fd)
            throw Problem(description: "disk \(path) is neither a regular file nor a block device")
        }
        guard bytes >= Disk.minimumBytes else {
            close(fd)
            throw Problem(description: "disk \(path) is too small: \(bytes) bytes, fos needs at least \(Disk.minimumBytes >> 20) MiB")
        }
        // A test read proves the disk is readable with direct I/O.
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 4096, 4096) == 0, let buf = p else {
            close(fd)
            throw Problem(description: "out of memory")
        }
        defer { free(buf) }
        guard pread(fd, buf, 4096, 0) == 4096 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw Problem(description: "disk \(path) is not readable: \(e)")
        }
        let cached = open(path, O_RDWR | O_CLOEXEC)
        guard cached >= 0 else {
            let e = String(cString: strerror(errno))
            close(fd)
            throw Problem(description: "disk \(path) cannot be opened for cached writes: \(e)")
        }
        self.path = path
        self.fd = fd
        self.cachedFD = cached
        self.blocks = bytes / UInt64(FOS_BLK_BLOCK)
        self.isImageFile = (st.st_mode & S_IFMT) == S_IFREG
    }

    deinit {
        close(fd)
        close(cachedFD)
    }

    /// Parses sizes like 8G, 512M, 65536K, 1T or plain bytes.
    public static func parseSize(_ s: String) -> UInt64? {
        let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
        var t = s.uppercased()
        if t.hasSuffix("IB") { t.removeLast(2) } else if t.hasSuffix("B") { t.removeLast() }
        if let u = t.last, let m = units[u] {
            guard let n = UInt64(t.dropLast()) else { return nil }
            let (v, o) = n.multipliedReportingOverflow(by: m)
            return o ? nil : v
        }
        return UInt64(t)
    }
}
