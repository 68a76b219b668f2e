// The on-disk format of the fos file system (version 1).
//
// Layout (4096-byte blocks; all integers little-endian):
//
//   block 0                 superblock
//   block 1                 backup superblock (a fixed place that needs no
//                           geometry to find, so fsck can repair block 0 from it)
//   blocks 2 ..             4 journal slots, one per fleet member (0...3), each
//                           `journalBlocks` long: members commit independently
//   firstAGBlock ..         allocation groups (AGs), `agBlocks` each (the last
//                           may be shorter). Each AG is
//                             [block bitmap][inode bitmap][inode table][data]
//                           and is self-contained: a member that owns an AG
//                           (ag % members == member) is the only writer of its
//                           bitmaps, inode table and data blocks, so members
//                           never contend on allocation metadata.
//
// Inode numbers are (ag << 32) | index, so the AG — and with it the home member
// — of an inode is known without any lookup. Index 0 of every AG is reserved
// (so no inode number is 0); the root directory is AG 0 index 1 = inode 1.
//
// Free-space counters are not stored: mount counts the bitmaps (a few hundred
// blocks even for large disks). Storing them would put one hot block into
// every transaction of every member.
import CFosCRC

enum Layout {
    static let blockSize = 4096
    static let magic: UInt64 = 0x0131_5346_534F_46  // "FOSFS1\x01"
    static let version: UInt32 = 1
    static let inodeSize = 256
    static let inodesPerBlock = 16
    static let maxName = 255
    static let maxSymlink = 4095
    static let maxPath = 4096
    static let journalSlots = 4
    static let inlineExtents = 8
    static let extentsPerChainBlock = (4096 - 16) / 16  // 255
    static let maxLinks: UInt32 = 65000
    /// Logical block numbers are 32 bits: 16 TiB files.
    static let maxFileSize: UInt64 = (1 << 32) * 4096
    static let rootIno: UInt64 = 1
    static let superblockBackup: UInt64 = 1
    static let journalStart: UInt64 = 2
}

/// POSIX mode bits (Linux values).
enum M {
    static let fmt: UInt32 = 0o170000
    static let sock: UInt32 = 0o140000
    static let lnk: UInt32 = 0o120000
    static let reg: UInt32 = 0o100000
    static let blk: UInt32 = 0o060000
    static let dir: UInt32 = 0o040000
    static let chr: UInt32 = 0o020000
    static let fifo: UInt32 = 0o010000
    static let suid: UInt32 = 0o4000
    static let sgid: UInt32 = 0o2000
    static let sticky: UInt32 = 0o1000
    static let perm: UInt32 = 0o7777
    static let xgrp: UInt32 = 0o010

    /// The d_type (DT_*) value stored in directory entries.
    static func dtype(_ mode: UInt32) -> UInt8 {
        switch mode & fmt {
        case reg: 8
        case dir: 4
        case lnk: 10
        case chr: 2
        case blk: 6
        case fifo: 1
        case sock: 12
        default: 0
        }
    }
}

func crc32c(_ bytes: [UInt8], from: Int = 0, count: Int? = nil, seed: UInt32 = 0) -> UInt32 {
    let n = count ?? (bytes.count - from)
    return bytes.withUnsafeBytes { fos_crc32c(seed, $0.baseAddress! + from, n) }
}

extension Array where Element == UInt8 {
    @inline(__always) func u8(_ o: Int) -> UInt8 { self[o] }
    @inline(__always) func u16(_ o: Int) -> UInt16 {
        withUnsafeBytes { UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt16.self)) }
    }
    @inline(__always) func u32(_ o: Int) -> UInt32 {
        withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt32.self)) }
    }
    @inline(__always) func u64(_ o: Int) -> UInt64 {
        withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: o, as: UInt64.self)) }
    }
    @inline(__always) func i64(_ o: Int) -> Int64 { Int64(bitPattern: u64(o)) }
    @inline(__always) mutating func put16(_ o: Int, _ v: UInt16) {
        withUnsafeMutableBytes { $0.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt16.self) }
    }
    @inline(__always) mutating func put32(_ o: Int, _ v: UInt32) {
        withUnsafeMutableBytes { $0.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt32.self) }
    }
    @inline(__always) mutating func put64(_ o: Int, _ v: UInt64) {
        withUnsafeMutableBytes { $0.storeBytes(of: v.littleEndian, toByteOffset: o, as: UInt64.self) }
    }
    @inline(__always) mutating func putI64(_ o: Int, _ v: Int64) { put64(o, UInt64(bitPattern: v)) }
    mutating func putBytes(_ o: Int, _ b: [UInt8]) {
        replaceSubrange(o..<(o + b.count), with: b)
    }
    static func zeroBlock() -> [UInt8] { [UInt8](repeating: 0, count: Layout.blockSize) }
}

