import CFosSys
import CFosUring
import CFosWire
import FosCore
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// The block device driver server (the paper's §4.1): owns one disk and does
/// all its I/O through io_uring — O_DIRECT, registered buffers, one submit
/// syscall per loop pass for everything queued, bounded queue depth.
///
/// Requests come straight off the rings (`ImmediateService`, no task per
/// request). Data travels either inline in the message (small I/O; copied
/// through a registered bounce buffer) or in a region the client attached to
/// its channel, which is registered with io_uring and read or written by the
/// kernel directly (no copy in this process).
///
/// `@unchecked Sendable`: every field is touched on the event loop thread
/// only (the loop calls `receive`, `attached`, `disconnected` and the poller).
public final class BlockServer: ImmediateService, @unchecked Sendable {
    public let disk: Disk
    public let queueDepth: Int
    /// Largest request through a region: 1 MiB.
    public static let maxRegionBlocks: UInt32 = 256
    /// Largest inline request: what fits in one message.
    public static let maxInlineBlocks: UInt32 = (FOS_MAX_PAYLOAD - UInt32(MemoryLayout<fos_blk_io>.size)) / FOS_BLK_BLOCK

    private let uring: OpaquePointer
    private let completionFD: CInt
    private let bounce: UnsafeMutableRawPointer
    private let bounceSlotBytes = Int(maxInlineBlocks * FOS_BLK_BLOCK)
    private let loop: EventLoop

    private struct InFlight {
        var channel: UInt64
        var header: fos_msg_hdr
        var bytes: Int
        var bounce: Int?  // index of the bounce slot (inline data)
        var region: Region?  // keeps the mapping alive while the kernel uses it
    }
    private var inflight: [InFlight?]
    private var freeSlots: [Int]
    /// Requests waiting for a free slot, in arrival order (copied off the ring).
    private var waiting: [(UInt64, fos_msg_hdr, [UInt8])] = []
    /// Registered-buffer slots: 0 is the bounce pool, the rest client regions.
    private var bufferSlots: [ObjectIdentifier: UInt32] = [:]
    private var regionsByChannel: [UInt64: [Region]] = [:]
    private var freeBufferSlots: [UInt32]
    private var needSubmit = false
    private var enabled = false
    static let reapBatch: Int32 = 64
    private let reapUsers = UnsafeMutablePointer<UInt64>.allocate(capacity: Int(reapBatch))
    private let reapResults = UnsafeMutablePointer<Int32>.allocate(capacity: Int(reapBatch))
    public private(set) var stats = Stats()
    /// Disk locks (FOS_OP_BLK_LOCK): holder channel and FIFO waiters per id;
    /// locks of closed channels wait in `draining` for their I/O to finish.
    private var lockHolder: [UInt32: UInt64] = [:]
    private var lockWaiters: [UInt32: [(channel: UInt64, header: fos_msg_hdr)]] = [:]
    private var draining: [UInt64: [UInt32]] = [:]
    static let maxLockWaiters = 1024

    public struct Stats: Sendable {
        public var reads: UInt64 = 0
        public var writes: UInt64 = 0
        public var flushes: UInt64 = 0
        public var errors: UInt64 = 0
    }

    static let bufferTable: UInt32 = 128

    public init(disk: Disk, queueDepth: Int, loop: EventLoop) throws {
        precondition(queueDepth >= 1 && queueDepth <= 4096)
        self.disk = disk
        self.queueDepth = queueDepth
        self.loop = loop
        var err: Int32 = 0
        guard let u = fos_uring_open(UInt32(queueDepth), BlockServer.bufferTable, &err) else {
            throw Errno(rawValue: err)
        }
        uring = u
        try sys(fos_uring_register_files(u, disk.fd, disk.cachedFD))
        var p: UnsafeMutableRawPointer?
        guard posix_memalign(&p, 4096, bounceSlotBytes * queueDepth) == 0, let b = p else {
            fos_uring_close(u)
            throw Errno.noMemory
        }
        bounce = b
        try sys(fos_uring_set_buffer(u, 0, b, bounceSlotBytes * queueDepth))
        completionFD = try sys(fos_sys_eventfd())
        try sys(fos_uring_register_eventfd(u, completionFD))
        inflight = Array(repeating: nil, count: queueDepth)
        freeSlots = Array((0..<queueDepth).reversed())
        freeBufferSlots = Array((1..<BlockServer.bufferTable).reversed())
        loop.addPoller(wakeFD: completionFD) { [unowned self] in self.poll() }
    }

    deinit {
        fos_uring_close(uring)
        free(bounce)
        reapUsers.deallocate()
        reapResults.deallocate()
        closeFD(completionFD)
    }

