import CFosSys
import FosBlock
import FosFS
import Synchronization
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The blk server's disk as this member's `BlockDevice`, with one shortcut:
/// writes that only have to outlive this process (every per-operation
/// commit, FileSystem.endOperation) go straight into the kernel's page cache
/// of the disk with a pwrite of our own, instead of a round trip to the blk
/// server that does the same pwrite (FOS_OP_BLK_WRITE_CACHED).
///
/// Why: a commit is on the reply path of every change. On a machine with
/// fewer cores than busy processes the client, this member and the blk
/// server take turns on the cores, and each hop costs a scheduling slice,
/// not microseconds. Done here, it outlives us exactly as the blk server's
/// pwrite would (the kernel has the bytes before we answer; a kill -9 after
/// that cannot take them back, and a member killed during the call never
/// answered), and the blk server's flush (fdatasync of the same file)
/// makes it durable. Its other I/O is O_DIRECT, which the kernel keeps
/// coherent with the page cache (dirty cached pages are written before a
/// direct read or write of the range). All we write is whole blocks, but
/// for the journal's last block (`writeOutliving(block:data:unchanged:)`)
/// and part of a file's block in an image file (`writesBytesInPlace`).
///
/// Flushes are ours too (`flush`).
///
/// Only where fosd told us the disk's path (FOS_FS_DISK: this machine's
/// node, which also runs the blk server) and the file there is the disk
/// the blk server serves: same size, same superblock (`verified`).
final class LocalCommitDevice: BlockDevice {
    let blk: BlockClient
    let fd: FileDescriptor
    /// A write completed since the last flush began (or the last flush failed).
    let unflushed = Atomic<Bool>(true)
    /// Whether reads may take the page cache's copy (`read`): not for a
    /// block device, nor where the kernel lacks what it takes.
    let cachedReads = Atomic<Bool>(false)
    /// The disk is an image file, not a block device (`writesBytesInPlace`).
    let imageFile = Atomic<Bool>(false)
    /// The disk is an image file on a file system that overwrites blocks in
    /// place (`expectSmallWrites`).
    let inPlaceImage = Atomic<Bool>(false)

    /// This member's journal slot, mapped shared (`expectSmallWrites`), the
    /// block the last pwrite ended in (`written`), and the run of blocks
    /// from there that is locked in memory (`locked`).
    /// Sendable by hand: the mapping lives as long as this device (unmapped
    /// in deinit), and only the member's commits use it, one at a time
    /// under the file system's operation lock.
    struct Window: @unchecked Sendable {
        let base: UnsafeMutableRawPointer
        let first: UInt64
        let count: UInt64
        var written: UInt64?
        var locked: Range<UInt64>?
        /// False once mlock was refused even one block.
        var lockable = true
        /// Blocks to lock at a time: `lockRun`, or 1 once a run was refused.
        var runLength = LocalCommitDevice.lockRun
        func page(_ block: UInt64, _ bs: Int) -> UnsafeMutableRawPointer { base + Int(block - first) * bs }
        /// The block a commit may be copied into: written, and locked.
        var pinned: UInt64? { written.flatMap { locked?.contains($0) == true ? $0 : nil } }
    }
    /// Blocks locked at a time: an mlock and an munlock split and merge the
    /// mapping, and done at every block the journal moved on they were 5%
    /// of an untar's time in the member.
    static let lockRun: UInt64 = 64
    let window = Mutex<Window?>(nil)
    /// Whether the image file's space is allocated ahead of writes (ext4).
    let allocatesAhead = Atomic<Bool>(false)
    /// Bit c: chunk c (of `aheadChunk` blocks) was allocated, or tried.
    let aheadDone = Mutex<[UInt64]>([])
    /// 16 MiB: one fallocate of it took 0.1-1 ms on ext4.
    static let aheadChunk: UInt64 = 4096

    private init(blk: BlockClient, fd: FileDescriptor) {
        self.blk = blk
        self.fd = fd
    }

    deinit {
        if let w = window.withLock({ $0 }) { munmap(w.base, Int(w.count) * blockSize) }
        try? fd.close()
    }

