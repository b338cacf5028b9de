"""A tiny in-memory blob store for tests of code above the repository."""

from pkvc.blobref import BlobRef
from pkvc.errors import BlobNotFoundError


class MemStore:
    """put / has / get over a dict, verifying refs like the repository does."""

    def __init__(self):
        self.blobs: dict[BlobRef, bytes] = {}
        self.puts = 0

    def put(self, data: bytes, refs=None) -> BlobRef:
        ref = BlobRef.of(data)
        self.puts += 1
        self.blobs.setdefault(ref, bytes(data))
        return ref

    def put_data(self, data: bytes, ref: BlobRef | None = None) -> BlobRef:
        stored = self.put(data)
        assert ref is None or ref == stored, "a put_data ref must be the data's"
        return stored

    def has(self, ref: BlobRef) -> bool:
        return ref in self.blobs

    def get(self, ref: BlobRef) -> bytes:
        try:
            return self.blobs[ref]
        except KeyError:
            raise BlobNotFoundError(f"no blob {ref}") from None
