"""Runs a script as root inside a throwaway copy of a cached root (roots.py).

The copy is an overlay: the cached root is the read-only lower layer, the upper layer is a tmpfs,
so a copy costs about 10 ms (extracting the root's tarball took 9 s) and nothing written inside
outlives the run. Everything happens in a new mount namespace (private propagation, so the host
never sees a mount) and a new PID namespace whose first process is a small shell stage: when the
script ends, times out or the caller dies, the stage dies (`unshare --kill-child`), the kernel
kills every process left in the PID namespace (daemons the script started included), and the mount
namespace goes with them: overlay, tmpfs, binds and any network namespace the script made with
`ip netns add` (its bind mount lives in the root's private /run).

Inside: /proc of the new PID namespace, /sys and /dev bound from the host, tmpfs /run and /tmp,
the host's resolv.conf, and two download caches kept outside the checkout and bound in, so warm
runs fetch nothing again: apt's archive (`/var/cache/apt/archives`, per release) and pip's cache
(`/root/.cache/pip`). They cache downloads, never installed state; after each run `apt-get
autoclean` drops from apt's cache what the mirror no longer serves. Two files are added to the
copy, as Debian's own chroot builders do: a policy-rc.d that keeps packages from starting
services (the chroot shares the host's network namespace, where an openvswitch or strongswan
service must not start), and an apt setting that keeps downloaded packages for `apt` as `apt-get`
already does (so the archive cache fills either way).

The host network namespace is shared (apt and pip need the mirror and PyPI); the script makes its
own network namespaces for anything it runs. Where the host reaches HTTPS through an intercepting
proxy, it names its CA bundle in the usual variables (PIP_CERT, REQUESTS_CA_BUNDLE, SSL_CERT_FILE);
that bundle is copied into the copy and the same variables point at it, so pip inside trusts what
the host trusts. On a host without them nothing is passed.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field

from roots import locked

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# What the tier needs on the host; the packages that bring them, for the failure message.
HOST_PROGRAMS = {"unshare": "util-linux", "mount": "mount", "chroot": "coreutils"}

POLICY_RC_D = "#!/bin/sh\n# clean-root tier: no service starts in this chroot\nexit 101\n"
APT_KEEP_DEBS = 'Binary::apt::APT::Keep-Downloaded-Packages "true";\n'

# Runs as PID 1 of the new PID namespace, in the new mount namespace. $W is the run's host
# directory; the root is assembled under $W/t and the script runs as a child (not exec'd), so
# that this stage, not the script, is the namespace's init that takes everything down with it.
STAGE = r"""
set -eu
# The stage's PID as the host sees it (NSpid's first field; /proc is still the host's here), so
# that a timeout can kill this init and wait for its namespace to be emptied.
while read -r key host_pid _; do
    if [ "$key" = NSpid: ]; then echo "$host_pid" > "$W/stage.pid"; break; fi
done < /proc/self/status
mount -t tmpfs -o mode=0755,size="$TMPFS_SIZE" cleanroot "$W/t"
mkdir "$W/t/upper" "$W/t/work" "$W/t/root"
mount -t overlay cleanroot "$W/t/root" \
    -o lowerdir="$LOWER",upperdir="$W/t/upper",workdir="$W/t/work"
R="$W/t/root"
mount -t proc proc "$R/proc"
mount --rbind /sys "$R/sys"
mount --rbind /dev "$R/dev"
mount -t tmpfs -o mode=0755 run "$R/run"
mount -t tmpfs -o mode=1777 tmp "$R/tmp"
rm -f "$R/etc/resolv.conf"
cp -L /etc/resolv.conf "$R/etc/resolv.conf"
cp "$W/in/policy-rc.d" "$R/usr/sbin/policy-rc.d"
chmod 0755 "$R/usr/sbin/policy-rc.d"
cp "$W/in/apt-keep-debs" "$R/etc/apt/apt.conf.d/99cleanroot-keep-debs"
mkdir -p "$R/var/cache/apt/archives" "$R/root/.cache/pip"
mount --bind "$APT_CACHE" "$R/var/cache/apt/archives"
mount --bind "$PIP_CACHE" "$R/root/.cache/pip"
mkdir -p "$R/cleanroot"
mount --bind "$W/in" "$R/cleanroot"
mount -o remount,bind,ro "$R/cleanroot"
. "$W/in/binds.sh"
set +e
chroot "$R" /usr/bin/env -i HOME=/root PATH="$ROOT_PATH" LANG=C.UTF-8 TERM=dumb \
    /bin/bash /cleanroot/script.sh
