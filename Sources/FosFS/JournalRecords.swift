// Delta transactions: the journal format every commit writes (the older
// whole-block format, JournalFormat.descMagic, is still replayed).
//
// Every operation commits before it answers (FileSystem.endOperation), and
// an operation changes a few dozen bytes in each of a handful of blocks: an
// inode record, a directory entry, a bitmap word, a group counter. Journaling
// whole 4 KiB images made every create a 28 KiB write and filled a slot
// every few hundred operations (each checkpoint is a series of device
// flushes). A delta transaction records only the changed byte ranges and
// usually fits one block:
//
//     header  (32 bytes): deltaMagic, seq, record count, flags, stream bytes
//     stream: records, each [home block u64][offset u16][length u16][bytes]
//     trailer (32 bytes): trailerMagic, seq, boot, crc32c(header..boot), 0
//     zero padding to a multiple of 64 bytes
//
// packed one after another in the slot (most operations add a few hundred
// bytes, so a block holds several and an fsync flushes few), written with
// one device write of the blocks it touches; the trailer's checksum covers
// everything before it, so a torn write fails it and replay stops there.
//
// Why a delta applied to the home block is enough: between checkpoints a
// block is changed only by transactions (freed blocks are not reused before
// the checkpoint), and what is at home is its contents at the last
// checkpoint or a later committed image (eviction writes only committed
// images, and only once every transaction before is replayable). Applying
// every delta since the checkpoint in order leaves each byte with its last
// committed value either way. A block whose earlier contents do not matter
// (newly allocated metadata, file data) is recorded whole.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

enum DeltaFormat {
    static let deltaMagic: UInt64 = 0x3154_4C44_4A53_4F46  // "FOSJDLT1"
    static let trailerMagic: UInt64 = 0x3152_5254_4A53_4F46  // "FOSJTRR1"
    static let headerBytes = 32
    static let trailerBytes = 32
    static let recordHeader = 12
    /// Changed ranges closer than this merge into one record (a record
    /// header costs 12 bytes).
    static let mergeGapWords = 3

    struct Record {
        var home: UInt64
        var offset: Int
        var bytes: ArraySlice<UInt8>
    }

    /// Transactions start at multiples of this within the slot.
    static let alignment = 64

    /// Bytes a transaction of `streamBytes` occupies (padding included).
    static func length(streamBytes: Int) -> Int {
        (headerBytes + streamBytes + trailerBytes + alignment - 1) / alignment * alignment
    }

    /// The length of the transaction whose header is `head`, if it is delta
    /// transaction `seq`.
    static func length(_ head: [UInt8], seq: UInt64) -> Int? {
        guard head.count >= headerBytes, head.u64(0) == deltaMagic, head.u64(8) == seq else { return nil }
        let stream = Int(head.u32(24))
        guard stream <= 1 << 30 else { return nil }
        return length(streamBytes: stream)
    }

    /// Builds one transaction.
    struct Writer {
        private(set) var out: [UInt8]
        private(set) var records: UInt32 = 0

        let seq: UInt64

        init(seq: UInt64) {
            self.seq = seq
            out = [UInt8](repeating: 0, count: DeltaFormat.headerBytes)
            out.reserveCapacity(2 * Layout.blockSize)
            out.put64(0, DeltaFormat.deltaMagic)
            out.put64(8, seq)
        }

        var streamBytes: Int { out.count - DeltaFormat.headerBytes }

        // Headers and padding are zeros appended and then filled in, not
        // arrays of their own: a commit makes one record per changed range,
        // and each array was an allocation on every operation's path.
        mutating func add(home: UInt64, offset: Int, _ bytes: ArraySlice<UInt8>) {
            let h = out.count
            out.append(contentsOf: repeatElement(0, count: DeltaFormat.recordHeader))
            out.put64(h, home)
            out.put16(h + 8, UInt16(offset))
            out.put16(h + 10, UInt16(bytes.count))
            out.append(contentsOf: bytes)
            records += 1
        }

        /// Records what changed from `old` to `new` (whole blocks): the
        /// changed ranges, or the whole block when that is no bigger.
        mutating func addChanges(home: UInt64, old: [UInt8]?, new: [UInt8]) {
            guard let old, old.count == new.count else { return add(home: home, offset: 0, new[...]) }
            let ranges = DeltaFormat.changedRanges(old, new)
            let cost = ranges.reduce(0) { $0 + DeltaFormat.recordHeader + $1.count }
            if cost >= Layout.blockSize { return add(home: home, offset: 0, new[...]) }
            for r in ranges { add(home: home, offset: r.lowerBound, new[r]) }
        }

