"""python -m nasfast.report RUN_DIR [RUN_DIR ...]: the best designs of a search, and how its
rewards evolved per stage (the paper's Fig. 2), as tables and, with matplotlib, as a PNG plot."""
import argparse
import importlib.util
import io
import os
import sys
from typing import Dict, List, Optional

from .cli import UsageError, counted, path_text, positive_int, run
from .files import (CONFIG, SEARCH_STATE, checkpoints_in, in_use, is_replaceable_png, read_json, read_search_log,
                    search_run_paths, write_atomic)
from .search.records import load_state
from .search.summary import format_reward, resume_command, searched_size_note, top_table

PROG = "python -m nasfast.report"


def load_run(path: str) -> Dict:
    """A search's records and settings, from its directory or its log (candidates.jsonl)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such search run or log")
    if os.path.isfile(path) and not path.endswith(".jsonl"):
        raise ValueError(f"{path}: not a search's log (candidates.jsonl); give the search's directory")
    run_dir, log = search_run_paths(path)
    if not os.path.isfile(log):
        trained = checkpoints_in(run_dir)
        hint = f"; it holds a training run: python -m nasfast.evaluate --checkpoint {trained[0]}" if trained else ""
        raise FileNotFoundError(f"{run_dir}: not a search run ({log} missing){hint}")
    config = read_json(os.path.join(run_dir, CONFIG)) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{os.path.join(run_dir, CONFIG)} is damaged: not the settings of a search (a JSON object)")
    strategy = config.get("strategy", "unknown strategy")
    return {"dir": run_dir, "name": f"{strategy} ({path if os.path.isfile(path) else run_dir})",  # as given
            "strategy": strategy, "records": read_search_log(log), "channels": config.get("channels"),
            "sep_repeats": config.get("sep_repeats")}


def stopped_note(run_dir: str) -> Optional[str]:
    """How to go on with a search that stopped before its budgets were spent (killed, say); None
    where they are, or where no state says (a damaged one is for the search to name)."""
    path = os.path.join(run_dir, SEARCH_STATE)
    try:
        state = load_state(path) if os.path.isfile(path) else None
    except (OSError, ValueError):
        return None
    if state is None or (state.get("budget") is None and state.get("time_budget") is None):
        return None
    done, budget, time_budget = state["next_index"], state.get("budget"), state.get("time_budget")
    if (budget is not None and done >= budget) or (time_budget is not None and state["elapsed"] >= time_budget):
        return None
    of = f" of {budget}" if budget is not None else ""
    return f"(stopped after {done}{of} candidates, its budget not spent: continue with {resume_command(run_dir, None)})"


def bins(records: List[Dict], count: int) -> List[List[Dict]]:
    """`records` in `count` parts of sizes as equal as can be (fewer where there are fewer records)."""
    parts, n = min(count, len(records)), len(records)
    return [records[-(-n * i // parts):-(-n * (i + 1) // parts)] for i in range(parts)]


def _mean(values: List[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


def scored(run: Dict) -> List[Dict]:
    """The candidates with a stage-1 reward (also those that failed in stage 2, out of memory say),
    by index: a torchrun search logs them in the order they finish."""
    return sorted((r for r in run["records"] if r.get("stage1_reward") is not None), key=lambda r: r["index"])


def progress_table(run: Dict, count: int = 4) -> str:
    lines = [f"{run['name']}: mean / max reward per stage over the search"]
    candidates = scored(run)
    if not candidates:
        return lines[0] + ": no candidate finished"
    lines.append(f"{'candidates':>12} {'stage1 mean':>11} {'stage1 max':>10} {'stage2 mean':>11} {'stage2 max':>10} "
                 f"{'continued':>9}")
    for chunk in bins(candidates, count):
        s1 = [r["stage1_reward"] for r in chunk]
        s2 = [r["stage2_reward"] for r in chunk if r["stage2_reward"] is not None]
        s2_max = max(s2) if s2 else None
        continued = sum(r["gate"] == "continue" for r in chunk)
        lines.append(f"{chunk[0]['index']:>5}-{chunk[-1]['index']:<6} {format_reward(_mean(s1)):>11} "
                     f"{format_reward(max(s1)):>10} {format_reward(_mean(s2)):>11} {format_reward(s2_max):>10} "
                     f"{continued:>4}/{len(chunk):<4}")
    return "\n".join(lines)


def has_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


SOFTWARE = "nasfast.report"  # in each plot's PNG metadata: a file that lacks it is not replaced


def plot(runs: List[Dict], path: str, count: int = 4) -> None:
    """Saves the figure of `runs` (each search in `count` parts) as a PNG at `path`."""
    png = io.BytesIO()
    figure(runs, count).savefig(png, format="png", dpi=100, metadata={"Software": SOFTWARE})
    write_atomic(path, png.getvalue())  # no partial file on a full disk


def refuse_to_replace(path: str) -> None:
    """UsageError where `path` holds something other than an earlier plot of this tool."""
    if not _may_write(path):
        raise UsageError(f"--plot {path}: the file exists and is not a plot of {PROG}; give another name, "
                         f"or move it")


def _may_write(path: str) -> bool:
    """Whether `path` is free, or holds an earlier plot of this tool (nothing else is replaced)."""
    return not os.path.lexists(path) or is_replaceable_png(path, lambda image: image.info.get("Software") == SOFTWARE)


def figure(runs: List[Dict], count: int = 4):
    """Violin plots of the rewards of each stage per part of the search, for the runs with a
    candidate scored in stage 1 (at least one; matplotlib installed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [search_run for search_run in runs if scored(search_run)]
    chunks_of_runs = [bins(scored(search_run), count) for search_run in runs]
    labels = tick_labels(chunks_of_runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, stage in zip(axes, ("stage1_reward", "stage2_reward")):
        for k, (search_run, chunks) in enumerate(zip(runs, chunks_of_runs)):
            data = [[r[stage] for r in c if r[stage] is not None] or [float("nan")] for c in chunks]
            positions = [i * (len(runs) + 1) + k for i in range(len(chunks))]
            parts = ax.violinplot(data, positions=positions, showmeans=True)
            parts["bodies"][0].set_label(search_run["name"])
        set_part_ticks(ax, [i * (len(runs) + 1) + (len(runs) - 1) / 2 for i in range(len(labels))], labels)
        ax.set_title(stage.replace("_", " "))
        ax.set_xlabel("candidates")
    axes[0].set_ylabel("reward")
    columns = min(len(runs), 3)  # below the panels, where it hides no violin
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=columns, fontsize="small")
    fig.tight_layout(rect=(0, min(0.4, 0.07 * -(-len(runs) // columns)), 1, 1))
    return fig


def set_part_ticks(ax, positions: List[float], labels: List[str]) -> None:
    """Labels the parts: level where they fit (60 characters to an axis), else upright, every k-th
    where more than 12 would run together."""
    if sum(len(label) + 3 for label in labels) <= 60:
        ax.set_xticks(positions, labels)
        return
    step = -(-len(labels) // 12)
    ax.set_xticks(positions[::step], labels[::step], rotation=90)


def tick_labels(chunks_of_runs: List[List[List[Dict]]]) -> List[str]:
    """The candidates of each part of the runs (each run cut in its own parts), as ranges of
    indices: "0-3", or "0-3 / 0-1" where the runs' parts differ (in the runs' order)."""
    parts = max(len(chunks) for chunks in chunks_of_runs)
    ranges = [[f"{chunks[i][0]['index']}-{chunks[i][-1]['index']}" for chunks in chunks_of_runs if i < len(chunks)]
              for i in range(parts)]
    return [" / ".join(dict.fromkeys(part)) for part in ranges]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split(":", 1)[1].strip())
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="search runs (e.g. a PPO and a random one): their directories or candidates.jsonl")
    parser.add_argument("--top", type=positive_int, default=10, help="rows of the table of best designs [10]")
    parser.add_argument("--bins", type=positive_int, default=4,
                        help="parts of the search (by candidate index) in the progress table and the plot; stage 2 "
                             "counts the candidates the gate continued [4]")
    parser.add_argument("--plot", metavar="PNG", type=path_text,
                        help="where to save the plot (needs matplotlib; it replaces only an earlier plot) "
                             "[RUN_DIR/rewards.png, when it is installed; several runs: the first's "
                             "RUN_DIR/rewards-compared.png]")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.plot and not args.plot.lower().endswith(".png"):
        raise UsageError(f"--plot {args.plot}: the plot is a PNG image; give a file name ending in .png")
    if args.plot and not has_matplotlib():
        raise UsageError(f"--plot {args.plot}: matplotlib is not installed (pip install matplotlib)")
    if args.plot:
        refuse_to_replace(args.plot)
        folder = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(folder):
            raise UsageError(f"--plot {args.plot}: no such folder {folder}")
    runs = [load_run(d) for d in args.runs]
    for search_run in runs:
        print(f"{search_run['name']}: best designs")
        note = (f"(the search is still running: {counted(len(search_run['records']), 'candidate')} so far)"
                if in_use(search_run["dir"]) else stopped_note(search_run["dir"]))
        if note:
            print(note)
        print(top_table(search_run["records"], args.top))
        if search_run["channels"] is not None and any(r["status"] == "ok" for r in search_run["records"]):
            print(searched_size_note(search_run["channels"], search_run["sep_repeats"]))
        print()
        print(progress_table(search_run, args.bins), end="\n\n")
    path = args.plot or os.path.join(runs[0]["dir"], "rewards.png" if len(runs) == 1 else "rewards-compared.png")
    if not has_matplotlib():
        print("(install matplotlib for plots)", file=sys.stderr)
    elif not any(scored(run) for run in runs):
        print("(no plot: no candidate finished)", file=sys.stderr)
    elif not args.plot and not _may_write(path):
        print(f"(no plot: {path} exists and is not a plot of {PROG}; give --plot FILE.png)", file=sys.stderr)
    else:
        try:
            plot(runs, path, args.bins)
        except OSError as error:
            if args.plot:
                raise
            print(f"(no plot: {path} cannot be written: {error.strerror}; give --plot FILE.png)", file=sys.stderr)
        else:
            print(f"plot: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, PROG))