rc=$?
echo "cleanroot: script exited $rc"
# The archive cache keeps only what the mirror still serves (superseded versions go); judged
# only by a copy that has package lists, since with none every package looks unavailable.
if ls "$R"/var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
    chroot "$R" apt-get -q autoclean >/dev/null 2>&1 || true
fi
exit $rc
"""


# The variables that name a CA bundle; when the host sets one, all of them are set inside.
CA_VARIABLES = (
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
)
CA_INSIDE = "/etc/ssl/cleanroot-host-ca.crt"


def host_ca_bundle(environ: Mapping[str, str]) -> str | None:
    """The CA bundle the host's environment names (an egress proxy's trust), if any."""
    for var in CA_VARIABLES:
        path = environ.get(var)
        if path and os.path.isfile(path):
            return path
    return None


class SandboxError(Exception):
    """The sandbox could not be set up (not the script's failure: that is a RunResult)."""


@dataclass(frozen=True)
class Bind:
    """A host path bound into the root at `target` (absolute, inside the root)."""

    source: str
    target: str
    readonly: bool = True


@dataclass(frozen=True)
class RunResult:
    returncode: int | None  # None: timed out
    seconds: float
    log_path: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def tail(self, lines: int = 80) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


@dataclass
class Sandbox:
    """How to run scripts in copies of one release's cached root."""

    lower: str  # the cached root (read-only lower layer)
    release: str
    cache_dir: str
    tmpfs_size: str = "8g"
    env: Mapping[str, str] = field(default_factory=dict)

    def apt_cache(self) -> str:
        return _cache_subdir(self.cache_dir, "apt", self.release)

    def pip_cache(self) -> str:
        return _cache_subdir(self.cache_dir, "pip")

    def run(
        self,
        script: str,
        *,
        log_path: str,
        timeout: float,
        binds: Sequence[Bind] = (),
        files: Mapping[str, str] | None = None,
    ) -> RunResult:
        """Runs `script` (bash) as root in a fresh copy of the root; output goes to `log_path`.

        `files` maps host files (or directories) to paths inside the root, copied in before the
        script starts (into the copy's upper layer, so the script may change them). The apt
        archive cache of this release is locked for the run: two runs never share it at once.
        """
        missing = host_tool_problems()
        if missing:
            raise SandboxError(missing)
        work = tempfile.mkdtemp(prefix="ovs-ipsec-cleanroot.")
        try:
            with locked(self.apt_cache() + ".lock"):
                return self._run(script, work, log_path, timeout, binds, dict(files or {}))
        finally:
            _remove_workdir(work)

    def _run(
        self,
        script: str,
        work: str,
        log_path: str,
        timeout: float,
        binds: Sequence[Bind],
        files: dict[str, str],
    ) -> RunResult:
        inputs = os.path.join(work, "in")
        os.makedirs(os.path.join(work, "t"))
        os.makedirs(inputs)
        env = dict(self.env)
        ca = host_ca_bundle(os.environ)
        if ca is not None:
            files = {**files, ca: CA_INSIDE}
            env.update({var: CA_INSIDE for var in CA_VARIABLES})
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        _write(os.path.join(inputs, "script.sh"), exports + script)
        _write(os.path.join(inputs, "policy-rc.d"), POLICY_RC_D)
        _write(os.path.join(inputs, "apt-keep-debs"), APT_KEEP_DEBS)
        _write(os.path.join(inputs, "binds.sh"), _binds_script(binds, files))
        environment = {
            "PATH": PATH,
            "W": work,
            "LOWER": self.lower,
            "TMPFS_SIZE": self.tmpfs_size,
            "APT_CACHE": self.apt_cache(),
            "PIP_CACHE": self.pip_cache(),
            "ROOT_PATH": PATH,
        }
        argv = [
            "unshare",
            "--mount",
            "--propagation=private",
            "--pid",
            "--fork",
            "--kill-child",
            "/bin/sh",
            "-c",
            STAGE,
        ]
        os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
        start = time.monotonic()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
            try:
                returncode: int | None = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
            except BaseException:
                _stop(proc, os.path.join(work, "stage.pid"))
                raise
            finally:
                _stop(proc, os.path.join(work, "stage.pid"))
            seconds = time.monotonic() - start
            if timed_out:
                log.write(f"\ncleanroot: timed out after {timeout:.0f} s; everything killed\n")
        return RunResult(returncode, seconds, log_path, timed_out)


def host_tool_problems() -> str | None:
    """What the host lacks to run a sandbox (a message naming the packages), or None."""
    if os.geteuid() != 0:
        return "the clean-root tier needs root (mount and PID namespaces, chroot)"
    missing = [f"{p} ({pkg})" for p, pkg in HOST_PROGRAMS.items() if not shutil.which(p, path=PATH)]
    if missing:
        return "missing on the host: " + ", ".join(missing)
    with open("/proc/filesystems") as f:
        if "overlay" not in f.read():
            return "the kernel has no overlay filesystem (modprobe overlay)"
    return None


def _binds_script(binds: Sequence[Bind], files: Mapping[str, str]) -> str:
    """Shell lines for the stage: each bind, then each copied file, inside $R."""
    lines = []
    for b in binds:
        if not os.path.isabs(b.target):
            raise SandboxError(f"bind target must be absolute: {b.target}")
        target = '"$R"' + shlex.quote(b.target)
        kind = "-d" if os.path.isdir(b.source) else "-f"
        make = (
            f"mkdir -p {target}"
            if kind == "-d"
            else f'mkdir -p "$(dirname {target})"; : > {target}'
        )
        lines.append(f"[ -e {target} ] || {{ {make}; }}")
        lines.append(f"mount --bind {shlex.quote(b.source)} {target}")
        if b.readonly:
            lines.append(f"mount -o remount,bind,ro {target}")
    for source, target in files.items():
        if not os.path.isabs(target):
            raise SandboxError(f"file target must be absolute: {target}")
        quoted = '"$R"' + shlex.quote(target)
        lines.append(f'mkdir -p "$(dirname {quoted})"')
        lines.append(f"cp -RL {shlex.quote(source)} {quoted}")
    return "\n".join(lines) + "\n"


def _cache_subdir(cache_dir: str, *parts: str) -> str:
    path = os.path.join(cache_dir, *parts)
    os.makedirs(path, mode=0o755, exist_ok=True)
    return path


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _stop(proc: subprocess.Popen[bytes], stage_pid_file: str) -> None:
    """Ends a run that is still going, and returns only once nothing of it is left.

    Killing the stage (the PID namespace's init) makes the kernel kill every process in the
    namespace and wait for them before the stage itself is reaped; unshare, which waits for the
    stage, then exits. Killing unshare first would also end the stage (--kill-child), but
    asynchronously: this call could return while the namespace is still being emptied.
    """
    if proc.poll() is not None:
        return
    stage = _stage_pid(stage_pid_file)
    if stage is not None:
        with suppress(ProcessLookupError):
            os.kill(stage, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=60)
    if proc.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _stage_pid(path: str) -> int | None:
    """The stage's host PID, if it wrote it and that PID is still an init of a child namespace
    (never a PID reused by some other process)."""
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/status") as f:
            nspid = next((line.split()[1:] for line in f if line.startswith("NSpid:")), [])
    except (OSError, ValueError):
        return None
    return pid if len(nspid) == 2 and nspid[1] == "1" else None


def _remove_workdir(work: str) -> None:
    """The run's host directory: the tmpfs on $W/t was mounted only in the run's namespace, so the
    host sees plain directories here; a mount still there would be a leak worth failing for."""
    with open("/proc/self/mountinfo") as f:
        if any(f" {work}" in line for line in f):
            raise SandboxError(f"a mount under {work} outlived its run")
    shutil.rmtree(work)