/// The superblock: fixed geometry written once by mkfs and never changed
/// afterwards (so members never write it and need not coordinate on it).
struct Superblock: Equatable {
    var blockCount: UInt64
    var agCount: UInt32
    var agBlocks: UInt32
    var inodesPerAG: UInt32
    var bbmBlocks: UInt32
    var ibmBlocks: UInt32
    var itableBlocks: UInt32
    var journalBlocks: UInt32
    var firstAGBlock: UInt64
    var uuid: [UInt8]
    var createdNs: Int64

    func encode() -> [UInt8] {
        var b = [UInt8].zeroBlock()
        b.put64(0, Layout.magic)
        b.put32(8, Layout.version)
        b.put32(12, UInt32(Layout.blockSize))
        b.put64(16, blockCount)
        b.put32(24, agCount)
        b.put32(28, agBlocks)
        b.put32(32, inodesPerAG)
        b.put32(36, bbmBlocks)
        b.put32(40, ibmBlocks)
        b.put32(44, itableBlocks)
        b.put64(48, Layout.journalStart)
        b.put32(56, journalBlocks)
        b.put32(60, UInt32(Layout.journalSlots))
        b.put64(64, firstAGBlock)
        b.putBytes(72, uuid)
        b.putI64(88, createdNs)
        b.put64(96, Layout.rootIno)
        b.put32(252, crc32c(b, count: 252))
        return b
    }

    static func decode(_ b: [UInt8]) -> Superblock? {
        guard b.count >= Layout.blockSize, b.u64(0) == Layout.magic, b.u32(8) == Layout.version,
              b.u32(12) == UInt32(Layout.blockSize), b.u32(252) == crc32c(b, count: 252),
              b.u64(48) == Layout.journalStart, b.u32(60) == UInt32(Layout.journalSlots)
        else { return nil }
        let sb = Superblock(
            blockCount: b.u64(16), agCount: b.u32(24), agBlocks: b.u32(28), inodesPerAG: b.u32(32),
            bbmBlocks: b.u32(36), ibmBlocks: b.u32(40), itableBlocks: b.u32(44), journalBlocks: b.u32(56),
            firstAGBlock: b.u64(64), uuid: Array(b[72..<88]), createdNs: b.i64(88))
        return sb.isSane ? sb : nil
    }

    var isSane: Bool {
        agCount >= 1 && agBlocks > 0 && inodesPerAG >= 16 && inodesPerAG % 16 == 0
            && UInt64(bbmBlocks) * 32768 >= UInt64(agBlocks) && UInt64(ibmBlocks) * 32768 >= UInt64(inodesPerAG)
            && UInt64(itableBlocks) * 16 == UInt64(inodesPerAG)
            && firstAGBlock == Layout.journalStart + UInt64(journalBlocks) * UInt64(Layout.journalSlots)
            && agStart(Int(agCount) - 1) + UInt64(metaBlocks) < blockCount && journalBlocks >= 16
    }

