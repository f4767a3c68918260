"""What only S3Store promises, and versioned publishing on it, against moto server over HTTP.

The store contract both backends keep (round trips, listing, missing keys, invalid keys,
conditional creates) runs on S3 too, from ``tests/unit/test_store.py``. Here: the client built
from the environment, the bucket shared with other prefixes, encryption on every object, the
server's own 412 and the 409 retry; then claims that never collide across clients and a pointer
that only moves to complete versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from adapters.layout import PublishError
from adapters.pointer import move_latest, promotion_history, read_latest
from adapters.store import PreconditionFailed, S3Store, store_from_uri
from adapters.versions import (
    claim_version,
    list_versions,
    publish_version,
    read_version_manifest,
    verify_version,
)
from tests.fixtures.moto import boto_client

pytestmark = pytest.mark.integration

MODEL = "limit_optimiser"


@pytest.fixture
def store(s3_store_uri: str) -> S3Store:
    return _stores(s3_store_uri, 1)[0]


def _head(store: S3Store, key: str) -> dict[str, Any]:
    client = boto_client("s3", store.client.meta.endpoint_url)
    return dict(client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}"))


def _stores(uri: str, count: int) -> list[S3Store]:
    """``count`` stores on ``uri``, each with a boto3 client (and connection pool) of its own."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    return [S3Store(uri, client=boto_client("s3", endpoint)) for _ in range(count)]


def _files(tmp_path: Path, tag: str = "a") -> dict[str, Path]:
    folder = tmp_path / f"files-{tag}"
    folder.mkdir(exist_ok=True)
    out = {}
    for name, data in {
        "model.tar.gz": f"weights {tag}".encode() * 500,
        "metrics.json": json.dumps({"mae": 1.5, "tag": tag}).encode(),
    }.items():
        (folder / name).write_bytes(data)
        out[name] = folder / name
    return out


# --- the store ----------------------------------------------------------------------------------


def test_store_from_uri_uses_the_environment_and_loopback(
    s3_store_uri: str,
    moto_server: str,
) -> None:
    # Built the way the pipeline builds it: from the URI and the environment alone.
    store = store_from_uri(s3_store_uri)
    assert isinstance(store, S3Store)
    # AWS_ENDPOINT_URL reached the client: nothing goes to real AWS.
    assert store.client.meta.endpoint_url == moto_server
    assert store.uri == s3_store_uri
    store.put_bytes("hello.txt", b"hi")
    assert store.get_bytes("hello.txt") == b"hi"


def test_list_leaves_out_objects_outside_the_store_prefix(store: S3Store) -> None:
    for key in ["m/b/2.json", "m/a/1.json", "mm/y.json", "n/x.json"]:
        store.put_bytes(key, b"1")
    # An object in the same bucket but outside the store's prefix is not the store's.
    boto_client("s3", store.client.meta.endpoint_url).put_object(
        Bucket=store.bucket, Key="elsewhere/z.json", Body=b"1"
    )
    assert store.list("") == ["m/a/1.json", "m/b/2.json", "mm/y.json", "n/x.json"]


def test_server_answers_412_to_if_none_match(store: S3Store) -> None:
    # The server itself refuses (not only our wrapper): the raw answer is 412 PreconditionFailed.
    client = boto_client("s3", store.client.meta.endpoint_url)
    client.put_object(Bucket=store.bucket, Key="raw", Body=b"1", IfNoneMatch="*")
    with pytest.raises(client.exceptions.ClientError) as info:
        client.put_object(Bucket=store.bucket, Key="raw", Body=b"2", IfNoneMatch="*")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"


def test_objects_are_encrypted_with_sse_s3_by_default(store: S3Store, tmp_path: Path) -> None:
    # moto applies no default encryption, so AES256 here is the store asking for it.
    src = tmp_path / "f"
    src.write_bytes(b"x" * 100)
    store.put_bytes("bytes", b"1")
    store.put_bytes("conditional", b"1", if_none_match=True)
    store.put_file("file", src)
    for key in ("bytes", "conditional", "file"):
        assert _head(store, key).get("ServerSideEncryption") == "AES256", key


def test_objects_are_encrypted_with_the_kms_key_when_given(
    s3_store_uri: str,
    tmp_path: Path,
) -> None:
    key_id = boto_client("kms", os.environ["AWS_ENDPOINT_URL"]).create_key(
        Description="model store"
    )["KeyMetadata"]["KeyId"]
    store = S3Store(s3_store_uri, kms_key_id=key_id)
    # Over 8 MiB: upload_file goes multipart, and every part must carry the key too.
    big = tmp_path / "big"
    big.write_bytes(b"\x00" * (9 << 20))
    store.put_bytes("small", b"1")
    store.put_bytes("claim", b"1", if_none_match=True)
    store.put_file("big", big)
    for key in ("small", "claim", "big"):
        head = _head(store, key)
        assert head.get("ServerSideEncryption") == "aws:kms", key
        # Real S3 answers with the key's ARN, moto with what was sent: both end with the id.
        assert str(head.get("SSEKMSKeyId", "")).endswith(key_id), key
    assert store.get_bytes("small") == b"1"


