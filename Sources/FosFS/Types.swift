// The typed public vocabulary of FosFS: credentials, attributes, flags, errors,
// and the FIFO async lock that makes each operation atomic.
import Synchronization
import SystemPackage
#if canImport(Glibc)
import Glibc
#endif

/// Who is asking. Permission checks follow Linux: uid 0 bypasses read/write
/// checks and needs one x bit for execute on non-directories.
public struct Credentials: Sendable, Hashable {
    public var uid: UInt32
    public var gid: UInt32
    public var groups: [UInt32]
    /// The process asking, as the kernel attested it (0: unknown); only the
    /// server uses it (which process opened what, Openers.swift).
    public var pid: Int32
    public init(uid: UInt32, gid: UInt32, groups: [UInt32] = [], pid: Int32 = 0) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
        self.pid = pid
    }
    public static let root = Credentials(uid: 0, gid: 0)
    public var isRoot: Bool { uid == 0 }
    public func inGroup(_ g: UInt32) -> Bool { gid == g || groups.contains(g) }
}

/// Failures. Everything a POSIX caller should see is `.posix(errno)` with the
/// errno Linux would return.
public enum FSError: Error, Equatable, Sendable, CustomStringConvertible {
    case posix(Errno)
    /// The inode lives in an AG owned by another fleet member; send the
    /// operation there.
    case notHome(ino: UInt64, member: Int)
    /// The operation changes state of several members (thrown before any
    /// change): run it as a cross-member transaction (Cross.swift).
    case needsCoordination
    /// On-disk structures are inconsistent (run fsck).
    case corrupt(String)

    public var description: String {
        switch self {
        case .posix(let e): "\(e)"
        case .notHome(let ino, let m): "inode \(ino) is homed on member \(m)"
        case .needsCoordination: "the operation spans several fleet members"
        case .corrupt(let s): "corrupt file system: \(s)"
        }
    }
    static let ENOENT = FSError.posix(.noSuchFileOrDirectory)
    static let EEXIST = FSError.posix(.fileExists)
    static let ENOTDIR = FSError.posix(.notDirectory)
    static let EISDIR = FSError.posix(.isDirectory)
    static let ENOTEMPTY = FSError.posix(.directoryNotEmpty)
    static let EACCES = FSError.posix(.permissionDenied)
    static let EPERM = FSError.posix(.notPermitted)
    static let ENAMETOOLONG = FSError.posix(.fileNameTooLong)
    static let ELOOP = FSError.posix(.tooManySymbolicLinkLevels)
    static let EINVAL = FSError.posix(.invalidArgument)
    static let EMLINK = FSError.posix(.tooManyLinks)
    static let ENOSPC = FSError.posix(.noSpace)
    static let EFBIG = FSError.posix(.fileTooLarge)
    static let EBUSY = FSError.posix(.resourceBusy)
    static let ENODATA = FSError.posix(.noData)
    static let ERANGE = FSError.posix(.outOfRange)
    static let ENOTSUP = FSError.posix(.notSupported)
    static let ESTALE = FSError.posix(.staleNFSFileHandle)
    static let E2BIG = FSError.posix(.argListTooLong)
}

public enum FileType: Sendable, Equatable {
    case regular, directory, symlink, characterDevice, blockDevice, fifo, socket, unknown
    init(mode: UInt32) {
        switch mode & M.fmt {
        case M.reg: self = .regular
        case M.dir: self = .directory
        case M.lnk: self = .symlink
        case M.chr: self = .characterDevice
        case M.blk: self = .blockDevice
        case M.fifo: self = .fifo
        case M.sock: self = .socket
        default: self = .unknown
        }
    }
}

/// stat(2) fields. Times are nanoseconds since the epoch.
public struct FileAttributes: Sendable, Equatable {
    public var ino: UInt64
    public var mode: UInt32
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    /// 512-byte units, like st_blocks.
    public var blocks: UInt64
    public var blockSize: UInt32
    public var atime: Int64
    public var mtime: Int64
    public var ctime: Int64
    public var btime: Int64
    public var generation: UInt32
    public var type: FileType { FileType(mode: mode) }
}

/// A time for utimens.
public enum TimeSetting: Sendable, Equatable {
    case now
    case ns(Int64)
}

/// What the process removing a file's last name says about its own opens
/// (the shim knows them; see FosFSServer/Openers.swift): it holds no fos
/// file and gave none to a child (`holdsNone`), or it gave none to a child
/// (`sharedNone`: then its descriptors tell whether it holds this one, or
/// `held` does: the inodes it has open).
public struct Unlinker: Sendable, Equatable {
    public var pid: Int32
    public var holdsNone: Bool
    public var sharedNone: Bool
    public var held: Set<UInt64>?

    public init(pid: Int32, holdsNone: Bool = false, sharedNone: Bool = false, held: Set<UInt64>? = nil) {
        self.pid = pid
        self.holdsNone = holdsNone
        self.sharedNone = sharedNone || held != nil
        self.held = held
    }
}

