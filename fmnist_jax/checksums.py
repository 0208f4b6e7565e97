"""What a run read, as its records name it (`dataset_checksums` in checkpoints, fit.json and results.json): each IDX
file's SHA-256, of its content, or TFDS's one digest of all its splits; and how two readings differ. The checks of a
run's data against the files read now, a comparison's named runs and the report's pairs all go through here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
TFDS_PREFIX = "tfds:"  # TFDS's digest, of every split at once


def by_content(sums: Mapping[str, str] | None) -> dict[str, str]:
    """A record's checksums as this version names them. Records before 2026-12-06 named each file as it was found,
    with the SHA-256 of its bytes as stored: a gzip file's (which depend on its compressor) are left out, a raw file's
    (its content's, as now) kept under its stem (`t10k-images.idx3-ubyte` as `t10k-images-idx3-ubyte`)."""
    return {k.replace(".idx", "-idx"): v for k, v in (sums or {}).items() if not k.endswith(".gz")}


def source(sums: Mapping[str, str] | None) -> str | None:
    """What a record read: "tfds" (TFDS's arrays), "idx" (IDX files, in any record's naming), None (no record)."""
    if not sums:
        return None
    return "tfds" if _tfds(sums) else "idx"


def _tfds(names: Iterable[str]) -> bool:
    """Whether checksums' `names` hold TFDS's digest."""
    return any(k.startswith(TFDS_PREFIX) for k in names)


def _two_sources(before: Mapping[str, str] | None, now: Mapping[str, str] | None) -> bool:
    """Whether two records read two sources (decided on the records as written: an older one's gzip files are IDX)."""
    return None not in (source(before), source(now)) and source(before) != source(now)


def differing(before: Mapping[str, str] | None, now: Mapping[str, str] | None) -> list[str]:
    """The files (checksums' names, as `by_content` has them) whose content differs between two readings, `before` a
    run's record of them (empty in one older than the record, or holding only gzip files' sums: nothing to compare).
    Two readings of two sources (IDX files, TFDS's arrays: `source`) give the images in other orders, so that a seed's
    split differs: then every one of `now`'s (as written, where `by_content` keeps none of them)."""
    if _two_sources(before, now):
        return sorted(by_content(now) or now or {})
    before, now = by_content(before), by_content(now)
    return sorted(name for name in before.keys() & now.keys() if before[name] != now[name])


def other_source(before: Mapping[str, str] | None, now: Mapping[str, str] | None) -> str | None:
    """Where `differing`'s two readings of one run's data came from two sources: a clause saying so, for an error;
    else None."""
    if not _two_sources(before, now):
        return None
    return (
        f"it read them as {' and '.join(sorted(before or {}))}, not as {' and '.join(sorted(now or {}))}: another "
        "source gives the images in another order, so the seed's split differs (its validation images would be ones "
        "it trained on)"
    )


def what_differs(before: Mapping[str, str] | None, now: Mapping[str, str] | None) -> str | None:
    """How two readings (`differing`'s) differ, as a clause: another source (`other_source`), or the files whose
    content differs; None where they do not."""
    if differ := differing(before, now):
        if other := other_source(before, now):
            return other
        if _tfds(differ):
            return "TFDS's arrays differ, by their SHA-256: one digest of every split"
        return f"{', '.join(differ)} differ, by content's SHA-256"
    return None


def other_test_images(a: Mapping[str, str] | None, b: Mapping[str, str] | None) -> str | None:
    """Whether two readings hold other test images, for pairing runs scored on them: a clause saying how (test files
    whose content differs, TFDS's digest differing, or two sources, whose test images come in other orders); None
    where they agree or cannot be told apart (a record without checksums)."""
    if _two_sources(a, b):
        return f"read from {source(a)} and from {source(b)}, whose test images come in other orders"
    differ = differing(a, b)
    if _tfds(differ):  # one digest of every split: the test split's may differ
        return "TFDS's arrays differ, by their SHA-256: one digest of every split, the test split's among them"
    differ = [k for k in differ if k in TEST_FILES]
    return f"{', '.join(differ)} differ, by content's SHA-256" if differ else None
