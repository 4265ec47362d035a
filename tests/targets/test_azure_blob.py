"""Azure I/O: destination parsing, redaction, credentials, and the signed data path.

Integration tests run against the real Azurite from conftest.py; retry and header tests use a
tiny local aiohttp server on 127.0.0.1 that plays scripted answers.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp import web
from azure.storage.blob import (
    BlobClient,
    ContainerClient,
    ContainerSasPermissions,
    generate_container_sas,
)
from azure.storage.blob._shared.validation import calculate_crc64_bytes
from azure.storage.extensions import checksums

from pyengine.errors import AuthError, ConfigError, DestinationError
from pyengine.options import RetryPolicy
from pyengine.targets.azure_blob import (
    BlobStore,
    Destination,
    SasCredential,
    SharedKeyCredential,
    crc64_header,
    parse_destination,
    redact,
    resolve_credential,
)

FAST_RETRY = RetryPolicy(max_tries=4, base_delay_s=0.001, max_delay_s=1.0, max_elapsed_s=5.0)
SAS_SECRET = "sig=AbCdSeCrEt%2B%2F%3D"


def crc64(data: bytes | memoryview) -> int:
    return checksums.crc64.compute(bytes(data), 0)


def payload(size_bytes: int) -> bytes:
    # i % 251 (the BLAKE3 test-vector pattern): swapped blocks change the content
    return bytes(i % 251 for i in range(size_bytes))


def block_id(i: int) -> str:
    return base64.b64encode(f"upload-0001-{i:06d}".encode()).decode()


def run(coro_fn: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(coro_fn())


def sdk_blob(azurite: Any, dest: Destination, name: str) -> BlobClient:
    return BlobClient.from_connection_string(azurite.connection_string, dest.container, name)


def key_store(azurite: Any, url: str, *, key: str | None = None) -> BlobStore:
    dest = parse_destination(url)
    cred = SharedKeyCredential(dest.account_name, key or azurite.account_key)
    return BlobStore(dest, cred, retry=FAST_RETRY, max_connections=8)


# ------------------------------------------------------------------------------------------
# parse_destination, redact, credentials (no server)


def test_parse_destination_reads_azure_host_style_url_with_prefix_and_sas() -> None:
    d = parse_destination(f"https://acct1.blob.core.windows.net/pacs/site-a/2024?sv=1&{SAS_SECRET}")
    assert (d.account_name, d.container, d.prefix) == ("acct1", "pacs", "site-a/2024/")
    assert d.account_url == "https://acct1.blob.core.windows.net"
    assert d.sas == f"sv=1&{SAS_SECRET}"
    assert d.redacted() == "https://acct1.blob.core.windows.net/pacs/site-a/2024/"
    assert d.blob_url("a b/c.dcm") == "https://acct1.blob.core.windows.net/pacs/a%20b/c.dcm"
    assert "sig" not in repr(d)


@pytest.mark.parametrize("host", ["127.0.0.1:10000", "localhost:10000"])
def test_parse_destination_reads_path_style_emulator_url(host: str) -> None:
    d = parse_destination(f"http://{host}/devstoreaccount1/c01")
    assert d.account_url == f"http://{host}/devstoreaccount1"
    assert (d.account_name, d.container, d.prefix, d.sas) == ("devstoreaccount1", "c01", "", None)
    assert d.blob_url("x") == f"http://{host}/devstoreaccount1/c01/x"


@pytest.mark.parametrize(
    "container", ["ab", "a" * 64, "Upper", "-abc", "abc-", "a--b", "a_b", "a.b"]
)
def test_invalid_container_name_is_a_config_error_without_the_sas(container: str) -> None:
    url = f"https://acct1.blob.core.windows.net/{container}/p?{SAS_SECRET}"
    with pytest.raises(ConfigError) as info:
        parse_destination(url)
    assert "invalid container name" in str(info.value)
    assert "SeCrEt" not in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("container", ["abc", "a" * 63, "a-b-c", "0ab"])
def test_valid_container_names_are_accepted(container: str) -> None:
    assert parse_destination(f"https://acct1.blob.core.windows.net/{container}").container == (
        container
    )


def test_url_without_container_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="missing container"):
        parse_destination("https://acct1.blob.core.windows.net/")


def test_redact_removes_every_kind_of_secret() -> None:
    text = (
        f"GET https://a.blob.core.windows.net/c/b?sv=2021&{SAS_SECRET}&se=x "
        "AccountName=a;AccountKey=S3cr3tKey==;BlobEndpoint=x "
        "SharedAccessSignature=sv=1&sig=zzz;x "
        "{'Authorization': 'SharedKey a:S1gn4ture='} Authorization: Bearer eyJ0eXAi.abc.def "
        "SharedKey acct:AAAA/bbbb+== Bearer tok.en-_"
    )
    out = redact(text)
    for secret in ("SeCrEt", "S3cr3tKey", "zzz", "S1gn4ture", "eyJ0eXAi", "AAAA/bbbb", "tok.en"):
        assert secret not in out
    assert "sv=2021" in out and "AccountName=a" in out and "se=x" in out


def test_credential_prefers_sas_on_the_url() -> None:
    dest = parse_destination(f"https://acct1.blob.core.windows.net/c01?{SAS_SECRET}")
    env = {"AZURE_STORAGE_KEY": "a2V5"}
    assert resolve_credential(dest, "AccountName=acct1;AccountKey=a2V5", env=env) == (
        SasCredential(SAS_SECRET)
    )


def test_credential_from_connection_string_must_name_the_same_account() -> None:
    dest = parse_destination("https://acct1.blob.core.windows.net/c01")
    cred = resolve_credential(dest, "AccountName=acct1;AccountKey=a2V5", env={})
    assert cred == SharedKeyCredential("acct1", "a2V5")
    with pytest.raises(ConfigError, match="'other'") as info:
        resolve_credential(dest, "AccountName=other;AccountKey=a2V5", env={})
    assert "a2V5" not in str(info.value)


def test_credential_from_env_connection_string_then_env_key() -> None:
    dest = parse_destination("http://127.0.0.1:1/devstoreaccount1/c01")
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true",
        "AZURE_STORAGE_KEY": "x",
    }
    assert isinstance(resolve_credential(dest, env=env), SharedKeyCredential)
    assert resolve_credential(dest, env=env).account_key != "x"
    assert resolve_credential(dest, env={"AZURE_STORAGE_KEY": "a2V5"}) == SharedKeyCredential(
        "devstoreaccount1", "a2V5"
    )


def test_credential_falls_back_to_default_azure_credential() -> None:
    from azure.identity.aio import DefaultAzureCredential

    cred = resolve_credential(parse_destination("https://acct1.blob.core.windows.net/c01"), env={})
    assert isinstance(cred, DefaultAzureCredential)
    run(cred.close)


def test_crc64_header_is_base64_of_8_bytes_little_endian_like_the_sdk() -> None:
    data = payload(10_000)
    expected = base64.b64encode(calculate_crc64_bytes(data)).decode()
    assert crc64_header(crc64(data)) == expected


def test_repr_of_shared_key_credential_hides_the_key() -> None:
    assert "a2V5" not in repr(SharedKeyCredential("acct1", "a2V5"))


# ------------------------------------------------------------------------------------------
# Against Azurite


@pytest.mark.integration
def test_put_blob_round_trips_with_metadata_and_tags(azurite: Any, container: str) -> None:
    data = payload(100_000)
    store = key_store(azurite, container)

    async def go() -> str:
        async with store:
            return await store.put_blob(
                "dir/a b é.dcm",
                data,
                crc64=crc64(data),
                metadata={"blake3": "ab" * 32, "size": "100000"},
                tags={"tenant": "site a", "kind": "ct"},
            )

    etag = run(go)
    assert etag
    blob = sdk_blob(azurite, store.dest, "dir/a b é.dcm")
    assert blob.download_blob().readall() == data
    props = blob.get_blob_properties()
    assert props.metadata == {"blake3": "ab" * 32, "size": "100000"}
    assert props.etag == etag
    assert blob.get_blob_tags() == {"tenant": "site a", "kind": "ct"}
    assert store.stats.requests == 1
    assert store.stats.bytes_sent == len(data)


@pytest.mark.integration
def test_put_blob_sets_the_access_tier(azurite: Any, container: str) -> None:
    store = key_store(azurite, container)

    async def go() -> None:
        async with store:
            await store.put_blob("t", b"x", crc64=crc64(b"x"), metadata={}, tier="Cool")

    run(go)
    assert sdk_blob(azurite, store.dest, "t").get_blob_properties().blob_tier == "Cool"


@pytest.mark.integration
def test_blocks_are_uncommitted_until_put_block_list_then_round_trip(
    azurite: Any, container: str
) -> None:
    chunks = [payload(70_000), payload(50_000)[::-1], b"tail"]
    ids = [block_id(i) for i in range(3)]
    store = key_store(azurite, container)

    async def go() -> tuple[list, list, list, object]:
        async with store:
            for bid, chunk in zip(ids, chunks, strict=True):
                # read-only memoryview, as the native core hands out
                view = memoryview(chunk).toreadonly()
                await store.put_block("big.dcm", bid, view, crc64=crc64(chunk))
            before = await store.get_block_list("big.dcm")
            absent = await store.get_properties("big.dcm")
            await store.put_block_list("big.dcm", ids, metadata={"k": "v"}, tier="Hot")
            committed = await store.get_block_list("big.dcm", uncommitted=False)
            uncommitted_after = await store.get_block_list("big.dcm")
            return before, committed, uncommitted_after, absent

    before, committed, uncommitted_after, absent = run(go)
    sizes = [len(c) for c in chunks]
    assert before == list(zip(ids, sizes, strict=True))
    assert absent is None
    assert committed == list(zip(ids, sizes, strict=True))
    assert uncommitted_after == []
    blob = sdk_blob(azurite, store.dest, "big.dcm")
    assert blob.download_blob().readall() == b"".join(chunks)
    assert blob.get_blob_properties().metadata == {"k": "v"}


@pytest.mark.integration
def test_get_block_list_of_a_missing_blob_is_empty(azurite: Any, container: str) -> None:
    store = key_store(azurite, container)

    async def go() -> list:
        async with store:
            return await store.get_block_list("nope")

    assert run(go) == []


@pytest.mark.integration
def test_get_properties_list_download_and_delete(azurite: Any, container: str) -> None:
    store = key_store(azurite, container)

    async def go() -> tuple:
        async with store:
            for n in ("p/1", "p/2", "q/3"):
                await store.put_blob(n, n.encode(), crc64=crc64(n.encode()), metadata={"n": n})
            props = await store.get_properties("p/2")
            listed = [b async for b in store.list_blobs("p/")]
            body = await store.download("q/3")
            await store.delete_blob("q/3")
            await store.delete_blob("q/3")  # absent: no error
            gone = await store.get_properties("q/3")
            return props, listed, body, gone

    props, listed, body, gone = run(go)
    assert (props.name, props.size_bytes, props.metadata) == ("p/2", 3, {"n": "p/2"})
    assert props.etag
    assert [(b.name, b.size_bytes, b.metadata) for b in listed] == [
        ("p/1", 3, {"n": "p/1"}),
        ("p/2", 3, {"n": "p/2"}),
    ]
    assert body == b"q/3"
    assert gone is None


@pytest.mark.integration
def test_container_sas_is_accepted_for_the_data_path(azurite: Any, container: str) -> None:
    dest = parse_destination(container)
    sas = generate_container_sas(
        dest.account_name,
        dest.container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(read=True, write=True, list=True, create=True),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )
    dest = parse_destination(f"{container}?{sas}")
    cred = resolve_credential(dest, env={})
    assert isinstance(cred, SasCredential)
    data = payload(5000)

    async def go() -> list:
        async with BlobStore(dest, cred, retry=FAST_RETRY) as store:
            await store.ensure_container(create=False)
            await store.put_block("s", block_id(0), data, crc64=crc64(data))
            await store.put_block_list("s", [block_id(0)], metadata={"via": "sas"})
            await store.put_blob("s2", data, crc64=crc64(data), metadata={})
            return [b.name async for b in store.list_blobs("")]

    assert run(go) == ["s", "s2"]
    assert sdk_blob(azurite, dest, "s").download_blob().readall() == data


@pytest.mark.integration
def test_wrong_account_key_is_a_one_line_auth_error(azurite: Any, container: str) -> None:
    wrong = base64.b64encode(b"not the key" * 4).decode()
    store = key_store(azurite, container, key=wrong)

    async def go() -> None:
        async with store:
            await store.ensure_container(create=False)

    with pytest.raises(AuthError) as info:
        run(go)
    msg = info.value.one_line()
    # Azure says AuthenticationFailed for a bad signature; Azurite says AuthorizationFailure
    assert any(
        f"authentication failed, signature mismatch (403 {code})" in msg
        for code in ("AuthenticationFailed", "AuthorizationFailure")
    ), msg
    assert "or the account key is wrong" in msg
    assert wrong not in msg and "\n" not in str(info.value)
    assert store.stats.requests == 1  # 403 is final: not retried


@pytest.mark.integration
def test_missing_container_is_a_destination_error_unless_created(azurite: Any) -> None:
    url = f"{azurite.account_url}/missing-{uuid.uuid4().hex[:12]}"
    store = key_store(azurite, url)

    async def go(create: bool) -> None:
        async with store:
            await store.ensure_container(create=create)

    with pytest.raises(
        DestinationError, match=r"container does not exist \(use --create-container\)"
    ):
        run(lambda: go(False))
    run(lambda: go(True))
    run(lambda: go(False))  # now it exists
    ContainerClient.from_connection_string(
        azurite.connection_string, store.dest.container
    ).delete_container()


@pytest.mark.integration
def test_service_error_names_status_and_azure_error_code(azurite: Any, container: str) -> None:
    store = key_store(azurite, container)

    async def go() -> None:
        async with store:
            await store.put_block_list("b", [block_id(7)], metadata={})

    with pytest.raises(DestinationError) as info:
        run(go)
    msg = str(info.value)
    assert "put block list: HTTP 400 InvalidBlockList" in msg
    assert msg.startswith(store.dest.blob_url("b"))
    assert "\n" not in msg


# ------------------------------------------------------------------------------------------
# Against a local scripted server (what Azurite cannot show)


class Scripted:
    """A local aiohttp server answering each request with the next scripted (status, headers)."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, str, dict[str, str], bytes, float]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            (request.method, request.path_qs, dict(request.headers), body, time.monotonic())
        )
        status, headers = self.answers.pop(0) if self.answers else (201, {})
        if "delay-s" in headers:  # a stalled answer: nothing at all for that long
            await asyncio.sleep(float(headers.pop("delay-s")))
        if status >= 400:
            headers = {"x-ms-error-code": "ServerBusy", **headers}
        return web.Response(status=status, headers={"ETag": '"0x1"', **headers})

    async def __aenter__(self) -> Scripted:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/devstoreaccount1/c01"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


