"""The paper's params-accuracy picture for the user's own specs (matplotlib, an optional extra)."""

from __future__ import annotations

from pathlib import Path

from ecacli.atomic import atomic_write, check_writable
from ecacli.errors import UserError
from ecacli.extras import EXTRA_MODULES, require
from ecacli.reports.compare import CompareRow

Y_AXES = {
    "top1": ("reported ImageNet top-1 (%)", lambda r: (r.reported or {}).get("top1")),
    "images_per_s": ("measured training throughput (images/s)", lambda r: (r.measured or {}).get("images_per_s")),
}


def plot_params_vs(rows: list[CompareRow], y: str, path: Path, force: bool = False, dpi: int = 100) -> int:
    """Write a scatter of parameters (M) against `y` to a PNG (atomically); returns how many specs had a value."""
    require(EXTRA_MODULES["plot"], "--plot", "plot")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label, value_of = Y_AXES[y]
    points = [(r.name, r.total_params / 1e6, value_of(r)) for r in rows if value_of(r) is not None]
    if not points:
        hint = "add a `reported:` block with top1 to the specs, or measure with --time" if y == "top1" else "measure with --time"
        raise UserError(f"--plot: none of the specs has a {label}; {hint}.")
    check_writable([path], force)
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for name, params, value in points:
        ax.scatter(params, value, s=60)
        ax.annotate(name, (params, value), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("parameters (M, exact)")
    ax.set_ylabel(label)
    ax.set_title("parameters vs " + label.split(" (")[0])
    ax.grid(alpha=0.3)
    ax.margins(x=0.2, y=0.15)
    fig.tight_layout()
    try:
        atomic_write({path: lambda handle: fig.savefig(handle, dpi=dpi, format="png")}, force)
    finally:
        plt.close(fig)
    return len(points)
