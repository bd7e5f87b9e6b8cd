"""Layout resolution and file-name parsing shared by the dataset classes (private module)."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

from metareid.data.datasets.base import ImageRecord

__all__ = ["layout_error", "name_parser", "resolve_dataset_dir", "scan_folder"]


def layout_error(dataset: str, missing: Path, root: Path, layout: str) -> FileNotFoundError:
    """A ``FileNotFoundError`` that names the missing path and shows the expected layout."""
    return FileNotFoundError(
        f"{dataset}: '{missing}' does not exist.\nExpected layout under root '{root}':\n{layout}"
    )


def resolve_dataset_dir(
    dataset: str,
    root: str | Path,
    candidates: Sequence[str],
    required: Sequence[str],
    layout: str,
) -> Path:
    """Find the folder under ``root`` that holds every entry of ``required``.

    Args:
        dataset: dataset name for the messages.
        root: the dataset root given by the user.
        candidates: sub-folders of ``root`` to try, in order (``""`` is ``root`` itself).
        required: files or folders that the dataset folder must contain.
        layout: the expected layout, shown in the error.

    Returns:
        The first candidate folder that holds every required entry.

    Raises:
        FileNotFoundError: ``root`` does not exist, or no candidate is complete; the message
            names the first missing path of the first candidate.
    """
    root = Path(root)
    if not root.is_dir():
        raise layout_error(dataset, root, root, layout)
    first_missing: Path | None = None
    for candidate in candidates:
        folder = root / candidate
        missing = [folder / entry for entry in required if not (folder / entry).exists()]
        if not missing:
            return folder
        if first_missing is None:
            first_missing = missing[0]
    assert first_missing is not None
    raise layout_error(dataset, first_missing, root, layout)


def scan_folder(
    dataset: str,
    folder: Path,
    extensions: Sequence[str],
    parse: Callable[[str], tuple[int, int]],
    expected: str,
) -> list[ImageRecord]:
    """Records of every image directly inside ``folder``, sorted by file name.

    Args:
        dataset: dataset name for the messages.
        folder: the split folder.
        extensions: lower-case file extensions that count as images (other files are ignored,
            e.g. ``Thumbs.db``).
        parse: maps a file name to ``(pid, camid)`` with a 0-based camid, or raises
            ``ValueError`` naming the file.
        expected: an example of a valid file name, for the error about an empty folder.

    Raises:
        ValueError: the folder holds no image, or a file name does not parse.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)
    if not files:
        raise ValueError(
            f"{dataset}: no {'/'.join(extensions)} image in '{folder}'; expected files named "
            f"like '{expected}' directly inside it"
        )
    records = []
    failed: list[tuple[str, ValueError]] = []
    for path in files:
        try:
            pid, camid = parse(path.name)
        except ValueError as err:
            failed.append((path.name, err))
            continue
        records.append(ImageRecord(str(path), pid=pid, camid=camid, domain=0, orig_pid=pid))
    if failed:
        first = failed[0][1]
        if len(failed) == 1:
            raise first
        names = ", ".join(repr(name) for name, _ in failed[:5])
        more = f", ... ({len(failed)} in total)" if len(failed) > 5 else ""
        raise ValueError(
            f"{first}\n{len(failed)} of the {len(files)} image names in '{folder}' break the "
            f"pattern: {names}{more}"
        ) from first
    return records


def name_parser(
    dataset: str,
    pattern: re.Pattern[str],
    expected: str,
    num_cameras: int | None,
) -> Callable[[str], tuple[int, int]]:
    """A file-name parser for names whose stem matches ``pattern`` (groups: pid, camera).

    Cameras in the names are 1-based and must lie in ``1..num_cameras`` (unchecked when
    ``num_cameras`` is None); the parser returns 0-based camids.
    """

    def parse(name: str) -> tuple[int, int]:
        match = pattern.fullmatch(Path(name).stem)
        if match is None:
            raise ValueError(
                f"{dataset}: cannot parse the file name '{name}'; expected names like "
                f"'{expected}' (pattern {pattern.pattern})"
            )
        pid, camera = int(match.group(1)), int(match.group(2))
        if camera < 1 or (num_cameras is not None and camera > num_cameras):
            limit = "" if num_cameras is None else f"..{num_cameras}"
            raise ValueError(
                f"{dataset}: camera {camera} in the file name '{name}' is outside 1{limit}"
            )
        return pid, camera - 1

    return parse