def test_put_block_sends_the_crc64_header_and_the_exact_body() -> None:
    # Azurite (--loose) ignores x-ms-content-crc64, so it cannot reject a wrong one; this checks
    # what goes on the wire instead.
    data = payload(300_000)

    async def go() -> Scripted:
        async with Scripted([]) as srv:
            dest = parse_destination(srv.url)
            cred = SharedKeyCredential(dest.account_name, base64.b64encode(b"k" * 32).decode())
            async with BlobStore(dest, cred, retry=FAST_RETRY) as store:
                view = memoryview(data).toreadonly()
                await store.put_block("a/b c", block_id(1), view, crc64=crc64(data))
        return srv

    srv = run(go)
    method, path_qs, headers, body, _ = srv.requests[0]
    assert method == "PUT"
    bid = quote(block_id(1), safe="")
    assert path_qs == f"/devstoreaccount1/c01/a/b%20c?comp=block&blockid={bid}"
    assert headers["x-ms-content-crc64"] == base64.b64encode(calculate_crc64_bytes(data)).decode()
    assert headers["Content-Length"] == str(len(data))
    assert headers["Authorization"].startswith("SharedKey devstoreaccount1:")
    assert body == data


def test_a_cookie_set_by_the_service_is_never_sent_back() -> None:
    """The store keeps no cookie jar: the service sets none, and a jar was filtered and updated
    on every request."""

    async def go() -> Scripted:
        async with Scripted([(201, {"Set-Cookie": "s=1; Path=/"})]) as srv:
            # a host name: a cookie jar ignores cookies of IP addresses
            dest = parse_destination(srv.url.replace("127.0.0.1", "localhost"))
            cred = SharedKeyCredential(dest.account_name, base64.b64encode(b"k" * 32).decode())
            async with BlobStore(dest, cred, retry=FAST_RETRY) as store:
                await store.put_blob("a", b"x", crc64=0, metadata={})
                await store.put_blob("b", b"y", crc64=0, metadata={})
        return srv

    srv = run(go)
    assert len(srv.requests) == 2
    assert "Cookie" not in srv.requests[1][2]


