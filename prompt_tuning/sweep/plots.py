"""Figures of a sweep report (`pt-sweep report`): learning curves and the ablation.

Each figure is a small function from `PlotData` (plain numbers that
prompt_tuning.sweep.report gathers from the run folders) to a matplotlib Figure, or
None when there is nothing to draw; FIGURES registers them by name, and the
name is the file stem under ROOT/plots/. `save` writes PNG and SVG.

Figures use matplotlib's object API on an Agg canvas, never pyplot: no display,
no global figure state, and the backend other code may have chosen is left alone.
"""
import dataclasses
import io
import os
from typing import Callable, Dict, List, Optional, Sequence

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from prompt_tuning.storage import file_utils

FORMATS = ("png", "svg")
DPI = 150


@dataclasses.dataclass
class Curve:
  """One run's series; the runs of one `group` (its seeds) share a colour."""
  run: str
  group: str
  steps: Sequence[int]
  values: Sequence[float]


@dataclasses.dataclass
class Point:
  """One x position of an ablation line: the runs' values and their statistics."""
  x: float
  values: Sequence[float]
  mean: float
  std: Optional[float]  # None when n == 1


@dataclasses.dataclass
class Line:
  label: str
  points: List[Point]


@dataclasses.dataclass
class Panel:
  title: str  # the values of the axes that are neither x nor hue ('' if none)
  lines: List[Line]


@dataclasses.dataclass
class Ablation:
  x: str
  hue: Optional[str]
  metric: str  # as shown (the task left out when the sweep has one)
  best: bool
  log_x: bool
  panels: List[Panel]
  x_labels: Optional[List[str]] = None  # categorical x: tick labels at 0, 1, ...
  seeds: bool = True  # whether the points average over RANDOM_SEED


@dataclasses.dataclass
class PlotData:
  title: str  # the sweep's name
  subtitle: str  # e.g. the task, or the full 'task/metric'
  train_loss: List[Curve]
  metric: Optional[str]  # the main metric as shown
  eval_curves: List[Curve]
  ablation: Optional[Ablation]


FIGURES: Dict[str, Callable[[PlotData], Optional[Figure]]] = {}


def figure(name: str):
  """Registers a figure function under `name` (its file stem)."""
  def register(fn):
    FIGURES[name] = fn
    return fn
  return register


def _colours(n: int) -> list:
  cmap = colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def _new_figure(width=7.0, height=4.5, ncols=1, nrows=1):
  fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
  FigureCanvasAgg(fig)
  # Panels share y, so their values compare at a glance.
  axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
  return fig, [ax for row in axes for ax in row]


_LEGEND_INSIDE = 4  # entries; a longer legend would cover the curves: it goes beside them


def _legend(ax, n_entries: int) -> None:
  if n_entries > _LEGEND_INSIDE:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
  elif n_entries:
    ax.legend(fontsize="small")


def _curves(curves: Sequence[Curve], ylabel: str, title: str, subtitle: str,
            markers: bool) -> Optional[Figure]:
  curves = [c for c in curves if len(c.steps)]
  if not curves:
    return None
  groups = list(dict.fromkeys(c.group for c in curves))
  colour = dict(zip(groups, _colours(len(groups))))
  size = {g: sum(c.group == g for c in curves) for g in groups}
  fig, (ax,) = _new_figure(width=10.5 if len(groups) > _LEGEND_INSIDE else 7.0)
  labelled = set()
  for curve in curves:
    label = "_nolegend_"
    if curve.group not in labelled:
      labelled.add(curve.group)
      label = curve.group + (f" ({size[curve.group]} runs)" if size[curve.group] > 1 else "")
    ax.plot(curve.steps, curve.values, color=colour[curve.group], alpha=0.85, linewidth=1.3,
            marker="o" if markers else None, markersize=3, label=label)
  ax.set_xlabel("step")
  ax.set_ylabel(ylabel)
  ax.set_title(f"{title} ({len(curves)} runs)" + (f"\n{subtitle}" if subtitle else ""),
               fontsize="medium")
  ax.grid(alpha=0.3)
  _legend(ax, len(groups))
  return fig


@figure("train_loss")
def train_loss(data: PlotData) -> Optional[Figure]:
  """Training loss vs step, one line per run."""
  return _curves(data.train_loss, "train loss", f"{data.title}: train loss", "",
                 markers=False)


