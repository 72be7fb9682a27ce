"""A prepared image store: decoded, resized uint8 images that training reads by memory mapping.

Layout of a store folder (generic: the PRS streams COCOseq and NUS-WIDEseq, the single-task streams)::

    images.npy   uint8 [N, 3, H, W]   opened with np.load(mmap_mode="r"): no per-epoch JPEG decoding
                                      (H = W = S for square stores; pedestrian stores are 256 x 192)
    labels.npy   uint8 [N, M]         multi-hot rows, same order as images.npy
    ignore.npy   uint8 [N, M]         optional: (image, class) pairs to leave out of evaluation
                                      (VOC's "difficult" labels); only where a builder gives them
    index.json   per part (split, task): row range, image ids, per-class counts, bad images;
                 class names, builder name and version, format version, builder-specific info

A store is built in a hidden sibling folder ``.<name>.partial`` and renamed into place only once
``index.json`` (written last) is there, so a folder named like the store is always complete. Images
are written in chunks of rows, in order, and ``progress.json`` records the rows done after each
chunk is on disk: an interrupted build (Ctrl-C, crash, reboot) continues where it stopped when it is
run again with the same plan. The image file is allocated in full before the first write, so a full
disk fails at once with a clear error instead of half way (or, for memory-mapped writes, with a
SIGBUS); on ENOSPC the partial folder is removed so nothing that looks like a store is left behind.
"""
from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

FORMAT_VERSION = 1
INDEX = "index.json"
PROGRESS = "progress.json"


class StoreVersionError(ValueError):
    """The store was written by another format or builder version than this code reads."""


class StoreSpaceError(OSError, ValueError):
    """The disk filled up while writing a store (errno ENOSPC); a ValueError too, so the command
    line prints it as one line."""


class StoreDamagedError(ValueError):
    """A store's files are cut short or unreadable (a copy that stopped half way, a full disk)."""


class BadImagesError(ValueError):
    """Some source images are missing, unreadable or truncated (and skipping was not asked for)."""


@dataclass
class StorePart:
    """One (split, task) block of rows to write.

    Attributes:
        split: ``train`` / ``test`` (any name).
        task: the dataset's own task id (not the stream position).
        ids: the dataset's image ids, one per row.
        paths: the image file of each row.
        labels: uint8 multi-hot ``[len(ids), M]``.
        ignore: optional 0/1 ``[len(ids), M]``: pairs to leave out of evaluation (written to
            ``ignore.npy`` when any part has one).
    """

    split: str
    task: int
    ids: Sequence[Any]
    paths: Sequence[str]
    labels: np.ndarray
    ignore: np.ndarray | None = None


@dataclass
class Store:
    """An opened, complete store. ``images``, ``labels`` (and ``ignore``, None when the store has
    none) are read-only memory maps."""

    path: Path
    index: dict[str, Any]
    images: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.index["class_names"])

    def part(self, split: str, task: int) -> dict[str, Any]:
        for part in self.index["parts"]:
            if part["split"] == split and part["task"] == task:
                return part
        raise KeyError(f"Store '{self.path}' has no part split={split!r} task={task}.")

    def rows(self, split: str, task: int) -> np.ndarray:
        """Row numbers of a part, bad (skipped) images left out."""
        part = self.part(split, task)
        bad = {b["row"] for b in part["bad"]}
        return np.array([r for r in range(part["start"], part["stop"]) if r not in bad], dtype=np.int64)


class MemmapRows:
    """Read-only view of some rows of an ``.npy`` file, opened lazily by memory mapping.

    Indexing returns a private copy of one row (a writable array, so ``torch.as_tensor`` neither
    warns nor aliases the map). Pickling (DataLoader workers with spawn, checkpoints) carries only
    the path and row numbers, never the image data.
    """

    def __init__(self, path: str | Path, rows: np.ndarray):
        self.path = str(path)
        self.rows = np.asarray(rows, dtype=np.int64)
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return np.array(self._array[self.rows[index]])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "rows": self.rows, "_array": None}