def test_a_put_without_a_body_carries_no_content_type_and_a_put_blob_one() -> None:
    """Content-Type is signed (SharedKey): aiohttp's default one on a body-less PUT would make
    the signature wrong, so only a request with a body has one, set by the store."""

    async def go() -> Scripted:
        async with Scripted([]) as srv:
            dest = parse_destination(srv.url)
            cred = SharedKeyCredential(dest.account_name, base64.b64encode(b"k" * 32).decode())
            async with BlobStore(dest, cred, retry=FAST_RETRY) as store:
                await store.set_tier("a", "Cool")
                await store.set_metadata("a", {"k": "v"})
                await store.put_blob("a", b"xyz", crc64=0, metadata={})
        return srv

    srv = run(go)
    tier, meta, put = (r[2] for r in srv.requests)
    assert "Content-Type" not in tier and "Content-Type" not in meta
    assert put["Content-Type"] == "application/octet-stream"


def test_503_then_201_is_retried_and_retry_after_is_honoured() -> None:
    async def go() -> tuple[Scripted, BlobStore]:
        async with Scripted([(503, {"Retry-After": "0.3"})]) as srv:
            dest = parse_destination(srv.url + "?sv=1&sig=abc")
            async with BlobStore(dest, SasCredential(dest.sas or ""), retry=FAST_RETRY) as store:
                etag = await store.put_blob("x", b"abc", crc64=crc64(b"abc"), metadata={})
                assert etag == '"0x1"'
        return srv, store

    srv, store = run(go)
    assert len(srv.requests) == 2
    waited_s = srv.requests[1][4] - srv.requests[0][4]
    assert waited_s >= 0.3  # base delay is 1 ms: only Retry-After explains the wait
    assert store.stats.retries == 1
    assert store.stats.requests == 2
    assert srv.requests[1][3] == b"abc"  # the body is sent again in full


