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
}
