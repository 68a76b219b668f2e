import CFosFuse
import FosFSClient

#if canImport(Glibc)
import Glibc
#endif

/// The entry points libfuse calls on the loop (fos_fuse.h). Each one copies its
/// arguments out of the receive buffer and hands the request to the daemon.
/// Names must be UTF-8 (the fleet's names are): others get EINVAL, never a
/// silently different name.
private func daemon(_ ud: UnsafeMutableRawPointer?) -> Daemon { Unmanaged<Daemon>.fromOpaque(ud!).takeUnretainedValue() }

private func name(_ p: UnsafePointer<CChar>?) -> String? { p.flatMap { String(validatingCString: $0) } }

private func withName(_ r: fosfuse_req?, _ p: UnsafePointer<CChar>?, _ f: (Req, String) -> Void) {
    guard let r else { return }
    guard let n = name(p) else { return _ = fosfuse_reply_err(r, EINVAL) }
    f(Req(raw: r), n)
}

func makeOps() -> fosfuse_ops {
    var o = fosfuse_ops()
    o.`init` = { ud, conn in if let c = conn?.pointee { daemon(ud).onInit(c) } }
    o.lookup = { ud, r, parent, n in withName(r, n) { daemon(ud).lookup($0, parent: parent, name: $1) } }
    o.forget = { ud, ino, n in
        let d = daemon(ud)
        if d.nodes.forget(ino, n) { d.noCapabilities.remove(ino) }
    }
    o.getattr = { ud, r, ino in daemon(ud).getattr(Req(raw: r!), ino: ino) }
    o.setattr = { ud, r, ino, s in daemon(ud).setattr(Req(raw: r!), ino: ino, s!.pointee) }
    o.readlink = { ud, r, ino in daemon(ud).readlink(Req(raw: r!), ino: ino) }
    o.mknod = { ud, r, parent, n, mode, rdev in
        withName(r, n) { daemon(ud).mknod($0, parent: parent, name: $1, mode: mode, rdev: rdev) }
    }
    o.mkdir = { ud, r, parent, n, mode in withName(r, n) { daemon(ud).mkdir($0, parent: parent, name: $1, mode: mode) } }
    o.unlink = { ud, r, parent, n in withName(r, n) { daemon(ud).unlink($0, parent: parent, name: $1) } }
    o.rmdir = { ud, r, parent, n in withName(r, n) { daemon(ud).rmdir($0, parent: parent, name: $1) } }
    o.symlink = { ud, r, target, parent, n in
        guard let t = name(target) else { return _ = fosfuse_reply_err(r, EINVAL) }
        withName(r, n) { daemon(ud).symlink($0, target: t, parent: parent, name: $1) }
    }
    o.rename = { ud, r, parent, n, newParent, newName, flags in
        guard let nn = name(newName) else { return _ = fosfuse_reply_err(r, EINVAL) }
        withName(r, n) { daemon(ud).rename($0, parent: parent, name: $1, newParent: newParent, newName: nn, flags: flags) }
    }
    o.link = { ud, r, ino, newParent, n in withName(r, n) { daemon(ud).link($0, ino: ino, newParent: newParent, name: $1) } }
    o.open = { ud, r, ino, flags in daemon(ud).openFile(Req(raw: r!), ino: ino, flags: flags) }
    o.create = { ud, r, parent, n, mode, flags in
        withName(r, n) { daemon(ud).create($0, parent: parent, name: $1, mode: mode, flags: flags) }
    }
    o.read = { ud, r, ino, size, off, _ in daemon(ud).read(Req(raw: r!), ino: ino, size: size, offset: off) }
    o.write = { ud, r, ino, buf, size, off, _, flags in
        // Copied in message-sized chunks: the receive buffer is reused.
        let step = FSClient.maxIO
        var chunks: [[UInt8]] = []
        chunks.reserveCapacity((size + step - 1) / step)
        var at = 0
        repeat {
            let n = min(step, size - at)
            chunks.append(n == 0 ? [] : Array(UnsafeRawBufferPointer(start: buf! + at, count: n)))
            at += n
        } while at < size
        daemon(ud).write(Req(raw: r!), ino: ino, data: chunks, offset: off, flags: flags)
    }
    o.flush = { ud, r, ino, _, owner in daemon(ud).flush(Req(raw: r!), ino: ino, owner: owner) }
    o.release = { ud, r, ino, fh, _, owner, flockRelease in
        daemon(ud).release(Req(raw: r!), fh: fh, ino: ino, owner: owner, flockRelease: flockRelease != 0)
    }
    o.fsync = { ud, r, ino, datasync in daemon(ud).fsync(Req(raw: r!), ino: ino, dataOnly: datasync != 0) }
    o.readdir = { ud, r, ino, size, off, plus in
        daemon(ud).readdir(Req(raw: r!), ino: ino, size: size, offset: off, plus: plus != 0)
    }
    o.statfs = { ud, r, _ in daemon(ud).statfs(Req(raw: r!)) }
    o.setxattr = { ud, r, ino, n, value, size, flags in
        let v = size == 0 ? [] : Array(UnsafeRawBufferPointer(start: value, count: size))
        withName(r, n) { daemon(ud).setxattr($0, ino: ino, name: $1, value: v, flags: flags) }
    }
    o.getxattr = { ud, r, ino, n, size in withName(r, n) { daemon(ud).getxattr($0, ino: ino, name: $1, size: size) } }
    o.listxattr = { ud, r, ino, size in daemon(ud).listxattr(Req(raw: r!), ino: ino, size: size) }
    o.removexattr = { ud, r, ino, n in withName(r, n) { daemon(ud).removexattr($0, ino: ino, name: $1) } }
    o.getlk = { ud, r, ino, owner, l in daemon(ud).getlk(Req(raw: r!), ino: ino, owner: owner, l!.pointee) }
    o.setlk = { ud, r, ino, owner, l, sleep in
        daemon(ud).setlk(Req(raw: r!), ino: ino, owner: owner, l!.pointee, wait: sleep != 0)
    }
    o.flock = { ud, r, ino, owner, op in daemon(ud).flock(Req(raw: r!), ino: ino, owner: owner, op: op) }
    o.interrupted = { ud, token in daemon(ud).waits.interrupt(token) }
    return o
}
