"""Human-readable summaries of a search log."""
import os
from typing import Any, Dict, List, Optional


def madds_text(madds: int) -> str:
    """Three significant digits, in M below 1 G: 3.60M, 42.1M, 950M, 1.23G."""
    value, unit = (madds / 1e9, "G") if madds >= 1e9 else (madds / 1e6, "M")
    decimals = 2 if value < 10 else 1 if value < 100 else 0
    return f"{value:.{decimals}f}{unit}"


def failure_note(records: List[Dict[str, Any]]) -> Optional[str]:
    """How many candidates failed, and why the first did (its log record holds the traceback)."""
    failed = [r for r in records if r["status"] != "ok"]
    if not failed:
        return None
    first = min(failed, key=lambda r: r["index"])
    reason = (first.get("error") or "unknown error").strip().splitlines()[0]
    every = "every candidate failed" if len(failed) == len(records) else f"{len(failed)} of {len(records)} failed"
    return f"{every}; the first (index {first['index']}): {reason}"


def closing_summary(records: List[Dict[str, Any]], k: int, run_dir: str, dataset: str) -> str:
    """The table of the best designs, where the log is, and how to train the best one."""
    lines = [top_table(records, k), f"log: {os.path.join(run_dir, 'candidates.jsonl')}"]
    if any(r["status"] == "ok" for r in records):
        lines.append(f"train the best design: python -m nasfast.train --genotype {run_dir} --dataset {dataset} "
                     f"--out DIR")
    return "\n".join(lines)


def top_table(records: List[Dict[str, Any]], k: int = 10) -> str:
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["reward"])[:k]
    failed = sum(r["status"] != "ok" for r in records)
    lines = [f"top {len(ok)} of {len(records)} candidates ({failed} failed)",
             f"{'rank':>4} {'index':>5} {'reward':>7} {'stage1':>7} {'stage2':>7} {'params':>9} "
             f"{'MAdds':>6}  genotype"]
    for rank, r in enumerate(ok, 1):
        stage2 = "-" if r["stage2_reward"] is None else f"{r['stage2_reward']:.4f}"
        lines.append(f"{rank:>4} {r['index']:>5} {r['reward']:.4f} {r['stage1_reward']:.4f} {stage2:>7} "
                     f"{r['params']:>9,} {madds_text(r['madds']):>6}  {r['genotype']}")
    note = failure_note(records)
    return "\n".join(lines + ([note] if note else []))