    /// The disk at `path` if it is the one `blk` serves, else nil (with why).
    static func open(path: String, blk: BlockClient) async -> (LocalCommitDevice?, String?) {
        let fd: FileDescriptor
        do {
            fd = try FileDescriptor.open(FilePath(path), .readWrite, options: [.closeOnExec], retryOnInterrupt: true)
        } catch {
            return (nil, "cannot open the disk \(path): \(error)")
        }
        let dev = LocalCommitDevice(blk: blk, fd: fd)
        do {
            let end = try fd.seek(offset: 0, from: .end)
            // A block device's size is its end too.
            guard end >= 0, UInt64(end) / UInt64(BlockClient.blockSize) == blk.blocks else {
                return (nil, "\(path) is not the blk server's disk (size differs)")
            }
            let theirs = try await blk.read(block: 0, count: 1)
            var ours = [UInt8](repeating: 0, count: BlockClient.blockSize)
            let n = try ours.withUnsafeMutableBytes { try fd.read(fromAbsoluteOffset: 0, into: $0, retryOnInterrupt: true) }
            guard n == ours.count, ours == theirs, theirs.contains(where: { $0 != 0 }) else {
                return (nil, "\(path) is not the blk server's disk (superblock differs)")
            }
            // A block device's cached pages are not dropped after the blk
            // server's asynchronous direct writes (an image file's are):
            // a cached read could then return what was overwritten.
            var st = stat()
            if fstat(fd.rawValue, &st) == 0, st.st_mode & S_IFMT == S_IFREG {
                dev.cachedReads.store(true, ordering: .relaxed)
                dev.imageFile.store(true, ordering: .relaxed)
                // ext4 and tmpfs keep an allocated block where it is: a
                // store into a mapped page never allocates, so never fails
                // for want of space (on a copy-on-write file system, XFS's
                // reflinks included, a full disk would make it a SIGBUS
                // instead of a pwrite's ENOSPC). Left: an ext4 that shut
                // itself down after an error answers the store with SIGBUS
                // (a pwrite with EIO); the member is unusable either way.
                let type = fos_sys_fs_type(fd.rawValue)
                if [0xEF53, 0x0102_1994].contains(type) {
                    dev.inPlaceImage.store(true, ordering: .relaxed)
                }
                if type == 0xEF53 {
                    let chunks = (dev.blockCount + aheadChunk - 1) / aheadChunk
                    dev.aheadDone.withLock { $0 = [UInt64](repeating: 0, count: Int(chunks / 64 + 1)) }
                    dev.allocatesAhead.store(true, ordering: .relaxed)
                }
            }
        } catch {
            return (nil, "cannot read the disk \(path): \(error)")
        }
        return (dev, nil)
    }

    var blockSize: Int { blk.blockSize }
    var blockCount: UInt64 { blk.blockCount }
    var bootID: UInt64 { blk.bootID }
    /// A range the kernel's page cache of the disk image holds whole is
    /// read here, without device I/O (fos_sys_pread_cached); anything else
    /// from the blk server.
    ///
    /// Why: the commits of this member (and its peers) go through that page
    /// cache, so a file written a moment ago is there; through the blk
    /// server (O_DIRECT) it came from the device again: a 256 MiB file, past
    /// this member's own cache, read at 340 MB/s through the shim. Coherent:
    /// the blk server's direct writes to an image file drop the cached pages
    /// they cover (not so for a block device: `cachedReads`). A miss never
    /// blocks the loop on the device: the blk server reads it through the
    /// same page cache (FOS_OP_BLK_READ_CACHED), which keeps it and reads
    /// ahead, so that a large file read once is not read from the device at
    /// every read after (at about 200 µs a request).
    func read(block: UInt64, count: Int) async throws -> [UInt8] {
        let bs = blockSize
        guard cachedReads.load(ordering: .relaxed), holds(block: block, count: count) else {
            return try await blk.read(block: block, count: count)
        }
        var failed: Int = 0
        var out = [UInt8](unsafeUninitializedCapacity: count * bs) { b, n in
            let r = fos_sys_pread_cached(fd.rawValue, b.baseAddress, count * bs, block * UInt64(bs))
            if r < 0 { failed = -r }
            n = r > 0 ? r / bs * bs : 0
        }
        if failed != 0, failed != Int(EAGAIN) {
            // No cachestat or no RWF_NOWAIT here: the blk server only, from now on.
            cachedReads.store(false, ordering: .relaxed)
        }
        let got = out.count / bs
        if got == count { return out }
        out += try await blk.readCached(block: block + UInt64(got), count: count - got)
        return out
    }
    func write(block: UInt64, data: [UInt8]) async throws {
        try await blk.write(block: block, data: data)
        unflushed.store(true, ordering: .releasing)
    }
    /// fdatasync of our own descriptor: the same file (or block device) as
    /// the blk server's, so it makes every completed write durable, ours and
    /// the blk server's alike, without a round trip and a hand-off to an
    /// io_uring worker. It blocks this member's loop for the flush; an
    /// operation waiting for it holds the member's operation lock anyway.
    func flush() async throws {
        // Nothing written since the last flush: already durable (a program
        // often fsyncs twice in a row, or a file and then its directory).
        // Cleared before the fdatasync: right because this member is one
        // thread and the fdatasync blocks it, so no second flush can start
        // and return while this one is still under way.
        guard unflushed.exchange(false, ordering: .acquiringAndReleasing) else { return }
        while fdatasync(fd.rawValue) != 0 {
            if errno == EINTR { continue }
            unflushed.store(true, ordering: .releasing)
            throw FSError.posix(.ioError)
        }
    }

