"""One SHA-256 loop for checkpoints, model export and install."""
import hashlib
import io

from diffens_auto.hashing import copy_with_sha256, file_sha256


def test_sha256_of_files_and_copied_streams_is_hashlibs(tmp_path):
    data = bytes(range(256)) * 9000          # more than one block
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    copy = io.BytesIO()
    assert copy_with_sha256(io.BytesIO(data), copy) == (len(data), hashlib.sha256(data).hexdigest())
    assert copy.getvalue() == data
