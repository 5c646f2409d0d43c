"""The first upload handler of every request: no body, files included, past DATA_UPLOAD_MAX_MEMORY_SIZE.

Django counts DATA_UPLOAD_MAX_MEMORY_SIZE against a request's fields only; the files of a multipart body are spooled
to disk whatever their size. This handler refuses such a body by its Content-Length before a byte is read, and
counts the bytes of each file as they come (a body sent without a length).
"""
from typing import Any

from django.conf import settings
from django.core.files.uploadhandler import FileUploadHandler

from .errors import TooLarge


def _refusal() -> TooLarge:
    return TooLarge(f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.",
                    code="request_too_large")


class BoundedUploadHandler(FileUploadHandler):
    def handle_raw_input(self, input_data: Any, META: dict[str, Any], content_length: int, boundary: bytes,
                         encoding: str | None = None) -> None:
        if content_length and content_length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise _refusal()

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        if start + len(raw_data) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise _refusal()
        return raw_data  # the next handlers keep the file

    def file_complete(self, file_size: int) -> None:
        return None
