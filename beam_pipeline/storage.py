"""Files that may be local or on Cloud Storage, handled one object at a time.

Beam's FileSystems reads, matches and creates files everywhere; this module
adds what dpsynth needs beyond that: whether a bucket exists (so a wrong
bucket is a one-line error), and copying and deleting object by object with
google-cloud-storage. Beam's GCS rename and delete go through the JSON batch
API; a handful of output files needs no batching, and single-object calls
behave the same on Cloud Storage and on the emulator the tests run on.

google-cloud-storage honours STORAGE_EMULATOR_HOST (and then connects
anonymously), so everything here runs unchanged against an emulator.
"""

from __future__ import annotations

import functools
import os
import shutil

GCS_SCHEME = "gs://"


class StorageError(ValueError):
    """A path that cannot be used; the message is one line."""


def is_gcs(path: str) -> bool:
    return str(path).startswith(GCS_SCHEME)


def split_gcs(path: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_gcs(path):
        raise ValueError(f"Not a gs:// path: {path}")
    bucket, _, name = path[len(GCS_SCHEME):].partition("/")
    if not bucket:
        raise StorageError(f"{path} names no bucket")
    return bucket, name


@functools.lru_cache(maxsize=1)
def gcs_client():
    """One client per process: application-default credentials, or anonymous
    on an emulator (STORAGE_EMULATOR_HOST) or, like Beam, when there are none."""
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    try:
        return storage.Client()
    except DefaultCredentialsError:
        return storage.Client.create_anonymous_client()


def check_bucket(path: str, option: str) -> None:
    """A one-line StorageError if the bucket of a gs:// path does not exist."""
    if not is_gcs(path):
        return
    bucket, _ = split_gcs(path)
    try:
        exists = gcs_client().lookup_bucket(bucket) is not None
    except Exception as error:  # noqa: BLE001 - permissions, network: all one line
        raise StorageError(f"cannot reach the bucket of {option} {path}: "
                           f"{first_line(error)}") from None
    if not exists:
        raise StorageError(f"the bucket gs://{bucket} of {option} {path} does not exist")


def list_files(directory: str) -> list[str]:
    """Full paths of the files directly under a directory (local or gs://)."""
    if is_gcs(directory):
        bucket, prefix = split_gcs(directory.rstrip("/") + "/")
        blobs = gcs_client().list_blobs(bucket, prefix=prefix, delimiter="/")
        return sorted(f"{GCS_SCHEME}{bucket}/{blob.name}" for blob in blobs
                      if not blob.name.endswith("/"))
    if not os.path.isdir(directory):
        return []
    return sorted(os.path.join(directory, name) for name in os.listdir(directory)
                  if os.path.isfile(os.path.join(directory, name)))


def move(source: str, destination: str) -> None:
    """Moves one file; on Cloud Storage a copy then a delete of the source."""
    if is_gcs(source) != is_gcs(destination):
        raise ValueError("move stays on one filesystem")
    if is_gcs(source):
        client = gcs_client()
        src_bucket, src_name = split_gcs(source)
        dst_bucket, dst_name = split_gcs(destination)
        bucket = client.bucket(src_bucket)
        bucket.copy_blob(bucket.blob(src_name), client.bucket(dst_bucket), dst_name)
        _delete_gcs(source)
    else:
        os.makedirs(os.path.dirname(destination) or ".", exist_ok=True)
        os.replace(source, destination)


def delete(path: str) -> None:
    """Deletes a file if it exists."""
    if is_gcs(path):
        _delete_gcs(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.exists(path):
        os.remove(path)


def _delete_gcs(path: str) -> None:
    from google.api_core import exceptions

    bucket, name = split_gcs(path)
    try:
        gcs_client().bucket(bucket).blob(name).delete()
    except exceptions.NotFound:
        pass


def join(directory: str, name: str) -> str:
    return directory.rstrip("/") + "/" + name


def first_line(error) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
