#!/usr/bin/env python3
"""Write a deterministic, DICOM-like demo archive: valid DICOM Part-10 files with random pixels.

    python scripts/make_dicom_tree.py OUT_DIR --total-mb 300 --seed 1

Layout ``OUT/<PatientID>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, the way
PACS exports are often laid out. Most files are single-frame CT-like images of 0.5-2 MiB; about
one in 25 is a multi-frame image of 4-40 MiB so that some files span many upload blocks. The same
seed writes the same bytes (pixel data comes from ``random.Random(seed).randbytes``, one call per
file: about 0.5 GB/s, so 300 MB takes a few seconds).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

MiB = 1024 * 1024
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: Multi-frame Grayscale Word Secondary Capture: a multi-frame IOD with few mandatory modules
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
#: "2.25." + a 128-bit integer is the UUID-derived UID root of PS3.5 B.2: no registered org root
UID_ROOT = "2.25."
#: single-frame square image sides: 512 → 0.5 MiB, 724 → 1 MiB, 1024 → 2 MiB of 16-bit pixels
FRAME_SIDES = (512, 512, 640, 724, 724, 868, 1024)
MULTIFRAME_EVERY = 25


@dataclass
class Totals:
    files: int = 0
    size_bytes: int = 0
    patients: int = 0
    studies: int = 0
    series: int = 0


def _uid(rng: random.Random) -> str:
    return UID_ROOT + str(rng.getrandbits(127) | 1)


def _image(
    rng: random.Random,
    patient: Dataset,
    study: Dataset,
    series: Dataset,
    number: int,
    remaining_bytes: int,
) -> Dataset:
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

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.update(patient)
    ds.update(study)
    ds.update(series)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.InstanceNumber = number
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if multiframe:
        ds.NumberOfFrames = frames
        ds.ConversionType = "WSD"
    else:
        ds.SliceThickness = "1.0"
        ds.ImagePositionPatient = [0, 0, number]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
    # one call per file: per-pixel generation would be ~100x slower
    ds.PixelData = rng.randbytes(rows * cols * 2 * frames)
    return ds


def make_tree(out_dir: str, total_bytes: int, seed: int) -> Totals:
    """Write files under ``out_dir`` until about ``total_bytes`` are written; return the totals."""
    rng = random.Random(seed)
    totals = Totals()
    os.makedirs(out_dir, exist_ok=True)
    while totals.size_bytes < total_bytes:
        totals.patients += 1
        patient = Dataset()
        patient.PatientID = f"PAT{seed:03d}{totals.patients:05d}"
        patient.PatientName = f"DEMO^PATIENT^{totals.patients}"
        patient.PatientBirthDate = f"19{rng.randint(30, 99)}0{rng.randint(1, 9)}15"
        patient.PatientSex = rng.choice("MF")
        for _ in range(rng.randint(1, 3)):
            if totals.size_bytes >= total_bytes:
                break
            totals.studies += 1
            study = Dataset()
            study.StudyInstanceUID = _uid(rng)
            study.StudyDate = f"20{rng.randint(10, 24)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}"
            study.StudyTime = "120000"
            study.StudyID = str(totals.studies)
            study.AccessionNumber = f"ACC{seed:03d}{totals.studies:06d}"
            study.ReferringPhysicianName = ""
            for series_number in range(1, rng.randint(1, 4) + 1):
                if totals.size_bytes >= total_bytes:
                    break
                totals.series += 1
                series = Dataset()
                series.SeriesInstanceUID = _uid(rng)
                series.SeriesNumber = series_number
                series.Modality = "CT"
                series_dir = os.path.join(
                    out_dir, patient.PatientID, study.StudyInstanceUID, series.SeriesInstanceUID
                )
                os.makedirs(series_dir, exist_ok=True)
                for number in range(1, rng.randint(3, 20) + 1):
                    if totals.size_bytes >= total_bytes:
                        break
                    remaining_bytes = total_bytes - totals.size_bytes
                    ds = _image(rng, patient, study, series, number, remaining_bytes)
                    path = os.path.join(series_dir, ds.SOPInstanceUID + ".dcm")
                    ds.save_as(path, enforce_file_format=True)
                    totals.files += 1
                    totals.size_bytes += os.path.getsize(path)
    return totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
