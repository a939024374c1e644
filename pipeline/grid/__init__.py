"""Evaluation grids: sheets of images laid out by two axes of the sweep (plus pages).

    spec.py      the job's ``grid:`` section (pydantic; axis names checked, did-you-mean)
    expected.py  the cells a job expects, from its plan's axes (no second expansion)
    auto.py      the default grid: a handful of readable sheets
    cells.py     which variant goes in which cell; done / failed / pending from the directory
    labels.py    axis values as header text; order; the LoRA baseline; sizes as 512x768
    layout.py    pure layout maths: wrapping, sizes, the pixel budget, splitting
    draw.py      Pillow painting and atomic saves
    render.py    one view of OUT -> its sheets and index.json
    views.py     every view of OUT (the job's and named ones); ``output_files``
    live.py      LiveOutputs: refresh sheets and gallery during a run, rate-limited
"""

from pipeline.grid.live import LiveOutputs
from pipeline.grid.render import GridRenderer, planned_sheets, read_index, render_grids
from pipeline.job.grid import GridSpec, job_axes
from pipeline.grid.views import OutputFiles, ViewFiles, Views, output_files

__all__ = ["GridRenderer", "GridSpec", "LiveOutputs", "OutputFiles", "ViewFiles", "Views",
           "job_axes", "output_files", "planned_sheets", "read_index",
           "render_grids"]
