import CFosWire
import FosCore
import SystemPackage

/// Typed client stub of the blk server. Small I/O travels inline in messages;
/// `attach` gives a region for zero-copy I/O of up to 1 MiB per request.
public final class BlockClient: Sendable {
    public let runtime: FosRuntime
    public let channel: Channel
    public let blocks: UInt64
    public let queueDepth: Int
    public let maxRegionBlocks: UInt32
    public let timeout: Duration

    public static let blockSize = Int(FOS_BLK_BLOCK)
    static let inlineBlocks = Int((FOS_MAX_PAYLOAD - UInt32(MemoryLayout<fos_blk_io>.size)) / FOS_BLK_BLOCK)

    /// Connects to the blk server registered under `name`.
    public static func connect(_ rt: FosRuntime, name: String = "/sys/blk/0", timeout: Duration = .seconds(30)) async throws -> BlockClient {
        let e = try await rt.lookup(name)
        let ch = try await rt.connect(e.addr, key: e.key)
        let r = try await rt.call(ch, opcode: UInt16(FOS_OP_BLK_INFO), timeout: .seconds(5)).checked()
        guard let info = r.withUnsafeBytes({ loadStruct(fos_blk_info.self, from: $0) }), info.block_size == FOS_BLK_BLOCK else {
            throw FosError.badMessage("bad BLK_INFO reply")
        }
        return BlockClient(runtime: rt, channel: ch, blocks: info.blocks, queueDepth: Int(info.queue_depth),
                           maxRegionBlocks: info.max_blocks, timeout: timeout)
    }

    init(runtime: FosRuntime, channel: Channel, blocks: UInt64, queueDepth: Int, maxRegionBlocks: UInt32, timeout: Duration) {
        self.runtime = runtime
        self.channel = channel
        self.blocks = blocks
        self.queueDepth = queueDepth
        self.maxRegionBlocks = maxRegionBlocks
        self.timeout = timeout
    }

    private func request(_ op: UInt32, block: UInt64, count: Int, slot: UInt32 = FOS_BLK_INLINE, offset: UInt64 = 0,
                         data: [UInt8] = []) async throws -> [UInt8] {
        var p = [UInt8]()
        p.reserveCapacity(MemoryLayout<fos_blk_io>.size + data.count)
        appendStruct(fos_blk_io(block: block, count: UInt32(count), slot: slot, offset: offset), to: &p)
        p += data
        return try await runtime.call(channel, opcode: UInt16(op), payload: p, timeout: timeout).checked()
    }

    /// Reads `count` blocks (chunks of one message each, issued together).
    public func read(block: UInt64, count: Int) async throws -> [UInt8] {
        try await read(FOS_OP_BLK_READ, block: block, count: count)
    }

    /// Reads `count` blocks through the server's page cache, which keeps
    /// them (FOS_OP_BLK_READ_CACHED).
    public func readCached(block: UInt64, count: Int) async throws -> [UInt8] {
        try await read(FOS_OP_BLK_READ_CACHED, block: block, count: count)
    }

    private func read(_ op: UInt32, block: UInt64, count: Int) async throws -> [UInt8] {
        guard count > 0 else { return [] }
        let chunks = stride(from: 0, to: count, by: BlockClient.inlineBlocks).map { ($0, min(BlockClient.inlineBlocks, count - $0)) }
        if chunks.count == 1 { return try await request(op, block: block, count: count) }
        var out = [UInt8](repeating: 0, count: count * BlockClient.blockSize)
        try await withThrowingTaskGroup(of: (Int, [UInt8]).self) { g in
            for (start, n) in chunks {
                g.addTask { (start, try await self.request(op, block: block + UInt64(start), count: n)) }
            }
            for try await (start, bytes) in g {
                out.replaceSubrange(start * BlockClient.blockSize..<(start * BlockClient.blockSize + bytes.count), with: bytes)
            }
        }
        return out
    }

