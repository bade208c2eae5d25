"""The class list of a classification run, TAO's way.

TAO's classification_pyt numbers classes by the lines of a class-names file: ``dataset.classes_file``
when given, else ``<dataset.root_dir>/classes.txt`` when it exists, else the sorted class
subfolders of the training images. Foveal reads the same files but never writes one into the
dataset (TAO writes ``classes.txt`` there); the list travels in every checkpoint instead.
"""

from __future__ import annotations

from pathlib import Path

from foveal.errors import DatasetError

CLASSES_TXT = "classes.txt"


def read_classes_file(path: Path) -> list[str]:
    """One class name per line (line i = class i); blank lines are skipped.

    Raises:
        DatasetError: unreadable, empty, or a name given twice.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DatasetError(path, f"cannot read the class names: {exc.strerror or exc}") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise DatasetError(path, "holds no class names", "write one class name per line")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise DatasetError(path, f"names a class twice: {', '.join(repeated[:5])}", "keep one line per class")
    return names


def read_classes(
    classes_file: str | None, root_dir: str | None, train_root: Path
) -> tuple[list[str] | None, str | None]:
    """``(classes, where they came from)``; ``(None, None)`` means the sorted subfolders of ``train_root``.

    Raises:
        DatasetError: ``classes_file`` is set but missing, or a file is unusable.
    """
    if classes_file:
        path = Path(classes_file).expanduser()
        if not path.is_file():
            raise DatasetError(path, "dataset.classes_file not found", "check the path, or leave it empty")
        return read_classes_file(path), str(path)
    if root_dir:
        path = Path(root_dir).expanduser() / CLASSES_TXT
        if path.is_file():
            return read_classes_file(path), str(path)
    del train_root  # the dataset lists its own folders
    return None, None
