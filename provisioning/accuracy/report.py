"""docs/accuracy.md and its CSV and PNG files, written from one AccuracyReport.

Matplotlib draws the PNGs when it is installed (the `accuracy` extra, fleet side only); without it the
report says so and the CSVs carry the same curves.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np

from provisioning.accuracy.harness import AccuracyReport
from provisioning.accuracy.stats import fnir_model, passer_by

COMMAND = "python3 bench/accuracy.py"


def pct(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{100 * v:.{digits}f}%"


def sci(v: float) -> str:
    return "0" if v == 0 else f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}"


class ReportWriter:
    """Writes the Markdown report and, beside it under `out_dir`, its CSV and PNG files."""

    def __init__(self, report: AccuracyReport, markdown: Path, out_dir: Path):
        self.r = report
        self.markdown = markdown
        self.out_dir = out_dir
        self.stem = report.model.embedder

    def write(self) -> list[Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        written = [self._det_csv(), self._scores_csv(), self._recall_csv()]
        plots = self._plots()
        written += plots
        self.markdown.write_text(self._markdown(bool(plots)), encoding="utf-8")
        return [self.markdown, *written]

    def _rel(self, name: str) -> str:
        return f"{self.out_dir.name}/{name}"

    # ---------------------------------------------------------------- CSV

    def _det_rows(self) -> tuple[list[str], list[list[float]]]:
        r = self.r
        ts = r.det[0]
        sizes = r.options.list_sizes
        head = ["threshold", "fmr_pair", "fnmr_pair"] + [f"fpir_{n}" for n in sizes] + [f"fnir_{n}" for n in sizes]
        fpir = {n: np.array([float(passer_by(float(r.pair_tail.model.survival(t)) if t > r.pair_tail.model.u
                                             else f, n)) for t, f in zip(ts, r.det[1], strict=True)]) for n in sizes}
        fnir = {n: np.array([fnir_model(r.genuine, r.pair_tail.model, r.impostor, float(t), n, r.model.margin)
                             for t in ts]) for n in sizes}
        rows = [[float(t), float(a), float(b), *(float(fpir[n][i]) for n in sizes),
                 *(float(fnir[n][i]) for n in sizes)] for i, (t, a, b) in enumerate(zip(*r.det, strict=True))]
        return head, rows

    def _det_csv(self) -> Path:
        path = self.out_dir / f"{self.stem}-det.csv"
        head, rows = self._det_rows()
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(head)
            for row in rows:
                w.writerow([f"{row[0]:.3f}", *(f"{v:.6g}" for v in row[1:])])
        return path

    def _scores_csv(self) -> Path:
        path = self.out_dir / f"{self.stem}-scores.csv"
        sets = self.r.sets
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["set", "kind", "score", "pair"])
            for name, pairs in (("same", sets.genuine), ("different", sets.impostor), ("doubtful", sets.doubtful)):
                for p in sorted(pairs, key=lambda p: -p.score):
                    w.writerow([name, p.kind, f"{p.score:.4f}", sets.describe(p)])
        return path

    def _recall_csv(self) -> Path:
        path = self.out_dir / f"{self.stem}-recall.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["face_px_from", "face_px_to", "annotated", "detected", "passed_gate"])
            for row in self.r.recall:
                w.writerow([f"{row.low:.0f}", "" if row.high == np.inf else f"{row.high:.0f}", row.annotated,
                            row.detected, row.passed])
        return path

    # ---------------------------------------------------------------- PNG

    def _plots(self) -> list[Path]:
        if importlib.util.find_spec("matplotlib") is None:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        r = self.r
        t = r.model.threshold
        out = []
        fig, ax = plt.subplots(figsize=(7, 4))
        bins = [float(b) for b in np.linspace(0.6, 1.0, 81)]
        ax.hist(r.impostor, bins=bins, alpha=0.6, density=True, label=f"different people ({len(r.impostor)})")
        ax.hist(r.genuine, bins=bins, alpha=0.6, density=True, label=f"same person ({len(r.genuine)})")
        doubtful = r.sets.values(r.sets.doubtful)
        if len(doubtful):
            ax.hist(doubtful, bins=bins, histtype="step", density=True, label=f"may be one person ({len(doubtful)})")
        ax.axvline(t, color="k", ls="--", lw=1, label=f"threshold {t:.2f}")
        ax.set_xlabel("cosine score")
        ax.set_ylabel("density")
        ax.set_title(f"{r.model.embedder}: score distributions")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(self.out_dir / f"{self.stem}-scores.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)

        head, rows = self._det_rows()
        data = np.array(rows)
        fig, ax = plt.subplots(figsize=(7, 5))
        floor = 1e-5
        ax.plot(np.maximum(data[:, 1], floor), np.maximum(data[:, 2], floor), "k-", lw=2,
                label="verification pairs (data): FNMR vs FMR")
        for n in r.options.list_sizes:
            i, j = head.index(f"fpir_{n}"), head.index(f"fnir_{n}")
            ax.plot(np.maximum(data[:, i], floor), np.maximum(data[:, j], floor), "--",
                    label=f"open set, {n:,} entries (tail model)")
        at = int(np.argmin(np.abs(data[:, 0] - t)))
        ax.plot(max(data[at, 1], floor), max(data[at, 2], floor), "ko")
        ax.annotate(f"{t:.2f}", (max(data[at, 1], floor), max(data[at, 2], floor)), textcoords="offset points",
                    xytext=(5, 5))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(floor, 1)
        ax.set_ylim(1e-3, 1)
        ax.set_xlabel("false match rate per pair / FPIR (open set)")
        ax.set_ylabel("false non-match rate / FNIR (open set)")
        ax.set_title(f"{r.model.embedder}: DET")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        out.append(self.out_dir / f"{self.stem}-det.png")
        fig.savefig(out[-1], dpi=110)
        plt.close(fig)
        return out

    # ---------------------------------------------------------------- Markdown

    def _markdown(self, plots: bool) -> str:
        r, m, o, s = self.r, self.r.model, self.r.options, self.r.sep
        k, n = o.tracking.agree_k, o.tracking.window_n
        e = r.at_threshold
        lo, hi = e.data_interval
        lines = [
            "# Accuracy of the shipped model",
            "",
            f"Generated by `{COMMAND}` (the harness in `provisioning/accuracy/`); do not edit by hand, re-run it. "
            "The method, and what each figure can and cannot say, are at the end.",
            "",
            f"- embedder **{m.embedder}** ({m.variant}, sha256 `{m.sha256[:16]}`), detector {m.detector}; "
            f"release {m.release}; {r.when}",
            f"- deployment threshold **{m.threshold:.2f}** (floor {m.floor}), margin over the runner-up "
            f"{m.margin}, tracker K = {k} of N = {n}, track template {'on' if o.tracking.template else 'off'}",
            f"- data: `{Path(r.dataset).name}` ({r.photos} photos at scales "
            f"{', '.join(f'{x:g}' for x in o.scales)}; {r.clip_frames} clip frames, every {o.clip_stride}th "
            f"gate-passing one in the pairs; each photo also held {o.hold} jittered frames in front of a 720p "
            f"camera; clips cut into {o.track_frames}-frame passages)",
            "",
            "## The figures of issue 13, re-measured on this set",
            "",
            "| figure | value |",
            "|---|---|",
            f"| same-person cosine | {s.genuine_min:.3f} to {s.genuine_max:.3f} ({s.genuine_below} of {s.genuine} "
            f"pairs under {m.threshold:.2f}) |",
            f"| different-person cosine | up to {s.impostor_max:.3f} (p99 {s.impostor_p99:.3f}; {s.impostor} pairs) |",
            f"| overlap of the ranges | {s.overlap:.3f}" + (" (they do not overlap)" if s.overlap < 0 else "") + " |",
            f"| same-person pairs lost with the threshold just above every different-person pair | "
            f"{pct(s.lost_above_all_impostors, 0)} |",
            f"| different-person pairs at or above {m.threshold:.2f} (data) | {e.hits} of {e.pairs} = "
            f"{sci(e.empirical)} (90% interval {sci(lo)} to {sci(hi)}) |",
            f"| ... tail model{' (extrapolation)' if e.extrapolated else ''} | {sci(e.model)} "
            f"(90% interval {sci(e.low)} to {sci(e.high)}) |",
        ]
        for size in (100, 1000, 10000):
            p, a, b = r.pair_tail.passer_by(m.threshold, size)
            lines.append(f"| one face against {size:,} entries: falsely matched (model) | {pct(p)} "
                         f"(90% interval {pct(a)} to {pct(b)}) |")
        worst_g = sorted(r.sets.genuine, key=lambda p: p.score)[:5]
        top_i = sorted(r.sets.impostor, key=lambda p: -p.score)[:5]
        lines += [
            "",
            "Lowest same-person pairs: " + "; ".join(f"{p.score:.3f} {r.sets.describe(p)}" for p in worst_g) + ".",
            "",
            "Highest different-person pairs: " + "; ".join(f"{p.score:.3f} {r.sets.describe(p)}" for p in top_i) + ".",
        ]
        if r.sets.doubtful:
            d = max(r.sets.doubtful, key=lambda p: p.score)
            lines += ["", f"Pairs that may be one person ({len(r.sets.doubtful)}, left out of both sets): highest "
                          f"{d.score:.3f} {r.sets.describe(d)}."]
        lines += ["", f"Same-person pairs by kind: {self._kinds()}.", ""]
        if plots:
            lines += [f"![score distributions]({self._rel(self.stem + '-scores.png')})", ""]
        lines += self._open_set_section(plots)
        lines += self._recall_section()
        lines += self._method()
        return "\n".join(lines) + "\n"

    def _kinds(self) -> str:
        kinds: dict[str, list[float]] = {}
        for p in self.r.sets.genuine:
            kinds.setdefault(p.kind, []).append(p.score)
        t = self.r.model.threshold
        return "; ".join(f"{kind} {len(v)} (min {min(v):.3f}, {sum(x < t for x in v)} under {t:.2f})"
                         for kind, v in sorted(kinds.items()))

    def _open_set_section(self, plots: bool) -> list[str]:
        r, m, c = self.r, self.r.model, self.r.check
        k, n = r.options.tracking.agree_k, r.options.tracking.window_n
        te = r.track_at_threshold
        rules = " and its track template" if r.options.tracking.template else ""
        lines = [
            f"## Open set at the deployment threshold ({m.threshold:.2f})",
            "",
            "FPIR: share of people on no list who are matched to some entry (one face, one frame). FNIR: share "
            "of listed people not matched to their own entry. *data*: the node's `Matcher` on random lists "
            f"drawn from the set ({r.options.draws} per probe; the set gives at most {r.data_list_size} certain "
            "distractors). *model*: the impostor tail model, entries independent. False alerts per 1,000 "
            f"passers-by: after the tracker's {k}-of-{n} rule{rules}, from the tail model of track scores.",
            "",
            "| entries | FPIR data | FPIR model (90% interval) | FNIR data | FNIR model | false alerts per 1,000 "
            "passers-by (90% interval) | |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in r.open_set:
            f, a = row.fpir, row.alerts_per_1000
            lines.append(f"| {row.size:,} | {pct(row.fpir_data)} | {pct(f[0])} ({pct(f[1])} to {pct(f[2])}) | "
                         f"{pct(row.fnir_data)} | {pct(row.fnir)} | {a[0]:.3g} ({a[1]:.3g} to {a[2]:.3g}) | "
                         f"{'extrapolated' if row.extrapolated else 'within the data'} |")
        lines += [
            "",
            f"Track scores: {te.hits} of {te.pairs} (passage, entry) pairs reach {m.threshold:.2f}; tail "
            f"model {sci(te.model)} per pair (90% interval {sci(te.low)} to {sci(te.high)}), against "
            f"{sci(r.at_threshold.model)} for single frames.",
            "",
            f"The real tracker and matcher on the longest list the data holds ({c.list_size} entries at most): "
            f"{c.false_alerts} of {c.passages} unlisted passages alerted (the per-entry replay, an upper bound, fires "
            f"on {c.replay_fires}); listed passages alerted for their own entry: {c.listed_alerted} of {c.listed}"
            f", for another entry: {c.listed_wrong}.",
            "",
        ]
        if plots:
            lines += [f"![DET curve]({self._rel(self.stem + '-det.png')})", ""]
        lines += [f"Curves as numbers: [{self.stem}-det.csv]({self._rel(self.stem + '-det.csv')}), "
                  f"scores: [{self.stem}-scores.csv]({self._rel(self.stem + '-scores.csv')}).", ""]
        return lines

    def _recall_section(self) -> list[str]:
        r = self.r
        lines = ["## Detection and the quality gate by face size", "",
                 "Every annotated face of every photo at each scale (face width in the analysed image; a face is "
                 "detected when a detection overlaps its box by IoU >= 0.3).", "",
                 "| face width (px) | faces | detected | passed the gate |", "|---|---|---|---|"]
        for row in r.recall:
            span = f"{row.low:.0f}+" if row.high == np.inf else f"{row.low:.0f}-{row.high:.0f}"
            if row.annotated:
                lines.append(f"| {span} | {row.annotated} | {pct(row.detected / row.annotated, 0)} | "
                             f"{pct(row.passed / row.annotated, 0)} |")
            else:
                lines.append(f"| {span} | 0 | - | - |")
        refusals = ", ".join(f"{k} {v}" for k, v in r.refusals.items()) or "none"
        lines += ["", f"Refused at full size: {refusals}. Clips: {r.clip_frames} frames, "
                      f"{r.clip_false_detections} false detections.", "",
                  f"Details: [{self.stem}-recall.csv]({self._rel(self.stem + '-recall.csv')}).", ""]
        return lines

    def _method(self) -> list[str]:
        return [
            "## Method",
            "",
            "- **Pipeline.** `edge.vision.analyzer.FaceAnalyzer` with the node's defaults (crowd tile plan, "
            "quality gate, 4-point alignment, the manifest's embedder); matching by the node's `Matcher` "
            "(top-1, threshold, margin `MIN_MARGIN`); alerts by the node's `Tracker`. Only faces that pass the "
            "gate are scored, as on the node.",
            "- **Pairs.** Same person: two photos of one identity, or two sampled frames of one clip. Different "
            "people: any two identities, except pairs the annotations say may be one person (both flagged "
            "`identity_distinctness_unverified` in different photos, or a `may_equal_*` flag and photos from "
            "the same source); those are shown apart, never counted.",
            "- **Enrolment.** Each identity's first sample is its entry; its other samples are mated probes. "
            "Every sample is also a non-mated probe against lists without its identity.",
            "- **Tail model.** Generalised Pareto over the different-person scores above their 90% quantile "
            "(probability-weighted moments). Intervals: 5th-95th percentile of refits on a bootstrap over "
            "identities (a person drawn twice brings all their pairs twice), since pairs sharing a person are "
            "not independent. A fitted shape k > 0 is a bounded tail; the model then says 0 above its endpoint, "
            "which only means the data show no sign of scores there.",
            "- **List size.** One face against N entries is falsely matched with probability 1 - (1 - p)^N, p per "
            "pair, entries independent. Real lists hold lookalikes of each other and of the public; that is not "
            "in this set, so the prediction is for a list of unrelated people.",
            "- **K-of-N.** A passer-by alerts for an entry when K of N consecutive frames score at or above the "
            "threshold against it: the K-th highest score in the best window is the (passage, entry) *track "
            "score*, and the same tail model and list-size rule give false alerts per 1,000 passers-by. Leaving "
            "out the margin and competition between entries, this is an upper bound of the tracker, checked "
            "against the real tracker on the lists the data fills. A lookalike scores high on every frame, so "
            "K-of-N removes wandering scores, not lookalikes: the track-score tail shows how much is left.",
            "- **Track template.** Beside K-of-N the tracker matches each track's quality-weighted template once it "
            "holds K gated frames, and alerts when the template clears the threshold and one frame so far cleared "
            "it on its own (docs/tracking.md): min(template score, best frame so far), maximised over the "
            "passage, is the template's track score, and a pair's track score is the larger of the two rules'.",
            "- **Limits of this set.** Few identities, and one person (Obama) with several photos; the clip's "
            "frames are many views of one person. Rates under about 1 / (number of pairs) are model "
            "extrapolations whatever the table says; the intervals say how far the data constrain them.",
            "- **Another model.** `--embedder ID` runs any embedder MANIFEST.json declares (its own threshold "
            "unless `--threshold`); the report names the model's id and sha256 and the release it was run on.",
            "",
            "## Calibration at a venue (`edge-fleet calibrate`) and the fleet's policy",
            "",
            "`edge-fleet calibrate --watchlist NAME --footage CLIP... [--list-size N] [--target X]` runs the same "
            "pipeline over a rehearsal at the venue: footage of people who are on no list, from the deployment's "
            "cameras. Every face that passes the gate, searched against the built watch list, gives impostor "
            "pairs at that site (its light, its cameras, its public); their tail model gives p(t), and the "
            "proposed threshold is the lowest one, not below the model's floor, whose predicted false alerts per "
            "1,000 passers-by on N entries (default: the watch list's size) are at most the target (default: the "
            "fleet policy). Decisions where the issue was silent: the prediction takes no credit for the K-of-N "
            "rule (a lookalike scores high on every frame, so the prediction is an upper bound), and the node's "
            "matcher and tracker are also run over the rehearsal at the proposed threshold, reporting the alerts "
            "they raised (all false) and the tracks they followed. The report holds figures only; rehearsal faces "
            "stay in memory and are wiped. Exit status 1 when no threshold meets the target.",
            "",
            "The calibration is kept in the fleet (`calibration/<model id>.json`: p(t) and its bootstrap 95th "
            "percentile on a 0.001 grid, for that model's sha256). With `max_false_alerts_per_1000` set in "
            "`fleet.json`, `edge-fleet shard issue` predicts the deployment's false alerts per 1,000 passers-by "
            "from its threshold and the watch list's size (at the grid point at or below the threshold, never "
            "optimistic) and refuses, with the figures and the lowest threshold that would pass, when the "
            "prediction exceeds the policy; it refuses too when the policy is set and the model has no "
            "calibration. Without the key there is no such check (the model's floor still applies). The floor "
            "in MANIFEST.json comes from a calibration of the model itself (models/calibration/<id>.json, set by "
            "models/tools/write_manifest.py; docs/embedders.md).",
        ]
