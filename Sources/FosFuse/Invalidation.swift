import CFosFuse
import FosCore
import FosFSClient
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Keeps the kernel's caches of the mount true to what other clients do
/// (FSClient, the shim, another mount): every fs member is long-polled for
/// its change log (FOS_OP_FS_WATCH), and each change made by another
/// process to something the kernel holds becomes a FUSE notification — an
/// inode's attributes and changed pages dropped, a name dropped. Changes
/// made through this mount are the kernel's own and are skipped.
///
/// The notifications run on a thread of their own: the kernel may make one
/// wait for an inode lock held by a process that waits for an answer, and
/// answers come from the fos loop, which must never wait.
///
/// A member that restarts or whose log overflowed lost events: then every
/// inode the kernel holds is dropped (names expire with their timeout).
final class Invalidator: Sendable {
    let rt: FosRuntime
    let nodes: NodeTable
    let noCapabilities: NoCapabilities
    let ownPid = getpid()
    private let watched = Mutex<Set<MailboxAddress>>([])
    /// Whether every member is watched, so that open files may keep their pages.
    let active = Atomic<Bool>(false)
    private let queue = NotifyQueue()

    init(rt: FosRuntime, nodes: NodeTable, noCapabilities: NoCapabilities) {
        self.rt = rt
        self.nodes = nodes
        self.noCapabilities = noCapabilities
    }

    func start() {
        queue.start()
        rt.loop.spawn { await self.scan() }
    }

    /// Finds the members not watched yet (all at first; later a restarted
    /// one), every two seconds.
    private func scan() async {
        // Asked for the fleet's size, which tells when every member is watched.
        let sizer = try? await FSClient.connect(rt, timeout: .seconds(15))
        while true {
            let known = Array(watched.withLock { $0 })
            if let c = try? await FSClient.connect(rt, excluding: known, wait: .zero, timeout: .seconds(15)),
               let batch = try? await c.watch(after: 0, wait: .zero) {
                let addr = c.member
                if watched.withLock({ $0.insert(addr).inserted }) {
                    rt.loop.spawn { await self.poll(c, addr: addr, from: batch, fresh: known.isEmpty) }
                    continue
                }
                await c.close()
            }
            if let members = try? await sizer?.statfs().members {
                active.store(watched.withLock { $0.count } >= members, ordering: .relaxed)
            }
            try? await Task.sleep(for: .seconds(2))
        }
    }

    /// One member's log, until the member goes. Events from before the
    /// first poll are in no cache yet, unless this member replaced one.
    private func poll(_ c: FSClient, addr: MailboxAddress, from start: FSWatchBatch, fresh: Bool) async {
        if !fresh { dropAll() }
        var cursor = start.cursor
        let epoch = start.epoch
        while true {
            do {
                let b = try await c.watch(after: cursor, wait: .seconds(5))
                // FSClient moves to another member when its own goes: a
                // different log, where this cursor means nothing.
                guard c.member == addr, b.epoch == epoch else { break }
                if b.lost { dropAll() }
                cursor = b.cursor
                apply(b.events)
            } catch {
                break
            }
        }
        watched.withLock { _ = $0.remove(addr) }
        active.store(false, ordering: .relaxed)
        dropAll()
        await c.close()
    }

    private func apply(_ events: [FSEvent]) {
        for e in events where e.pid != ownPid {
            switch e {
            case .inode(let ino, let offset, let length, _):
                noCapabilities.remove(ino)
                guard nodes.known(ino) else { continue }
                if length == 0 {
                    queue.push(.inode(ino: ino, offset: -1, length: 0))
                } else if length == UInt64.max || offset > UInt64(Int64.max) || length > UInt64(Int64.max) {
                    queue.push(.inode(ino: ino, offset: 0, length: 0))
                } else {
                    queue.push(.inode(ino: ino, offset: Int64(offset), length: Int64(length)))
                }
            case .entry(let parent, let name, _):
                guard nodes.known(parent) else { continue }
                queue.push(.entry(parent: parent, name: name))
            }
        }
    }

    /// One inode's attributes and pages.
    func drop(_ ino: UInt64) { queue.push(.inode(ino: ino, offset: 0, length: 0)) }

    /// Every inode the kernel holds: attributes and pages.
    func dropAll() {
        for ino in nodes.all() { queue.push(.inode(ino: ino, offset: 0, length: 0)) }
    }
}

/// The notification thread and its queue.
final class NotifyQueue: Sendable {
    enum Item: Sendable {
        case inode(ino: UInt64, offset: Int64, length: Int64)
        case entry(parent: UInt64, name: String)
    }
    private let items = Mutex<[Item]>([])
    private let ready = DispatchSemaphore(value: 0)

    func push(_ i: Item) {
        items.withLock { $0.append(i) }
        ready.signal()
    }

    func start() {
        let t = Thread { [self] in
            while true {
                ready.wait()
                let batch = items.withLock { q -> [Item] in
                    defer { q.removeAll(keepingCapacity: true) }
                    return q
                }
                // -ENOENT: the kernel let go of it meanwhile; nothing to drop.
                for i in batch {
                    switch i {
                    case .inode(let ino, let off, let len): _ = fosfuse_notify_inval_inode(ino, off, len)
                    case .entry(let parent, let name):
                        _ = name.withCString { fosfuse_notify_inval_entry(parent, $0, strlen($0)) }
                    }
                }
            }
        }
        t.name = "fos-fuse-notify"
        t.start()
    }
}
