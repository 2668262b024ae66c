"""Result files: .npz archives of arrays plus JSON metadata that names their format, written
atomically (temporary file + rename), so a crash never leaves a half-written file."""

from __future__ import annotations

import json
import os

import numpy as np


def save_npz(path, fmt: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):  # else the error would name the temporary file
        raise FileNotFoundError(f"path: the folder {folder} of {path} does not exist")
    tmp = f"{path}.tmp-{os.getpid()}.npz"
    try:
        # numpy's stub lets a **dict reach savez's allow_pickle flag; these are all arrays
        np.savez(tmp, meta=np.array(json.dumps({"format": fmt, **meta})), **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_npz(path, fmt: str, what: str) -> tuple[dict, dict[str, np.ndarray]]:
    """(metadata without its format, arrays) of a file written by save_npz with `fmt`;
    ValueError naming `path` for any other file."""
    # the file opened here, so that it is closed even when np.load cannot read it
    with open(os.fspath(path), "rb") as fh:
        try:
            z = np.load(fh, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:  # numpy's pickle hint stays out
            raise ValueError(f"path: {path} is not {what} (not an .npz archive)") from exc
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"path: {path} is not {what} (a single .npy array)")
        with z:
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
            if meta.pop("format", None) != fmt:
                raise ValueError(f"path: {path} is not {what}")
            return meta, {k: z[k] for k in z.files if k != "meta"}
