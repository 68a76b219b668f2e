// CRC-32C (Castagnoli) for the fos file system's on-disk checksums
// (superblock, inodes, journal commit records). A C target because the
// checksum runs over every journaled block and Swift debug builds are slow.
#ifndef FOS_CRC_H
#define FOS_CRC_H
#include <stddef.h>
#include <stdint.h>

/// Continues a CRC-32C: pass 0 to start; the result already has the final xor.
uint32_t fos_crc32c(uint32_t crc, const void *data, size_t length);

/// The table-driven implementation, whatever the CPU has (for tests: the
/// two must agree).
uint32_t fos_crc32c_portable(uint32_t crc, const void *data, size_t length);

/// The same, from 0, over a raw pointer (for inode records inside a block).
static inline uint32_t fos_crc32c_ptr(const void *data, size_t length) { return fos_crc32c(0, data, length); }

#endif
