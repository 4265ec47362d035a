"""A deterministic, DICOM-like archive for benchmarks and the demo: valid DICOM Part-10 files with
random pixels (``pyengine bench upload``'s DICOM mix, ``scripts/make_dicom_tree.py``).

    python -m pyengine.bench.dicom_tree OUT_DIR --total-mb 300 --seed 1

Layout ``OUT/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, the way
PACS exports are often laid out. Most files are single-frame CT-like images of 0.5-2 MiB; about
one in 25 is a multi-frame image of 4-40 MiB so that some files span many upload blocks. The same
seed writes the same bytes (pixel data comes from ``random.Random(seed).randbytes``, one call per
file: about 0.5 GB/s, so 300 MB takes a few seconds).

The files are encoded here (Explicit VR Little Endian, PS3.5 §7.1.2; Part-10 header, PS3.10 §7.1)
rather than through pydicom: the bench ships in the wheel and must run from a plain
``pip install .``, where pydicom (a test extra) is absent. The tests read every file back with
pydicom, so the encoding stays checked against an independent reader.
"""

from __future__ import annotations

import argparse
import os
import random
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Totals", "bench_policy_toml", "main", "make_tree"]

MiB = 1024 * 1024
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Multi-frame Grayscale Word Secondary Capture: a multi-frame IOD with few mandatory modules
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
#: "2.25." + a 128-bit integer is the UUID-derived UID root of PS3.5 B.2: no registered org root
UID_ROOT = "2.25."
#: ours, fixed (a UUID as a 2.25 integer) so the same seed writes the same bytes
IMPLEMENTATION_CLASS_UID = "2.25.302571513834939960917498361925431036221"
IMPLEMENTATION_VERSION_NAME = "PYENGINE_010"  # SH: at most 16 characters
#: single-frame square image sides: 512 → 0.5 MiB, 724 → 1 MiB, 1024 → 2 MiB of 16-bit pixels
FRAME_SIDES = (512, 512, 640, 724, 724, 868, 1024)
MULTIFRAME_EVERY = 25
#: PS3.5 Table 7.1-1: these VRs carry 2 reserved bytes and a 32-bit length, the others a 16-bit one
_LONG_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
PIXEL_DATA_TAG = (0x7FE0, 0x0010)

Tag = tuple[int, int]
Value = str | int | Sequence[str | int | float] | bytes


@dataclass
class Totals:
    files: int = 0
    size_bytes: int = 0
    patients: int = 0
    studies: int = 0
    series: int = 0


def _uid(rng: random.Random) -> str:
    return UID_ROOT + str(rng.getrandbits(127) | 1)


def _value_bytes(vr: str, value: Value) -> bytes:
    if vr == "US":
        return struct.pack("<H", value)
    if vr == "UL":
        return struct.pack("<I", value)
    if isinstance(value, bytes):
        raw = value
    else:
        # multi-valued text is backslash-separated (PS3.5 §6.4)
        items = [value] if isinstance(value, (str, int)) else list(value)
        raw = "\\".join(str(item) for item in items).encode("ascii")
    if len(raw) % 2:
        # every value has an even length (PS3.5 §7.1.1): UIs pad with NUL, text with a space
        raw += b"\0" if vr in ("UI", "OB") else b" "
    return raw


def _element(tag: Tag, vr: str, value: Value) -> bytes:
    raw = _value_bytes(vr, value)
    group, element = tag
    if vr in _LONG_VRS:
        return struct.pack("<HH2s2xI", group, element, vr.encode(), len(raw)) + raw
    return struct.pack("<HH2sH", group, element, vr.encode(), len(raw)) + raw


def _encode(elements: dict[Tag, tuple[str, Value]]) -> bytes:
    """A data set: its elements in ascending tag order, as PS3.5 §7.1 requires."""
    return b"".join(_element(tag, vr, value) for tag, (vr, value) in sorted(elements.items()))


