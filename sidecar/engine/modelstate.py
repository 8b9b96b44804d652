"""What the models learnt about one twin, in bytes that outlive the process.

Replaying the last hour of samples after a restart brings back the short-memory models, but not
the daily and weekly seasonal profiles or the detector's daily habits: without their saved
state a nightly job alerts again for days after every redeploy. The banks keep one row per
series; a twin's rows are cut out of the banks' ``state_dict`` and put back into whatever rows
its series get in the next process (slots are not stable across restarts).

The encoding is the arrays' raw bytes behind a JSON header naming each one's key, dtype and shape, compressed
once with zlib (``MAGIC`` first): no pickle, and only numeric, boolean and text dtypes are read, so a stored blob
can not run code when it is read. Blobs saved as a compressed ``.npz`` (numpy's container, 20 ms a twin to write
against 0.5 ms) are still read. A blob from other models or horizons is refused as a whole and the
twin relearns from its samples: half a state would be worse than none.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

FORMAT = 1
#: The first bytes of a packed blob (a ``.npz`` starts with ``PK``).
MAGIC = b"TWMS\x02"
#: dtype kinds a packed blob may hold: bool, integers, floats, text (never objects).
_KINDS = frozenset("biufU")
#: Keys of the forecast bank's state that describe the bank, not a series (checked, never sliced).
FORECAST_CONFIG = ("size", "horizons_s", "level", "queue", "model_names")


@dataclass(frozen=True, slots=True)
class TwinModelState:
    """One twin's rows of both banks, in the order of ``metrics``."""

    twin_id: str
    metrics: tuple[str, ...]
    learnt_until: np.ndarray                    # (metrics,) time of the last sample the rows absorbed
    forecast_config: dict[str, np.ndarray]
    forecast: dict[str, np.ndarray]             # key -> (metrics, ...)
    anomaly: dict[str, np.ndarray]              # key -> (metrics, ...)