def test_conflict_409_is_retried_then_settled(s3_store_uri: str) -> None:
    # S3 answers 409 ConditionalRequestConflict while another conditional write of the key is in
    # flight; moto never does, so the answers are stubbed on a real client here.
    from botocore.stub import ANY, Stubber

    store = S3Store(s3_store_uri)
    store.put_bytes("warm", b"0")  # the check before the first write, on the real server
    params = {
        "Bucket": store.bucket,
        "Key": f"{store.prefix}/k",
        "Body": ANY,
        "IfNoneMatch": "*",
        "ServerSideEncryption": "AES256",
    }
    with Stubber(store.client) as stub:
        stub.add_client_error(
            "put_object", "ConditionalRequestConflict", http_status_code=409, expected_params=params
        )
        stub.add_response("put_object", {}, params)
        store.put_bytes("k", b"1", if_none_match=True)  # the retry wins
        stub.add_client_error(
            "put_object", "ConditionalRequestConflict", http_status_code=409, expected_params=params
        )
        stub.add_client_error(
            "put_object", "PreconditionFailed", http_status_code=412, expected_params=params
        )
        with pytest.raises(PreconditionFailed):  # the retry finds the other writer's object
            store.put_bytes("k", b"1", if_none_match=True)
        stub.assert_no_pending_responses()


# --- publishing on S3 ---------------------------------------------------------------------------


def test_publish_claim_verify_and_latest(store: S3Store, tmp_path: Path) -> None:
    files = _files(tmp_path, "a")
    v1 = publish_version(store, MODEL, files, {"snapshot_id": "s1"}, claimed_by={"flow": "f"})
    v2 = publish_version(store, MODEL, _files(tmp_path, "b"), {"snapshot_id": "s2"})
    assert (v1.version, v2.version) == ("v1", "v2")
    assert v1.uri == f"{store.uri}/models/{MODEL}/v1"
    for name, path in files.items():
        assert v1.manifest["files"][name]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert _head(store, f"models/{MODEL}/v1/{name}").get("ServerSideEncryption") == "AES256"
    assert read_version_manifest(store, MODEL, "v1") == v1.manifest

    manifest = verify_version(store, MODEL, "v1", tmp_path / "dl")
    assert manifest["lineage"] == {"snapshot_id": "s1"}
    assert (tmp_path / "dl" / "model.tar.gz").read_bytes() == files["model.tar.gz"].read_bytes()

    assert read_latest(store, MODEL) is None
    move_latest(store, MODEL, "v1", reason="first")
    latest = move_latest(store, MODEL, "v2", reason="better", extra={"mlflow_version": "2"})
    assert read_latest(store, MODEL) == latest
    assert latest["version"] == "v2" and latest["manifest_sha256"] == v2.manifest_sha256
    assert [(r["seq"], r["version"], r["previous"]) for r in promotion_history(store, MODEL)] == [
        (1, "v1", None),
        (2, "v2", "v1"),
    ]


def test_tampered_object_fails_verification(store: S3Store, tmp_path: Path) -> None:
    publish_version(store, MODEL, _files(tmp_path), {})
    key = f"models/{MODEL}/v1/metrics.json"
    store.put_bytes(key, store.get_bytes(key).replace(b"1.5", b"0.5"))
    with pytest.raises(PublishError, match=r"metrics\.json"):
        verify_version(store, MODEL, "v1", tmp_path / "dl")


def test_interrupted_publish_on_s3(store: S3Store, tmp_path: Path) -> None:
    claim_version(store, MODEL)
    store.put_bytes(f"models/{MODEL}/v1/model.tar.gz", b"half")
    assert list_versions(store, MODEL) == [{"version": "v1", "number": 1, "complete": False}]
    with pytest.raises(PublishError):
        read_version_manifest(store, MODEL, "v1")
    with pytest.raises(PublishError):
        move_latest(store, MODEL, "v1", reason="refused")
    assert read_latest(store, MODEL) is None and promotion_history(store, MODEL) == []
    assert publish_version(store, MODEL, _files(tmp_path), {}).version == "v2"


def test_concurrent_claims_across_clients_get_distinct_numbers(
    s3_store_uri: str,
) -> None:
    threads = 8
    stores = _stores(s3_store_uri, threads)
    barrier = threading.Barrier(threads)
    numbers: list[int] = []
    errors: list[BaseException] = []

    def claim(i: int) -> None:
        barrier.wait()
        try:
            numbers.append(claim_version(stores[i], MODEL, claimed_by={"worker": i}))
        except BaseException as exc:
            errors.append(exc)

    pool = [threading.Thread(target=claim, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors
    assert sorted(numbers) == list(range(1, threads + 1))
    owners = {
        json.loads(stores[0].get_bytes(f"models/{MODEL}/v{n}/claim.json"))["claimed_by"]["worker"]
        for n in numbers
    }
    assert owners == set(range(threads))


def test_concurrent_promotions_keep_every_record(s3_store_uri: str, tmp_path: Path) -> None:
    first = _stores(s3_store_uri, 1)[0]
    for tag in "abcd":
        publish_version(first, MODEL, _files(tmp_path, tag), {})
    versions = ["v1", "v2", "v3", "v4"]
    stores = _stores(s3_store_uri, len(versions))
    barrier = threading.Barrier(len(versions))

    def move(i: int) -> None:
        barrier.wait()
        move_latest(stores[i], MODEL, versions[i], reason="race")

    pool = [threading.Thread(target=move, args=(i,)) for i in range(len(versions))]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    history = promotion_history(first, MODEL)
    assert [r["seq"] for r in history] == [1, 2, 3, 4]
    assert sorted(r["version"] for r in history) == versions
