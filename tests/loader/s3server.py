"""An S3-compatible server on loopback (moto's server mode) holding model folders, and the
environment that points ember's S3 client at it with no other credential source reachable."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
from moto.server import ThreadedMotoServer

BUCKET = "ember-models"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str = BUCKET

    def upload(self, folder: Path, prefix: str) -> str:
        """Put every file of `folder` under s3://bucket/prefix/; returns that URI."""
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            key = f"{prefix}/{file.relative_to(folder).as_posix()}"
            client.put_object(Bucket=self.bucket, Key=key, Body=file.read_bytes())
        return f"s3://{self.bucket}/{prefix}"

    def env(self, tmp: Path, credentials: bool = True) -> dict[str, str]:
        """Variables for a process that reads from this server; without `credentials` no key
        is set and the instance-role lookup goes to a dead loopback port."""
        env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials"),
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
            "AWS_METADATA_ENDPOINT": f"http://127.0.0.1:{dead_port()}",
            "AWS_PROFILE": "",
        }
        if credentials:
            env |= {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
        return env


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_s3() -> Iterator[S3Server]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{server._server.server_port}"  # type: ignore[union-attr]
    s3 = S3Server(endpoint)
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        region_name="us-east-1",
    ).create_bucket(Bucket=BUCKET)
    try:
        yield s3
    finally:
        server.stop()