        /// The transaction's blocks, ready to write.
        consuming func finish(flags: UInt32, boot: UInt64) -> [UInt8] {
            let stream = streamBytes
            out.put32(16, records)
            out.put32(20, flags)
            out.put32(24, UInt32(stream))
            let t = out.count
            out.append(contentsOf: repeatElement(0, count: DeltaFormat.trailerBytes))
            out.put64(t, DeltaFormat.trailerMagic)
            out.put64(t + 8, seq)
            out.put64(t + 16, boot)
            out.put32(t + 24, crc32c(out, count: t + 24))
            let padded = DeltaFormat.length(streamBytes: stream)
            out.append(contentsOf: repeatElement(0, count: padded - out.count))
            return out
        }
    }

    /// Byte ranges (8-byte aligned) where two equally long blocks differ,
    /// neighbours closer than `mergeGapWords` words merged.
    ///
    /// Equal stretches are skipped a chunk at a time with memcmp (vector
    /// compares), then the differing chunks word by word: a commit diffs
    /// every block it touched, nearly all of each unchanged, and the word
    /// loop alone was a tenth of a create's time in the member.
    static func changedRanges(_ a: [UInt8], _ b: [UInt8]) -> [Range<Int>] {
        var ranges: [Range<Int>] = []
        a.withUnsafeBytes { pa in
            b.withUnsafeBytes { pb in
                let words = pa.count / 8
                @inline(__always) func differs(_ i: Int) -> Bool {
                    pa.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
                        != pb.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
                }
                @inline(__always) func chunkEqual(_ i: Int) -> Bool {
                    guard i % chunkWords == 0, i + chunkWords <= words else { return false }
                    let off = i * 8
                    return memcmp(pa.baseAddress! + off, pb.baseAddress! + off, chunkWords * 8) == 0
                }
                var i = 0
                while i < words {
                    if chunkEqual(i) {
                        i += chunkWords
                        continue
                    }
                    guard differs(i) else {
                        i += 1
                        continue
                    }
                    let start = i
                    var end = i + 1
                    i += 1
                    while i < words, i - end < mergeGapWords {
                        if differs(i) { end = i + 1 }
                        i += 1
                    }
                    ranges.append(start * 8..<end * 8)
                    i = end
                }
                // A tail shorter than a word (never for 4 KiB blocks).
                if words * 8 < pa.count, pa[(words * 8)...].elementsEqual(pb[(words * 8)...]) == false {
                    ranges.append(words * 8..<pa.count)
                }
            }
        }
        return ranges
    }

    /// Words `changedRanges` compares at once (256 bytes).
    static let chunkWords = 32

    /// Checks a whole delta transaction (all its blocks) and returns its
    /// flags, boot and records; nil if it is torn or not transaction `seq`.
    /// Throws when it checks out but names blocks outside `homes`: written
    /// by us, so the disk is corrupt.
    static func parse(_ t: [UInt8], seq: UInt64, homes: Range<UInt64>) throws -> (flags: UInt32, boot: UInt64, records: [Record])? {
        guard t.count >= headerBytes + trailerBytes, t.u64(0) == deltaMagic, t.u64(8) == seq else { return nil }
        let stream = Int(t.u32(24))
        let tr = headerBytes + stream
        guard tr + trailerBytes <= t.count, t.u64(tr) == trailerMagic, t.u64(tr + 8) == seq,
              t.u32(tr + 24) == crc32c(t, count: tr + 24) else { return nil }
        let count = Int(t.u32(16))
        var records: [Record] = []
        records.reserveCapacity(count)
        var p = headerBytes
        while p < tr {
            guard p + recordHeader <= tr else { throw FSError.corrupt("journal transaction \(seq): truncated record") }
            let home = t.u64(p)
            let offset = Int(t.u16(p + 8))
            let length = Int(t.u16(p + 10))
            p += recordHeader
            guard length > 0, offset + length <= Layout.blockSize, p + length <= tr else {
                throw FSError.corrupt("journal transaction \(seq): bad record at \(p - recordHeader)")
            }
            guard homes.contains(home) else {
                throw FSError.corrupt("journal transaction \(seq) targets block \(home)")
            }
            records.append(Record(home: home, offset: offset, bytes: t[p..<(p + length)]))
            p += length
        }
        guard records.count == count else { throw FSError.corrupt("journal transaction \(seq): record count") }
        return (t.u32(20), t.u64(tr + 16), records)
    }
}
