"""Progress with a rate and an ETA, on every long command: pt-train's step
lines, pt-eval's and pt-infer's example counts, pt-sweep's points.

The bookkeeping (when to report, the rate over the last interval, the ETA,
steps/s and uptime to TensorBoard, the work unit's notes at INFO) is clu's
`periodic_actions.ReportProgress`, which T5X uses. What the user sees are
plain lines on stdout, printed by the command through `report`: lines, not
tqdm's bars, because these commands mostly write to log files (pt-sweep's
per-point logs, a Cloud TPU ssh session), where carriage-return bars turn
into one unreadable line.
"""
import sys
from typing import Callable, Optional

from clu import periodic_actions


def format_eta(seconds: float) -> str:
  """h:mm:ss ('-:--:--' when unknown)."""
  if seconds != seconds or seconds in (float("inf"), float("-inf")):  # NaN, inf
    return "-:--:--"
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress(periodic_actions.ReportProgress):
  """clu's reporter, keeping the rate and ETA of its last report.

  Call it with the count done so far (steps, examples, points). It reports
  every `every_steps` (then it must be told of every step) and/or every
  `every_secs` seconds, and when the count reaches `total`; each report
  calls `report(self, done)` with `steps_per_sec` and `eta_seconds` set.
  """

  def __init__(self, total: Optional[int], *, start: int = 0, every_steps: Optional[int] = None,
               every_secs: Optional[float] = None, metric_writer=None,
               report: Optional[Callable[["Progress", int], None]] = None):
    super().__init__(num_train_steps=total, writer=metric_writer, every_steps=every_steps,
                     every_secs=every_secs)
    self.total = total
    self.steps_per_sec = float("nan")
    self.eta_seconds = float("nan")
    self._on_report = report
    self(start)  # the clock starts here: the first report covers the first steps

  def _apply(self, step: int, t: float):
    self.steps_per_sec = (step - self._previous_step) / max(t - self._previous_time, 1e-9)
    if self.total:
      self.eta_seconds = (self.total - step) / max(self.steps_per_sec, 1e-9)
    super()._apply(step, t)
    if self._on_report is not None:
      self._on_report(self, step)


def counter(prog: str, what: str, total: Optional[int], unit: str, *, every_secs: float = 30.0,
            enabled: bool = True, stream=None) -> Callable[[int], None]:
  """A function to call with the count done: prints
  `prog: what: done/total unit, rate unit/s, ETA h:mm:ss` every `every_secs`,
  and at the end if it printed before (work shorter than `every_secs` prints
  nothing). Nothing at all when not `enabled` (processes other than 0)."""
  if not enabled:
    return lambda done: None
  shown = []

  def report(p: Progress, done: int):
    if p.total and done >= p.total and not shown:
      return
    shown.append(done)
    of = f"/{p.total}" if p.total else ""
    eta = f", ETA {format_eta(p.eta_seconds)}" if p.total and done < p.total else ""
    print(f"{prog}: {what}: {done}{of} {unit}, {p.steps_per_sec:.1f} {unit}/s{eta}",
          file=stream or sys.stdout, flush=True)

  return Progress(total, every_secs=every_secs, report=report)