def take_rows(state: Mapping[str, np.ndarray], rows: np.ndarray,
              skip: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """The listed rows of every per-row array of a bank's state."""
    return {k: np.asarray(v)[rows].copy() for k, v in state.items() if k not in skip}


def check_rows(state: Mapping[str, np.ndarray], rows: np.ndarray, part: Mapping[str, np.ndarray],
               skip: tuple[str, ...] = ()) -> None:
    """Saved rows fit a bank's state: each saved key the bank has, with the bank's row shape.

    A key the bank has and the save lacks (a field added by a newer version) keeps the bank's fresh
    value, and a key only the save has (a field since removed) is ignored: an upgrade that adds a
    field must not make every twin relearn from nothing. Saves sharing no key at all do not fit."""
    keys = {k for k in state if k not in skip}
    if not keys & set(part):
        raise InputError("saved model rows share no field with this bank")
    for k in keys & set(part):
        src = np.asarray(part[k])
        if src.shape != (rows.size, *state[k].shape[1:]):
            raise InputError(f"saved model rows {k!r} have shape {src.shape}, this bank needs "
                             f"{(rows.size, *state[k].shape[1:])}")


def widen_rows(state: Mapping[str, np.ndarray], rows: np.ndarray,
               part: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Saved rows whose second axis is shorter than the bank's (features appended by a newer version, e.g. the
    anomaly detector's contextual ones) keep their saved leading entries; the appended ones take the bank's
    present values for those rows, as a fresh series has them. Other arrays pass as saved."""
    out = dict(part)
    for k, v in part.items():
        if k not in state:
            continue
        src, cur = np.asarray(v), state[k]
        if (src.ndim >= 2 and src.shape[0] == rows.size and cur.ndim == src.ndim and src.shape[2:] == cur.shape[2:]
                and src.shape[1] < cur.shape[1]):
            wide = cur[rows].copy()
            wide[:, : src.shape[1]] = src
            out[k] = wide
    return out


def put_rows(state: dict[str, np.ndarray], rows: np.ndarray, part: Mapping[str, np.ndarray]) -> None:
    """Write rows that passed `check_rows` into a bank's state, in place (keys the bank lacks are skipped)."""
    for k, v in part.items():
        if k in state:
            state[k][rows] = v


def same_level_and_queue(saved: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> bool:
    """Whether saved forecast rows were made at this bank's interval level and pending-queue length: what no
    remapping can mend (every interval and pending ring would mean something else)."""
    try:
        return float(saved["level"]) == float(current["level"]) and int(saved["queue"]) == int(current["queue"])
    except (KeyError, ValueError, TypeError):
        return False


def names_of(config: Mapping[str, np.ndarray]) -> list[str]:
    return [str(s) for s in np.asarray(config["model_names"]).tolist()]


def remap_models(part: Mapping[str, np.ndarray], fresh: Mapping[str, np.ndarray], saved_names: Sequence[str],
                 current_names: Sequence[str], axes: Mapping[str, int],
                 prefix: str = "core.") -> dict[str, np.ndarray]:
    """Saved forecast rows moved onto this bank's models by name, so a version that adds or drops a model
    keeps what every other model learnt: a model both have keeps its columns (scores, pending forecasts), a
    new one starts unscored from `fresh`, a dropped one is left out. A field with one column more than there
    are models (`ppred`) keeps its last column, the bank's own. The chosen models (`fmodel`) follow their
    names; where the chosen one was dropped, the last value stands in until the next sample re-chooses."""
    old, new = list(saved_names), list(current_names)
    src_of = [old.index(n) if n in old else -1 for n in new]
    out: dict[str, np.ndarray] = {}
    for k, v in part.items():
        name = k[len(prefix):] if k.startswith(prefix) else None
        src = np.asarray(v)
        if name == "fmodel":
            lookup = np.array([new.index(n) if n in new else new.index("last") for n in old], np.int64)
            out[k] = np.where((src >= 0) & (src < len(old)), lookup[np.clip(src, 0, len(old) - 1)], 0).astype(
                src.dtype)
            continue
        ax = axes.get(name) if name is not None else None
        if ax is None or k not in fresh:
            out[k] = src
            continue
        dst = np.array(fresh[k], copy=True)
        extra = dst.shape[ax] - len(new)                 # 1 for ppred's combined column, else 0
        if src.shape[ax] != len(old) + extra:
            raise InputError(f"saved model rows {k!r} have {src.shape[ax]} models, the save names {len(old)}")
        pairs = [(j, i) for j, i in enumerate(src_of) if i >= 0] + [(len(new) + e, len(old) + e) for e in range(extra)]
        for j, i in pairs:
            sel_d: list[slice | int] = [slice(None)] * dst.ndim
            sel_s: list[slice | int] = [slice(None)] * src.ndim
            sel_d[ax], sel_s[ax] = j, i
            dst[tuple(sel_d)] = src[tuple(sel_s)].astype(dst.dtype)
        out[k] = dst
    return out


def same_but_horizons(saved: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> bool:
    """Whether saved forecast rows fit this bank but for their horizons (same level, queue and models)."""
    try:
        return (float(saved["level"]) == float(current["level"]) and int(saved["queue"]) == int(current["queue"])
                and [str(s) for s in np.asarray(saved["model_names"]).tolist()]
                == [str(s) for s in np.asarray(current["model_names"]).tolist()])
    except (KeyError, ValueError, TypeError):
        return False


def same_forecast_config(saved: Mapping[str, np.ndarray], current: Mapping[str, np.ndarray]) -> bool:
    """Whether saved forecast rows fit this bank as they are (same horizons, level, queue and models)."""
    try:
        same_h = np.array_equal(np.asarray(saved["horizons_s"], np.float64),
                                np.asarray(current["horizons_s"], np.float64))
    except (KeyError, ValueError, TypeError):
        return False
    return same_h and same_but_horizons(saved, current)


def remap_horizons(part: Mapping[str, np.ndarray], fresh: Mapping[str, np.ndarray], saved_h: np.ndarray,
                   current_h: np.ndarray, axes: Mapping[str, int], prefix: str = "core.") -> dict[str, np.ndarray]:
    """Saved forecast rows moved onto this bank's horizons: a horizon both have keeps its columns, a new
    one starts from `fresh` (the bank's own, unlearnt rows), a dropped one is left out. Fields without a
    horizon axis, every model's state among them, are kept whole."""
    old = [float(h) for h in np.asarray(saved_h, np.float64).ravel()]
    out: dict[str, np.ndarray] = {}
    for k, v in part.items():
        ax = axes.get(k[len(prefix):]) if k.startswith(prefix) else None
        if ax is None or k not in fresh:
            out[k] = np.asarray(v)
            continue
        src, dst = np.asarray(v), np.array(fresh[k], copy=True)
        if src.shape[ax] != len(old):
            raise InputError(f"saved model rows {k!r} have {src.shape[ax]} horizons, the save names {len(old)}")
        for j, h in enumerate(np.asarray(current_h, np.float64).ravel().tolist()):
            if h in old:
                sel_d: list[slice | int] = [slice(None)] * dst.ndim
                sel_s: list[slice | int] = [slice(None)] * src.ndim
                sel_d[ax], sel_s[ax] = j, old.index(h)
                dst[tuple(sel_d)] = src[tuple(sel_s)].astype(dst.dtype)
        out[k] = dst
    return out


def encode(state: TwinModelState) -> bytes:
    arrays: dict[str, np.ndarray] = {
        "format": np.array(FORMAT, np.int64),
        "twin_id": np.array(state.twin_id),
        "metrics": np.array(state.metrics, dtype=str),
        "learnt_until": np.asarray(state.learnt_until, np.float64),
    }
    arrays.update({"fc." + k: v for k, v in state.forecast_config.items()})
    arrays.update({"f." + k: v for k, v in state.forecast.items()})
    arrays.update({"a." + k: v for k, v in state.anomaly.items()})
    header: list[tuple[str, str, tuple[int, ...], int]] = []
    chunks: list[bytes] = []
    for k, v in arrays.items():
        a = np.asarray(v, order="C")             # (ascontiguousarray would make a 0-d array 1-d)
        if a.dtype.kind not in _KINDS:
            raise InputError(f"model state array {k!r} has dtype {a.dtype}, which is not saved")
        raw = a.tobytes()
        header.append((k, a.dtype.str, a.shape, len(raw)))
        chunks.append(raw)
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + zlib.compress(len(head).to_bytes(4, "little") + head + b"".join(chunks), 1)


def _unpack(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a packed blob; ``ValueError`` for anything that is not one."""
    body = zlib.decompress(blob[len(MAGIC):])
    n = int.from_bytes(body[:4], "little")
    header = json.loads(body[4:4 + n])
    if not isinstance(header, list):
        raise ValueError("the header is not a list")
    out: dict[str, np.ndarray] = {}
    pos = 4 + n
    for entry in header:
        key, dt, shape, size = entry
        dtype = np.dtype(str(dt))
        if dtype.kind not in _KINDS or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"array {key!r}: dtype {dtype} or shape {shape} not allowed")
        count = math.prod(shape)
        if count * dtype.itemsize != size or pos + size > len(body):
            raise ValueError(f"array {key!r} is cut short")
        out[str(key)] = np.frombuffer(body, dtype, count=count, offset=pos).reshape(tuple(shape)).copy()
        pos += size
    return out


def decode(blob: bytes) -> TwinModelState:
    """Parse a blob from `encode` (or an older ``.npz`` one); anything else is an `InputError` naming what is
    wrong."""
    try:
        if blob.startswith(MAGIC):
            arrays = _unpack(blob)
        else:
            with np.load(io.BytesIO(blob), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise InputError(f"model state is not readable (packed arrays or .npz): {e}") from e
    try:
        fmt = int(arrays["format"])
        if fmt != FORMAT:
            raise InputError(f"model state format {fmt}, this version reads {FORMAT}")
        metrics = tuple(str(m) for m in np.asarray(arrays["metrics"]).reshape(-1).tolist())
        learnt = np.asarray(arrays["learnt_until"], np.float64).reshape(-1)
        twin_id = str(arrays["twin_id"])
    except (KeyError, ValueError, TypeError) as e:
        raise InputError(f"model state lacks or garbles {e}") from e
    if learnt.size != len(metrics):
        raise InputError(f"model state has {len(metrics)} metrics but {learnt.size} times")

    def part(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    state = TwinModelState(twin_id, metrics, learnt, part("fc."), part("f."), part("a."))
    for name, rows in (("forecast", state.forecast), ("anomaly", state.anomaly)):
        bad = [k for k, v in rows.items() if v.ndim == 0 or v.shape[0] != len(metrics)]
        if bad:
            raise InputError(f"model state {name} rows {bad} do not have one row per metric")
    return state
