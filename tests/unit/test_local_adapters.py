"""The adapters whose real component is on every machine, tested against it: files
(adapters/files.py) on a real file system, programs (adapters/proc.py) really run, glibc's
malloc_trim (adapters/heap.py), SIGTERM really sent (adapters/stop_signal.py), and unix
sockets (adapters/vici_socket.py; charon behind one is tests/integration/test_charon_pipeline.py's
and test_events_adapter.py's)."""

from __future__ import annotations

import os
import select
import signal
import socket
import stat
import sys
import time
from pathlib import Path

import ovs.poller
import pytest

from ovs_ipsec.adapters import heap, proc
from ovs_ipsec.adapters.files import MAX_FILE_SIZE, read_files, take_private, write_private
from ovs_ipsec.adapters.stop_signal import StopSignal
from ovs_ipsec.adapters.vici_socket import open_vici
from ovs_ipsec.adapters.xfrm.adapter import Xfrm
from ovs_ipsec.errors import CharonUnreachable, CommandError, XfrmError


def test_read_files_gives_bytes_or_why_not(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(b"-----BEGIN CERTIFICATE-----\n\xff\n")
    big = tmp_path / "big.pem"
    big.write_bytes(b"x" * (MAX_FILE_SIZE + 1))
    exact = tmp_path / "exact.pem"
    exact.write_bytes(b"y" * MAX_FILE_SIZE)
    missing = tmp_path / "missing.pem"
    paths = [str(p) for p in (cert, big, exact, missing, tmp_path)]

    contents = read_files(paths)

    assert list(contents) == paths
    assert contents[str(cert)] == b"-----BEGIN CERTIFICATE-----\n\xff\n"
    assert contents[str(big)] == f"{big} is larger than {MAX_FILE_SIZE} bytes"
    assert contents[str(exact)] == b"y" * MAX_FILE_SIZE
    assert contents[str(missing)] == f"cannot read {missing}: No such file or directory"
    assert contents[str(tmp_path)] == f"cannot read {tmp_path}: Is a directory"


def test_read_files_opens_no_fifo_or_device_and_never_blocks(tmp_path: Path) -> None:
    """issue 15 item 3: a FIFO (nobody writing) blocked open() for ever, /dev/ptmx read() for
    ever; the loop stopped with them. Now each is a reason, at once."""
    fifo = tmp_path / "cert.fifo"
    os.mkfifo(fifo)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "sock"))
    link = tmp_path / "link.pem"
    link.symlink_to(fifo)
    paths = [str(fifo), "/dev/ptmx", "/dev/zero", str(tmp_path / "sock"), str(link)]

    class Hung(Exception):  # not an OSError, which read_files would take for a reason
        pass

    def hung(signum: int, frame: object) -> None:
        raise Hung("read_files blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        contents = read_files(paths)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        server.close()

    assert contents == {
        str(fifo): f"{fifo} is not a regular file (a FIFO)",
        "/dev/ptmx": "/dev/ptmx is not a regular file (a character device)",
        "/dev/zero": "/dev/zero is not a regular file (a character device)",
        str(tmp_path / "sock"): f"{tmp_path / 'sock'} is not a regular file (a socket)",
        str(link): f"{link} is not a regular file (a FIFO)",
    }


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_read_files_reports_an_unreadable_file(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_bytes(b"secret")
    key.chmod(0)
    assert read_files([str(key)]) == {str(key): f"cannot read {key}: Permission denied"}


def test_a_file_replaced_at_the_same_path_is_read_anew(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(b"old")
    assert read_files([str(cert)])[str(cert)] == b"old"
    replacement = tmp_path / "new.pem"
    replacement.write_bytes(b"new")
    replacement.replace(cert)  # how certificate tools rotate a file
    assert read_files([str(cert)])[str(cert)] == b"new"


def test_run_returns_output_and_feeds_stdin() -> None:
    code = "import sys; data = sys.stdin.read(); print(data.upper()); print('e', file=sys.stderr)"
    result = proc.run([sys.executable, "-c", code], timeout=10, input="hello")
    assert result.returncode == 0
    assert result.stdout == "HELLO\n" and result.stderr == "e\n"


def test_run_failure_carries_its_facts_but_never_its_input() -> None:
    code = "import sys; sys.stdin.read(); print('bad thing', file=sys.stderr); sys.exit(3)"
    with pytest.raises(CommandError) as error:
        proc.run([sys.executable, "-c", code], timeout=10, input="swordfish")
    assert error.value.returncode == 3 and error.value.stderr == "bad thing"
    assert "swordfish" not in str(error.value)
    unchecked = proc.run([sys.executable, "-c", code], timeout=10, input="", check=False)
    assert unchecked.returncode == 3


# What `ip xfrm state` prints: the SA's keys.
KEY_HEX = "0x6b8e3f9a0c1d2e3f4a5b6c7d8e9f0a1b"
STATE_TEXT = (
    "src 10.0.0.1 dst 10.0.0.2\n\tproto esp spi 0x1 reqid 1 mode transport\n"
    f"\tenc cbc(aes) {KEY_HEX}\n"
)


def test_a_failed_program_s_output_never_reaches_its_error(tmp_path: Path) -> None:
    """Only stderr, escaped and cut; stdout (keys, for `ip xfrm state`) stays out."""
    script = tmp_path / "fails.py"
    script.write_text(
        f"import sys\nprint({STATE_TEXT!r})\n"
        "print('line1\\nline2' + 'x' * 5000, file=sys.stderr)\nsys.exit(1)\n"
    )
    with pytest.raises(CommandError) as error:
        proc.run([sys.executable, str(script)], timeout=10)
    assert KEY_HEX not in str(error.value) and KEY_HEX not in error.value.stdout
    assert error.value.stderr.startswith("line1\\x0aline2xxx")
    assert len(error.value.stderr) <= 4 * proc.STDERR_LIMIT + 3  # each character escaped at most


def test_ip_xfrm_state_failing_silently_never_shows_its_keys(tmp_path: Path) -> None:
    """`ip xfrm state` that prints its SAs and fails with nothing on stderr: the error (which
    xfrm/state replies to ovs-appctl) says so without the keys."""
    ip = tmp_path / "ip"
    ip.write_text(f"#!/bin/sh\nprintf '%s' '{STATE_TEXT}'\nexit 2\n")
    ip.chmod(0o755)
    with pytest.raises(XfrmError) as error:
        Xfrm(timeout=10, ip=str(ip)).states_text()
    assert KEY_HEX not in str(error.value)
    assert str(error.value) == "ip xfrm state list: exit code 2"


def test_run_kills_a_program_that_outlives_its_timeout() -> None:
    started = time.monotonic()
    with pytest.raises(CommandError, match="timed out after 0.3 s") as error:
        proc.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=0.3)
    assert error.value.returncode is None
    assert time.monotonic() - started < 5


def test_run_of_a_missing_program_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError) as error:
        proc.run([str(tmp_path / "no-such-program")], timeout=5)
    assert error.value.returncode is None


def test_core_dumps_are_off_after_start_up() -> None:
    """In a fresh process (this kernel's prctl and rlimits): not dumpable, no core size."""
    code = (
        "import resource\n"
        "from ovs_ipsec.adapters.core_dumps import disable_core_dumps, dumpable\n"
        "before = dumpable()\n"
        "assert disable_core_dumps() == []\n"
        "print(before, dumpable(), *resource.getrlimit(resource.RLIMIT_CORE))\n"
    )
    result = proc.run([sys.executable, "-c", code], timeout=30)
    assert result.stdout.split() == ["1", "0", "0", "0"]


def test_heap_trim_runs_on_this_libc() -> None:
    heap.trim()  # on glibc: malloc_trim(0); elsewhere nothing


def test_the_collector_waits_for_the_first_pass_then_leaves_its_state_frozen() -> None:
    """In a process of its own: freezing is process-wide."""
    code = (
        "import gc, weakref\n"
        "from ovs_ipsec.adapters import heap\n"
        "class Node: pass\n"
        "heap.hold_off()\n"
        "state = [[i] for i in range(1000)]\n"
        "print(gc.isenabled(), gc.get_freeze_count() == 0)\n"
        "heap.settle()\n"
        "print(gc.isenabled(), gc.get_freeze_count() >= 1000)\n"
        "gc.disable(); old = Node(); old.me = old; went = weakref.ref(old); del old\n"
        "heap.settle()\n"  # garbage made before settling is collected, not frozen
        "print(went() is None)\n"
        "node = Node(); node.me = node; gone = weakref.ref(node)\n"
        "heap.settle(); del node; gc.collect()\n"  # frozen alive, then garbage: kept
        "print(gone() is not None)\n"
        "heap.resettle()\n"  # collected now; the rest frozen again
        "print(gone() is None, gc.isenabled(), gc.get_freeze_count() >= 1000, len(state))\n"
    )
    result = proc.run([sys.executable, "-c", code], timeout=30)
    assert result.stdout.split() == ["False", "True", "True", "True", "True", "True", "True",
                                     "True", "True", "1000"]  # fmt: skip


def test_open_vici_connects_with_the_timeout_given(tmp_path: Path) -> None:
    path = str(tmp_path / "charon.vici")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with open_vici(path, 2.5, "list-conns") as sock:
            assert sock.gettimeout() == 2.5
            peer, _ = server.accept()
            peer.close()


def test_open_vici_without_charon_names_the_socket_and_the_command(tmp_path: Path) -> None:
    path = str(tmp_path / "nobody.vici")
    with pytest.raises(CharonUnreachable) as caught:
        open_vici(path, 1.0, "stats")
    assert caught.value.command == "stats"
    assert path in str(caught.value)


def test_a_private_file_is_ours_alone_and_read_once(tmp_path: Path) -> None:
    path = str(tmp_path / "record")
    stale = tmp_path / "record.tmp"  # a crash's leftover, open to all
    stale.write_bytes(b"old")
    stale.chmod(0o666)
    write_private(path, b"first")
    write_private(path, b"second")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["record"]
    assert take_private(path) == b"second"
    assert not os.path.exists(path)
    assert take_private(path) is None


def test_a_private_file_open_to_others_or_a_symlink_is_not_believed_and_goes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "record"
    path.write_bytes(b"planted")
    path.chmod(0o644)
    assert take_private(str(path)) == f"{path} is open to others (mode 644)"
    assert not path.exists()
    target = tmp_path / "elsewhere"
    target.write_bytes(b"x")
    target.chmod(0o600)
    path.symlink_to(target)
    why = take_private(str(path))
    assert isinstance(why, str) and why.startswith(f"cannot read {path}")
    assert not path.exists() and target.exists()


def test_a_private_file_that_cannot_be_written_leaves_the_old_one(tmp_path: Path) -> None:
    path = tmp_path / "record"
    write_private(str(path), b"kept")
    with pytest.raises(OSError):
        write_private(str(tmp_path / "missing" / "record"), b"lost")
    assert path.read_bytes() == b"kept"


def test_sigterm_is_a_request_to_stop_that_wakes_the_poll() -> None:
    before = signal.getsignal(signal.SIGTERM)
    stop = StopSignal()
    try:
        poller = ovs.poller.Poller()
        stop.wait(poller)
        os.kill(os.getpid(), signal.SIGTERM)
        started = time.monotonic()
        poller.timer_wait(5000)
        poller.block()
        assert time.monotonic() - started < 1.0
        assert stop.received
        stop.run()  # drains the wake-up bytes
        assert select.select([stop._read], [], [], 0)[0] == []
        # A second SIGTERM goes to whatever handled it before: stop now.
        assert signal.getsignal(signal.SIGTERM) == before
    finally:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGTERM, before)