/// What setattr changes (nil = leave alone): chmod, chown, truncate, utimens.
public struct AttributeChanges: Sendable, Equatable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeSetting?
    public var mtime: TimeSetting?
    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil,
                atime: TimeSetting? = nil, mtime: TimeSetting? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
    }
}

public struct DirectoryEntry: Sendable, Equatable {
    public var name: String
    public var ino: UInt64
    /// d_type (DT_REG = 8, DT_DIR = 4, DT_LNK = 10, ...).
    public var type: UInt8
    /// Pass this cookie to continue after this entry.
    public var nextCookie: UInt64
}

public struct FileSystemStats: Sendable, Equatable {
    public var blockSize: UInt32
    public var totalBlocks: UInt64
    public var freeBlocks: UInt64
    public var availableBlocks: UInt64
    public var totalInodes: UInt64
    public var freeInodes: UInt64
    public var nameMax: UInt32
    public var agCount: Int
}

/// open(2) flags with Linux values.
public struct OpenFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let readOnly = OpenFlags([])
    public static let writeOnly = OpenFlags(rawValue: 0o1)
    public static let readWrite = OpenFlags(rawValue: 0o2)
    public static let create = OpenFlags(rawValue: 0o100)
    public static let exclusive = OpenFlags(rawValue: 0o200)
    public static let truncate = OpenFlags(rawValue: 0o1000)
    public static let append = OpenFlags(rawValue: 0o2000)
    public static let directory = OpenFlags(rawValue: 0o200000)
    public static let noFollow = OpenFlags(rawValue: 0o400000)
    var accessMode: Int32 { rawValue & 3 }
    var wantsWrite: Bool { accessMode == 1 || accessMode == 2 }
    var wantsRead: Bool { accessMode == 0 || accessMode == 2 }
}

/// renameat2(2) flags with Linux values.
public struct RenameFlags: OptionSet, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let noReplace = RenameFlags(rawValue: 1)
    public static let exchange = RenameFlags(rawValue: 2)
}

/// setxattr(2) flags with Linux values.
public struct XattrFlags: OptionSet, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }
    public static let create = XattrFlags(rawValue: 1)
    public static let replace = XattrFlags(rawValue: 2)
}

public struct MkfsOptions: Sendable {
    /// Blocks per AG; nil = chosen from the disk size (128 MiB..1 GiB per AG,
    /// at least 4 AGs when the disk allows).
    public var agBlocks: Int?
    /// One inode per this many bytes of AG.
    public var bytesPerInode: Int = 16384
    /// Blocks per journal slot (there are 4); nil = disk/128, 64...16384.
    public var journalBlocks: Int?
    public var rootMode: UInt32 = 0o755
    public var rootUid: UInt32 = 0
    public var rootGid: UInt32 = 0
    public init(agBlocks: Int? = nil, bytesPerInode: Int = 16384, journalBlocks: Int? = nil) {
        self.agBlocks = agBlocks
        self.bytesPerInode = bytesPerInode
        self.journalBlocks = journalBlocks
    }
}

public struct MountOptions: Sendable {
    /// Buffer cache bound in 4 KiB blocks.
    public var cacheBlocks: Int = 8192
    /// Inodes kept in memory (dirty ones are never dropped).
    public var inodeCacheLimit: Int = 100_000
    /// Directory index entries kept in memory across all directories.
    public var directoryIndexLimit: Int = 1_000_000
    public init(cacheBlocks: Int = 8192) { self.cacheBlocks = cacheBlocks }
}

/// A FIFO lock for async code: waiters are resumed in arrival order, and the
/// lock is handed over directly so a newcomer cannot barge past a waiter.
public final class AsyncLock: Sendable {
    private struct State {
        var locked = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        var head = 0
    }
    private let state = Mutex(State())

    public init() {}

    public func lock() async {
        let acquired = state.withLock { s -> Bool in
            if !s.locked { s.locked = true; return true }
            return false
        }
        if acquired { return }
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if !s.locked { s.locked = true; return true }
                s.waiters.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// Takes the lock only if it is free and nobody waits for it.
    public func tryLock() -> Bool {
        state.withLock { s in
            guard !s.locked else { return false }
            s.locked = true
            return true
        }
    }

    public func unlock() {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if s.head < s.waiters.count {
                let c = s.waiters[s.head]
                s.head += 1
                if s.head > 64, s.head * 2 > s.waiters.count {
                    s.waiters.removeFirst(s.head)
                    s.head = 0
                }
                return c  // stays locked: ownership passes to the waiter
            }
            s.locked = false
            return nil
        }
        next?.resume()
    }
}

func nowNs() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
}

/// The inode number a create is to give its file: one set aside for the
/// caller's directory lease (`reserved`), or one the caller chose before
/// (a create replayed to a restarted member), taken only if free.
public struct WantedInode: Sendable, Equatable {
    public var number: UInt64
    public var reserved: Bool
    public init(number: UInt64, reserved: Bool) {
        self.number = number
        self.reserved = reserved
    }
}
