"""Object stores and HTTP servers through obstore: Rust clients that release the GIL, so many
range GETs run at once from the loader's threads, each landing in the pinned ring.

Configuration and credentials come from the platform's usual places, which obstore reads itself:
- s3://  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, web identity
  (AWS_WEB_IDENTITY_TOKEN_FILE + AWS_ROLE_ARN), the ECS container endpoint, the instance role;
  AWS_PROFILE or ~/.aws/credentials through boto3 when it is installed; AWS_REGION;
  AWS_ENDPOINT_URL or AWS_ENDPOINT_URL_S3 for S3-compatible servers (path-style requests), with
  AWS_ALLOW_HTTP=true for a plain-HTTP endpoint.
- gs://  GOOGLE_APPLICATION_CREDENTIALS (or GOOGLE_SERVICE_ACCOUNT), gcloud's application default
  credentials, else the metadata server (GCE, GKE workload identity, Cloud Run).
- http(s)://  Range requests; no listing, so the loader asks for known file names.

Timeouts: a range request may take EMBER_REMOTE_TIMEOUT seconds in all (default 600: an 8 MiB
range at ~14 KB/s), so that a slow link still moves; a connection that sends nothing for
STALL_TIMEOUT_S is dropped and retried long before that.
"""

from __future__ import annotations

import os
import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import obstore
from obstore.exceptions import PermissionDeniedError, UnauthenticatedError
from obstore.store import GCSStore, HTTPStore, S3Store

from ember.errors import ModelLoadError
from ember.loader.source import MissingFileError, ReadTimeoutError, Source

if TYPE_CHECKING:
    from obstore.store import ClientConfig, ObjectStore, RetryConfig

S3_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, a web identity token or "
    "an instance role) for an identity that may read the bucket; for an S3-compatible server "
    "also AWS_ENDPOINT_URL (and AWS_ALLOW_HTTP=true for http://)"
)
GCS_HINT = (
    "set GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or run with workload "
    "identity / a service account that has roles/storage.objectViewer on the bucket"
)
HTTP_HINT = "check that the URL is public, or serves this file to this machine"

# Words in obstore's messages when no credential could be found or fetched (the AWS and GCE
# metadata endpoints, OAuth token exchange).
_CREDENTIAL_WORDS = (
    "credential",
    "/latest/api/token",
    "169.254.169.254",
    "metadata.google.internal",
    "oauth2",
)

REQUEST_TIMEOUT_S = 600.0
STALL_TIMEOUT_S = 30.0
TIMEOUT_ENV = "EMBER_REMOTE_TIMEOUT"

_RETRY: RetryConfig = {
    "max_retries": 4,
    "retry_timeout": timedelta(seconds=60),
    "backoff": {
        "init_backoff": timedelta(milliseconds=100),
        "max_backoff": timedelta(seconds=5),
        "base": 2,
    },
}


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


class ObjectStoreSource(Source):
    def __init__(
        self,
        uri: str,
        *,
        headers: dict[str, str] | None = None,
        hint: str | None = None,
        display: str | None = None,
    ) -> None:
        uri = uri.rstrip("/")
        self.uri = display or uri
        self.concurrency = 16
        self.alignment = 1
        scheme = uri.partition("://")[0]
        self._can_list = scheme in ("s3", "gs")
        self._s3 = scheme == "s3"
        self._hint = hint or _hint(scheme)
        self._store = _make_store(scheme, uri, headers or {})
        self._sizes: dict[str, int] = {}
        self._lock = threading.Lock()

    def list_files(self) -> list[str] | None:
        if not self._can_list:
            return None
        try:
            batches = obstore.list(self._store).collect()
        except Exception as exc:
            raise self._error(exc, "") from exc
        names: list[str] = []
        with self._lock:
            for meta in batches:
                names.append(meta["path"])
                self._sizes[meta["path"]] = meta["size"]
        return sorted(names)

    def size(self, name: str) -> int:
        with self._lock:
            size = self._sizes.get(name)
        if size is not None:
            return size
        try:
            size = obstore.head(self._store, name)["size"]
        except Exception as exc:
            raise self._error(exc, name) from exc
        with self._lock:
            self._sizes[name] = size
        return size

    def read_into(self, name: str, offset: int, out: memoryview) -> int:
        length = min(len(out), self.size(name) - offset)
        if length <= 0:
            return 0
        try:
            data = obstore.get_range(self._store, name, start=offset, length=length)
        except Exception as exc:
            raise self._error(exc, name) from exc
        view = memoryview(data)
        out[: view.nbytes] = view
        return view.nbytes

    def _error(self, exc: Exception, name: str) -> ModelLoadError:
        where = self.location(name) if name else self.uri
        first = _first_line(exc)
        if isinstance(exc, FileNotFoundError):
            return MissingFileError(f"'{where}' does not exist")
        text = str(exc)
        if _service_error(text)[0] == "NoSuchBucket":
            return MissingFileError(
                f"the bucket of '{self.uri}' does not exist; check the bucket's name in the URI"
                + (" and, for an S3-compatible server, AWS_ENDPOINT_URL" if self._s3 else "")
            )
        denied = isinstance(exc, PermissionDeniedError) or " 403 " in text
        unauthenticated = isinstance(exc, UnauthenticatedError) or " 401 " in text
        no_credentials = any(word in text for word in _CREDENTIAL_WORDS)
        if denied:
            return ModelLoadError(f"access to '{where}' was denied ({first}); {self._hint}")
        if unauthenticated or no_credentials:
            return ModelLoadError(f"cannot authenticate to '{where}' ({first}); {self._hint}")
        if "Range request not supported" in text:
            return ModelLoadError(
                f"cannot read '{where}': the server does not answer HTTP range requests (it "
                "sends whole files); ember reads weights in ranges, so serve the model from a "
                "server that supports them (nginx, a bucket's HTTP endpoint, ...) or copy the "
                "folder here and serve it from disk"
            )
        if "kind: Timeout" in text or "TimedOut" in text:
            return ReadTimeoutError(
                f"reading '{where}' timed out ({first}); for a slow link raise {TIMEOUT_ENV} "
                f"(seconds a request may take, default {REQUEST_TIMEOUT_S:g})"
            )
        return ModelLoadError(f"cannot read '{where}': {first}")


