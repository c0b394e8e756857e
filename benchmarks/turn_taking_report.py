"""The "Turn-taking" section of report.md and turn_taking.png, from report["turn_taking"] (benchmarks.turn_taking)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.summary import fmt
from benchmarks.turn_taking import COMPLETE


def _label(key: str) -> str:
    return "complete sentence" if key == COMPLETE else f"{key} ms pause"


def markdown_section(report: dict[str, Any]) -> list[str]:
    tt: dict[str, Any] = report.get("turn_taking") or {}
    if not tt:
        return []
    lines = ["## Turn-taking", "",
             "| arm | turns with | turns | false cut-offs | rate | drafts | committed | commit rate | v2v p50 "
             "| v2v p90 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, arm in tt.items():
        for key, g in arm["by_pause"].items():
            lines.append(f"| {name} | {_label(key)} | {g['turns']} | {g['false_cutoffs']} "
                         f"| {fmt(g['false_cutoff_rate'], 2)} | {g['drafts_started']} | {g['drafts_committed']} "
                         f"| {fmt(g['commit_rate'], 2)} | {fmt(g['v2v_ms']['p50'])} | {fmt(g['v2v_ms']['p90'])} |")
    lines += ["", "| arm | complete turns | v2v p50 | p90 | max | speech end → decision p50 | p90 | commit rate "
              "| wasted tokens | cancel p50 | p95 | max | cancellations | waited: ASR p95 | LM+decoder p95 |",
              "|---" * 15 + "|"]
    for name, arm in tt.items():
        e, c = arm["end_of_turn"], arm["cancel_latency_ms"]
        lines.append(f"| {name} | {e['turns']} | {fmt(e['v2v_ms']['p50'])} | {fmt(e['v2v_ms']['p90'])} "
                     f"| {fmt(e['v2v_ms']['max'])} | {fmt(e['decision_ms']['p50'])} "
                     f"| {fmt(e['decision_ms']['p90'])} "
                     f"| {fmt(arm['commit_rate'], 2)} | {fmt(arm['wasted_token_ratio'], 2)} | {fmt(c['p50'])} "
                     f"| {fmt(c['p95'])} | {fmt(c['max'])} | {fmt(c['n'])} | {fmt(c['waited_asr']['p95'])} "
                     f"| {fmt(c['waited_lm_tts']['p95'])} |")
    lines += ["", "Turns are grouped by their longest mid-sentence pause (`pause_ms` segment); *complete sentence*: no "
              "pause. A *false cut-off* is a turn the server answered before its last part (a reply to the words "
              "before a pause). *v2v*: the turn's final speech end → first reply audio at the client. *speech end → "
              "decision*: on the server's clock, to the end-of-turn decision (a committed draft's commit). *commit "
              "rate*: drafts committed / drafts started; *wasted tokens*: discarded drafts' tokens / all tokens. "
              "*cancel*: a cancelled draft's or reply's request → its work stopped (`generation.stopped`), ms; "
              "*waited*: how long the stop waited for the tokenizer pass, and for the LM step and decoder piece, "
              "in flight.", ""]
    return lines


def plot(report: dict[str, Any], out: Path) -> list[Path]:
    tt: dict[str, Any] = report.get("turn_taking") or {}
    if not tt:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sorted({k for arm in tt.values() for k in arm["by_pause"] if k != COMPLETE}, key=int)
    width = 0.8 / max(1, len(tt))
    for i, (name, arm) in enumerate(tt.items()):
        groups = arm["by_pause"]
        rates = [(groups[k]["false_cutoff_rate"] or 0.0) if k in groups else 0.0 for k in keys]
        xs = np.arange(len(keys)) + (i - (len(tt) - 1) / 2) * width
        bars = left.bar(xs, rates, width * 0.95, color=colors(i), label=name)
        for bar, k in zip(bars, keys, strict=True):
            g = groups.get(k)
            if g:
                left.annotate(f"{g['false_cutoffs']}/{g['turns']}", (bar.get_x() + bar.get_width() / 2,
                              bar.get_height()), ha="center", va="bottom", fontsize=7)
        v2v = np.sort([t["v2v_ms"] for t in report["arms"][name]["turns"]
                       if t.get("ok") and not t.get("pauses_ms")])
        if v2v.size:
            right.step(np.r_[v2v[0], v2v], np.arange(v2v.size + 1) / v2v.size, where="post", color=colors(i),
                       label=f"{name} (n={v2v.size}, p50 {np.percentile(v2v, 50):.0f} ms)")
    left.set_xticks(range(len(keys)), [f"{k} ms" for k in keys])
    left.set_xlabel("mid-sentence pause")
    left.set_ylabel("false cut-off rate (turns answered early)")
    left.set_ylim(0, 1.05)
    left.grid(alpha=0.3, axis="y")
    left.set_title("False cut-offs by pause length")
    right.set_xlabel("voice-to-voice latency (ms) on complete sentences")
    right.set_ylabel("fraction of turns")
    right.set_ylim(0, 1.02)
    right.grid(alpha=0.3)
    right.set_title("End-of-turn latency, complete sentences")
    for ax in (left, right):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left" if ax is left else "lower right")
    fig.tight_layout()
    path = out / "turn_taking.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
