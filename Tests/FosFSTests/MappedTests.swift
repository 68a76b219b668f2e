import FosFS
import Synchronization
import SystemPackage
import Testing

/// The hooks shared mappings rest on (Mapped.swift): every change of file
/// data or size is told inside its operation; a write-back is not echoed,
/// is cut to the file's size and never lands on another file.
@Suite struct MappedTests {
    final class Recorder: DataObserver {
        enum Event: Equatable {
            case wrote(UInt64, UInt64, [UInt8], UInt64)
            case resized(UInt64, UInt64)
            case freed(UInt64)
        }
        let events = Mutex<[Event]>([])
        func wrote(ino: UInt64, at offset: UInt64, _ bytes: ArraySlice<UInt8>, size: UInt64) {
            events.withLock { $0.append(.wrote(ino, offset, Array(bytes), size)) }
        }
        func resized(ino: UInt64, to size: UInt64) { events.withLock { $0.append(.resized(ino, size)) } }
        func freed(ino: UInt64) { events.withLock { $0.append(.freed(ino)) } }
        func take() -> [Event] { events.withLock { e in defer { e.removeAll() }; return e } }
    }

    @Test func everyChangeIsToldAndWriteBackIsNotEchoed() async throws {
        let (dev, fs) = try await makeFS()
        let rec = Recorder()
        fs.dataObserver = rec
        let f = try await fs.create(parent: rootIno, name: "m", mode: 0o644, cred: root)
        _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(5000, seed: 1))
        _ = try await fs.append(ino: f.ino, data: [1, 2, 3])
        _ = try await fs.setattr(ino: f.ino, AttributeChanges(size: 100), cred: root)
        _ = try await fs.setattr(ino: f.ino, AttributeChanges(size: 100), cred: root)  // no change
        _ = try await fs.open(path: "/m", flags: [.readWrite, .truncate], cred: root)
        #expect(rec.take() == [.wrote(f.ino, 0, pattern(5000, seed: 1), 5000), .wrote(f.ino, 5000, [1, 2, 3], 5003),
                               .resized(f.ino, 100), .resized(f.ino, 0)])

        // The content and generation, read inside one operation; too large: EFBIG.
        _ = try await fs.write(ino: f.ino, offset: 0, data: pattern(9000, seed: 2))
        _ = rec.take()
        let (content, gen) = try await fs.withContent(ino: f.ino, limit: 1 << 20) { ($0, $1) }
        #expect(content == pattern(9000, seed: 2))
        await expectErrno(.fileTooLarge) { _ = try await fs.withContent(ino: f.ino, limit: 8999) { c, _ in c } }

        // Written back: not echoed, cut at the file's end, reported as written.
        var wrote: [(UInt64, Int)] = []
        try await fs.writeBack(ino: f.ino, generation: gen, { [(UInt64(8000), [UInt8](repeating: 7, count: 2000))] },
                               wrote: { wrote.append(($0, $1.count)) })
        #expect(rec.take().isEmpty)
        #expect(wrote.count == 1 && wrote[0] == (8000, 1000))
        #expect(try await fs.getattr(ino: f.ino).size == 9000)
        #expect(try await fs.read(ino: f.ino, offset: 7999, count: 2000) == [pattern(9000, seed: 2)[7999]] + [UInt8](repeating: 7, count: 1000))
        // Another generation (the number freed and used again): nothing written.
        try await fs.writeBack(ino: f.ino, generation: gen &+ 1, { [(UInt64(0), [UInt8]([9, 9]))] }, wrote: { _, _ in })
        #expect(try await fs.read(ino: f.ino, offset: 0, count: 2) == Array(pattern(9000, seed: 2).prefix(2)))
        // A write-back past the end writes nothing and does not grow the file.
        try await fs.writeBack(ino: f.ino, generation: gen, { [(UInt64(9000), [UInt8]([1]))] }, wrote: { _, _ in })
        #expect(try await fs.getattr(ino: f.ino).size == 9000)
        // Freed: told.
        try await fs.unlink(parent: rootIno, name: "m", cred: root)
        #expect(rec.take() == [.freed(f.ino)])
        try await fs.unmount()
        try await fsckClean(dev)
    }
}
