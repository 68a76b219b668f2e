import CFosSys
import CFosWire
import SystemPackage

#if canImport(Glibc)
import Glibc
#endif

/// Errors of the fos layer. System call failures are `Errno` (swift-system).
public enum FosError: Error, Equatable, Sendable, CustomStringConvertible {
    /// No fosd answers on the runtime directory.
    case noNode(runtimeDir: String)
    /// The other side answered with an errno.
    case remote(Errno)
    /// A call waited longer than its deadline.
    case timeout
    /// The peer closed the channel or died before answering.
    case peerGone
    /// A message broke the wire format.
    case badMessage(String)
    /// No member is registered under the name.
    case noSuchName(String)
    /// The socket in the runtime directory belongs to another user.
    case untrustedNode(runtimeDir: String, uid: UInt32)

    public var description: String {
        switch self {
        case .noNode(let dir):
            return "no fos node is running on \(dir) (start one with `fosd`, or set FOS_RUNTIME)"
        case .remote(let e): return "remote error: \(e)"
        case .timeout: return "timed out"
        case .peerGone: return "peer closed the channel"
        case .badMessage(let why): return "bad message: \(why)"
        case .noSuchName(let n): return "no member registered under \(n)"
        case .untrustedNode(let dir, let uid):
            return "the node on \(dir) runs as uid \(uid), neither root nor this user: not talking to it"
        }
    }
}

/// Turns a `-errno` convention result into a value or a thrown `Errno`.
@inline(__always)
@discardableResult
public func sys<T: SignedInteger>(_ r: T) throws -> T {
    if r < 0 { throw Errno(rawValue: CInt(truncatingIfNeeded: -r)) }
    return r
}

/// Closes a descriptor, ignoring EINTR as Linux requires (the fd is gone).
public func closeFD(_ fd: CInt) {
    if fd >= 0 { _ = Glibc.close(fd) }
}

public func monotonicNanos() -> UInt64 { fos_sys_now_ns() }

/// An unforgeable key: 128 random bits. Compared in constant time.
public struct Capability: Sendable, Hashable, CustomStringConvertible {
    public var bytes: (UInt64, UInt64)

    public static let none = Capability(bytes: (0, 0))

    public init(bytes: (UInt64, UInt64)) { self.bytes = bytes }

    public static func random() -> Capability {
        var v: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &v) { p in
            precondition(fos_sys_random(p.baseAddress, p.count) == 0, "getrandom failed")
        }
        return Capability(bytes: v)
    }

    /// From the 16 key bytes of a wire struct.
    public init(wire: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                       UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8)) {
        var v: (UInt64, UInt64) = (0, 0)
        withUnsafeBytes(of: wire) { src in
            withUnsafeMutableBytes(of: &v) { $0.copyMemory(from: src) }
        }
        bytes = v
    }

    public var wire: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                      UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) {
        var w: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
                UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        withUnsafeBytes(of: bytes) { src in
            withUnsafeMutableBytes(of: &w) { $0.copyMemory(from: src) }
        }
        return w
    }

    public var isNone: Bool { bytes.0 == 0 && bytes.1 == 0 }

    public static func == (a: Capability, b: Capability) -> Bool {
        var x = a.bytes, y = b.bytes
        return withUnsafeBytes(of: &x) { px in
            withUnsafeBytes(of: &y) { py in
                fos_sys_key_equal(
                    px.baseAddress!.assumingMemoryBound(to: UInt8.self),
                    py.baseAddress!.assumingMemoryBound(to: UInt8.self), 16) != 0
            }
        }
    }

    public func hash(into h: inout Hasher) {
        h.combine(bytes.0)
        h.combine(bytes.1)
    }

    /// Never print a key in full: logs are not a place for secrets.
    public var description: String { isNone ? "cap(none)" : "cap(\(String(bytes.0 >> 48, radix: 16))…)" }
}

/// A mailbox: (node, id). The same address works for local and remote
/// mailboxes; a remote one is reached through the node's proxy.
public struct MailboxAddress: Sendable, Hashable, CustomStringConvertible {
    public var node: UInt64
    public var mailbox: UInt64
    public init(node: UInt64, mailbox: UInt64) {
        self.node = node
        self.mailbox = mailbox
    }
    public init(_ w: fos_mailbox_addr) { self.init(node: w.node, mailbox: w.mailbox) }
    public var wire: fos_mailbox_addr { fos_mailbox_addr(node: node, mailbox: mailbox) }
    public var description: String { "\(String(node, radix: 16)):\(mailbox)" }
}

/// Where a node keeps its sockets and its persistent data.
public enum NodePaths {
    /// `FOS_RUNTIME`, else `$XDG_RUNTIME_DIR/fos`, else `/run/fos` for root,
    /// else `/tmp/fos-<uid>`.
    public static func defaultRuntime() -> String {
        if let r = env("FOS_RUNTIME"), !r.isEmpty { return r }
        if let x = env("XDG_RUNTIME_DIR"), !x.isEmpty { return x + "/fos" }
        if getuid() == 0 { return "/run/fos" }
        return "/tmp/fos-\(getuid())"
    }

    /// `FOS_STATE`, else `$XDG_DATA_HOME/fos`, else `/var/lib/fos` for root,
    /// else `~/.local/share/fos`.
    public static func defaultState() -> String {
        if let s = env("FOS_STATE"), !s.isEmpty { return s }
        if let x = env("XDG_DATA_HOME"), !x.isEmpty { return x + "/fos" }
        if getuid() == 0 { return "/var/lib/fos" }
        return (env("HOME") ?? "/tmp") + "/.local/share/fos"
    }

    public static func controlSocket(runtime: String) -> String { runtime + "/" + FOS_CTL_SOCKET }

    static func env(_ name: String) -> String? {
        guard let p = getenv(name) else { return nil }
        return String(cString: p)
    }
}

/// Reads a C fixed-size struct from untrusted bytes (copy first, then use).
/// Inlinable, so other modules get it specialized for their struct: a
/// generic call copied through the type's metadata (2% of an fs member's
/// time in an untar).
@inlinable @inline(__always)
public func loadStruct<T>(_ type: T.Type, from bytes: UnsafeRawBufferPointer, at offset: Int = 0) -> T? {
    guard offset >= 0, bytes.count - offset >= MemoryLayout<T>.size else { return nil }
    return bytes.loadUnaligned(fromByteOffset: offset, as: T.self)
}

@inlinable @inline(__always)
public func appendStruct<T>(_ value: T, to out: inout [UInt8]) {
    withUnsafeBytes(of: value) { out.append(contentsOf: $0) }
}

/// Name syntax check shared with the C side.
public func validateName(_ name: String) -> Bool {
    var n = name
    return n.withUTF8 { u in
        u.withMemoryRebound(to: CChar.self) { fos_name_validate($0.baseAddress, $0.count) == 0 }
    }
}
