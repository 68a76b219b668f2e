// swift-tools-version: 6.1
import PackageDescription

// swiftc links every product with the Swift runtime: a start-up object
// (swiftrt.o) and -lswiftCore. The shim must load into any program with
// nothing but libc, so its product drops both: -nostartfiles drops the
// object, and -static-stdlib with a resource directory whose
// static-stdlib-args.lnk is empty (Shim/link) adds no library at all.
let shimLinkFlags = ["-nostartfiles", "-static-stdlib", "-resource-dir", Context.packageDirectory + "/Shim/link/swift"]

// The message loop and the file system's servers without the runtime's
// exclusivity checks in release builds: every access to a class's stored
// property began and ended a tracked access (swift_beginAccess and its
// AccessSet), about 6% of an fs member's time in an untar, and turning them off
// made the member 8% faster (a program making tar's calls for 600 files:
// 49.5-50.7 -> 45.3-46.6 µs a file, A/B twice). Debug builds, which the tests run, keep
// them, so a violation still fails there.
let releaseWithoutExclusivityChecks: [SwiftSetting] = [
    .unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release)),
]

let package = Package(
    name: "fos",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "FosCore", targets: ["FosCore"]),
        .executable(name: "fosd", targets: ["Fosd"]),
        .executable(name: "fosctl", targets: ["FosCtl"]),
        .executable(name: "fos-name", targets: ["FosNameServer"]),
        .executable(name: "fos-echo", targets: ["FosEcho"]),
        .executable(name: "fos-bench", targets: ["FosBench"]),
        .executable(name: "fos-blk", targets: ["FosBlockServer"]),
        .executable(name: "fos-fs", targets: ["FosFSServer"]),
        .library(name: "FosFSClient", targets: ["FosFSClient"]),
        .executable(name: "fos-spawn", targets: ["FosSpawnServer"]),
        .library(name: "fosshim", type: .dynamic, targets: ["FosShim"]),
        .executable(name: "fos-run", targets: ["FosRun"]),
        .executable(name: "fos-fuse", targets: ["FosFuse"]),
        .executable(name: "fos-exec", targets: ["FosExec"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        // The wire format and the shared-memory ring: one C header set, also used by Shim/.
        .target(name: "CFosWire"),
        // Syscall edges Swift cannot express (SCM_RIGHTS, futex, fork+exec with pinning).
        .target(name: "CFosSys"),
        .target(
            name: "FosCore",
            dependencies: [
                "CFosWire", "CFosSys",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: releaseWithoutExclusivityChecks
        ),
        .executableTarget(
            name: "Fosd",
            dependencies: ["FosCore", "FosBlock", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "FosCtl",
            dependencies: ["FosCore", "FosFS", "FosBlock", "FosFSClient", "FosMounts",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // io_uring behind prefixed names; liburing's headers stay in this target.
        .target(name: "CFosUring", linkerSettings: [.linkedLibrary("uring")]),
        // The block device server (io_uring) and its client.
        .target(name: "FosBlock", dependencies: ["FosCore", "FosFS", "CFosUring", "CFosWire", "CFosSys"]),
        .executableTarget(name: "FosBlockServer", dependencies: ["FosBlock", "FosCore"]),
        .executableTarget(name: "FosNameServer", dependencies: ["FosCore"]),
        .executableTarget(name: "FosEcho", dependencies: ["FosCore"]),
        .executableTarget(
            name: "FosBench",
            dependencies: ["FosCore", "FosBlock", "FosFS", "FosFSClient", "FosMounts", "CFosFuseReference",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The fuse bench's reference: a FUSE daemon that keeps everything in
        // memory (libfuse's headers stay inside it, as in CFosFuse).
        .target(name: "CFosFuseReference", linkerSettings: [.linkedLibrary("fuse3")]),
        .testTarget(name: "FosCoreTests", dependencies: ["FosCore", "CFosWire"]),
        .testTarget(name: "IntegrationTests", dependencies: ["FosCore", "CFosWire", "CFosSys", "FosFS", "FosFSClient", "FosBlock", "FosMounts"]),
        // CRC-32C for the file system's on-disk checksums.
        .target(name: "CFosCRC"),
        // The fos file system: format, buffer cache, journal, POSIX operations (no processes).
        // FosFS and the fs server run nonisolated async code on the caller's
        // executor (nonisolated(nonsending)): on the fs member's event loop
        // every call into a nonisolated async function would otherwise be a
        // hop through the loop's job queue (~0.7 µs each, several per operation).
        .target(name: "FosFS", dependencies: ["CFosCRC", "CFosSys", .product(name: "SystemPackage", package: "swift-system")],
                swiftSettings: [.enableUpcomingFeature("NonisolatedNonsendingByDefault")] + releaseWithoutExclusivityChecks),
        .testTarget(name: "FosFSTests", dependencies: ["FosFS"]),
        // The fs fleet (/sys/fs): FosFS behind messages, its client, and its server.
        .target(name: "FosFSClient", dependencies: ["FosCore", "FosFS", "CFosWire"],
                swiftSettings: releaseWithoutExclusivityChecks),
        .executableTarget(name: "FosFSServer", dependencies: ["FosFSClient", "FosFS", "FosBlock", "FosCore", "CFosWire", "CFosSys"],
                          swiftSettings: [.enableUpcomingFeature("NonisolatedNonsendingByDefault")] + releaseWithoutExclusivityChecks),
        // The spawn service (/sys/spawn): starts programs as their callers.
        .executableTarget(name: "FosSpawnServer", dependencies: ["FosCore", "CFosWire", "CFosSys",
                                                                 .product(name: "SystemPackage", package: "swift-system")]),
        // The shim (libfosshim.so): C11, no Swift runtime inside, only the
        // libc wrappers exported. It shares the wire headers of CFosWire.
        .target(
            name: "FosShim",
            path: "Shim",
            exclude: ["tests", "link"],
            sources: ["src"],
            publicHeadersPath: "include",
            cSettings: [
                .headerSearchPath("../Sources/CFosWire/include"),
                .unsafeFlags(["-std=c11", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"]),
            ],
            linkerSettings: [.unsafeFlags(shimLinkFlags)]
        ),
        // fos-exec: the stand-in the shim execs for a program stored under
        // the prefix (C, libc only, linked as the shim is).
        .executableTarget(
            name: "FosExec",
            path: "Shim/exec",
            cSettings: [.headerSearchPath("../include"), .unsafeFlags(["-std=c11", "-Wall", "-Wextra"])],
            linkerSettings: [.unsafeFlags(shimLinkFlags)]
        ),
        // fos-run: runs a program with the shim preloaded. It starts before
        // every program run on fos, so it is one static executable, libc
        // included: with the Swift libraries alone linked in (-static-stdlib)
        // the loader still took 1.7 ms to map and bind libstdc++, libm and
        // libc (2.5 ms for --help against 0.8 now). The linker's warning
        // about dlopen is the Swift runtime's optional prespecializations
        // library, which fos-run does without.
        .executableTarget(name: "FosRun", dependencies: ["FosCore", "CFosWire"],
                          linkerSettings: [.unsafeFlags(["-static-executable"])]),
        // The FUSE mount (fosctl mount): libfuse 3 behind prefixed names in a C
        // target of its own (its headers and liburing's clash as Clang modules
        // of one Swift module: never import CFosFuse next to CFosUring).
        .target(name: "CFosFuse", linkerSettings: [.linkedLibrary("fuse3")]),
        // Where fos mounts are recorded (daemon pid per mount point), for fos-fuse and fosctl.
        .target(name: "FosMounts"),
        .executableTarget(name: "FosFuse", dependencies: ["CFosFuse", "CFosSys", "FosFSClient", "FosFS", "FosCore", "FosMounts"],
                         swiftSettings: releaseWithoutExclusivityChecks),
    ]
)
