"""The reason a 401/403 gets (issue 16 item 1): a signature mismatch says so and points at what may
have altered the headers, and never echoes the service's string-to-sign (metadata values)."""

from __future__ import annotations

from pyengine.targets.wire import auth_failure_reason

#: Azure's answer to a SharedKey request whose signature it computed differently (the shape of
#: the service's error body; the string-to-sign carries a metadata value to show it never leaks)
AZURE_MAC_MISMATCH = b"""<?xml version="1.0" encoding="utf-8"?>
<Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request. \
Make sure the value of Authorization header is formed correctly including the signature.
RequestId:6c3fb2e4-c01e-0055-2dff-b6fe70000000
Time:2026-11-26T10:21:15.0792948Z</Message><AuthenticationErrorDetail>The MAC signature found \
in the HTTP request 'dLkuH2awDsULG+Y9PNVZv+s5nwc9KwpkQYc1Wn2JCJs=' is not the same as any \
computed signature. Server used following string to sign: 'PUT


1048576







x-ms-blob-type:BlockBlob
x-ms-date:Thu, 26 Nov 2026 10:21:14 GMT
x-ms-meta-pyenginejobid:SECRETVALUE
x-ms-version:2021-08-06
/acct/images/study/img0001.dcm'.</AuthenticationErrorDetail></Error>"""

#: Azure's answer to a request dated too far from its clock: AuthenticationFailed, no mismatch
AZURE_CLOCK_SKEW = b"""<?xml version="1.0" encoding="utf-8"?>
<Error><Code>AuthenticationFailed</Code><Message>Server failed to authenticate the request. \
Make sure the value of Authorization header is formed correctly including the signature.
RequestId:6c3fb2e4-c01e-0055-2dff-b6fe70000001
Time:2026-11-26T10:21:15.0792948Z</Message><AuthenticationErrorDetail>Request date header too \
old: 'Thu, 26 Nov 2026 09:00:00 GMT'</AuthenticationErrorDetail></Error>"""

#: Azurite's answer to a wrong SharedKey signature (recorded from Azurite 3.35)
AZURITE_BAD_SIGNATURE = b"""<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Error>
  <Code>AuthorizationFailure</Code>
  <Message>Server failed to authenticate the request. Make sure the value of the Authorization \
header is formed correctly including the signature.
RequestId:3681502f-9557-41b3-ba3f-49ab8fa944c1
Time:2026-11-26T10:25:21.147Z</Message>
</Error>"""


def test_azure_mac_mismatch_names_a_signature_mismatch_and_altered_headers() -> None:
    reason = auth_failure_reason(403, "AuthenticationFailed", AZURE_MAC_MISMATCH, shared_key=True)
    assert reason.startswith(
        "authentication failed, signature mismatch (403 AuthenticationFailed): "
    )
    assert "altered or dropped headers" in reason
    assert "nginx drops header names holding '_'" in reason
    assert "account key is wrong" in reason


def test_signature_mismatch_reason_never_echoes_the_string_to_sign() -> None:
    reason = auth_failure_reason(403, "AuthenticationFailed", AZURE_MAC_MISMATCH, shared_key=True)
    assert "SECRETVALUE" not in reason
    assert "img0001" not in reason
    assert "dLkuH2aw" not in reason
    assert "\n" not in reason


def test_azurite_authorization_failure_with_a_shared_key_is_a_signature_mismatch() -> None:
    reason = auth_failure_reason(
        403, "AuthorizationFailure", AZURITE_BAD_SIGNATURE, shared_key=True
    )
    assert reason.startswith(
        "authentication failed, signature mismatch (403 AuthorizationFailure): "
    )


def test_azurite_authorization_failure_with_a_sas_keeps_the_plain_auth_message() -> None:
    # a SAS signs its query, not the headers: a proxy cannot break it by dropping a header
    reason = auth_failure_reason(
        403, "AuthorizationFailure", AZURITE_BAD_SIGNATURE, shared_key=False
    )
    assert reason == "authentication failed (403 AuthorizationFailure): check the account key / SAS"


def test_other_authentication_failures_keep_the_plain_auth_message() -> None:
    assert auth_failure_reason(403, "AuthenticationFailed", AZURE_CLOCK_SKEW, shared_key=True) == (
        "authentication failed (403 AuthenticationFailed): check the account key / SAS"
    )
    assert auth_failure_reason(401, "InvalidAuthenticationInfo", b"", shared_key=False) == (
        "authentication failed (401 InvalidAuthenticationInfo): check the account key / SAS"
    )
    assert auth_failure_reason(403, "AuthenticationFailed", b"<not xml", shared_key=True) == (
        "authentication failed (403 AuthenticationFailed): check the account key / SAS"
    )
