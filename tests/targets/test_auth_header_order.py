"""The order SharedKey signs x-ms-* headers in (targets/auth.py): pyengine's own key for
[a-z0-9-] names against the azure-storage-blob SDK's emulation of the service's culture-aware
comparison, the reference."""

from __future__ import annotations

import functools
import subprocess
import sys

from azure.storage.blob._shared.authentication import compare
from hypothesis import given
from hypothesis import strategies as st

from pyengine.targets.auth import _plain_sort_key, _sorted_x_ms

names = st.text(alphabet="abz09-", max_size=8).map(lambda s: "x-ms-" + s)


@given(st.lists(names, min_size=2, max_size=8, unique=True))
def test_plain_names_sort_as_the_service_compares_them(batch):
    assert sorted(batch, key=_plain_sort_key) == sorted(batch, key=functools.cmp_to_key(compare))


def test_the_headers_pyengine_sends_sort_as_the_service_compares_them():
    sent = [
        "x-ms-blob-type", "x-ms-blob-content-type", "x-ms-blob-content-md5", "x-ms-date",
        "x-ms-version", "x-ms-access-tier", "x-ms-tags", "x-ms-meta-pyenginesize",
        "x-ms-meta-encryptiondata", "x-ms-meta-pyengineblake3", "x-ms-content-crc64",
        "x-ms-range", "x-ms-client-request-id", "x-ms-blob-cache-control", "x-ms-meta-a-b",
        "x-ms-meta-ab", "x-ms-meta-a", "x-ms-range-get-content-crc64",
    ]  # fmt: skip
    assert _sorted_x_ms(tuple(sent)) == sorted(sent, key=functools.cmp_to_key(compare))


def test_other_names_take_the_sdk_comparison():
    odd = ("x-ms-meta-pyengine_size", "x-ms-meta-pyenginesize", "x-ms-meta-Upper", "x-ms-meta-a")
    assert _sorted_x_ms(odd) == sorted(odd, key=functools.cmp_to_key(compare))


def test_signing_plain_headers_does_not_import_the_blob_sdk():
    code = (
        "import sys; from pyengine.targets.auth import _sorted_x_ms;"
        "_sorted_x_ms(('x-ms-version', 'x-ms-date', 'x-ms-meta-a-b'));"
        "print('azure.storage.blob' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