def test_retries_exhausted_is_a_destination_error_naming_the_status() -> None:
    async def go() -> None:
        async with Scripted([(503, {})] * 10) as srv:
            dest = parse_destination(srv.url + "?sig=abc")
            async with BlobStore(dest, SasCredential("sig=abc"), retry=FAST_RETRY) as store:
                await store.put_blob("x", b"abc", crc64=0, metadata={})

    with pytest.raises(DestinationError, match=r"HTTP 503 ServerBusy.*after 4 tries in") as info:
        run(go)
    assert "abc" not in str(info.value).split("/c01/")[0]


def test_container_check_rides_out_a_long_503_storm_with_the_default_policy() -> None:
    """20 answers of 503 (more than any small try count) with a short x-ms-retry-after-ms: the
    default policy keeps going, bounded by time only, and counts the waits as throttled."""
    policy = RetryPolicy(base_delay_s=0.001, max_delay_s=0.02)
    assert policy.max_tries is None and policy.max_elapsed_s >= 900

    async def go() -> tuple[Scripted, BlobStore]:
        storm = [(503, {"x-ms-retry-after-ms": "10"})] * 20
        async with Scripted([*storm, (200, {})]) as srv:
            dest = parse_destination(srv.url + "?sig=abc")
            async with BlobStore(dest, SasCredential("sig=abc"), retry=policy) as store:
                await store.ensure_container(create=False)
        return srv, store

    srv, store = run(go)
    assert len(srv.requests) == 21
    assert store.stats.retries == 20
    assert store.stats.throttled_s >= 20 * 0.010
    assert store.stats.concurrency_min < store.stats.concurrency_max


