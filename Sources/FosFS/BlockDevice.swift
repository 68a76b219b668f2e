import Foundation

/// What the file system needs from a disk. The blk server's client
/// (FosBlock.BlockClient) implements it over messages; tests use
/// `MemoryBlockDevice` and `CrashingBlockDevice`.
///
/// Semantics follow a real disk with a volatile write cache: a completed
/// `write` may still be lost on a crash until a later `flush` completes.
public protocol BlockDevice: AnyObject, Sendable {
    /// Bytes per block (4096 for every fos disk).
    var blockSize: Int { get }
    /// Number of blocks.
    var blockCount: UInt64 { get }
    /// Reads `count` blocks starting at `block`.
    func read(block: UInt64, count: Int) async throws -> [UInt8]
    /// Writes whole blocks (`data.count` is a multiple of `blockSize`).
    func write(block: UInt64, data: [UInt8]) async throws
    /// Makes every completed write durable.
    func flush() async throws
    /// The blocks' contents become undefined (the device may free them).
    func discard(block: UInt64, count: Int) async throws
    /// Changes whenever the device may have lost writes that were not
    /// flushed (a power loss, a reboot): the journal replays unflushed
    /// transactions only while it has not changed (Journal.swift).
    var bootID: UInt64 { get }
    /// A write that must outlive the writing process but need not survive a
    /// power loss before the next `flush` (the blk server: through the page
    /// cache, microseconds instead of a device round trip).
    func writeOutliving(block: UInt64, data: [UInt8]) async throws
    /// `writeOutliving` of blocks whose first `unchanged` bytes already
    /// hold what `data` starts with (the caller wrote them last): a device
    /// that can change bytes in place may skip those.
    func writeOutliving(block: UInt64, data: [UInt8], unchanged: Int) async throws
    /// The blocks [block, block + count) will take many small writes
    /// (`writeOutliving` with `unchanged`): a journal.
    func expectSmallWrites(block: UInt64, count: Int)
    /// Whether `writeOutliving(block:offset:bytes:)` changes the bytes in
    /// place (else it reads the block and writes it whole).
    var writesBytesInPlace: Bool { get }
    /// `writeOutliving` of `bytes` at `offset` in `block`, the block's
    /// other bytes unchanged.
    func writeOutliving(block: UInt64, offset: Int, bytes: ArraySlice<UInt8>) async throws
    /// `writeOutliving` of `bytes` from the start of `block`, its last
    /// block padded with zeros (a file's new last block): a device that
    /// writes from two buffers needs no padded copy of the data.
    func writeOutliving(block: UInt64, padding bytes: ArraySlice<UInt8>) async throws
}

extension BlockDevice {
    /// The host's boot: a device on this host loses unflushed writes only
    /// when the host goes down.
    public var bootID: UInt64 { hostBootID }
    public func writeOutliving(block: UInt64, data: [UInt8]) async throws { try await write(block: block, data: data) }
    public func writeOutliving(block: UInt64, data: [UInt8], unchanged: Int) async throws {
        try await writeOutliving(block: block, data: data)
    }
    public func expectSmallWrites(block: UInt64, count: Int) {}
    public var writesBytesInPlace: Bool { false }
    public func writeOutliving(block: UInt64, padding bytes: ArraySlice<UInt8>) async throws {
        var b = [UInt8](bytes)
        b.append(contentsOf: repeatElement(0, count: (blockSize - bytes.count % blockSize) % blockSize))
        try await writeOutliving(block: block, data: b)
    }
    public func writeOutliving(block: UInt64, offset: Int, bytes: ArraySlice<UInt8>) async throws {
        guard offset >= 0, offset + bytes.count <= blockSize else { throw FSError.posix(.invalidArgument) }
        var b = try await read(block: block, count: 1)
        b.replaceSubrange(offset..<(offset + bytes.count), with: bytes)
        try await writeOutliving(block: block, data: b)
    }
}

/// /proc/sys/kernel/random/boot_id folded to 64 bits (0 if unreadable:
/// then every boot looks alike to us, and replay trusts only flushes).
let hostBootID: UInt64 = {
    guard let s = try? String(contentsOfFile: "/proc/sys/kernel/random/boot_id", encoding: .utf8) else { return 0 }
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in s.utf8 where b != 0x0A { h = (h ^ UInt64(b)) &* 0x100_0000_01b3 }
    return h | 1
}()