Size = int | tuple[int, int]  # a square side, or (height, width)


def image_shape(size: Size) -> tuple[int, int]:
    """``(height, width)`` of a store's images from its ``size`` (a side, or a pair)."""
    if isinstance(size, (int, np.integer)):
        return int(size), int(size)
    h, w = size
    return int(h), int(w)


def read_image(path: str | Path, size: Size) -> np.ndarray:
    """Decode an image file to uint8 ``[3, H, W]`` (RGB, bilinear resize, no crop: PRS's way).

    ``size`` is the side of a square image or ``(height, width)``.

    Raises ``FileNotFoundError`` for a missing file and ``OSError`` for an unreadable or truncated
    one (Pillow reports truncation when the pixels are loaded, hence the explicit ``load``).
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        h, w = image_shape(size)
        img = img.convert("RGB").resize((w, h), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy()


def _write_rows(fh, offset: int, block: np.ndarray) -> None:
    """Write a block of rows at a byte offset of the open image file (a seam for tests)."""
    fh.seek(offset)
    fh.write(np.ascontiguousarray(block).tobytes())


def _atomic_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _fingerprint(parts: Sequence[StorePart], class_names: Sequence[str], size: Size, builder: str,
                 builder_version: int) -> str:
    """Hash of everything that determines the store's contents (resume only onto the same plan)."""
    digest = hashlib.sha1(json.dumps([FORMAT_VERSION, builder, builder_version, size, list(class_names)])
                          .encode())
    for part in parts:
        digest.update(json.dumps([part.split, part.task, [str(i) for i in part.ids],
                                  [str(p) for p in part.paths]]).encode())
        digest.update(np.ascontiguousarray(part.labels, dtype=np.uint8).tobytes())
        if part.ignore is not None:  # only then: stores without a mask keep their fingerprint
            digest.update(b"ignore" + np.ascontiguousarray(part.ignore, dtype=np.uint8).tobytes())
    return digest.hexdigest()


def partial_path(out: Path) -> Path:
    """Where a store is assembled before it is renamed into place (same filesystem: atomic rename)."""
    return out.parent / f".{out.name}.partial"


def open_store(path: str | Path, builder: str | None = None, builder_version: int | None = None,
               rebuild_hint: str | None = None) -> Store:
    """Open a complete store, checking its format (and builder) version.

    Raises:
        FileNotFoundError: no folder, or no ``index.json`` (an incomplete build is never renamed
            into place, so this means the folder is not a store).
        StoreVersionError: written by another format or builder version; the message says how to
            rebuild (``rebuild_hint``; default: the ``data prepare`` command of the store's builder).
        StoreDamagedError: ``index.json`` or an array file is cut short or unreadable.
    """
    path = Path(path)
    if rebuild_hint is None:
        rebuild_hint = f"rebuild it with `python -m cml_bench data prepare {builder or '<dataset>'} ... --out {path} " \
                       f"--force`"
    hint = f" (an interrupted build is kept beside it in {partial_path(path).name}; run prepare again to " \
           f"finish it)" if partial_path(path).is_dir() else ""
    if not path.is_dir():
        raise FileNotFoundError(f"Store folder '{path}' does not exist{hint}.")
    if not (path / INDEX).is_file():
        raise FileNotFoundError(f"'{path}' is not a complete store: {INDEX} is missing{hint}.")
    try:
        index = json.loads((path / INDEX).read_text())
    except ValueError as err:
        raise StoreDamagedError(f"Store '{path}' is damaged: {INDEX} is not valid JSON ({err}); {rebuild_hint}.") \
            from None
    if not isinstance(index, dict):
        raise StoreDamagedError(f"Store '{path}' is damaged: {INDEX} does not hold a mapping; {rebuild_hint}.")
    found = (index.get("format_version"), index.get("builder"), index.get("builder_version"))
    wanted = (FORMAT_VERSION, builder or found[1], builder_version if builder_version is not None else found[2])
    if found != wanted:
        raise StoreVersionError(
            f"Store '{path}' was written by builder {found[1]!r} version {found[2]} (store format "
            f"{found[0]}); this cml_bench reads builder {wanted[1]!r} version {wanted[2]} (format "
            f"{wanted[0]}): {rebuild_hint}.")
    images = _load_array(path, "images.npy", rebuild_hint)
    labels = _load_array(path, "labels.npy", rebuild_hint)
    if images.shape[0] != index["num_rows"] or labels.shape[0] != index["num_rows"]:
        raise StoreDamagedError(f"Store '{path}' is damaged: index.json lists {index['num_rows']} rows, "
                                f"images.npy has {images.shape[0]}, labels.npy {labels.shape[0]}; {rebuild_hint}.")
    ignore = _load_array(path, "ignore.npy", rebuild_hint) if (path / "ignore.npy").is_file() else None
    return Store(path, index, images, labels, ignore)