    /// Writes whole blocks.
    public func write(block: UInt64, data: [UInt8]) async throws {
        guard !data.isEmpty else { return }
        guard data.count % BlockClient.blockSize == 0 else { throw FosError.remote(.invalidArgument) }
        let count = data.count / BlockClient.blockSize
        try await withThrowingTaskGroup(of: Void.self) { g in
            for start in stride(from: 0, to: count, by: BlockClient.inlineBlocks) {
                let n = min(BlockClient.inlineBlocks, count - start)
                let slice = Array(data[start * BlockClient.blockSize..<(start + n) * BlockClient.blockSize])
                g.addTask { _ = try await self.request(FOS_OP_BLK_WRITE, block: block + UInt64(start), count: n, data: slice) }
            }
            try await g.waitForAll()
        }
    }

    /// Writes whole blocks through the server's page cache: they outlive
    /// the death of this process (and the server's) once this returns, and
    /// become durable at the next `flush`. At most one message of blocks.
    public func writeCached(block: UInt64, data: [UInt8]) async throws {
        guard !data.isEmpty else { return }
        guard data.count % BlockClient.blockSize == 0 else { throw FosError.remote(.invalidArgument) }
        let count = data.count / BlockClient.blockSize
        guard count <= BlockClient.inlineBlocks else {
            // Larger than a message: in pieces, each one cached.
            for start in stride(from: 0, to: count, by: BlockClient.inlineBlocks) {
                let n = min(BlockClient.inlineBlocks, count - start)
                try await writeCached(block: block + UInt64(start),
                                      data: Array(data[start * BlockClient.blockSize..<(start + n) * BlockClient.blockSize]))
            }
            return
        }
        _ = try await request(FOS_OP_BLK_WRITE_CACHED, block: block, count: count, data: data)
    }

    /// Every completed write is durable when this returns.
    public func flush() async throws {
        _ = try await runtime.call(channel, opcode: UInt16(FOS_OP_BLK_FLUSH), timeout: timeout).checked()
    }

    public func discard(block: UInt64, count: Int) async throws {
        _ = try await request(FOS_OP_BLK_DISCARD, block: block, count: count)
    }

    // MARK: Disk locks

    /// Takes disk lock `id` (0..<FOS_BLK_LOCKS), waiting up to `wait` for
    /// it (`nil`: only if free now). False if it was not granted in time.
    /// The lock is this client's channel's until `unlock` or until the
    /// channel closes.
    public func lock(_ id: UInt32, wait: Duration? = .seconds(60)) async throws -> Bool {
        var p = [UInt8]()
        appendStruct(fos_blk_lock(id: id, flags: wait == nil ? FOS_BLK_LOCK_TRY : 0), to: &p)
        do {
            _ = try await runtime.call(channel, opcode: UInt16(FOS_OP_BLK_LOCK), payload: p,
                                       timeout: wait ?? timeout).checked()
            return true
        } catch FosError.remote(let e) where e == .resourceTemporarilyUnavailable {
            return false
        } catch FosError.timeout {
            // Withdraw the request; if it was granted meanwhile, this gives it back.
            try? await unlock(id)
            return false
        }
    }

    public func unlock(_ id: UInt32) async throws {
        var p = [UInt8]()
        appendStruct(fos_blk_lock(id: id, flags: 0), to: &p)
        _ = try await runtime.call(channel, opcode: UInt16(FOS_OP_BLK_UNLOCK), payload: p, timeout: timeout).checked()
    }

    // MARK: Zero-copy

    /// A region shared with the server for I/O without copies.
    public func attach(bytes: Int, slot: UInt32 = 0) throws -> Region {
        try runtime.attach(channel, bytes: bytes, slot: slot)
    }

    /// Reads into `region` at `offset` (4 KiB aligned; at most 1 MiB).
    public func read(block: UInt64, count: Int, into region: Region, offset: Int) async throws {
        _ = try await request(FOS_OP_BLK_READ, block: block, count: count, slot: region.slot, offset: UInt64(offset))
    }

    /// Writes from `region` at `offset`.
    public func write(block: UInt64, count: Int, from region: Region, offset: Int) async throws {
        _ = try await request(FOS_OP_BLK_WRITE, block: block, count: count, slot: region.slot, offset: UInt64(offset))
    }
}
