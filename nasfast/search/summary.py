"""Human-readable summaries of a search log."""
from typing import Any, Dict, List


def top_table(records: List[Dict[str, Any]], k: int = 10) -> str:
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["reward"])[:k]
    failed = sum(r["status"] != "ok" for r in records)
    lines = [f"top {len(ok)} of {len(records)} candidates ({failed} failed)",
             f"{'rank':>4} {'index':>5} {'reward':>7} {'stage1':>7} {'stage2':>7} {'params':>9} "
             f"{'MAdds':>7}  genotype"]
    for rank, r in enumerate(ok, 1):
        stage2 = "-" if r["stage2_reward"] is None else f"{r['stage2_reward']:.4f}"
        lines.append(f"{rank:>4} {r['index']:>5} {r['reward']:.4f} {r['stage1_reward']:.4f} {stage2:>7} "
                     f"{r['params']:>9,} {r['madds'] / 1e9:>6.2f}G  {r['genotype']}")
    return "\n".join(lines)
