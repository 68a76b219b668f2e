import CFosWire
import FosCore
import FosFS

/// The blk server as the file system's disk: FosFS talks to a `BlockDevice`,
/// and this is the one that lives behind messages.
extension BlockClient: BlockDevice {
    public var blockSize: Int { BlockClient.blockSize }
    public var blockCount: UInt64 { blocks }
    public func writeOutliving(block: UInt64, data: [UInt8]) async throws { try await writeCached(block: block, data: data) }
}
