"""The PNG: latency and bandwidth vs size (log-log), barrier, objects and sharing."""

from __future__ import annotations

from ._runner import METHOD, METHODS
from ._stats import fmt_size

STYLE = {
    "driller.Send": dict(color="C3", marker="o", lw=2.2),
    "driller.send": dict(color="C1", marker="o", lw=2.2),
    "driller.Send-spec": dict(color="C3", marker="o", ls=":", lw=1.8),
    "mpi4py.Send": dict(color="C0", marker="s"),
    "mpi4py.Send-spec": dict(color="C0", marker="s", ls=":"),
    "mpi4py.send": dict(color="C9", marker="s"),
    "mpi4py.pkl5": dict(color="C4", marker="s"),
    "mp.Pipe": dict(color="C2", marker="^"),
    "mp.Queue": dict(color="C8", marker="^"),
    "memcpy": dict(color="black", ls="--", marker="", lw=1.5),
}


def _size_tick(x, _pos) -> str:
    return fmt_size(int(round(x))).replace(" ", "\u202f")


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    (ax_lat, ax_bw), (ax_bar, ax_obj) = axes
    rows = res["results"]

    for ax, bench in ((ax_lat, "latency"), (ax_bw, "bandwidth")):
        drawn = False
        for m in METHODS:
            pts = sorted((r["size"], r) for r in rows
                         if r["bench"] == bench and r["method"] == m.key and r["size"] > 0)
            if not pts:
                continue
            xs = [s for s, _ in pts]
            if bench == "latency":
                ys = [r["median"] * 1e6 for _, r in pts]
                lo = [r["min"] * 1e6 for _, r in pts]
                hi = [r["max"] * 1e6 for _, r in pts]
            else:
                ys = [r["bandwidth_Bps"]["median"] / 1e9 for _, r in pts]
                lo = [r["bandwidth_Bps"]["min"] / 1e9 for _, r in pts]
                hi = [r["bandwidth_Bps"]["max"] / 1e9 for _, r in pts]
            st = dict(STYLE.get(m.key, {}))
            label = m.label + (" — the limit of one copy" if m.key == "memcpy" else "")
            ax.plot(xs, ys, label=label, ms=4, **st)
            ax.fill_between(xs, lo, hi, color=st.get("color"), alpha=0.15, lw=0)
            drawn = True
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=4))
        ax.xaxis.set_major_formatter(FuncFormatter(_size_tick))
        ax.set_xlabel("message size")
        ax.grid(True, which="both", alpha=0.3)
        if bench == "latency":
            ax.set_ylabel("one-way latency (µs)")
            ax.set_title("Latency (ping-pong / 2), median, band = min–max")
        else:
            ax.set_ylabel("bandwidth (GB/s)")
            ax.set_title("Bandwidth (window of sends), median, band = min–max")
        if drawn:
            ax.legend(fontsize=7, loc="best", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)

    # barrier: latency vs ranks
    drawn = False
    styles = {"barrier": "o-", "bcast": "s--", "allreduce": "^:"}
    for bench, style in styles.items():
        for key in (f"driller.{bench.capitalize()}", f"mpi4py.{bench.capitalize()}"):
            pts = sorted((r["ranks"], r) for r in rows
                         if r["bench"] == bench and r["method"] == key)
            if not pts:
                continue
            color = "C3" if key.startswith("driller") else "C0"
            label = METHOD[key].label + (f" {fmt_size(pts[0][1]['size'])}"
                                         if bench != "barrier" else "")
            ax_bar.plot([n for n, _ in pts], [r["median"] * 1e6 for _, r in pts], style,
                        label=label, color=color)
            ax_bar.fill_between([n for n, _ in pts], [r["min"] * 1e6 for _, r in pts],
                                [r["max"] * 1e6 for _, r in pts], alpha=0.12, color=color, lw=0)
            drawn = True
    ax_bar.set_yscale("log")
    ax_bar.set_xscale("log", base=2)
    ax_bar.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax_bar.set_xlabel(f"ranks (on {res['machine'].get('cpus_usable')} CPUs)")
    ax_bar.set_ylabel("time per call (µs)")
    ax_bar.set_title("Collectives: Barrier, Bcast, Allreduce")
    ax_bar.grid(True, which="both", alpha=0.3)
    if drawn:
        ax_bar.legend(fontsize=8)
    else:
        ax_bar.text(0.5, 0.5, "no data", ha="center", transform=ax_bar.transAxes)

    # objects + sharing: horizontal bars, ms, log scale
    bars = [(f"{r['bench']} {fmt_size(r['size'])}: {r['label']}", r) for r in rows
            if r["bench"] in ("objects", "sharing")]
    if bars:
        labels = [b for b, _ in bars]
        med = [r["median"] * 1e3 for _, r in bars]
        err = [[r["median"] * 1e3 - r["min"] * 1e3 for _, r in bars],
               [r["max"] * 1e3 - r["median"] * 1e3 for _, r in bars]]
        colors = ["C3" if r["role"] == "driller" else ("0.4" if r["role"] == "limit" else "C0")
                  for _, r in bars]
        ys = list(range(len(bars)))
        ax_obj.barh(ys, med, xerr=err, color=colors, alpha=0.8)
        ax_obj.set_yticks(ys)
        ax_obj.set_yticklabels(labels, fontsize=7)
        ax_obj.invert_yaxis()
        ax_obj.set_xscale("log")
        ax_obj.set_xlabel("time per message / per pass (ms)")
    else:
        ax_obj.text(0.5, 0.5, "no data", ha="center", transform=ax_obj.transAxes)
    ax_obj.set_title("Objects (dict of arrays) and sharing (Pool worker sums an array)")
    ax_obj.grid(True, axis="x", which="both", alpha=0.3)

    m = res["machine"]
    skipped = ", ".join(s["label"] for s in res["skipped"])
    fig.suptitle(f"driller bench — {m['cpu_model']}, {m['cpus_usable']} CPUs, {m['kernel']}, "
                 f"{m['python']}; {res['config']['rounds']} rounds"
                 + (f"\nskipped: {skipped}" if skipped else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
