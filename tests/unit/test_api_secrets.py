"""decode_secret and decode_ca accept what they should (the bad inputs are rows of test_bad_input)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from vtpm_operator.connection import decode_ca, decode_secret
from vtpm_operator.problems import PolicyProblem, ProblemReason


def b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


def test_credentials_are_decoded_exactly() -> None:
    data = {"username": b64(b"svc@vsphere.local"), "password": b64("pä ss\tword ".encode())}
    assert decode_secret("creds", data) == ("svc@vsphere.local", "pä ss\tword ")  # inner whitespace kept


def test_a_value_that_is_not_base64_is_named() -> None:
    with pytest.raises(PolicyProblem) as caught:
        decode_secret("creds", {"username": b64(b"u"), "password": "not*base64!"})
    assert caught.value.reason is ProblemReason.INVALID_SECRET
    assert caught.value.message == "Secret creds: key password is not valid base64"


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    where: Path = tmp_path_factory.mktemp("ca")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "1", "-subj", "/CN=test-ca"],
        cwd=where, check=True, capture_output=True,
    )  # fmt: skip
    return (where / "ca.crt").read_bytes()


def test_a_pem_bundle_is_returned_as_text(ca_pem: bytes) -> None:
    bundle = ca_pem + ca_pem
    assert decode_ca("ca", {"ca.crt": b64(bundle)}) == bundle.decode()


def test_text_that_merely_starts_like_der_is_not_called_der() -> None:
    with pytest.raises(PolicyProblem) as caught:
        decode_ca("ca", {"ca.crt": b64(b"0 certificates here")})
    assert "no PEM certificate" in caught.value.message
