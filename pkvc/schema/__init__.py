"""Perkeep schema blobs: pure builders and parsers, no I/O.

Terms: a *schema blob* is a JSON object with a `camliVersion` key, written
in Perkeep's canonical form (`canonical.py`) so that pkvc and Perkeep give
the same bytes, hence the same blobref, for the same content. A *part* is a
byte range of a `file` or `bytes` blob. Each module covers one idea:

- `canonical`  Go-compatible JSON writer and the tolerant schema reader
- `timefmt`    RFC 3339 times as Perkeep writes them (ns precision)
- `names`      file names and symlink targets that are not UTF-8
- `parts`      `bytes` blobs and the `parts` list shared with `file`
- `fsnodes`    `file`, `directory`, `symlink`, `fifo`, `socket` + Unix metadata
- `staticset`  `static-set` (members, or mergeSets above 10,000)
- `claims`     unsigned `permanode` and `claim` bodies (signing is jsonsign's)
- `anyblob`    parse any schema blob to its typed object; list its refs
"""