def test_a_stalled_answer_is_abandoned_and_the_request_sent_again() -> None:
    policy = RetryPolicy(base_delay_s=0.001, stall_timeout_s=0.3)

    async def go() -> tuple[Scripted, BlobStore, float]:
        async with Scripted([(201, {"delay-s": "10"})]) as srv:
            dest = parse_destination(srv.url + "?sig=abc")
            async with BlobStore(dest, SasCredential("sig=abc"), retry=policy) as store:
                t0 = time.monotonic()
                await store.put_blob("x", b"abc", crc64=crc64(b"abc"), metadata={})
                return srv, store, time.monotonic() - t0

    srv, store, took_s = run(go)
    assert took_s < 2.0  # not the 10 s the first answer took
    assert len(srv.requests) == 2
    assert store.stats.stalls == 1 and store.stats.retries == 1


def test_a_capped_body_slower_than_the_stall_timeout_is_not_a_stall() -> None:
    # 600 kB at 1 MB/s takes ~0.6 s, twice the stall timeout: waiting on the cap is progress
    policy = RetryPolicy(base_delay_s=0.001, stall_timeout_s=0.3)
    data = payload(600_000)

    async def go() -> tuple[Scripted, BlobStore, float]:
        async with Scripted([]) as srv:
            dest = parse_destination(srv.url + "?sig=abc")
            cred = SasCredential("sig=abc")
            async with BlobStore(dest, cred, retry=policy, cap_bytes_per_s=1e6) as store:
                t0 = time.monotonic()
                await store.put_block("x", block_id(0), data, crc64=crc64(data))
                return srv, store, time.monotonic() - t0

    srv, store, took_s = run(go)
    assert 0.5 < took_s < 1.0
    assert store.stats.stalls == 0 and len(srv.requests) == 1
    assert srv.requests[0][3] == data


