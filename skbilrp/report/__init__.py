"""One self-contained interactive HTML report of a deep kernel and its BiLRP explanations.

:func:`write_report` computes what the report shows (the kernel heatmap, sorted by
class and downsampled; BiLRP explanations of a capped set of kernel entries: the
neighbour pairs of chosen queries and a sample of every class block; an optional
dataset audit) and writes one HTML file with everything inline: the data as JSON,
vanilla JavaScript and CSS, no network access. ``skbilrp report`` runs it on the
digits demo, and ``skbilrp report --images DIR | --texts FILE`` on the user's data.
"""

from ._build import ReportSummary, write_report

__all__ = ["write_report", "ReportSummary"]
