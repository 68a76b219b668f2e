import CFosFuse
import FosCore
import FosFS
import FosFSClient

#if canImport(Glibc)
import Glibc
#endif

/// readdir and readdirplus. The kernel's offset is the fleet's cookie: the
/// one that continues after the last entry it got, so telldir/seekdir and
/// a directory read across changes behave as on the fleet (stable cookies).
extension Daemon {
    func readdir(_ r: Req, ino: UInt64, size: Int, offset: Int64, plus: Bool) {
        serve(r) { r in
            // Roughly what fits: a plain entry takes 24 bytes + name, one with
            // attributes 152 + name.
            let guess = max(1, min(1024, size / (plus ? 176 : 40)))
            let entries = try await self.fs.readdir(ino: ino, cookie: UInt64(bitPattern: offset), max: guess)
            let attrs = plus ? try await self.attributes(of: entries) : []
            var buf = [CChar](repeating: 0, count: size)
            var used = 0
            var counted: [UInt64] = []
            buf.withUnsafeMutableBufferPointer { b in
                for (i, e) in entries.enumerated() {
                    if Orphans.hides(parent: ino, name: e.name) { continue }
                    let left = size - used
                    let at = b.baseAddress! + used
                    let off = Int64(bitPattern: e.nextCookie)
                    let need: Int
                    if plus {
                        var x = fosfuse_entry()
                        if let a = attrs[i] {
                            x = self.entry(a)
                        } else {
                            // "." and "..", or gone meanwhile: a name without attributes.
                            x.attr.ino = e.ino
                            x.attr.mode = UInt32(e.type) << 12
                        }
                        need = fosfuse_add_direntry_plus(r.raw, at, left, e.name, &x, off)
                        if need <= left && x.ino != 0 {
                            self.nodes.looked(x.ino)
                            counted.append(x.ino)
                        }
                    } else {
                        need = fosfuse_add_direntry(r.raw, at, left, e.name, e.ino, UInt32(e.type) << 12, off)
                    }
                    if need > left { break }
                    used += need
                }
                if fosfuse_reply_buf(r.raw, b.baseAddress, used) != 0 {
                    for ino in counted { self.nodes.forget(ino, 1) }
                }
            }
        }
    }

    /// The attributes of each entry but "." and "..", fetched in parallel;
    /// nil for those and for entries removed since the listing.
    private func attributes(of entries: [DirectoryEntry]) async throws -> [FileAttributes?] {
        let fs = self.fs
        return try await inParallel(entries.count) { i -> FileAttributes? in
            let e = entries[i]
            guard e.name != ".", e.name != ".." else { return nil }
            do {
                return try await fs.getattr(ino: e.ino)
            } catch FosError.remote(let x) where x == .noSuchFileOrDirectory || x == .staleNFSFileHandle {
                return nil
            }
        }
    }
}
