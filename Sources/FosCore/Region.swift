import CFosSys
import CFosWire

#if canImport(Glibc)
import Glibc
#endif

/// A bulk region shared by the two ends of a channel: a size-sealed memfd
/// mapped read-write by both. Messages name offsets in it instead of carrying
/// the bytes. Whatever the peer writes there is untrusted data, never
/// structure: the receiver validates offsets against `size` and copies or
/// hands the bytes to the kernel (I/O), nothing more.
///
/// `@unchecked Sendable`: the mapping is fixed for the object's lifetime and
/// the memory itself is shared with another process anyway; users coordinate
/// through messages.
public final class Region: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let size: Int
    public let slot: UInt32
    let fd: CInt

    init(fd: CInt, size: Int, slot: UInt32) throws {
        guard fos_sys_check_sealed(fd) == 0, let p = fos_sys_map_shared(fd, size, 1) else {
            closeFD(fd)
            throw FosError.badMessage("region memory unusable")
        }
        self.fd = fd
        self.size = size
        self.slot = slot
        self.base = p
    }

    /// A new region of `bytes` (rounded up to pages), sealed against resizing.
    static func create(bytes: Int, slot: UInt32) throws -> Region {
        let size = (bytes + 4095) & ~4095
        let fd = try sys(fos_sys_memfd("fos-region"))
        guard ftruncate(fd, off_t(size)) == 0 else {
            closeFD(fd)
            throw Errno(rawValue: errno)
        }
        guard fos_sys_seal_size(fd) == 0 else {
            closeFD(fd)
            throw Errno(rawValue: errno)
        }
        return try Region(fd: fd, size: size, slot: slot)
    }

    deinit {
        _ = fos_sys_unmap(base, size)
        closeFD(fd)
    }

    /// True if [offset, offset+length) lies inside the region.
    public func contains(offset: UInt64, length: UInt64) -> Bool {
        offset <= UInt64(size) && length <= UInt64(size) - offset
    }
}

import SystemPackage
