"""pyengine.crypto: CSE v2 metadata that the official azure-storage-blob SDK decrypts."""

from __future__ import annotations

import json
import os
import pickle
from io import BytesIO

import pytest
from azure.storage.blob import _encryption as sdk
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap

from pyengine.crypto import (
    A256KW,
    LocalKeyWrapper,
    decrypt_with_sdk,
    encryption_metadata,
    load_kek_file,
    new_content_key,
)
from pyengine.engine.plan import encrypted_bytes
from pyengine.errors import ConfigError

MiB = 1024 * 1024
REGION_BYTES = 4 * MiB
KEK_BYTES = bytes(range(32))
SIZES = [0, 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 9 * MiB]


def reference_encrypt(plain: bytes, content_key: bytes) -> bytes:
    """CSE v2 framing written independently of the SDK: per 4 MiB region
    nonce (region index, 12 bytes big-endian) | AES-256-GCM ciphertext | tag (16)."""
    gcm = AESGCM(content_key)
    out = bytearray()
    for index, offset in enumerate(range(0, len(plain), REGION_BYTES)):
        nonce = index.to_bytes(12, "big")
        out += nonce + gcm.encrypt(nonce, plain[offset : offset + REGION_BYTES], None)
    return bytes(out)


def plaintext(size_bytes: int) -> bytes:
    # i % 251: swapped or shifted regions change the bytes (the BLAKE3 test-vector trick)
    pattern = bytes(i % 251 for i in range(251))
    return (pattern * (size_bytes // 251 + 1))[:size_bytes]


@pytest.fixture
def kek() -> LocalKeyWrapper:
    return LocalKeyWrapper(KEK_BYTES)


@pytest.mark.parametrize("size_bytes", SIZES)
def test_sdk_decrypts_what_we_encrypt(kek, size_bytes):
    plain = plaintext(size_bytes)
    cek = new_content_key()
    ciphertext = reference_encrypt(plain, cek)
    assert len(ciphertext) == encrypted_bytes(size_bytes)
    assert decrypt_with_sdk(ciphertext, encryption_metadata(cek, kek), kek) == plain


@pytest.mark.parametrize("size_bytes", [0, 1, 4 * MiB + 1])
def test_reference_framing_equals_the_sdk_encryption_stream(size_bytes):
    plain = plaintext(size_bytes)
    cek = new_content_key()
    sdk_ciphertext = sdk.GCMBlobEncryptionStream(cek, BytesIO(plain)).read()
    assert reference_encrypt(plain, cek) == sdk_ciphertext


def test_metadata_equals_the_sdk_json_except_library_name(kek):
    cek = new_content_key()
    expected = sdk._generate_encryption_data_dict(kek, cek, None, "2.0")
    expected["EncryptionMode"] = "FullBlob"
    ours = encryption_metadata(cek, kek)
    expected["KeyWrappingMetadata"]["EncryptionLibrary"] = json.loads(ours)["KeyWrappingMetadata"][
        "EncryptionLibrary"
    ]
    assert ours == json.dumps(expected)


def test_metadata_wraps_the_version_prefixed_content_key(kek):
    cek = new_content_key()
    data = json.loads(encryption_metadata(cek, kek))
    wrapped = sdk.decode_base64_to_bytes(data["WrappedContentKey"]["EncryptedKey"])
    assert kek.unwrap_key(wrapped, A256KW) == b"2.0\0\0\0\0\0" + cek
    assert data["WrappedContentKey"]["KeyId"] == kek.get_kid()
    assert data["EncryptionAgent"] == {"Protocol": "2.0", "EncryptionAlgorithm": "AES_GCM_256"}
    assert data["EncryptedRegionInfo"] == {"DataLength": 4194304, "NonceLength": 12}
    assert data["EncryptionMode"] == "FullBlob"


def test_sdk_encrypted_blob_decrypts_with_our_kek(kek):
    # the other direction: our KEK class meets the SDK's interface for wrapping too
    metadata, ciphertext = sdk.encrypt_blob(plaintext(5 * MiB), kek, "2.0")
    assert decrypt_with_sdk(ciphertext, metadata, kek) == plaintext(5 * MiB)


def test_kek_with_another_kid_is_refused(kek):
    cek = new_content_key()
    ciphertext = reference_encrypt(b"secret", cek)
    other = LocalKeyWrapper(os.urandom(32))
    with pytest.raises(ValueError, match="does not match the id"):
        decrypt_with_sdk(ciphertext, encryption_metadata(cek, kek), other)


def test_wrong_key_under_the_same_kid_fails_to_unwrap(kek):
    cek = new_content_key()
    ciphertext = reference_encrypt(b"secret", cek)
    impostor = LocalKeyWrapper(os.urandom(32), kid=kek.get_kid())
    with pytest.raises(InvalidUnwrap):
        decrypt_with_sdk(ciphertext, encryption_metadata(cek, kek), impostor)


def test_tampered_region_fails_authentication(kek):
    cek = new_content_key()
    ciphertext = bytearray(reference_encrypt(plaintext(100), cek))
    ciphertext[20] ^= 1
    with pytest.raises(Exception) as info:  # cryptography's InvalidTag
        decrypt_with_sdk(bytes(ciphertext), encryption_metadata(cek, kek), kek)
    assert type(info.value).__name__ == "InvalidTag"


def test_swapped_regions_are_detected(kek):
    cek = new_content_key()
    region_stored = REGION_BYTES + 28
    ciphertext = reference_encrypt(plaintext(8 * MiB), cek)
    swapped = ciphertext[region_stored:] + ciphertext[:region_stored]
    with pytest.raises(ValueError):
        decrypt_with_sdk(swapped, encryption_metadata(cek, kek), kek)


# --- the key-encryption key never shows its bytes ----------------------------------------------


def test_kid_is_derived_from_the_key_without_revealing_it(kek):
    kid = kek.get_kid()
    assert kid.startswith("local:") and len(kid) == len("local:") + 8
    assert KEK_BYTES.hex() not in kid and KEK_BYTES.hex()[:8] not in kid
    assert LocalKeyWrapper(KEK_BYTES).get_kid() == kid
    assert LocalKeyWrapper(os.urandom(32)).get_kid() != kid


def test_repr_and_str_show_only_the_kid(kek):
    for text in (repr(kek), str(kek), f"{kek!r}"):
        assert kek.get_kid() in text
        assert KEK_BYTES.hex() not in text and repr(KEK_BYTES) not in text


def test_kek_cannot_be_pickled(kek):
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(kek)


def test_kek_must_be_32_bytes():
    with pytest.raises(ConfigError, match="found 16"):
        LocalKeyWrapper(bytes(16))


def test_unwrap_refuses_other_algorithms(kek):
    with pytest.raises(ValueError, match="unsupported key wrap algorithm"):
        kek.unwrap_key(kek.wrap_key(bytes(40)), "RSA-OAEP")


# --- load_kek_file -----------------------------------------------------------------------------


def test_key_file_of_32_raw_bytes_loads(tmp_path):
    path = tmp_path / "kek.bin"
    path.write_bytes(KEK_BYTES)
    assert load_kek_file(str(path)).get_kid() == LocalKeyWrapper(KEK_BYTES).get_kid()


@pytest.mark.parametrize("size_bytes", [0, 31, 33, 44])
def test_key_file_of_another_length_is_a_config_error(tmp_path, size_bytes):
    path = tmp_path / "kek.bin"
    content = os.urandom(size_bytes)
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_kek_file(str(path))
    assert info.value.one_line() == (
        f"{path}: key file must hold exactly 32 raw bytes, found {size_bytes}"
    )
    assert content.hex() not in str(info.value) or size_bytes == 0


def test_missing_key_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file or directory"):
        load_kek_file(str(tmp_path / "absent.bin"))


def test_key_file_that_is_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        load_kek_file(str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_key_file_is_a_config_error(tmp_path):
    path = tmp_path / "kek.bin"
    path.write_bytes(KEK_BYTES)
    path.chmod(0)
    with pytest.raises(ConfigError, match="permission denied"):
        load_kek_file(str(path))


# --- the test of record, against a real blob service -------------------------------------------


@pytest.mark.integration
@pytest.mark.parametrize("size_bytes", [0, 1, 9 * MiB])
def test_sdk_client_downloads_and_decrypts_our_blob(azurite, container, kek, size_bytes):
    from azure.storage.blob import BlobClient

    plain = plaintext(size_bytes)
    cek = new_content_key()
    name = f"enc-{size_bytes}.bin"
    conn = azurite.connection_string
    container_name = container.rsplit("/", 1)[1]
    # uploaded as opaque bytes (as pyengine does), read back by the SDK's own decrypting client
    with BlobClient.from_connection_string(conn, container_name, name) as plain_client:
        plain_client.upload_blob(
            reference_encrypt(plain, cek),
            metadata={"encryptiondata": encryption_metadata(cek, kek)},
        )
    with BlobClient.from_connection_string(
        conn,
        container_name,
        name,
        require_encryption=True,
        key_encryption_key=kek,
        encryption_version="2.0",
    ) as client:
        assert client.download_blob().readall() == plain
        if size_bytes > 4 * MiB:  # a range across a region boundary
            got = client.download_blob(offset=4 * MiB - 10, length=20).readall()
            assert got == plain[4 * MiB - 10 : 4 * MiB + 10]


def test_keyed_digest_depends_on_content_key_and_is_blake3_keyed_mode() -> None:
    import blake3

    from pyengine.crypto import DIGEST_KEY_CONTEXT, digest_key, keyed_digest_hex

    plain_hex = blake3.blake3(b"patient study").hexdigest()
    k1, k2 = b"\x01" * 32, b"\x02" * 32
    expected_key = blake3.blake3(k1, derive_key_context=DIGEST_KEY_CONTEXT).digest()
    assert digest_key(k1) == expected_key
    assert keyed_digest_hex(k1, plain_hex) == (
        blake3.blake3(bytes.fromhex(plain_hex), key=expected_key).hexdigest()
    )
    # without the content key the stored value says nothing about the plaintext digest
    assert keyed_digest_hex(k1, plain_hex) != keyed_digest_hex(k2, plain_hex)
    assert keyed_digest_hex(k1, plain_hex) != plain_hex


@pytest.mark.parametrize(
    "kid", ["local:1234abcd", 'kv "key" \\ é ✓', "https://v.vault.azure.net/keys/k/1"]
)
def test_metadata_from_the_template_is_the_json_of_its_fields_for_any_kid(kid):
    from pyengine.crypto import content_key_from_metadata

    kek = LocalKeyWrapper(os.urandom(32), kid=kid)
    key = os.urandom(32)
    text = encryption_metadata(key, kek)
    data = json.loads(text)
    assert text == json.dumps(data)  # same order, separators and escapes as json.dumps
    assert data["WrappedContentKey"]["KeyId"] == kid
    assert content_key_from_metadata(text, kek) == key