def _timeouts() -> ClientConfig:
    """obstore's whole-request timeout (30 s by default) would fail every range that a slow link
    cannot carry in 30 s, and with it every pull on that link: allow more for the whole request,
    and drop only connections that stall."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        total = float(raw) if raw else REQUEST_TIMEOUT_S
    except ValueError:
        total = -1.0
    if not 0 < total < float("inf"):
        raise ModelLoadError(f"{TIMEOUT_ENV}={raw!r} must be a number of seconds > 0")
    return {
        "timeout": timedelta(seconds=total),
        "read_timeout": timedelta(seconds=min(total, STALL_TIMEOUT_S)),
    }


def _make_store(scheme: str, uri: str, headers: dict[str, str]) -> ObjectStore:
    client: ClientConfig = _timeouts()
    if headers:
        client["default_headers"] = headers
    try:
        if scheme == "s3":
            return _s3_store(uri, client)
        if scheme == "gs":
            _check_gcs_key(uri)
            return GCSStore.from_url(uri, client_options=client, retry_config=_RETRY)
        client["allow_http"] = scheme == "http"
        return HTTPStore.from_url(uri, client_options=client, retry_config=_RETRY)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"cannot open '{uri}': {_first_line(exc)}; {_hint(scheme)}") from exc


def _hint(scheme: str) -> str:
    """What to set or check when a source of `scheme` refuses or cannot be opened."""
    return {"s3": S3_HINT, "gs": GCS_HINT}.get(scheme, HTTP_HINT)


def _first_line(exc: Exception) -> str:
    """obstore's first line says what went wrong; the rest is a debug dump of its Rust error.
    Where the line ends in the start of a service's XML error document, that document's code
    and message stand in for it."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = text.splitlines()[0]
    head, xml, _ = first.partition("<?xml")
    code, message = _service_error(text)
    if xml and code:
        return f"{head.rstrip(': ')}: {code}" + (f" ({message})" if message else "")
    return first


def _service_error(text: str) -> tuple[str, str]:
    """The Code and Message of an S3 / GCS XML error document within `text` ('' where none)."""
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    return (code.group(1) if code else "", message.group(1) if message else "")


def _check_gcs_key(uri: str) -> None:
    key = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS", "").strip()
    if key and not Path(key).expanduser().is_file():
        raise ModelLoadError(
            f"cannot open '{uri}': GOOGLE_APPLICATION_CREDENTIALS is '{key}', which is not a "
            "file; point it at a service-account key file, or unset it to use the metadata "
            "server's service account (workload identity)"
        )


def _s3_store(uri: str, client: ClientConfig) -> ObjectStore:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    allow_http = _truthy(os.environ.get("AWS_ALLOW_HTTP"))
    if endpoint and endpoint.startswith("http://") and not allow_http:
        raise ModelLoadError(
            f"cannot open '{uri}': the S3 endpoint {endpoint} is plain HTTP; set "
            "AWS_ALLOW_HTTP=true to allow it, or use an https:// endpoint"
        )
    client["allow_http"] = allow_http
    kwargs: dict[str, Any] = {}
    provider = _profile_credentials()
    if provider is not None:
        kwargs["credential_provider"] = provider
    return S3Store.from_url(uri, client_options=client, retry_config=_RETRY, **kwargs)


def _profile_credentials() -> Any:
    """boto3's credential chain, only where the environment names a profile or a shared
    credentials file exists and no keys are set: obstore reads keys, web identity and instance
    roles itself, but not ~/.aws files."""
    if os.environ.get("AWS_ACCESS_KEY_ID"):
        return None
    shared = os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or "~/.aws/credentials"
    if not os.environ.get("AWS_PROFILE") and not Path(shared).expanduser().is_file():
        return None
    try:
        import boto3
        from obstore.auth.boto3 import Boto3CredentialProvider
    except ImportError:
        return None
    return Boto3CredentialProvider(boto3.session.Session())