def _load_array(path: Path, name: str, rebuild_hint: str) -> np.ndarray:
    """A store's ``.npy`` file, memory-mapped; a missing or cut file is a one-line StoreDamagedError."""
    if not (path / name).is_file():
        raise StoreDamagedError(f"Store '{path}' is damaged: {name} is missing; {rebuild_hint}.")
    try:
        return np.load(path / name, mmap_mode="r")
    except (ValueError, EOFError, OSError) as err:  # numpy: "mmap length is greater than file size", "EOF: ..."
        size = (path / name).stat().st_size
        raise StoreDamagedError(f"Store '{path}' is damaged: {name} is truncated or not a .npy file ({size:,} "
                                f"bytes; {err}); {rebuild_hint}.") from None


@dataclass
class BuildResult:
    """What ``write_store`` did: the opened store, and whether it was reused unchanged."""

    store: Store
    reused: bool = False
    resumed_from_row: int = 0
    bad: list[dict[str, Any]] = field(default_factory=list)  # row, id, path, reason, split, task

    def note(self, out: str | Path) -> str:
        """One line for the preparation report: written, resumed or reused."""
        if self.reused:
            return f"{out} already complete for these inputs, reused (--force rebuilds it)"
        if self.resumed_from_row:
            return f"{out} written, resumed from row {self.resumed_from_row:,}"
        return f"{out} written"


def require_folders(paths: Sequence[str], hint: Callable[[Path], str]) -> None:
    """Stop before any decoding when a whole image folder is missing; ``hint(folder)`` says how to get it."""
    for folder in sorted({Path(p).parent for p in paths}):
        if not folder.is_dir():
            raise FileNotFoundError(f"Image folder '{folder}' not found: {hint(folder)}.")


def open_prepared_store(root: str | Path | None, builder: str, builder_version: int, prepare_hint: str,
                        what: str | None = None) -> Store:
    """Open the store a benchmark's ``root`` option names, with errors that say how to prepare it."""
    what = what or builder
    if root is None:
        raise ValueError(f"benchmark.options.root is not set: prepare the {what} store with `{prepare_hint}`, "
                         f"then pass --set benchmark.options.root=STORE.")
    if not Path(root).is_dir():
        again = " (an interrupted preparation is beside it: run the same prepare command again to finish it)" \
            if partial_path(Path(root)).is_dir() else ""
        raise FileNotFoundError(f"{what} store '{root}' does not exist{again}: prepare it with `{prepare_hint}`.")
    return open_store(root, builder, builder_version, rebuild_hint=f"rebuild it with `{prepare_hint} --force`")