    func discard(block: UInt64, count: Int) async throws { try await blk.discard(block: block, count: count) }

    func writeOutliving(block: UInt64, data: [UInt8]) async throws {
        guard data.count % blockSize == 0, block < blockCount,
              UInt64(data.count / blockSize) <= blockCount - block else { throw FSError.posix(.invalidArgument) }
        try pwrite(data[...], block: block, blocks: UInt64(data.count / blockSize), offset: 0)
    }

    func writeOutliving(block: UInt64, padding bytes: ArraySlice<UInt8>) async throws {
        let bs = blockSize
        let blocks = (bytes.count + bs - 1) / bs
        guard blocks > 0, block < blockCount, UInt64(blocks) <= blockCount - block else {
            throw FSError.posix(.invalidArgument)
        }
        if allocatesAhead.load(ordering: .relaxed) { allocateAhead(block: block, count: UInt64(blocks)) }
        let pad = blocks * bs - bytes.count
        let done = bytes.withUnsafeBytes { data in
            Self.zeros.withUnsafeBytes { z in
                pwriteAll(fd, [data, UnsafeRawBufferPointer(rebasing: z[0..<pad])],
                          at: Int64(block) * Int64(bs))
            }
        }
        guard done else { throw FSError.posix(.ioError) }
        unflushed.store(true, ordering: .releasing)
    }

    /// A block of zeros (padding: `writeOutliving(block:padding:)`).
    static let zeros = [UInt8](repeating: 0, count: 65536)

    /// `bytes` at `offset` in `block` (spanning `blocks` blocks), through
    /// the page cache; the space allocated ahead first.
    private func pwrite(_ bytes: ArraySlice<UInt8>, block: UInt64, blocks: UInt64, offset: Int) throws {
        if allocatesAhead.load(ordering: .relaxed) { allocateAhead(block: block, count: blocks) }
        do {
            _ = try bytes.withUnsafeBytes {
                try fd.writeAll(toAbsoluteOffset: Int64(block) * Int64(blockSize) + Int64(offset), $0)
            }
        } catch {
            throw FSError.posix(.ioError)
        }
        unflushed.store(true, ordering: .releasing)
    }

    /// Allocates the image file's space (fallocate, as unwritten extents) a
    /// chunk at a time, before this member's first write into the chunk.
    ///
    /// Why: a write into a hole of the sparse image makes ext4 reserve and
    /// track a delayed allocation page by page: writing 1 MiB into a hole
    /// took the kernel 170-250 µs, into allocated space 100 µs (a 4 KiB
    /// block 3.0 µs against 2.0), on the reply path of every write. The
    /// file system never punches holes back, so a chunk stays allocated.
    /// The host's disk pays up to a chunk more per region written than the
    /// blocks themselves. A chunk is tried once: on a host disk that fills
    /// up, fallocate keeps what it could allocate (the last free space may
    /// go to this image a chunk early), and the write then allocates, or
    /// fails, as before.
    private func allocateAhead(block: UInt64, count: UInt64) {
        guard count > 0 else { return }
        let chunk = Self.aheadChunk
        let todo = aheadDone.withLock { bits -> [UInt64] in
            var todo: [UInt64] = []
            for c in (block / chunk)...((block + count - 1) / chunk) {
                let (w, b) = (Int(c / 64), c % 64)
                guard w < bits.count, bits[w] & (1 << b) == 0 else { continue }
                bits[w] |= 1 << b
                todo.append(c)
            }
            return todo
        }
        let bs = UInt64(blockSize)
        for c in todo {
            let r = fos_sys_allocate(fd.rawValue, c * chunk * bs, min(chunk, blockCount - c * chunk) * bs)
            if r == -EOPNOTSUPP { allocatesAhead.store(false, ordering: .relaxed) }
        }
    }

    /// Whether [block, block + count) is a non-empty range of the disk.
    func holds(block: UInt64, count: Int) -> Bool {
        count > 0 && block < blockCount && UInt64(count) <= blockCount - block
    }

    /// Maps the journal slot shared, where the disk is an image file on a
    /// file system that overwrites in place (`inPlaceImage`; a block
    /// device's page cache is not kept coherent with the blk server's
    /// direct I/O). Without it, commits are pwrites.
    func expectSmallWrites(block: UInt64, count: Int) {
        guard inPlaceImage.load(ordering: .relaxed), holds(block: block, count: count),
              window.withLock({ $0 == nil }) else { return }
        // A failure (a page size above the block size, no address space)
        // leaves the pwrites.
        guard let p = mmap(nil, count * blockSize, PROT_READ | PROT_WRITE, MAP_SHARED, fd.rawValue,
                           off_t(block) * off_t(blockSize)), p != MAP_FAILED else { return }
        window.withLock { $0 = Window(base: p, first: block, count: UInt64(count)) }
    }

