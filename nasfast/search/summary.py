"""Human-readable summaries of a search log."""
import os
from typing import Any, Dict, List, Optional

from ..cli import command, data_root_option, once_mended
from ..files import SEARCH_LOG
from ..genotype import ZOO
from ..model import FINAL_CHANNELS, FINAL_SEP_REPEATS
from ..trainer import PRESETS as TRAIN_PRESETS

PROG = "python -m nasfast.search"


def format_reward(reward: Optional[float]) -> str:
    return "-" if reward is None else f"{reward:.4f}"


def progress_line(record: Dict[str, Any], done: int, budget: Optional[int], best: Optional[float],
                  workers: int = 1, search_time: Optional[str] = None) -> str:
    """A finished candidate, for a log: [done/budget] candidate 7 (worker 1 of 2): reward 0.2368,
    gate continue, 1.6 s; best 0.2382 (`search_time`, with a time budget: "; search time 80/3600 s")."""
    result = (f"reward {record['reward']:.4f}, gate {record['gate']}" if record["status"] == "ok" else
              f"failed: {(record.get('error') or 'unknown error').splitlines()[0]}")
    worker = f" (worker {record['worker']} of {workers})" if workers > 1 else ""
    time = f"; search time {search_time}" if search_time else ""
    return (f"[{done}{f'/{budget}' if budget else ''}] candidate {record['index']}{worker}: {result}, "
            f"{record['seconds']:.1f} s; best {format_reward(best)}{time}")


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
    if len(failed) < len(records):
        return f"{len(failed)} of {len(records)} failed; the first (index {first['index']}): {reason}"
    hint = " (in every design: do the labels hold class pixels, not only 255 = ignore? is a learning rate too " \
           "high?)" if "non-finite loss" in reason else ""
    return f"every candidate failed; the first (index {first['index']}): {reason}{hint}"


def searched_size_note(channels: int, sep_repeats: int) -> str:
    """What the params and MAdds of a search's table are, and are not."""
    return (f"params and MAdds: the decoder as searched ({channels} channels, separable repeats {sep_repeats}, at "
            f"the searched image size); trained, with {FINAL_CHANNELS} channels, {FINAL_SEP_REPEATS} repeats and the "
            f"encoder, it is larger (bench/latency.py --genotype RUN_DIR measures it)")


def resume_command(run_dir: str, data_root: Optional[str]) -> str:
    return command("python", "-m", "nasfast.search", "--resume", run_dir, *data_root_option(data_root))


def mend_data_note(error: Exception, dataset: str, data_root: Optional[str], run_dir: str,
                   given_root: Optional[str]) -> str:
    """A data file a candidate could not read (`error`), and how to go on: the search is saved."""
    return f"{once_mended(error, dataset, data_root)}, continue with {resume_command(run_dir, given_root)}"


def closing_summary(records: List[Dict[str, Any]], k: int, run_dir: str, config, data_root: Optional[str],
                    training_images: Optional[int] = None) -> str:
    """The table of the best designs, where the log is, and how to train the best one (with the
    search's dataset, data and preset: `config` is its SearchConfig; `training_images`: how many
    the dataset has, None if not recorded)."""
    lines = [top_table(records, k), f"log: {os.path.join(run_dir, SEARCH_LOG)}"]
    if any(r["status"] == "ok" for r in records):
        lines.append(searched_size_note(config.channels, config.sep_repeats))
        preset = ["--preset", config.preset] if config.preset else []
        design = os.path.join(os.curdir, run_dir) if run_dir in ZOO else run_dir  # a RUN_DIR named arch0, say
        train = command("python", "-m", "nasfast.train", "--genotype", design, "--dataset", config.dataset,
                        *data_root_option(data_root), *preset, *_fitting_batch_option(config.preset, training_images),
                        "--out", "DIR")
        lines.append(f"train the best design: {train}")
    return "\n".join(lines)


def _fitting_batch_option(preset: Optional[str], training_images: Optional[int]) -> List[str]:
    """--batch-size where the training preset's batch exceeds the images it would train on (the
    training refuses it): a small dataset the search could take."""
    if training_images is None:
        return []
    config = TRAIN_PRESETS[preset if preset in TRAIN_PRESETS else "paper"]
    used = min(training_images, config.train_images or training_images)
    return ["--batch-size", str(used)] if used < config.batch_size else []


def top_table(records: List[Dict[str, Any]], k: int = 10) -> str:
    if not records:
        return "no candidate logged yet"
    ok = sorted((r for r in records if r["status"] == "ok"), key=lambda r: -r["reward"])[:k]
    failed = sum(r["status"] != "ok" for r in records)
    lines = [f"top {len(ok)} of {len(records)} candidates ({failed} failed)",
             f"{'rank':>4} {'index':>5} {'reward':>7} {'stage1':>7} {'stage2':>7} {'params':>9} "
             f"{'MAdds':>6}  genotype"]
    for rank, r in enumerate(ok, 1):
        lines.append(f"{rank:>4} {r['index']:>5} {r['reward']:>7.4f} {r['stage1_reward']:>7.4f} "
                     f"{format_reward(r['stage2_reward']):>7} "
                     f"{r['params']:>9,} {madds_text(r['madds']):>6}  {r['genotype']}")
    note = failure_note(records)
    return "\n".join(lines + ([note] if note else []))