def write_store(out: str | Path, parts: Sequence[StorePart], class_names: Sequence[str], *, builder: str,
                builder_version: int, size: Size = 256, info: dict[str, Any] | None = None,
                skip_bad_images: bool = False, skip_missing: bool = False, force: bool = False,
                chunk_rows: int = 256,
                progress: Callable[[int, int], None] | None = None,
                reader: Callable[[str, int], np.ndarray] = read_image) -> BuildResult:
    """Build (or resume, or reuse) the store at ``out``.

    Args:
        out: the store folder to create.
        parts: the rows, part by part; row ranges follow this order.
        class_names: the M label columns.
        builder, builder_version: who wrote the store; opening checks them.
        size: image side in pixels, or ``(height, width)``.
        info: builder-specific JSON (groups, reports), stored in the index.
        skip_bad_images: keep going past missing / unreadable / truncated images (they are listed
            in the index and left out of every dataset); otherwise every image is still read, so the
            list is complete, and then ``BadImagesError`` stops the build before it is published
            (running again with ``skip_bad_images=True`` resumes without reading anything twice).
        skip_missing: leave out missing files without stopping (datasets whose protocol expects
            some, like NUS-WIDE's dead URLs); unreadable ones still stop unless ``skip_bad_images``.
        force: replace an existing store (of any version, or built from another plan).
        chunk_rows: rows per committed chunk (the resume granularity).
        progress: called as ``progress(rows_done, num_rows)`` after each committed chunk.
        reader: ``reader(path, size) -> uint8 [3, H, W]``.
    """
    out = Path(out)
    num_rows = sum(len(p.ids) for p in parts)
    num_classes = len(class_names)
    fp = _fingerprint(parts, class_names, size, builder, builder_version)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"'{out}' is a file, not a store folder: choose another --out.")
    if out.exists():
        if not (out / INDEX).is_file() and not (out / "images.npy").is_file() and any(out.iterdir()):
            # --force replaces stores only: a mistyped --out must never delete someone's folder
            raise FileExistsError(f"'{out}' exists and is not a store (no {INDEX}); choose another --out "
                                  f"or remove it yourself.")
        try:
            existing = open_store(out, builder, builder_version)
            same = existing.index.get("fingerprint") == fp
        except (FileNotFoundError, StoreVersionError, ValueError):
            existing, same = None, False
        if same and not force:
            return BuildResult(existing, reused=True, bad=_all_bad(existing.index))
        if not force:
            what = "an older or other version of the store" if existing is None else "a store built from other inputs"
            raise FileExistsError(f"'{out}' already holds {what}; pass --force to rebuild it (the old "
                                  f"store is replaced only once the new one is complete).")
    tmp = partial_path(out)
    state = _load_progress(tmp, fp)
    if state is None:
        shutil.rmtree(tmp, ignore_errors=True)
        state = {"fingerprint": fp, "rows_done": 0, "bad": []}
    resumed_from = state["rows_done"]
    try:
        if resumed_from == 0:
            _allocate(tmp, num_rows, size, num_classes, parts)
            _atomic_json(tmp / PROGRESS, state)
        _fill(tmp, parts, size, state, chunk_rows, progress, reader)
        stopping = [b for b in state["bad"] if not (skip_missing and b["reason"] == "missing")]
        if stopping and not skip_bad_images:
            raise BadImagesError(_bad_message(stopping, tmp))
        index = _index(parts, class_names, builder, builder_version, size, info or {}, state, fp)
        _atomic_json(tmp / INDEX, index)  # the index is written last: its presence means complete
        (tmp / PROGRESS).unlink()
        _publish(tmp, out)
    except OSError as err:
        if err.errno == errno.ENOSPC:
            shutil.rmtree(tmp, ignore_errors=True)  # free the space; nothing half-written remains
            need = num_rows * 3 * np.prod(image_shape(size)) / 1e9
            raise StoreSpaceError(errno.ENOSPC, f"No space left on the device while writing the store '{out}' "
                                        f"(it needs about {need:.1f} GB); nothing was kept: free space "
                                        f"and run prepare again") from err
        raise
    store = open_store(out, builder, builder_version)
    return BuildResult(store, resumed_from_row=resumed_from, bad=_all_bad(store.index))


