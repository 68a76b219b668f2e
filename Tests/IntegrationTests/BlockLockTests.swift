import CFosWire
import FosBlock
import FosCore
import Testing

/// Disk locks of the blk server (what the fs fleet's cross-member
/// transactions stand on): FIFO grants, try-locks, cancellation after a
/// client-side timeout, release when the holder's channel closes, and
/// malformed requests answered with EINVAL.
@Suite("blk disk locks")
struct BlockLockTests {
    // Ids the fs fleet does not use (it takes 0...3 and FOS_BLK_LOCKS-1).
    static let id: UInt32 = 10

    @Test("grant, try, timeout, hand-over, release on close, bad requests")
    func locks() async throws {
        try await TestNode.with(members: 1) { node in
            let rt = try node.runtime()
            let a = try await BlockClient.connect(rt)
            let b = try await BlockClient.connect(rt)
            #expect(try await a.lock(Self.id))
            #expect(try await !b.lock(Self.id, wait: nil), "held: a try-lock fails at once")
            #expect(try await !b.lock(Self.id, wait: .milliseconds(100)), "held: a timed lock gives up")
            #expect(await remoteErrnoOf { _ = try await a.lock(Self.id) } == EDEADLK)
            #expect(await remoteErrnoOf { try await b.unlock(Self.id) } == EPERM)

            // A waiter gets the lock when the holder unlocks.
            let waiter = Task { try await b.lock(Self.id, wait: .seconds(5)) }
            try await Task.sleep(for: .milliseconds(50))
            try await a.unlock(Self.id)
            #expect(try await waiter.value)

            // ... and when the holder's channel closes.
            let waiterA = Task { try await a.lock(Self.id, wait: .seconds(5)) }
            try await Task.sleep(for: .milliseconds(50))
            try await rt.close(b.channel)
            #expect(try await waiterA.value)

            // Malformed requests.
            func raw(_ op: UInt32, _ payload: [UInt8]) async -> Int32 {
                (try? await rt.call(a.channel, opcode: UInt16(op), payload: payload, timeout: .seconds(5)).status) ?? -1
            }
            #expect(await raw(FOS_OP_BLK_LOCK, [1, 2, 3]) == EINVAL)
            #expect(await raw(FOS_OP_BLK_LOCK, u32(FOS_BLK_LOCKS) + u32(0)) == EINVAL)
            #expect(await raw(FOS_OP_BLK_LOCK, u32(11) + u32(0x80)) == EINVAL)
            #expect(await raw(FOS_OP_BLK_UNLOCK, u32(11) + u32(FOS_BLK_LOCK_TRY)) == EINVAL)
            #expect(await raw(FOS_OP_BLK_UNLOCK, u32(11) + u32(0)) == EPERM)
            // The server still serves.
            #expect(try await a.lock(11, wait: nil))
        }
    }
}

func remoteErrnoOf(_ body: () async throws -> Void) async -> Int32? {
    do {
        try await body()
        return nil
    } catch {
        return remoteErrno(error)
    }
}
