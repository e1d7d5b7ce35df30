"""Many processes, one MLflow run: how ranks share a run without clobbering each other.

Pure functions, no I/O. A distributed v1 job ran N ranks that all called
`Run.get_context()` and logged into one v1 run; v1 kept every value (metrics
were append-only). MLflow keys a point by (key, step): two ranks each counting
their own steps 0, 1, 2... for "loss" would land on the same steps, and a point
equal in key, step, timestamp and value is stored once.

The scheme: in a run shared by many processes (the bridge *adopted* it: the
launcher's run, AZML_V1_BRIDGE_LAUNCHER_RUN_ID, or MLFLOW_RUN_ID set by the user), rank 0 writes keys
unchanged and rank N > 0 writes `<key>/rank_N` — its own series with its own
step sequence. Why this, and not a step offset:

* steps stay what the script logged (`log(..., step=epoch)` is still the epoch),
  and a rank's sequence needs no knowledge of the world size;
* rank 0 and single-process runs look exactly as before: `loss` is where
  dashboards and `mlflow.search_runs` look, and the common DDP pattern (every
  rank logs the same all-reduced loss) still has its `loss`;
* MLflow's UI groups `loss/rank_1`, `loss/rank_2`... under one `loss` section;
* it is reversible (`split_key`): v1 reads merge the ranks back into one `loss`
  list, as v1 returned it.

The bridge's own per-name artifacts (string metrics `name.txt`, tables
`name.json`, rich metric JSON/PNG, image series) get the same suffix before the
extension (`name/rank_1.txt`), since each process renders its whole file.
Files the user names (`upload_file`, `upload_folder`, `log_image(path=)`) keep
their names: v1 had one artifact per name too.

Which rank a process is: AZML_V1_BRIDGE_RANK, else what the launcher set
(torchrun/torch.distributed: RANK; Open MPI: OMPI_COMM_WORLD_RANK; MPICH/Intel
MPI: PMI_RANK; PMIx: PMIX_RANK; Slurm: SLURM_PROCID) — see `RANK_VARIABLES`;
config.load() resolves it into `Config.rank`.
"""
from __future__ import annotations

import posixpath
import re
import zlib

from .ops import AppendTable, AppendText, Artifact, Chart, End, ExtendList, Image, Metric, Tag

# After AZML_V1_BRIDGE_RANK (config.RANK), in this order.
RANK_VARIABLES = ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID")
SUFFIX = "/rank_"
MAX_KEY = 250
# `<prefix><process label>` = the v1 status a process gave the shared run (complete/fail/exit);
# the launcher ends the run once, FAILED if any process said FAILED or KILLED.
PROCESS_STATUS_TAG = "azml_v1_bridge.process_status."
# The bridge's own artifact folder (report, long values) is never per rank.
BRIDGE_DIR = "azml_v1_bridge/"

_UNSAFE = re.compile(r"[^\w.\-]")
_KEY = re.compile(r"^(?P<base>.+)/rank_(?P<rank>[\w.\-]+)$")
_PATH = re.compile(r"^(?P<stem>.+)/rank_(?P<rank>[\w.\-]+?)(?P<ext>\.[^./]*)?$")


def rank_from(env) -> str | None:
    """The rank named by the first of RANK_VARIABLES set in `env` (None: not distributed)."""
    for name in RANK_VARIABLES:
        value = (env.get(name) or "").strip()
        if value:
            return value
    return None


def label(rank: str) -> str:
    """The rank as it appears in keys and paths: word characters, dots and dashes only."""
    return _UNSAFE.sub("_", str(rank).strip()) or "_"


def is_secondary(rank) -> bool:
    """Whether a process with this rank writes its own series (everything but rank 0 / none)."""
    if rank is None:
        return False
    text = str(rank).strip()
    return text != "" and text.lstrip("0") != ""


def rank_key(key: str, rank) -> str:
    """`key/rank_N`, within MLflow's 250 characters (a long key is cut and hashed)."""
    return series_key(key, SUFFIX + label(rank))


def rank_path(path: str, rank) -> str:
    """`dir/name.ext` -> `dir/name/rank_N.ext`."""
    return _series_path(path, SUFFIX + label(rank))


def split_key(key: str) -> tuple[str, str | None]:
    """(key as logged, rank) for a key written by `rank_key`; (key, None) otherwise."""
    match = _KEY.match(key)
    return (match["base"], match["rank"]) if match else (key, None)


def split_path(path: str) -> tuple[str, str | None]:
    """(path as rank 0 writes it, rank) for a path written by `rank_path`; (path, None) otherwise."""
    match = _PATH.match(path)
    if not match:
        return path, None
    return match["stem"] + (match["ext"] or ""), match["rank"]


def for_rank(ops: list, rank) -> list:
    """The ops of a secondary rank, renamed into its own series and files (see module doc)."""
    if not is_secondary(rank):
        return ops
    return into_series(ops, SUFFIX + label(rank))


def series_key(key: str, suffix: str) -> str:
    """`key` + `suffix`, within MLflow's 250 characters (a long key is cut and hashed)."""
    if len(key) + len(suffix) <= MAX_KEY:
        return key + suffix
    digest = format(zlib.crc32(key.encode("utf-8", "surrogatepass")), "08x")
    return key[: MAX_KEY - len(suffix) - 9] + "_" + digest + suffix  # `_`: MLflow refuses `~`


def into_series(ops: list, suffix: str) -> list:
    """Ops renamed into a series of their own: metric and image keys get `suffix`
    (`/rank_3`, `/fork_<pid>`), the bridge's per-name files get it before the extension."""
    out = []
    for op in ops:
        t = type(op)
        if t is Metric:
            op = Metric(series_key(op.key, suffix), op.value, op.timestamp, op.step)
        elif t is Image:
            op = Image(series_key(op.key, suffix), op.data, op.step, op.timestamp)
        elif t is AppendText:
            op = AppendText(_series_path(op.path, suffix), op.text)
        elif t is AppendTable:
            op = AppendTable(_series_path(op.path, suffix), op.columns)
        elif t is ExtendList:
            op = ExtendList(_series_path(op.path, suffix), op.values)
        elif t is Chart:
            op = Chart(_series_path(op.path, suffix), op.obj, op.title)
        elif t is Artifact and not op.path.startswith(BRIDGE_DIR):
            op = Artifact(_series_path(op.path, suffix), op.data)
        out.append(op)
    return out


def _series_path(path: str, suffix: str) -> str:
    stem, ext = posixpath.splitext(path)
    return f"{stem}{suffix}{ext}"


def process_label(rank, host: str, pid: int) -> str:
    """Who a process is in tags and report names: `rank3`, else `host-pid`."""
    return f"rank{label(rank)}" if rank not in (None, "") else label(f"{host}-{pid}")


def end_as_status(ops: list, who: str) -> list:
    """A run this process did not create is never ended by it: its End becomes the
    process's status tag, for the run's owner (the launcher) to combine."""
    return [Tag((PROCESS_STATUS_TAG + who)[:MAX_KEY], op.status) if type(op) is End else op
            for op in ops]