def _all_bad(index: dict[str, Any]) -> list[dict[str, Any]]:
    """Every image left out of a store, in row order, each with the split and task of its part."""
    return [{**b, "split": part["split"], "task": part["task"]} for part in index["parts"] for b in part["bad"]]


def _load_progress(tmp: Path, fp: str) -> dict[str, Any] | None:
    """The saved progress of an interrupted build of the same plan, or None to start afresh."""
    try:
        state = json.loads((tmp / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    if state.get("fingerprint") != fp or not (tmp / "images.npy").is_file():
        return None
    return state


def _allocate(tmp: Path, num_rows: int, size: Size, num_classes: int, parts: Sequence[StorePart]) -> None:
    """Create the full-size files; reserve the image file's blocks so a full disk fails now."""
    tmp.mkdir(parents=True, exist_ok=True)
    labels = np.concatenate([np.asarray(p.labels, dtype=np.uint8).reshape(-1, num_classes) for p in parts]) \
        if parts else np.zeros((0, num_classes), np.uint8)
    np.save(tmp / "labels.npy", labels)
    if any(p.ignore is not None for p in parts):
        np.save(tmp / "ignore.npy", np.concatenate([
            np.zeros((len(p.ids), num_classes), np.uint8) if p.ignore is None
            else np.asarray(p.ignore, dtype=np.uint8).reshape(-1, num_classes) for p in parts]))
    images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(num_rows, 3, *image_shape(size)))
    del images  # only the header and the (sparse) size are needed; rows are written with write()
    nbytes = (tmp / "images.npy").stat().st_size
    with open(tmp / "images.npy", "r+b") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, nbytes)
        except AttributeError:  # pragma: no cover - not on Linux: rows still fail cleanly on ENOSPC
            pass
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise
            # the filesystem cannot reserve blocks (EOPNOTSUPP, EINVAL): plain writes still report ENOSPC


def _fill(tmp: Path, parts: Sequence[StorePart], size: Size, state: dict[str, Any], chunk_rows: int,
          progress: Callable[[int, int], None] | None, reader: Callable[[str, int], np.ndarray]) -> None:
    """Decode and write rows from ``state['rows_done']`` on, committing progress after each chunk."""
    paths = [str(p) for part in parts for p in part.paths]
    ids = [i for part in parts for i in part.ids]
    num_rows = len(paths)
    row_bytes = 3 * int(np.prod(image_shape(size)))
    data_offset = np.load(tmp / "images.npy", mmap_mode="r").offset  # the .npy header's length
    with open(tmp / "images.npy", "r+b") as fh:
        # Rows recorded as bad in an earlier attempt are read again: the user may have fixed them.
        retry = [b for b in state["bad"] if b["row"] < state["rows_done"]]
        state["bad"] = [b for b in state["bad"] if b["row"] >= state["rows_done"]]
        for entry in retry:
            image, reason = _try_read(reader, entry["path"], size)
            if image is None:
                state["bad"].append({**entry, "reason": reason})
            else:
                _write_rows(fh, data_offset + entry["row"] * row_bytes, image[None])
        state["bad"].sort(key=lambda b: b["row"])
        start = state["rows_done"]
        while start < num_rows:
            stop = min(start + chunk_rows, num_rows)
            block = np.zeros((stop - start, 3, *image_shape(size)), dtype=np.uint8)
            for row in range(start, stop):
                image, reason = _try_read(reader, paths[row], size)
                if image is None:
                    state["bad"].append({"row": row, "id": ids[row], "path": paths[row], "reason": reason})
                else:
                    block[row - start] = image
            _write_rows(fh, data_offset + start * row_bytes, block)
            fh.flush()
            os.fsync(fh.fileno())  # the rows are on disk before progress says so
            state["rows_done"] = stop
            _atomic_json(tmp / PROGRESS, state)
            start = stop
            if progress is not None:
                progress(stop, num_rows)