    // MARK: Requests

    public func receive(_ h: fos_msg_hdr, _ payload: UnsafeRawBufferPointer, on channel: Channel, loop: EventLoop) {
        if freeSlots.isEmpty && (h.opcode == UInt16(FOS_OP_BLK_READ) || h.opcode == UInt16(FOS_OP_BLK_READ_CACHED)
            || h.opcode == UInt16(FOS_OP_BLK_WRITE)
            || h.opcode == UInt16(FOS_OP_BLK_FLUSH) || h.opcode == UInt16(FOS_OP_BLK_DISCARD)) {
            waiting.append((channel.id, h, Array(payload)))
            return
        }
        start(channel.id, h, payload)
    }

    private func fail(_ channel: UInt64, _ h: fos_msg_hdr, _ e: Int32) {
        stats.errors &+= 1
        loop.reply(channel: channel, to: h, status: e, payload: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    private func start(_ channel: UInt64, _ h: fos_msg_hdr, _ payload: UnsafeRawBufferPointer) {
        switch Int32(h.opcode) {
        case Int32(FOS_OP_BLK_INFO):
            var info = fos_blk_info(blocks: disk.blocks, block_size: FOS_BLK_BLOCK, queue_depth: UInt32(queueDepth),
                                    max_blocks: BlockServer.maxRegionBlocks, reserved: 0)
            withUnsafeBytes(of: &info) { loop.reply(channel: channel, to: h, status: 0, payload: $0) }
        case Int32(FOS_OP_BLK_READ), Int32(FOS_OP_BLK_READ_CACHED), Int32(FOS_OP_BLK_WRITE), Int32(FOS_OP_BLK_DISCARD):
            io(channel, h, payload)
        case Int32(FOS_OP_BLK_LOCK), Int32(FOS_OP_BLK_UNLOCK):
            lockRequest(channel, h, payload)
        case Int32(FOS_OP_BLK_WRITE_CACHED):
            cachedWrite(channel, h, payload)
        case Int32(FOS_OP_BLK_FLUSH):
            let slot = freeSlots.removeLast()
            inflight[slot] = InFlight(channel: channel, header: h, bytes: 0)
            queue(fos_uring_flush(uring, UInt64(slot)), slot)
        default:
            fail(channel, h, ENOSYS)
        }
    }

    private func io(_ channel: UInt64, _ h: fos_msg_hdr, _ payload: UnsafeRawBufferPointer) {
        guard let r = loadStruct(fos_blk_io.self, from: payload) else { return fail(channel, h, EINVAL) }
        let headerSize = MemoryLayout<fos_blk_io>.size
        // Overflow-safe bounds: count is 32-bit, block 64-bit.
        guard r.count > 0, r.block < disk.blocks, UInt64(r.count) <= disk.blocks - r.block else {
            return fail(channel, h, r.count == 0 ? EINVAL : ENOSPC)
        }
        let bytes = Int(r.count) * Int(FOS_BLK_BLOCK)
        let offset = r.block * UInt64(FOS_BLK_BLOCK)
        let isWrite = h.opcode == UInt16(FOS_OP_BLK_WRITE)
        if h.opcode == UInt16(FOS_OP_BLK_DISCARD) {
            guard payload.count == headerSize else { return fail(channel, h, EINVAL) }
            let slot = freeSlots.removeLast()
            inflight[slot] = InFlight(channel: channel, header: h, bytes: 0)
            return queue(fos_uring_discard(uring, offset, UInt64(bytes), UInt64(slot)), slot)
        }
        let cached = h.opcode == UInt16(FOS_OP_BLK_READ_CACHED)
        if cached && r.slot != FOS_BLK_INLINE { return fail(channel, h, EINVAL) }
        if r.slot == FOS_BLK_INLINE {
            guard r.count <= BlockServer.maxInlineBlocks else { return fail(channel, h, EMSGSIZE) }
            guard payload.count == headerSize + (isWrite ? bytes : 0) else { return fail(channel, h, EINVAL) }
            let slot = freeSlots.removeLast()
            let buf = bounce + slot * bounceSlotBytes
            if isWrite { buf.copyMemory(from: payload.baseAddress! + headerSize, byteCount: bytes) }
            inflight[slot] = InFlight(channel: channel, header: h, bytes: bytes, bounce: slot)
            let rc = isWrite
                ? fos_uring_write(uring, buf, UInt32(bytes), offset, 0, UInt64(slot))
                : cached && disk.isImageFile
                ? fos_uring_read_cached(uring, buf, UInt32(bytes), offset, 0, UInt64(slot))
                : fos_uring_read(uring, buf, UInt32(bytes), offset, 0, UInt64(slot))
            return queue(rc, slot)
        }
        guard payload.count == headerSize, r.count <= BlockServer.maxRegionBlocks, r.offset % UInt64(FOS_BLK_BLOCK) == 0,
              let region = loop.region(channel: channel, slot: r.slot),
              region.contains(offset: r.offset, length: UInt64(bytes)),
              let bufSlot = bufferSlots[ObjectIdentifier(region)]
        else { return fail(channel, h, EINVAL) }
        let slot = freeSlots.removeLast()
        let buf = region.base + Int(r.offset)
        inflight[slot] = InFlight(channel: channel, header: h, bytes: bytes, region: region)
        let rc = isWrite
            ? fos_uring_write(uring, buf, UInt32(bytes), offset, bufSlot, UInt64(slot))
            : fos_uring_read(uring, buf, UInt32(bytes), offset, bufSlot, UInt64(slot))
        queue(rc, slot)
    }

    private func queue(_ rc: Int32, _ slot: Int) {
        if rc == -EBUSY {
            // The submission queue is full: submit what is there and retry once.
            _ = fos_uring_submit(uring)
            if let f = inflight[slot] {
                inflight[slot] = nil
                freeSlots.append(slot)
                fail(f.channel, f.header, EAGAIN)
            }
            return
        }
        needSubmit = true
    }

    // MARK: Completions

    /// Submits what this pass queued and answers what completed. True while
    /// I/O is in flight, so the loop polls instead of sleeping.
    func poll() -> Bool {
        if !enabled {
            // On the loop thread, which from now on is the ring's only issuer.
            enabled = true
            let r = fos_uring_enable(uring)
            if r < 0 { fatalError("io_uring: cannot enable the ring: \(Errno(rawValue: -r))") }
        }
        if needSubmit {
            needSubmit = false
            let r = fos_uring_submit(uring)
            if r < 0 && r != -EBUSY && r != -EAGAIN { needSubmit = true }
        }
        // Nothing in flight, nothing to reap: the common idle pass stays cheap.
        if freeSlots.count == queueDepth && waiting.isEmpty { return false }
        // Preallocated: this runs on every pass of a spinning loop, and two
        // array allocations per pass were a tenth of the server's time.
        let n = Int(fos_uring_reap(uring, reapUsers, reapResults, BlockServer.reapBatch))
        for i in 0..<n {
            let slot = Int(reapUsers[i])
            guard slot < inflight.count, let f = inflight[slot] else { continue }
            inflight[slot] = nil
            freeSlots.append(slot)
            complete(f, reapResults[i])
        }
        if !draining.isEmpty { releaseDrained() }
        while !freeSlots.isEmpty && !waiting.isEmpty {
            let (ch, h, p) = waiting.removeFirst()
            p.withUnsafeBytes { start(ch, h, $0) }
        }
        return freeSlots.count < queueDepth || n > 0
    }

    private func complete(_ f: InFlight, _ res: Int32) {
        let op = f.header.opcode
        if res < 0 {
            return fail(f.channel, f.header, -res)
        }
        if f.bytes > 0 && Int(res) != f.bytes {
            return fail(f.channel, f.header, EIO)  // short transfer: the disk shrank under us
        }
        switch Int32(op) {
        case Int32(FOS_OP_BLK_READ), Int32(FOS_OP_BLK_READ_CACHED): stats.reads &+= 1
        case Int32(FOS_OP_BLK_WRITE): stats.writes &+= 1
        case Int32(FOS_OP_BLK_FLUSH): stats.flushes &+= 1
        default: break
        }
        if op == UInt16(FOS_OP_BLK_READ) || op == UInt16(FOS_OP_BLK_READ_CACHED), let b = f.bounce {
            loop.reply(channel: f.channel, to: f.header, status: 0,
                       payload: UnsafeRawBufferPointer(start: bounce + b * bounceSlotBytes, count: f.bytes))
        } else {
            loop.reply(channel: f.channel, to: f.header, status: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0))
        }
    }

    // MARK: Regions

    public func attached(_ region: Region, to channel: Channel) {
        guard let slot = freeBufferSlots.popLast() else { return }  // requests naming it get EINVAL
        guard fos_uring_set_buffer(uring, slot, region.base, region.size) == 0 else {
            freeBufferSlots.append(slot)
            return
        }
        bufferSlots[ObjectIdentifier(region)] = slot
        regionsByChannel[channel.id, default: []].append(region)
    }

    public func disconnected(_ channel: Channel) {
        for r in regionsByChannel.removeValue(forKey: channel.id) ?? [] {
            if let slot = bufferSlots.removeValue(forKey: ObjectIdentifier(r)) {
                // In-flight I/O keeps its own reference to the pages (and
                // InFlight keeps the mapping): removing the table entry is safe.
                _ = fos_uring_set_buffer(uring, slot, nil, 0)
                freeBufferSlots.append(slot)
            }
        }
        waiting.removeAll { $0.0 == channel.id }
        for id in Array(lockWaiters.keys) { lockWaiters[id]?.removeAll { $0.channel == channel.id } }
        let held = lockHolder.filter { $0.value == channel.id }.map(\.key)
        if !held.isEmpty {
            draining[channel.id] = held
            releaseDrained()
        }
    }

    // MARK: Cached writes

    /// A memory copy into the page cache (a few µs): done on the loop thread.
    private func cachedWrite(_ channel: UInt64, _ h: fos_msg_hdr, _ payload: UnsafeRawBufferPointer) {
        guard let r = loadStruct(fos_blk_io.self, from: payload), r.slot == FOS_BLK_INLINE, r.count > 0,
              r.count <= BlockServer.maxInlineBlocks, r.block < disk.blocks, UInt64(r.count) <= disk.blocks - r.block
        else { return fail(channel, h, EINVAL) }
        let header = MemoryLayout<fos_blk_io>.size
        let bytes = Int(r.count) * Int(FOS_BLK_BLOCK)
        guard payload.count == header + bytes else { return fail(channel, h, EINVAL) }
        var done = 0
        while done < bytes {
            let n = pwrite(disk.cachedFD, payload.baseAddress! + header + done, bytes - done,
                           off_t(r.block * UInt64(FOS_BLK_BLOCK)) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                return fail(channel, h, errno)
            }
            done += n
        }
        stats.writes &+= 1
        loop.reply(channel: channel, to: h, status: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    // MARK: Disk locks

    private func lockRequest(_ channel: UInt64, _ h: fos_msg_hdr, _ payload: UnsafeRawBufferPointer) {
        guard payload.count == MemoryLayout<fos_blk_lock>.size, let r = loadStruct(fos_blk_lock.self, from: payload),
              r.id < FOS_BLK_LOCKS else { return fail(channel, h, EINVAL) }
        let done = UnsafeRawBufferPointer(start: nil, count: 0)
        if h.opcode == UInt16(FOS_OP_BLK_UNLOCK) {
            guard r.flags == 0 else { return fail(channel, h, EINVAL) }
            if lockHolder[r.id] == channel {
                release(r.id)
            } else if let k = lockWaiters[r.id]?.firstIndex(where: { $0.channel == channel }) {
                // A LOCK its sender gave up on: answer it, then the UNLOCK.
                let w = lockWaiters[r.id]!.remove(at: k)
                fail(w.channel, w.header, ECANCELED)
            } else {
                return fail(channel, h, EPERM)
            }
            return loop.reply(channel: channel, to: h, status: 0, payload: done)
        }
        guard r.flags & ~FOS_BLK_LOCK_TRY == 0 else { return fail(channel, h, EINVAL) }
        switch lockHolder[r.id] {
        case nil:
            lockHolder[r.id] = channel
            loop.reply(channel: channel, to: h, status: 0, payload: done)
        case channel:
            fail(channel, h, EDEADLK)
        default:
            if r.flags & FOS_BLK_LOCK_TRY != 0 { return fail(channel, h, EAGAIN) }
            if lockWaiters[r.id]?.contains(where: { $0.channel == channel }) == true { return fail(channel, h, EDEADLK) }
            guard lockWaiters[r.id, default: []].count < BlockServer.maxLockWaiters else { return fail(channel, h, EAGAIN) }
            lockWaiters[r.id, default: []].append((channel, h))
        }
    }

    /// Hands lock `id` to its first waiter, if any.
    private func release(_ id: UInt32) {
        lockHolder[id] = nil
        guard var q = lockWaiters[id], !q.isEmpty else { return }
        let next = q.removeFirst()
        lockWaiters[id] = q.isEmpty ? nil : q
        lockHolder[id] = next.channel
        loop.reply(channel: next.channel, to: next.header, status: 0, payload: UnsafeRawBufferPointer(start: nil, count: 0))
    }

    /// Releases the locks of closed channels whose last I/O has completed.
    private func releaseDrained() {
        for (ch, ids) in draining where !inflight.contains(where: { $0?.channel == ch }) {
            draining[ch] = nil
            for id in ids where lockHolder[id] == ch { release(id) }
        }
    }
}
