#!/usr/bin/env python3
"""Build (or reuse from the cache) the e2e guest: a stock Debian kernel, a pruned module tree and a
busybox initramfs that mounts the host's userland over 9p.

    e2e/prepare.py [--cache DIR] [--kernel-package linux-image-X.Y.Z-N-amd64]

Output, under the cache (default `<checkout>/.e2e-cache`, git-ignored; `E2E_CACHE` overrides):

    debs/<package>_<version>_amd64.deb    the kernel package (kept: it pins the kernel)
    guest/<kver>/vmlinuz                  the kernel
    guest/<kver>/modules/<kver>/...       pruned modules + depmod output (9p-mounted in the guest)
    guest/<kver>/initrd-<hash>.cpio.gz    stage 1: static busybox, 9p/overlay modules, guest/init

The kernel package is pinned (`DEFAULT_KERNEL_PACKAGE`); `E2E_KERNEL_PACKAGE` or
`--kernel-package` pick another one, and `--kernel-package=current` takes whatever Debian's
`linux-image-amd64` depends on today. If the pinned package has left the archive (old ABIs do),
prepare falls back to the current one and says so.

Stdlib only. Needs: apt-get, dpkg, depmod/modprobe (kmod), cpio, gzip, busybox-static.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_CACHE = os.path.join(REPO, ".e2e-cache")

# The kernel the lab was validated with (Debian 12, 6.1.192-2). Moving it is a deliberate change.
DEFAULT_KERNEL_PACKAGE = "linux-image-6.1.0-56-amd64"

# Module subtrees the guest needs: networking (OVS datapath, tunnels, XFRM/ESP, bridge, veth),
# crypto (AEAD), virtio + 9p + overlayfs for the root. ~50 MB instead of ~390 MB.
KEEP_TREES = (
    "kernel/net",
    "kernel/crypto",
    "kernel/lib",
    "kernel/arch/x86/crypto",
    "kernel/drivers/virtio",
    "kernel/drivers/net/vxlan",  # vxlan.ko is here, not in drivers/net/
    "kernel/fs/9p",
    "kernel/fs/overlayfs",
    "kernel/fs/netfs",
    "kernel/fs/fscache",
)
# veth, geneve, dummy, tun, ...; Debian 13's kernels ship them xz-compressed (.ko.xz).
KEEP_GLOBS = ("kernel/drivers/net/*.ko", "kernel/drivers/net/*.ko.xz")
# Loaded by stage 1 (with their dependencies, in order) to mount 9p and overlayfs.
STAGE1_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
BUSYBOX = "/bin/busybox"
INIT = os.path.join(HERE, "guest", "init")


class PrepareError(RuntimeError):
    """The guest cannot be built here (no package, no tool)."""


def log(msg: str) -> None:
    print(f"e2e/prepare: {msg}", file=sys.stderr, flush=True)


def run(argv: list[str], **kw) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(argv, check=True, text=True, capture_output=True, **kw)
    except FileNotFoundError as e:
        raise PrepareError(f"{argv[0]} not found: {e}") from None
    except subprocess.CalledProcessError as e:
        raise PrepareError(
            f"{' '.join(argv)} failed (exit {e.returncode}): {e.stderr.strip()[-2000:]}"
        ) from None


def current_kernel_package() -> str:
    out = run(["apt-cache", "depends", "linux-image-amd64"]).stdout
    for line in out.splitlines():
        parts = line.split()
        if (
            len(parts) == 2
            and parts[0] == "Depends:"
            and parts[1].startswith("linux-image-")
            and parts[1][len("linux-image-") :][:1].isdigit()
        ):
            return parts[1]
    raise PrepareError(
        "apt-cache depends linux-image-amd64 names no linux-image-<abi> package "
        "(run apt-get update?)"
    )


def find_deb(debs: str, package: str) -> str | None:
    found = sorted(glob.glob(os.path.join(debs, f"{package}_*_amd64.deb")))
    return found[-1] if found else None


def download(debs: str, package: str) -> str:
    deb = find_deb(debs, package)
    if deb:
        return deb
    os.makedirs(debs, exist_ok=True)
    log(f"downloading {package}")
    # apt's sandbox user cannot write into root's checkout; the warning it prints is harmless.
    try:
        run(["apt-get", "download", "-q", package], cwd=debs)
    except PrepareError:
        if os.geteuid() != 0:
            raise
        log("apt-get download failed; refreshing the package lists once and retrying")
        run(["apt-get", "-o", "DPkg::Lock::Timeout=900", "update", "-q"])
        run(["apt-get", "download", "-q", package], cwd=debs)
    deb = find_deb(debs, package)
    if not deb:
        raise PrepareError(f"apt-get download {package} produced no .deb in {debs}")
    return deb


def fetch_kernel(cache: str, requested: str | None) -> tuple[str, str]:
    """(package, .deb path); falls back from the default pin to the current ABI if it is gone."""
    debs = os.path.join(cache, "debs")
    if requested == "current":
        package = current_kernel_package()
        return package, download(debs, package)
    package = requested or DEFAULT_KERNEL_PACKAGE
    try:
        return package, download(debs, package)
    except PrepareError as e:
        if requested:
            raise
        fallback = current_kernel_package()
        log(
            f"WARNING: pinned {package} cannot be had ({e}); using {fallback} "
            "(update DEFAULT_KERNEL_PACKAGE in e2e/prepare.py)"
        )
        return fallback, download(debs, fallback)


def build_modules(deb: str, kver: str, dest: str) -> None:
    """Extract the pruned module tree into dest/<kver> and run depmod on it."""
    with tempfile.TemporaryDirectory(prefix="e2e-kpkg-", dir=os.path.dirname(dest)) as tmp:
        run(["dpkg-deb", "-x", deb, tmp])
        # Debian 13's kernel packages ship their modules under usr/lib (merged /usr).
        candidates = [os.path.join(tmp, d, "lib", "modules", kver) for d in ("", "usr")]
        src = next((c for c in candidates if os.path.isdir(c)), "")
        if not src:
            raise PrepareError(f"{deb} has no lib/modules/{kver} or usr/lib/modules/{kver}")
        vmlinuz = os.path.join(tmp, "boot", f"vmlinuz-{kver}")
        staging = dest + ".tmp"
        shutil.rmtree(staging, ignore_errors=True)
        out = os.path.join(staging, "modules", kver)
        os.makedirs(out)
        for name in os.listdir(src):
            if name.startswith("modules.") and os.path.isfile(os.path.join(src, name)):
                shutil.copy2(os.path.join(src, name), out)
        for tree in KEEP_TREES:
            if os.path.isdir(os.path.join(src, tree)):
                shutil.copytree(os.path.join(src, tree), os.path.join(out, tree), symlinks=True)
        for pattern in KEEP_GLOBS:
            for path in glob.glob(os.path.join(src, pattern)):
                rel = os.path.relpath(path, src)
                os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
                shutil.copy2(path, os.path.join(out, rel))
        shutil.copy2(vmlinuz, os.path.join(staging, "vmlinuz"))
        # The .deb ships no modules.dep: without depmod, modprobe finds nothing. depmod -b wants
        # <base>/lib/modules/<kver>.
        base = os.path.join(staging, "depmod-base")
        os.makedirs(os.path.join(base, "lib"))
        os.symlink("../../modules", os.path.join(base, "lib", "modules"))
        run(["depmod", "-b", base, kver])
        shutil.rmtree(dest, ignore_errors=True)
        os.rename(staging, dest)


def stage1_module_files(guest: str, kver: str) -> list[str]:
    base = os.path.join(guest, "depmod-base")
    files: list[str] = []
    for mod in STAGE1_MODULES:
        out = run(["modprobe", "-d", base, "-S", kver, "--show-depends", mod]).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0] == "insmod" and parts[1] not in files:
                files.append(parts[1])
            # "builtin X" lines need nothing.
    return files


def has_interpreter(path: str) -> bool:
    """True if the ELF64 file at `path` asks for a dynamic loader (has a PT_INTERP header)."""
    import struct

    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            raise PrepareError(f"{path}: not an ELF64 file")
        (phoff,) = struct.unpack_from("<Q", head, 32)
        phentsize, phnum = struct.unpack_from("<HH", head, 54)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return any(
        struct.unpack_from("<I", table, i * phentsize)[0] == 3  # PT_INTERP
        for i in range(phnum)
    )


def build_initrd(guest: str, kver: str) -> str:
    """The stage-1 initramfs; its name carries a hash of what went into it, so edits to
    e2e/guest/init rebuild it."""
    mods = stage1_module_files(guest, kver)
    h = hashlib.sha256()
    for path in [INIT, BUSYBOX, *mods]:
        with open(path, "rb") as f:
            h.update(f.read())
    name = f"initrd-{h.hexdigest()[:12]}.cpio.gz"
    initrd = os.path.join(guest, name)
    if os.path.exists(initrd):
        return initrd
    if has_interpreter(BUSYBOX):
        raise PrepareError(f"{BUSYBOX} is dynamically linked: install busybox-static")
    with tempfile.TemporaryDirectory(prefix="e2e-initrd-", dir=guest) as root:
        for d in ("bin", "dev", "proc", "sys", "run", "tmp", f"lib/modules/{kver}"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        shutil.copy2(BUSYBOX, os.path.join(root, "bin", "busybox"))
        shutil.copy2(INIT, os.path.join(root, "init"))
        os.chmod(os.path.join(root, "init"), 0o755)
        order = []
        for path in mods:
            shutil.copy2(path, os.path.join(root, "lib", "modules", kver))
            order.append(os.path.basename(path))
        with open(os.path.join(root, "lib", "modules", kver, "load-order"), "w") as f:
            f.write("\n".join(order) + "\n")
        names = subprocess.run(["find", "."], cwd=root, check=True, capture_output=True).stdout
        cpio = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            cwd=root,
            input=names,
            check=True,
            capture_output=True,
        ).stdout
    for old in glob.glob(os.path.join(guest, "initrd-*.cpio.gz")):
        os.unlink(old)
    with open(initrd + ".tmp", "wb") as f:
        f.write(gzip.compress(cpio, compresslevel=1))
    os.rename(initrd + ".tmp", initrd)
    return initrd


def prepare(cache: str = DEFAULT_CACHE, kernel_package: str | None = None) -> dict[str, str]:
    """Build what is missing; return {kver, package, vmlinuz, initrd, modules}."""
    cache = os.path.abspath(cache)
    package, deb = fetch_kernel(cache, kernel_package)
    if not package.startswith("linux-image-"):
        raise PrepareError(f"{package}: not a linux-image package")
    kver = package[len("linux-image-") :]
    guest = os.path.join(cache, "guest", kver)
    stamp = os.path.join(guest, "modules.ready")
    if not os.path.exists(stamp):
        log(f"building guest for {kver} from {os.path.basename(deb)}")
        os.makedirs(os.path.dirname(guest), exist_ok=True)
        build_modules(deb, kver, guest)
        with open(stamp, "w") as f:
            f.write(os.path.basename(deb) + "\n")
    initrd = build_initrd(guest, kver)
    return {
        "kver": kver,
        "package": package,
        "vmlinuz": os.path.join(guest, "vmlinuz"),
        "initrd": initrd,
        "modules": os.path.join(guest, "modules"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", default=os.environ.get("E2E_CACHE", DEFAULT_CACHE))
    parser.add_argument("--kernel-package", default=os.environ.get("E2E_KERNEL_PACKAGE"))
    args = parser.parse_args()
    try:
        info = prepare(args.cache, args.kernel_package)
    except PrepareError as e:
        log(f"ERROR: {e}")
        return 2
    for k, v in info.items():
        print(f"{k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