    /// Bytes in place only in an image file: the blk server's direct writes
    /// drop its cached pages (`cachedReads`), and a pwrite of part of a
    /// block of a block device could merge into a stale one.
    var writesBytesInPlace: Bool { imageFile.load(ordering: .relaxed) }

    func writeOutliving(block: UInt64, offset: Int, bytes: ArraySlice<UInt8>) async throws {
        guard block < blockCount, offset >= 0, offset + bytes.count <= blockSize else {
            throw FSError.posix(.invalidArgument)
        }
        try pwrite(bytes, block: block, blocks: 1, offset: offset)
    }

    /// A commit that continues the journal's last block and ends in it is
    /// copied into the mapping from its first new byte on: the same bytes
    /// in the same page cache as the pwrite would leave, so it outlives us,
    /// and the flush (fdatasync) makes it durable just the same.
    ///
    /// Why: most commits are a few hundred bytes (a setattr, a create), and
    /// the pwrite of the whole 4 KiB block, with the image file's timestamp
    /// update it brings, was a quarter of such an operation's time in the
    /// member. (After every writeback of the page, a flush's or the
    /// kernel's own, the next store faults once and updates the timestamp:
    /// an fsync-heavy client gains less.)
    ///
    /// Only into the block the last pwrite ended in (so the disk has it: a
    /// store never allocates), and only while it is locked in memory
    /// (mlock): the copy then never has to read the page from the disk,
    /// where an I/O error would be a SIGBUS instead of EIO. Any other
    /// commit is a pwrite; one that ends past the locked run moves the run
    /// to start at its last block.
    func writeOutliving(block: UInt64, data: [UInt8], unchanged: Int) async throws {
        let bs = blockSize
        let w = window.withLock { $0 }
        if let w, unchanged > 0, unchanged < data.count, data.count == bs, w.pinned == block {
            data.withUnsafeBytes { s in
                (w.page(block, bs) + unchanged).copyMemory(from: s.baseAddress! + unchanged, byteCount: bs - unchanged)
            }
            unflushed.store(true, ordering: .releasing)
            return
        }
        try await writeOutliving(block: block, data: data)
        guard data.count >= bs, data.count % bs == 0 else { return }
        let last = block + UInt64(data.count / bs) - 1
        window.withLock { w in
            guard var v = w, v.lockable else { return }
            guard last >= v.first, last - v.first < v.count else {
                v.written = nil
                w = v
                return
            }
            v.written = last
            if v.locked?.contains(last) != true {
                if let old = v.locked { munlock(v.page(old.lowerBound, bs), Int(old.count) * bs) }
                v.locked = nil
                // Its first block was just written, so is in memory; the
                // others are the journal's next ones (written whole by
                // mkfs), usually cached from the last lap, else read here
                // once. Refused, a run of one block is tried (a small
                // RLIMIT_MEMLOCK); refused again, never again: commits stay
                // pwrites. A refused mlock may have locked part of its
                // range: unlocked again.
                var length = min(v.runLength, v.first + v.count - last)
                while v.locked == nil {
                    let bytes = Int(length) * bs
                    if mlock(v.page(last, bs), bytes) == 0 {
                        v.locked = last..<(last + length)
                    } else {
                        munlock(v.page(last, bs), bytes)
                        if length == 1 {
                            v.lockable = false
                            break
                        }
                        length = 1
                        v.runLength = 1
                    }
                }
            }
            w = v
        }
    }
}

/// pwritev(2) of `parts` at `offset`, all of them: retried on EINTR and
/// after a short write; false on any other error.
func pwriteAll(_ fd: FileDescriptor, _ parts: [UnsafeRawBufferPointer], at offset: Int64) -> Bool {
    var vecs = parts.filter { $0.count > 0 }.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress),
                                                         iov_len: $0.count) }
    var at = offset
    var first = 0
    while first < vecs.count {
        let n = vecs[first...].withUnsafeBufferPointer { pwritev(fd.rawValue, $0.baseAddress, Int32($0.count), off_t(at)) }
        if n < 0 {
            if errno == EINTR { continue }
            return false
        }
        if n == 0 { return false }
        at += Int64(n)
        var left = n
        while first < vecs.count, left >= vecs[first].iov_len {
            left -= vecs[first].iov_len
            first += 1
        }
        if first < vecs.count, left > 0 {
            vecs[first].iov_base = vecs[first].iov_base! + left
            vecs[first].iov_len -= left
        }
    }
    return true
}
