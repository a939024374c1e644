"""Evaluation grids: sheets of images laid out by two axes of the sweep (plus pages).

    spec.py     the job's ``grid:`` section (pydantic; axis names checked, did-you-mean)
    cells.py    which variant goes in which cell; done / failed / pending from the directory
    labels.py   axis values as header text; order; the LoRA baseline
    layout.py   pure layout maths: wrapping, sizes, the pixel budget, splitting
    draw.py     Pillow painting and atomic saves
    render.py   OUT -> OUT/grids/* and grids/index.json
    live.py     LiveOutputs: refresh sheets and gallery during a run, rate-limited
    cli.py      ``sdbatch grid OUT``
"""

from pipeline.grid.live import LiveOutputs
from pipeline.grid.render import GridRenderer, load_run_job, read_index, render_grids
from pipeline.grid.spec import GridSpec, job_axes

__all__ = ["GridRenderer", "GridSpec", "LiveOutputs", "job_axes", "load_run_job", "read_index",
           "render_grids"]
