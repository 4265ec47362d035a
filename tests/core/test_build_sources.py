"""The native build needs nothing but a compiler and OpenSSL's headers: xxHash and BLAKE3 come from
third_party/ (not a distribution's /usr/include/xxhash.h or /usr/share/cargo), nothing is built for
the build machine's CPU (-march=native would make a wheel crash elsewhere), and the sdist and the
wheel carry the vendored sources and their licences. Configure-and-preprocess only: the full compile
is `make native-test` and `python -m build`."""

from __future__ import annotations

import json
import platform
import shlex
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THIRD_PARTY = REPO / "third_party"
# What CMakeLists.txt compiles or includes from each vendored copy, plus the licence it ships under.
BLAKE3_FILES = [
    "blake3.c",
    "blake3.h",
    "blake3_impl.h",
    "blake3_dispatch.c",
    "blake3_portable.c",
    "blake3_sse2_x86-64_unix.S",
    "blake3_sse41_x86-64_unix.S",
    "blake3_avx2_x86-64_unix.S",
    "blake3_avx512_x86-64_unix.S",
    "LICENSE",
]
XXHASH_FILES = ["xxhash.h", "LICENSE"]
VENDORED = [f"third_party/blake3/{n}" for n in BLAKE3_FILES] + [
    f"third_party/xxhash/{n}" for n in XXHASH_FILES
]


@pytest.fixture(scope="module")
def compile_commands(tmp_path_factory) -> list[dict]:
    """Configures the native core alone (no Python module, no tests) in a scratch directory."""
    if shutil.which("cmake") is None:
        pytest.fail("cmake is not installed: run `make deps`")
    build_dir = tmp_path_factory.mktemp("cmake")
    done = subprocess.run(
        [
            "cmake",
            "-S",
            str(REPO),
            "-B",
            str(build_dir),
            "-DPYENGINE_BUILD_PYTHON=OFF",
            "-DPYENGINE_BUILD_TESTS=OFF",
            "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads((build_dir / "compile_commands.json").read_text())


def headers_read(entry: dict) -> set[str]:
    """The files the compiler opens for one translation unit (its -M dependency list)."""
    argv = shlex.split(entry["command"]) if "command" in entry else list(entry["arguments"])
    keep: list[str] = []
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in ("-o", "-MF", "-MT", "-MQ"):
            skip_next = True
        elif arg not in ("-c", "-MD", "-MMD"):
            keep.append(arg)
    done = subprocess.run(
        [*keep, "-M"], cwd=entry["directory"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    deps = done.stdout.split(":", 1)[1].replace("\\\n", " ").split()
    return {str(Path(entry["directory"], d).resolve()) for d in deps}


def test_third_party_holds_the_vendored_sources_and_licences():
    missing = [rel for rel in VENDORED if not (REPO / rel).is_file()]
    assert missing == []
    assert (THIRD_PARTY / "README.md").is_file()


def test_native_build_compiles_only_the_tree_s_own_sources(compile_commands):
    sources = {str(Path(e["directory"], e["file"]).resolve()) for e in compile_commands}
    outside = sorted(s for s in sources if not s.startswith(str(REPO) + "/"))
    assert outside == []
    blake3_dir = str(THIRD_PARTY / "blake3")
    assert {f"{blake3_dir}/blake3.c", f"{blake3_dir}/blake3_dispatch.c"} <= sources
    if platform.machine() in ("x86_64", "AMD64"):
        # The assembly kernels behind BLAKE3's runtime dispatch (SSE2 .. AVX-512).
        assert f"{blake3_dir}/blake3_avx512_x86-64_unix.S" in sources


def test_native_build_reads_vendored_xxhash_and_blake3_headers_not_the_system_s(compile_commands):
    by_file = {Path(e["file"]).name: e for e in compile_commands}
    xxhash_deps = headers_read(by_file["hash.cpp"])
    assert str(THIRD_PARTY / "xxhash" / "xxhash.h") in xxhash_deps
    blake3_deps = headers_read(by_file["blake3_parent.c"])
    assert str(THIRD_PARTY / "blake3" / "blake3_impl.h") in blake3_deps
    system = sorted(
        d
        for d in xxhash_deps | blake3_deps
        if d.startswith("/usr/share/cargo/")
        or (Path(d).name in ("xxhash.h", "blake3.h") and not d.startswith(str(THIRD_PARTY)))
    )
    assert system == []


def test_native_build_targets_the_baseline_isa_not_the_build_machine(compile_commands):
    flags = {
        Path(e["file"]).name: shlex.split(e["command"]) if "command" in e else e["arguments"]
        for e in compile_commands
    }
    native = sorted(name for name, argv in flags.items() if any("=native" in a for a in argv))
    assert native == []
    # Instruction-set flags only where the code checks the CPU first (crc64.cpp's cpu_has_clmul).
    simd = sorted(
        name
        for name, argv in flags.items()
        if any(a.startswith(("-mavx", "-msse", "-mpclmul")) for a in argv)
    )
    assert simd in ([], ["crc64_clmul.cpp"])


def test_sdist_carries_the_native_sources_and_vendored_licences(tmp_path):
    # What `python -m build --sdist --no-isolation` runs: the backend's PEP 517 hook.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from scikit_build_core.build import build_sdist; "
            "print(build_sdist(sys.argv[1]))",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as sdist:
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    expected = ["CMakeLists.txt", "cpp/hash.cpp", "cpp/blake3_parent.c", *VENDORED]
    assert [rel for rel in expected if rel not in members] == []
    assert "third_party/README.md" in members


def test_wheel_carries_the_licences_of_the_code_compiled_into_it(tmp_path):
    # The wheel's metadata without the compile (wheel.cmake=false): the licences are copied by the
    # backend, independent of CMake.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from scikit_build_core.build import build_wheel; "
            "print(build_wheel(sys.argv[1], {'wheel.cmake': 'false'}))",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    name = done.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(tmp_path / name) as wheel:
        names = wheel.namelist()
    licences = sorted(n.split("/licenses/", 1)[1] for n in names if "/licenses/" in n)
    assert licences == ["third_party/blake3/LICENSE", "third_party/xxhash/LICENSE"]