    var metaBlocks: UInt32 { bbmBlocks + ibmBlocks + itableBlocks }
    func agStart(_ ag: Int) -> UInt64 { firstAGBlock + UInt64(ag) * UInt64(agBlocks) }
    func agSize(_ ag: Int) -> UInt64 { min(UInt64(agBlocks), blockCount - agStart(ag)) }
    func bbmStart(_ ag: Int) -> UInt64 { agStart(ag) }
    func ibmStart(_ ag: Int) -> UInt64 { agStart(ag) + UInt64(bbmBlocks) }
    func itableStart(_ ag: Int) -> UInt64 { ibmStart(ag) + UInt64(ibmBlocks) }
    func dataStart(_ ag: Int) -> UInt64 { itableStart(ag) + UInt64(itableBlocks) }
    func journalSlotStart(_ slot: Int) -> UInt64 { Layout.journalStart + UInt64(slot) * UInt64(journalBlocks) }

    /// The AG holding `block`, if the block is inside an AG.
    func ag(ofBlock block: UInt64) -> Int? {
        guard block >= firstAGBlock, block < blockCount else { return nil }
        let ag = Int((block - firstAGBlock) / UInt64(agBlocks))
        return ag < Int(agCount) ? ag : nil
    }
    /// True if `block` is a data block of some AG (what extents may point at).
    func isDataBlock(_ block: UInt64) -> Bool {
        guard let ag = ag(ofBlock: block) else { return false }
        return block >= dataStart(ag) && block < agStart(ag) + agSize(ag)
    }
    func isValidIno(_ ino: UInt64) -> Bool {
        let ag = ino >> 32, idx = ino & 0xFFFF_FFFF
        return ag < UInt64(agCount) && idx >= 1 && idx < UInt64(inodesPerAG)
    }
    func inodeLocation(_ ino: UInt64) -> (block: UInt64, offset: Int) {
        let ag = Int(ino >> 32), idx = Int(ino & 0xFFFF_FFFF)
        return (itableStart(ag) + UInt64(idx / Layout.inodesPerBlock), (idx % Layout.inodesPerBlock) * Layout.inodeSize)
    }
}

/// One contiguous mapping: file blocks [logical, logical+length) live at
/// [physical, physical+length).
struct Extent: Equatable, Sendable {
    var logical: UInt32
    var length: UInt32
    var physical: UInt64
    var logicalEnd: UInt64 { UInt64(logical) + UInt64(length) }
}

/// Inode flag bits.
enum InodeFlags {
    /// A symlink whose target is stored in the inode's extent area.
    static let inlineSymlink: UInt32 = 1
    /// Some data blocks are in AGs of another fleet member than the inode's
    /// (spilled there when its own were full): freeing them takes a
    /// cross-member transaction.
    static let foreignData: UInt32 = 2
}

/// The 256-byte on-disk inode.
///
///     0 mode u32   4 uid u32   8 gid u32   12 nlink u32   16 size u64
///     24 atime  32 mtime  40 ctime  48 btime  (i64 ns since the epoch)
///     56 flags u32  60 generation u32  64 rdev u64  72 blocks u64 (4 KiB units,
///     data + extent chain + xattr)  80 xattr block u64  88 extent count u32
///     92 inline length u16  96 extent chain head u64
///     104..232 inline area: 8 extents of 16 bytes (logical u32, length u32,
///     physical u64) or an inline symlink target of up to 128 bytes
///     232 next orphan u64 (Orphans.swift; 0 for an inode with a name)
///     252 crc32c of bytes 0..<252
///
/// Files with more than 8 extents keep all of them in a chain of extent
/// blocks (header: magic u32, count u32, next u64; then 255 extents). A chain
/// instead of a B-tree: simple to journal and to check, and the in-memory inode
/// keeps the whole sorted extent list, so lookups are binary searches either way;
/// the cost is rewriting the chain when a fragmented file's mapping changes.
enum InodeCodec {
    static let inlineOffset = 104
    static let inlineBytes = 128
    static let chainMagic: UInt32 = 0x4E48_4345  // "ECHN"
}

/// Directory entry: ino u64, recLen u16, nameLen u8, type u8 (DT_*), name.
/// Records tile each 4 KiB block; a deleted record is merged into its
/// predecessor (or gets ino 0 when first in its block), so entries never move
/// and a readdir cookie (block << 12 | offset) stays valid across inserts and
/// deletes.
enum DirFormat {
    static let header = 12
    static func recSize(nameLen: Int) -> Int { (header + nameLen + 3) & ~3 }
}
