"""Files of a search run: options, candidate log (JSON lines) and resumable state, all crash-safe."""
import io
import json
import os
from typing import Any, Dict, List

import torch


def write_atomic(path: str, data: bytes) -> None:
    """Replaces `path` with `data` so that a crash leaves either the old or the new file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_directory(os.path.dirname(path) or ".")


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=2) + "\n").encode())


def read_json(path: str) -> Any:
    """The JSON in `path`, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def read_records(path: str) -> List[Dict[str, Any]]:
    """The complete lines of a JSON-lines log (a torn last line from a crash is dropped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records


def append_record(path: str, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def keep_finished_records(path: str, count: int, pending=()) -> List[Dict[str, Any]]:
    """Keeps only the records of candidates that the saved state counts as finished: index under
    `count` and not in `pending` (handed out, not finished). The others were logged by a crash
    between logging a candidate and saving the state; those candidates are evaluated again."""
    pending = set(pending)
    records = [r for r in read_records(path) if r["index"] < count and r["index"] not in pending]
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def save_state(path: str, state: Dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_state(path: str) -> Dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)
