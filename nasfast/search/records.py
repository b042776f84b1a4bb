"""Files of a search run: options, candidate log (JSON lines) and resumable state, all crash-safe."""
import io
import json
import os
import sys
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
        try:
            return json.load(f)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is damaged: not valid JSON ({error})") from None


def read_records(path: str) -> List[Dict[str, Any]]:
    """The complete lines of a JSON-lines log (a torn last line from a crash is dropped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.endswith("\n"):
                break
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path} is damaged: line {number} is not valid JSON ({error})") from None
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
    _warn_of_lost_records(path, set(range(count)) - pending - {r["index"] for r in records})
    write_atomic(path, "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def _warn_of_lost_records(path: str, missing) -> None:
    """The state counts these candidates as finished, but the log lacks them: it was cut short or
    edited. They cannot be evaluated again (their designs were in the lost lines)."""
    if missing:
        shown = ", ".join(map(str, sorted(missing)[:10])) + (", ..." if len(missing) > 10 else "")
        print(f"warning: {path} lacks the records of {len(missing)} finished candidate(s) (index {shown}): "
              f"the file was cut short or edited; they are lost, and the search goes on without them",
              file=sys.stderr)


def save_state(path: str, state: Dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    write_atomic(path, buffer.getvalue())


def load_state(path: str) -> Dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as error:  # torch.load fails in many ways on a damaged file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is damaged and cannot be read ({reason}); the search cannot continue "
                         f"from it") from error