def test_bearer_token_is_sent_and_refreshed_before_expiry() -> None:
    class FakeToken:
        def __init__(self) -> None:
            self.calls = 0

        async def get_token(self, *scopes: str) -> Any:
            from azure.core.credentials import AccessToken

            assert scopes == ("https://storage.azure.com/.default",)
            self.calls += 1
            # first token about to expire: must be replaced before the second request
            expires = time.time() + (60 if self.calls == 1 else 3600)
            return AccessToken(f"tok{self.calls}", int(expires))

        async def close(self) -> None:
            pass

    async def go() -> tuple[Scripted, FakeToken]:
        tok = FakeToken()
        async with (
            Scripted([]) as srv,
            BlobStore(parse_destination(srv.url), tok, retry=FAST_RETRY) as store,
        ):
            for _ in range(3):
                await store.put_blob("x", b"abc", crc64=0, metadata={})
        return srv, tok

    srv, tok = run(go)
    assert [r[2]["Authorization"] for r in srv.requests] == [
        "Bearer tok1",
        "Bearer tok2",
        "Bearer tok2",
    ]
    assert tok.calls == 2


def container_sas(azurite: Any, dest: Destination, **perms: bool) -> str:
    return generate_container_sas(
        dest.account_name,
        dest.container,
        account_key=azurite.account_key,
        permission=ContainerSasPermissions(**perms),
        expiry=datetime.now(timezone.utc) + timedelta(hours=1),
    )


@pytest.mark.integration
def test_write_only_sas_passes_the_container_check(azurite: Any, container: str) -> None:
    dest = parse_destination(container)
    sas = container_sas(azurite, dest, write=True, create=True)
    dest = parse_destination(f"{container}?{sas}")

    async def go() -> int:
        async with BlobStore(dest, resolve_credential(dest, env={}), retry=FAST_RETRY) as store:
            await store.ensure_container(create=False)
            await store.put_blob("w", b"w", crc64=crc64(b"w"), metadata={})
            return store.stats.requests

    assert run(go) == 2


@pytest.mark.integration
def test_sas_with_a_wrong_signature_is_an_auth_error_without_the_sas(
    azurite: Any, container: str
) -> None:
    dest = parse_destination(container)
    sas = container_sas(azurite, dest, read=True, write=True, list=True)
    forged = sas.replace("sig=", "sig=AAAA")
    dest = parse_destination(f"{container}?{forged}")

    async def go() -> None:
        async with BlobStore(dest, resolve_credential(dest, env={}), retry=FAST_RETRY) as store:
            await store.put_blob("w", b"w", crc64=crc64(b"w"), metadata={})

    with pytest.raises(AuthError, match="authentication failed") as info:
        run(go)
    assert "sig=" not in str(info.value)


# --- Bearer tokens over a long job, and a token the service refuses ------------------------------


class ExpiringTokens:
    """A token credential whose tokens live ``lifetime_s`` of the given clock; get_token takes
    ``fetch_s`` of real time, so callers arriving together overlap inside it."""

    def __init__(self, clock: Callable[[], float], lifetime_s: float, fetch_s: float = 0.0) -> None:
        self.clock, self.lifetime_s, self.fetch_s = clock, lifetime_s, fetch_s
        self.calls = 0

    async def get_token(self, *scopes: str) -> Any:
        from azure.core.credentials import AccessToken

        self.calls += 1
        n = self.calls
        if self.fetch_s:
            await asyncio.sleep(self.fetch_s)
        return AccessToken(f"tok{n}", int(self.clock() + self.lifetime_s))

    async def close(self) -> None:
        pass