def _try_read(reader: Callable[[str, Size], np.ndarray], path: str, size: Size) -> tuple[np.ndarray | None, str]:
    try:
        return reader(path, size), ""
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, SyntaxError) as err:  # Pillow raises all three on broken files
        return None, f"unreadable: {err}"


def _bad_message(bad: list[dict[str, Any]], tmp: Path) -> str:
    listing = tmp / "bad_images.txt"
    listing.write_text("".join(f"{b['path']}\t{b['reason']}\n" for b in bad))
    shown = "; ".join(f"{b['path']} ({b['reason']})" for b in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return (f"{len(bad)} image(s) are missing, unreadable or truncated: {shown}{more} (full list: "
            f"{listing}). Replace them and run prepare again, or pass --skip-bad-images to leave them "
            f"out (the build resumes; nothing is decoded twice).")


def _index(parts: Sequence[StorePart], class_names: Sequence[str], builder: str, builder_version: int,
           size: Size, info: dict[str, Any], state: dict[str, Any], fp: str) -> dict[str, Any]:
    out_parts, start = [], 0
    for part in parts:
        stop = start + len(part.ids)
        bad = [b for b in state["bad"] if start <= b["row"] < stop]
        keep = np.ones(len(part.ids), dtype=bool)
        keep[[b["row"] - start for b in bad]] = False
        counts = np.asarray(part.labels, dtype=np.int64)[keep].sum(axis=0) if len(part.ids) else \
            np.zeros(len(class_names), np.int64)
        out_parts.append({"split": part.split, "task": int(part.task), "start": start, "stop": stop,
                          "num_images": int(keep.sum()), "ids": list(part.ids),
                          "class_counts": [int(c) for c in counts], "bad": bad})
        start = stop
    # build_id: a new one every time the store is (re)built, so runs trained on an earlier build of
    # the same plan (other image files at the same paths) are never taken for runs on this one
    return {"format_version": FORMAT_VERSION, "builder": builder, "builder_version": builder_version,
            "size": size, "num_rows": start, "class_names": list(class_names), "fingerprint": fp,
            "build_id": uuid.uuid4().hex[:16], "parts": out_parts, "info": info}


def _publish(tmp: Path, out: Path) -> None:
    """Rename the complete build into place; an old store is moved aside first, then removed."""
    old = out.parent / f".{out.name}.old"
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def store_identity(root: str | Path) -> str | None:
    """The identity of the store at ``root`` for run bookkeeping: its fingerprint (the plan: ids,
    paths, labels, size, builder) and its build id (new at every build); None when no store is there."""
    try:
        index = json.loads((Path(root) / INDEX).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict) or "fingerprint" not in index:
        return None
    build = index.get("build_id")
    return f"store {index['fingerprint'][:16]}" + (f" build {build}" if build else "")


def record_store_use(store: Store, folder: Path) -> dict[str, Any]:
    """Record in a run folder which store a run read and which images it left out.

    Writes ``left_out_images.csv`` (split, task, id, path, reason) into ``folder`` when the store
    left any image out; returns the summary that goes into the run's manifest.
    """
    bad = [(p["split"], p["task"], b) for p in store.index["parts"] for b in p["bad"]]
    reasons: dict[str, int] = {}
    for _, _, b in bad:
        key = "missing" if b["reason"] == "missing" else "unreadable"
        reasons[key] = reasons.get(key, 0) + 1
    if bad:
        with open(folder / "left_out_images.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["split", "task", "id", "path", "reason"])
            writer.writerows([s, k, b["id"], b["path"], b["reason"]] for s, k, b in bad)
    return {"store": str(store.path), "builder": store.index["builder"],
            "builder_version": store.index["builder_version"], "fingerprint": store.index["fingerprint"],
            "image_size": store.index["size"], "left_out_images": reasons,
            "left_out_per_part": {f"{p['split']} task {p['task']}": len(p["bad"]) for p in store.index["parts"]
                                  if p["bad"]},
            "left_out_file": "left_out_images.csv" if bad else None}
