"""Markdown tables, the one format every table the tools print or write uses
(pt-sweep report's results.md, pt-neighbors' neighbors.md, pt-eval's
ensemble summary)."""
from typing import Sequence


def markdown(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
  """A GitHub-flavoured Markdown table: one line per row, cells as `str()`,
  a literal '|' in a cell escaped; no trailing newline."""
  def line(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"
  return "\n".join([line(header), line(["---"] * len(header))] + [line(r) for r in rows])
