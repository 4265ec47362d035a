"""rclone and AzCopy as peers of bench upload: found where make bench installs them, run with
credentials kept off their command lines, a failing tool reported in one line; and, when rclone
is installed, a real run into the discard sink that the sink counts."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest

from pyengine.bench import peer_tools as pt
from pyengine.bench.files import SMALL_FILE_BYTES, write_small_files
from pyengine.bench.sink import DiscardSink

KEY = "c2VjcmV0LWtleS1ub3QtdG8tc2hvdw=="
CS = (
    f"DefaultEndpointsProtocol=http;AccountName=acct;AccountKey={KEY};BlobEndpoint=http://h:1/acct;"
)


def _fake_tool(tmp_path: Path, name: str, exit_code: int = 0) -> Path:
    """A stand-in executable that records its argv and environment, then exits."""
    script = tmp_path / name
    record = tmp_path / f"{name}.seen"
    script.write_text(
        f"#!/bin/sh\necho \"$@\" > {record}\nenv >> {record}\necho 'last words'\nexit {exit_code}\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def test_azcopy_is_found_where_npm_installs_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert pt.find_azcopy(tmp_path) is None
    binary = tmp_path / pt.AZCOPY_NPM_PATH
    binary.parent.mkdir(parents=True)
    binary.write_bytes(b"")
    assert pt.find_azcopy(tmp_path) == str(binary)


def test_rclone_gets_the_key_from_its_environment_never_its_command_line(tmp_path: Path) -> None:
    tool = _fake_tool(tmp_path, "rclone")
    result = asyncio.run(
        pt.rclone_upload(str(tool), tmp_path, CS, "bench", files=3, payload_bytes=3)
    )
    seen = (tmp_path / "rclone.seen").read_text().splitlines()
    assert KEY not in seen[0] and KEY not in result.command
    assert f"RCLONE_AZUREBLOB_KEY={KEY}" in seen
    assert "--transfers 16" in result.command and "--azureblob-disable-checksum" in result.command
    assert result.files == 3 and result.files_per_s > 0


def test_a_failing_tool_is_one_line_naming_its_exit_and_last_output(tmp_path: Path) -> None:
    tool = _fake_tool(tmp_path, "azcopy", exit_code=3)
    with pytest.raises(pt.ToolFailed, match=r"exit 3: last words$") as info:
        asyncio.run(
            pt.azcopy_upload(
                str(tool), tmp_path, CS, "http://h:1/acct/bench", files=1, payload_bytes=1
            )
        )
    assert "<SAS>" in str(info.value) and "sig=" not in str(info.value)


@pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone not installed (make bench)")
def test_rclone_copies_every_small_file_into_the_sink(tmp_path: Path) -> None:
    write_small_files(tmp_path / "small", 20, size_bytes=SMALL_FILE_BYTES)

    async def main() -> pt.ToolResult:
        async with DiscardSink() as sink:
            exe = pt.find_rclone()
            assert exe is not None
            return await pt.rclone_upload(
                exe, tmp_path / "small", sink.connection_string, "bench",
                files=20, payload_bytes=20 * SMALL_FILE_BYTES, sink=sink,
            )  # fmt: skip

    result = asyncio.run(main())
    assert result.sink_bytes_verified is not None
    assert result.sink_bytes_verified >= 20 * SMALL_FILE_BYTES
    assert os.environ.get("RCLONE_AZUREBLOB_KEY") is None


def test_a_tool_run_reports_its_own_cpu_seconds(tmp_path: Path) -> None:
    """Wall time on the shared 2-core box follows whatever else runs; the tool's CPU seconds
    (and the sink's) are what the peers are compared by there."""
    script = tmp_path / "rclone"
    script.write_text("#!/bin/sh\ni=0\nwhile [ $i -lt 200000 ]; do i=$((i+1)); done\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    result = asyncio.run(
        pt.rclone_upload(str(script), tmp_path, CS, "bench", files=4, payload_bytes=4)
    )
    assert 0.05 < result.cpu_s <= result.seconds * (os.cpu_count() or 1) + 0.05
    row = {"tool": "rclone", "files": 4, "bytes": 4 * 10**9, "cpu_s": 2.0, "sink_cpu_s": 2.0}
    assert pt.tool_cpu_text(row) == "0.50+0.50"
    assert pt.cpu_bound_files_per_s(row) == pytest.approx((os.cpu_count() or 1) * 4 / 4.0)
    assert pt.cpu_bound_files_per_s({"tool": "x", "files": 4, "bytes": 4}) == 0.0