@figure("eval_curve")
def eval_curve(data: PlotData) -> Optional[Figure]:
  """The main eval metric vs step, one line per run (markers: evals are sparse)."""
  if not data.metric:
    return None
  return _curves(data.eval_curves, data.metric, f"{data.title}: {data.metric}",
                 data.subtitle, markers=True)


def _n_text(lines: Sequence[Line]) -> str:
  ns = sorted({len(p.values) for line in lines for p in line.points})
  if not ns:
    return ""
  return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}–{ns[-1]}"


def _ablation_panel(ax, ablation: Ablation, panel: Panel) -> None:
  for line, colour in zip(panel.lines, _colours(len(panel.lines))):
    points = [p for p in line.points if p.values]
    if not points:
      continue
    xs = [p.x for p in points]
    yerr = [p.std if p.std is not None else 0.0 for p in points]
    label = f"{line.label} ({_n_text([Line(line.label, points)])})"
    ax.errorbar(xs, [p.mean for p in points], yerr=yerr, color=colour, marker="o",
                markersize=5, capsize=4, linewidth=1.6, label=label)
    for p in points:  # the single runs behind each mean, faintly
      ax.scatter([p.x] * len(p.values), p.values, color=colour, s=12, alpha=0.35,
                 linewidths=0, zorder=3)
  xs = sorted({p.x for line in panel.lines for p in line.points if p.values})
  if ablation.x_labels is not None:
    ax.set_xticks(range(len(ablation.x_labels)), ablation.x_labels)
    ax.set_xlim(-0.5, len(ablation.x_labels) - 0.5)  # room beside the outer categories
  else:
    if ablation.log_x:
      ax.set_xscale("log")
    # Ticks at the swept values themselves: a sweep has few, and they are what is read off.
    ax.set_xticks(xs, [f"{x:g}" for x in xs])
    ax.minorticks_off()
  ax.set_xlabel(ablation.x + (" (log scale)" if ablation.log_x else ""))
  ax.set_ylabel(f"{ablation.metric} ({'best' if ablation.best else 'final'})")
  if panel.title:
    ax.set_title(panel.title, fontsize="medium")
  ax.grid(alpha=0.3)
  ax.legend(title=ablation.hue, fontsize="small", title_fontsize="small")


@figure("ablation")
def ablation_figure(data: PlotData) -> Optional[Figure]:
  """Main metric vs a swept axis, one line per value of another; bars: std over seeds."""
  ablation = data.ablation
  if ablation is None or not any(p.values for panel in ablation.panels
                                 for line in panel.lines for p in line.points):
    return None
  ncols = min(3, len(ablation.panels))
  nrows = -(-len(ablation.panels) // ncols)
  fig, axes = _new_figure(6.0, 4.2, ncols, nrows)
  for ax, panel in zip(axes, ablation.panels):
    _ablation_panel(ax, ablation, panel)
  for ax in axes[len(ablation.panels):]:
    ax.set_visible(False)
  spread = "mean ± std over seeds, dots: single runs" if ablation.seeds else "one run per point"
  which = "best" if ablation.best else "final"
  fig.suptitle(f"{data.title}: {ablation.metric} ({which}) vs {ablation.x}\n"
               + " · ".join(t for t in (data.subtitle, spread) if t), fontsize="medium")
  return fig


def save(fig: Figure, out_dir: str, name: str) -> List[str]:
  """Writes `name`.png and `name`.svg under out_dir (atomically); returns the paths."""
  file_utils.makedirs(out_dir)
  paths = []
  for fmt in FORMATS:
    buf = io.BytesIO()
    # No date in the SVG, so an unchanged sweep redraws byte-identical files.
    metadata = {"Date": None} if fmt == "svg" else None
    fig.savefig(buf, format=fmt, dpi=DPI, metadata=metadata)
    path = os.path.join(out_dir, f"{name}.{fmt}")
    file_utils.write_bytes_atomic(path, buf.getvalue())
    paths.append(path)
  return paths


def remove(out_dir: str, name: str) -> None:
  """Removes a figure drawn by an earlier report that has nothing to show now."""
  for fmt in FORMATS:
    path = os.path.join(out_dir, f"{name}.{fmt}")
    if file_utils.exists(path):
      file_utils.remove_tree(path)