def test_token_cache_never_hands_out_a_token_within_the_margin_of_expiry_over_three_days() -> None:
    from pyengine.targets.wire import _TokenCache

    now = [1_000_000.0]
    cred = ExpiringTokens(lambda: now[0], lifetime_s=3600)
    cache = _TokenCache(cred, clock=lambda: now[0], margin_s=300)
    expiry_of: dict[str, float] = {}

    async def go() -> None:
        for _ in range(3 * 24 * 60):  # one request a minute for three days
            header = await cache.header()
            token = header.removeprefix("Bearer ")
            expiry_of.setdefault(token, now[0] + 3600)  # first seen just after its fetch
            assert expiry_of[token] - now[0] >= 300, "a token this close to expiry was sent"
            now[0] += 60

    run(go)
    # a fresh token every 55 minutes (3600 s life - 300 s margin), not one per request
    assert 3 * 24 * 60 // 56 <= cred.calls <= 3 * 24 * 60 // 54 + 1


def test_requests_reaching_token_expiry_together_cause_one_get_token() -> None:
    from pyengine.targets.wire import _TokenCache

    now = [0.0]
    cred = ExpiringTokens(lambda: now[0], lifetime_s=3600, fetch_s=0.05)
    cache = _TokenCache(cred, clock=lambda: now[0], margin_s=300)

    async def go() -> set[str]:
        await cache.header()
        now[0] += 3400  # inside the margin: every request now wants a new token
        return set(await asyncio.gather(*(cache.header() for _ in range(64))))

    assert run(go) == {"Bearer tok2"}
    assert cred.calls == 2


def test_a_refused_token_is_replaced_once_however_many_requests_were_refused_with_it() -> None:
    from pyengine.targets.wire import _TokenCache

    cred = ExpiringTokens(time.time, lifetime_s=3600, fetch_s=0.05)
    cache = _TokenCache(cred)

    async def go() -> set[str]:
        stale = await cache.header()
        await asyncio.gather(*(cache.refresh(stale) for _ in range(64)))
        return {await cache.header()}

    assert run(go) == {"Bearer tok2"}
    assert cred.calls == 2


def test_a_401_on_a_bearer_token_gets_one_new_token_and_one_more_try() -> None:
    refused = (401, {"x-ms-error-code": "InvalidAuthenticationInfo"})

    async def go() -> tuple[Scripted, ExpiringTokens]:
        cred = ExpiringTokens(time.time, lifetime_s=3600)
        async with (
            Scripted([refused]) as srv,
            BlobStore(parse_destination(srv.url), cred, retry=FAST_RETRY) as store,
        ):
            await store.put_blob("x", b"abc", crc64=0, metadata={})
        return srv, cred

    srv, cred = run(go)
    assert [r[2]["Authorization"] for r in srv.requests] == ["Bearer tok1", "Bearer tok2"]
    assert srv.requests[1][3] == b"abc"  # the body sent again whole
    assert cred.calls == 2


def test_a_second_401_after_a_new_token_is_a_one_line_auth_error_not_a_loop() -> None:
    refused = (401, {"x-ms-error-code": "InvalidAuthenticationInfo"})

    async def go() -> None:
        cred = ExpiringTokens(time.time, lifetime_s=3600)
        async with (
            Scripted([refused, refused, refused]) as srv,
            BlobStore(parse_destination(srv.url), cred, retry=FAST_RETRY) as store,
        ):
            try:
                await store.put_blob("x", b"abc", crc64=0, metadata={})
            finally:
                assert len(srv.requests) == 2 and cred.calls == 2

    with pytest.raises(AuthError, match=r"authentication failed \(401 InvalidAuthenticationInfo\)"):
        run(go)


# --- SAS expiry ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sas", "expiry"),
    [
        ("sv=2021-08-06&se=2026-01-02T03%3A04%3A05Z&sp=rw&sig=x", "2026-01-02T03:04:05+00:00"),
        ("se=2026-01-02T03:04:05.1234567Z", "2026-01-02T03:04:05.123456+00:00"),
        ("?sp=r&se=2026-01-02", "2026-01-02T00:00:00+00:00"),
        ("sp=r&sig=x", None),
        ("se=not-a-time", None),
    ],
)
def test_sas_expiry_reads_the_se_field(sas: str, expiry: str | None) -> None:
    from pyengine.targets.auth import sas_expiry

    got = sas_expiry(sas)
    assert (got.isoformat() if got is not None else None) == expiry