def _file_header(sop_class: str, sop_uid: str) -> bytes:
    """128-byte preamble, "DICM", then the File Meta Information group (PS3.10 §7.1)."""
    meta = _encode(
        {
            (0x0002, 0x0001): ("OB", b"\x00\x01"),
            (0x0002, 0x0002): ("UI", sop_class),
            (0x0002, 0x0003): ("UI", sop_uid),
            (0x0002, 0x0010): ("UI", EXPLICIT_VR_LITTLE_ENDIAN),
            (0x0002, 0x0012): ("UI", IMPLEMENTATION_CLASS_UID),
            (0x0002, 0x0013): ("SH", IMPLEMENTATION_VERSION_NAME),
        }
    )
    group_length = _element((0x0002, 0x0000), "UL", len(meta))
    return b"\0" * 128 + b"DICM" + group_length + meta


def _image(
    rng: random.Random,
    common: dict[Tag, tuple[str, Value]],
    number: int,
    remaining_bytes: int,
) -> tuple[str, bytes, bytes]:
    """One instance: (SOP instance UID, everything before the pixels, the pixel bytes)."""
    multiframe = rng.randrange(MULTIFRAME_EVERY) == 0
    if multiframe:
        rows = cols = 512
        # 4-40 MiB, but never far past the requested total (small trees stay small)
        frames = min(rng.randint(8, 80), max(2, remaining_bytes // (rows * cols * 2)))
        sop_class = MF_GRAYSCALE_WORD_SC
    else:
        rows = cols = rng.choice(FRAME_SIDES)
        frames = 1
        sop_class = CT_IMAGE_STORAGE
    sop_uid = _uid(rng)

    elements = dict(common)
    elements.update(
        {
            (0x0008, 0x0016): ("UI", sop_class),
            (0x0008, 0x0018): ("UI", sop_uid),
            (0x0008, 0x0008): ("CS", ["ORIGINAL", "PRIMARY", "AXIAL"]),
            (0x0020, 0x0013): ("IS", number),
            (0x0028, 0x0002): ("US", 1),  # SamplesPerPixel
            (0x0028, 0x0004): ("CS", "MONOCHROME2"),
            (0x0028, 0x0010): ("US", rows),
            (0x0028, 0x0011): ("US", cols),
            (0x0028, 0x0100): ("US", 16),  # BitsAllocated
            (0x0028, 0x0101): ("US", 16),  # BitsStored
            (0x0028, 0x0102): ("US", 15),  # HighBit
            (0x0028, 0x0103): ("US", 0),  # PixelRepresentation: unsigned
        }
    )
    if multiframe:
        elements[(0x0028, 0x0008)] = ("IS", frames)  # NumberOfFrames
        elements[(0x0008, 0x0064)] = ("CS", "WSD")  # ConversionType: workstation
    else:
        elements[(0x0018, 0x0050)] = ("DS", "1.0")  # SliceThickness
        elements[(0x0020, 0x0032)] = ("DS", [0, 0, number])  # ImagePositionPatient
        elements[(0x0020, 0x0037)] = ("DS", [1, 0, 0, 0, 1, 0])  # ImageOrientationPatient
        elements[(0x0028, 0x0030)] = ("DS", [0.5, 0.5])  # PixelSpacing
        elements[(0x0028, 0x1052)] = ("DS", "-1024")  # RescaleIntercept
        elements[(0x0028, 0x1053)] = ("DS", "1")  # RescaleSlope
    # one call per file: per-pixel generation would be ~100x slower
    pixels = rng.randbytes(rows * cols * 2 * frames)
    # Pixel Data (7FE0,0010) is the last element; its header is written here and its value
    # separately, so a 40 MiB frame set is never copied into a second buffer
    pixel_header = struct.pack("<HH2s2xI", *PIXEL_DATA_TAG, b"OW", len(pixels))
    head = _file_header(sop_class, sop_uid) + _encode(elements) + pixel_header
    return sop_uid, head, pixels


def make_tree(out_dir: str, total_bytes: int, seed: int) -> Totals:
    """Write files under ``out_dir`` until about ``total_bytes`` are written; return the totals."""
    rng = random.Random(seed)
    totals = Totals()
    os.makedirs(out_dir, exist_ok=True)
    while totals.size_bytes < total_bytes:
        totals.patients += 1
        patient_id = f"PAT{seed:03d}{totals.patients:05d}"
        patient: dict[Tag, tuple[str, Value]] = {
            (0x0010, 0x0010): ("PN", f"DEMO^PATIENT^{totals.patients}"),
            (0x0010, 0x0020): ("LO", patient_id),
            (0x0010, 0x0030): ("DA", f"19{rng.randint(30, 99)}0{rng.randint(1, 9)}15"),
            (0x0010, 0x0040): ("CS", rng.choice("MF")),
        }
        for _ in range(rng.randint(1, 3)):
            if totals.size_bytes >= total_bytes:
                break
            totals.studies += 1
            study_uid = _uid(rng)
            study = {
                (0x0020, 0x000D): ("UI", study_uid),
                (0x0008, 0x0020): (
                    "DA",
                    f"20{rng.randint(10, 24)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}",
                ),
                (0x0008, 0x0030): ("TM", "120000"),
                (0x0020, 0x0010): ("SH", str(totals.studies)),
                (0x0008, 0x0050): ("SH", f"ACC{seed:03d}{totals.studies:06d}"),
                (0x0008, 0x0090): ("PN", ""),
            }
            for series_number in range(1, rng.randint(1, 4) + 1):
                if totals.size_bytes >= total_bytes:
                    break
                totals.series += 1
                series_uid = _uid(rng)
                common = {
                    **patient,
                    **study,
                    (0x0020, 0x000E): ("UI", series_uid),
                    (0x0020, 0x0011): ("IS", series_number),
                    (0x0008, 0x0060): ("CS", "CT"),
                }
                series_dir = os.path.join(out_dir, patient_id, study_uid, series_uid)
                os.makedirs(series_dir, exist_ok=True)
                for number in range(1, rng.randint(3, 20) + 1):
                    if totals.size_bytes >= total_bytes:
                        break
                    remaining_bytes = total_bytes - totals.size_bytes
                    sop_uid, head, pixels = _image(rng, common, number, remaining_bytes)
                    with open(os.path.join(series_dir, sop_uid + ".dcm"), "wb") as f:
                        f.write(head)
                        f.write(pixels)
                    totals.files += 1
                    totals.size_bytes += len(head) + len(pixels)
    return totals


def bench_policy_toml(dest: str, kek_files: Sequence[str] | None = None) -> str:
    """A two-tenant policy for the tree make_tree writes (``bench upload``'s policy run):
    instances split by the parity of their SOP UID's last digit but one (the file name; the
    last is always odd), path rules only (what an encrypting tenant needs), tiers by study age
    and immutability, so every placement step runs.
    ``kek_files``: one key file per tenant (absolute paths), or None for no encryption."""
    lines = [
        "[tiers]",
        'default = "Hot"',
        "cool_after_days = 90",
        "cold_after_days = 730",
        "archive_after_days = 3650",
        "step_days = 60",
        "[immutability]",
        "enabled = true",
    ]
    for i, (name, digits) in enumerate((("even", "02468"), ("odd", "13579"))):
        lines += [
            f"[tenants.{name}]",
            f'dest = "{dest}/{name}"',
            f'paths = ["**/*[{digits}]?.dcm"]',
        ]
        if kek_files:
            lines.append(f'kek_file = "{kek_files[i]}"')
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("--total-mb", type=float, default=300.0, help="about this many MB (10^6)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    started_s = time.perf_counter()
    totals = make_tree(args.out_dir, int(args.total_mb * 1_000_000), args.seed)
    elapsed_s = time.perf_counter() - started_s
    print(
        f"wrote {totals.files} files, {totals.size_bytes} bytes "
        f"({totals.patients} patients, {totals.studies} studies, {totals.series} series) "
        f"to {args.out_dir} in {elapsed_s:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
