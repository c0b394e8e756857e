"""report.json, report.md and the plots, from the harness's results dict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.summary import fmt
from benchmarks.turn_taking_report import markdown_section as turn_taking_section
from benchmarks.turn_taking_report import plot as turn_taking_plot
from benchmarks.turns import MARKS, STAGES

MARK_LABELS = {"transcript": "transcript ready", "lm_first_token": "LM first token", "first_chunk": "first audio chunk",
               "first_audio_out": "first audio out", "first_audio_heard": "first audio heard"}
STAGE_LABELS = {
    "inbound": "inbound (client→VAD)", "silence": "silence window", "asr": "ASR", "lm": "LM first token",
    "decoder": "decoder first chunk", "wire": "to the wire", "outbound": "outbound (wire→client)",
}
MAX_TURN_ROWS = 80


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(markdown(report))
    return [out / "report.json", out / "report.md", *plots(report, out)]


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")




def markdown(report: dict[str, Any]) -> str:
    arms: dict[str, Any] = report["arms"]
    m = report.get("machine", {})
    lines = [
        f"# Parley latency report — {report.get('date', '')}",
        "",
        f"- commit `{report.get('git_commit', '?')}`; command: `{report.get('command', '')}`",
        f"- machine: {m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs, {m.get('memory_gib', '?')} GiB; "
        f"load average {m.get('load_start', '?')} → {m.get('load_end', '?')}",
        f"- server: {report.get('server', {}).get('source', '?')}; transport {report.get('transport', '?')}; "
        f"{report.get('sessions', '?')} concurrent session(s); scenarios `{report.get('scenarios', '?')}`",
        *([f"- warm-up calls (not in the figures): v2v {', '.join(fmt(w['v2v_ms']) for w in report['warmup'])} ms"]
          if report.get("warmup") else []),
        "",
        "## Voice-to-voice (user speech end → first reply audio at the client)",
        "",
        "| arm | sessions | turns | failed | v2v p50 | p90 | p99 | committed p50 | fresh p50 | commit rate "
        "| saved p50 | wasted tokens | late frames | false turn ends |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        s = arm["summary"]
        lines.append(
            f"| {name} | {s['sessions']} | {s['turns']} | {s['failed_turns']} | {fmt(s['v2v_ms']['p50'])} "
            f"| {fmt(s['v2v_ms']['p90'])} | {fmt(s['v2v_ms']['p99'])} | {fmt(s['v2v_committed_ms']['p50'])} "
            f"| {fmt(s['v2v_fresh_ms']['p50'])} | {fmt(s['commit_rate'], 2)} | {fmt(s['saved_ms']['p50'])} "
            f"| {fmt(s['wasted_token_ratio'], 2)} | {fmt(s['late_frame_ratio'], 4)} | {s['false_turn_ends']} |"
        )
    for pair, d in report.get("paired", {}).items():
        lines.append("")
        lines.append(f"Paired by turn, **{pair}**: v2v median {fmt(d['v2v_delta_ms']['p50'])} ms "
                     f"(p90 {fmt(d['v2v_delta_ms']['p90'])}, {d['v2v_delta_ms']['n']} turns); on the turns the "
                     f"first arm answered with a committed draft: median "
                     f"{fmt(d['v2v_delta_where_first_committed_ms']['p50'])} ms "
                     f"({d['v2v_delta_where_first_committed_ms']['n']} turns).")
    lines += [
        "",
        "All times in ms. *committed*: turns answered by a committed speculative draft; *fresh*: answered by a "
        "response started after the end of turn. *late frames*: share of received 20 ms frames more than "
        "20 ms behind the stream's best pacing.",
        "",
        "## Engine-added latency (issue 4 definitions)",
        "",
        "| arm | inbound p50 | inbound p95 | outbound p50 | outbound p95 | to first audible p50 | p95 "
        "| packet transit p99 (worst call) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, arm in arms.items():
        s = arm["summary"]
        i, o, a = s["engine_inbound_ms"], s["engine_outbound_ms"], s["outbound_audible_ms"]
        lines.append(f"| {name} | {fmt(i['p50'], 1)} | {fmt(i['p95'], 1)} | {fmt(o['p50'], 1)} "
                     f"| {fmt(o['p95'], 1)} | {fmt(a['p50'], 1)} | {fmt(a['p95'], 1)} "
                     f"| {fmt(s['wire_transit_p99_ms'], 1)} |")
    lines += [
        "",
        "inbound = last speech frame sent by the client → end-of-turn decision − end_of_turn_ms; outbound = first "
        "decoder chunk ready (released, for a held draft) → the packet carrying its first sample received by the "
        "client (found from RTP timestamps and RTCP sender reports, so silence at the chunk's start does not count); "
        "*to first audible* also counts that silence. *packet transit*: arrival − nominal send time of every reply "
        "packet, so sender lateness shows here.",
        "",
        "## Where the time goes (median per stage, ms)",
        "",
        "| arm | " + " | ".join(STAGE_LABELS[s] for s in STAGES) + " | ASR work | LM work | decoder work "
        "| VAD stop event |",
        "|---|" + "---|" * (len(STAGES) + 4),
    ]
    for name, arm in arms.items():
        s = arm["summary"]
        stages = " | ".join(fmt(s["stages_ms"][k]) for k in STAGES)
        lines.append(f"| {name} | {stages} | {fmt(s['asr_ms']['p50'])} | {fmt(s['lm_first_token_ms']['p50'])} "
                     f"| {fmt(s['decoder_first_chunk_ms']['p50'])} | {fmt(s['vad_stop_ms']['p50'])} |")
    lines += ["", "Stages are cut on the critical path, so a stage a committed draft finished early counts 0; "
              "*work* columns are the stage's own duration wherever it ran.", ""]
    lines += _marks_section(arms)
    lines += turn_taking_section(report)
    lines += _server_section(report)
    lines += _turn_table(arms)
    return "\n".join(lines) + "\n"


def _marks_section(arms: dict[str, Any]) -> list[str]:
    lines = ["## From the user's speech end (p50 / p95 / max, ms)", "",
             "| arm | " + " | ".join(MARK_LABELS[k] for k in MARKS) + " | final pass: waited | work | audio decoded "
             "| WER |", "|---|" + "---|" * (len(MARKS) + 4)]
    for name, arm in arms.items():
        s = arm["summary"]
        marks = s.get("from_speech_end_ms", {})
        cells = [" / ".join(fmt(marks.get(k, {}).get(q)) for q in ("p50", "p95", "p100")) for k in MARKS]
        asr = s.get("asr_final", {})
        extra = [" / ".join(fmt(asr.get(k, {}).get(q)) for q in ("p50", "p95", "p100"))
                 for k in ("queued_ms", "work_ms", "decoded_audio_ms")]
        wer = s.get("wer")
        pct = fmt(wer * 100 if wer is not None else None, 1)
        lines.append(f"| {name} | " + " | ".join(cells + extra) + f" | {pct} % |")
    lines += ["", "Each mark is when that result existed, on the client's clock, wherever it was computed (a draft "
              "may have it before the end of turn). *transcript*: the tokenizer's final pass finished. "
              "*final pass*: its wait for the ASR thread, its work and the audio it decoded (the whole turn "
              "without incremental decoding). WER: against the scenarios' transcripts.", ""]
    return lines


def _server_section(report: dict[str, Any]) -> list[str]:
    proc = report.get("server", {}).get("process", {})
    lines = ["## Server process", ""]
    if not proc.get("available"):
        return [*lines, "Not measured (the server is not a process on this host).", ""]
    lag = report.get("server", {}).get("event_loop_lag_max_ms", {})
    lines += [
        "| pids | wall s | CPU s | cores used | CPU per session (cores) | RSS start MiB | RSS peak MiB "
        "| RSS per session MiB | loop lag max ms (per worker) |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {len(proc['pids'])} | {proc['wall_s']} | {proc['cpu_s']} | {proc['cpu_cores_used']} "
        f"| {fmt(proc['cpu_per_session_core'], 3)} | {proc['rss_start_mib']} | {proc['rss_peak_mib']} "
        f"| {fmt(proc['rss_per_session_mib'], 1)} | {', '.join(f'{v:.0f}' for v in lag.values()) or '–'} |",
        "",
    ]
    return lines


def _turn_table(arms: dict[str, Any]) -> list[str]:
    lines = ["## Turns", "", "| arm | scenario | s | turn | v2v | committed | drafts (disc.) | inbound | outbound "
             "| reply ms | status |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = 0
    for name, arm in arms.items():
        for t in arm["turns"]:
            if rows >= MAX_TURN_ROWS:
                return [*lines, f"| … | ({sum(len(a['turns']) for a in arms.values()) - rows} more in report.json) "
                        "|||||||||", ""]
            status = "ok" if t.get("ok") else f"**{t.get('error')}**"
            lines.append(
                f"| {name} | {t['scenario']} | {t['session']} | {t['turn']} | {fmt(t.get('v2v_ms'))} "
                f"| {'yes' if t.get('committed') else 'no'} | {t.get('drafts_started', 0)} "
                f"({t.get('drafts_discarded', 0)}) | {fmt(t.get('engine_inbound_ms'), 1)} "
                f"| {fmt(t.get('engine_outbound_ms'), 1)} | {fmt(t.get('reply_ms'))} | {status} |"
            )
            rows += 1
    return [*lines, ""]


def plots(report: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms: dict[str, Any] = report["arms"]
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, arm in arms.items():
        xs = np.sort([t["v2v_ms"] for t in arm["turns"] if t.get("ok")])
        if xs.size:
            ax.step(xs, np.arange(1, xs.size + 1) / xs.size, where="post", label=f"{name} (n={xs.size})")
    ax.set_xlabel("voice-to-voice latency (ms): user speech end → first reply audio")
    ax.set_ylabel("fraction of turns")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("Latency CDF per arm")
    fig.tight_layout()
    paths.append(out / "latency_cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 1.6 + 0.6 * max(1, len(arms))))
    names = list(arms)
    left = np.zeros(len(names))
    colors = plt.get_cmap("tab10")
    for k, stage in enumerate(STAGES):
        widths = np.array([max(0.0, arms[n]["summary"]["stages_ms"][stage] or 0.0) for n in names])
        ax.barh(names, widths, left=left, color=colors(k), label=STAGE_LABELS[stage])
        left += widths
    ax.set_xlabel("ms after the user's speech end (median per stage)")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.set_title("Where the time goes")
    fig.tight_layout()
    paths.append(out / "stages.png")
    fig.savefig(paths[-1], dpi=110, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        data = [[t["from_speech_end_ms"][k] for t in arms[name]["turns"]
                 if t.get("ok") and t.get("from_speech_end_ms", {}).get(k) is not None] for k in MARKS]
        pos = [k + (i - (len(names) - 1) / 2) * width for k in range(len(MARKS))]
        keep = [(p, d) for p, d in zip(pos, data, strict=True) if d]
        if keep:
            box = ax.boxplot([d for _, d in keep], positions=[p for p, _ in keep], widths=width * 0.9,
                             whis=(5, 95), patch_artist=True, manage_ticks=False)
            for patch in box["boxes"]:
                patch.set_facecolor(colors(i))
            ax.plot([], [], color=colors(i), label=name, linewidth=6)
    ax.set_xticks(range(len(MARKS)), [MARK_LABELS[k] for k in MARKS], fontsize=8)
    ax.set_ylabel("ms after the user's speech end")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title("Stage distribution (box: p25-p75, whiskers p5-p95)")
    fig.tight_layout()
    paths.append(out / "stage_distribution.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths + turn_taking_plot(report, out)
