"""Grid sheets: layout maths, the budget, axis placement, placeholders, rendering, the CLI.

Output directories here are made the way the writer stage makes them (job.json, run.json,
manifest lines, failures) from the real plan of a real job, with small solid-colour PNGs, so
no backend is needed; the end-to-end run against the simulator is in test_gallery.py.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image

from pipeline import expand
from pipeline.errors import JobError, UsageError
from pipeline.grid import GridSpec, LiveOutputs, render_grids
from pipeline.grid.cells import Outcomes, assemble, expected_entries
from pipeline.grid.draw import ABSENT_FILL, FAILED_FILL, CellView, draw_sheet, font_for
from pipeline.grid.layout import (ABS_MIN_CELL_PX, MAX_SIDE_PX, GridShape, plan_sheets,
                                  wrap_text)
from pipeline.grid.render import GRIDS_DIR, INDEX_FILE, GridRenderer
from pipeline.job.load import parse_job
from pipeline.model import Variant
from pipeline.output.runfiles import public_job

LORA_JOB = """
name: lora test
defaults: {steps: 12, width: 48, height: 60, sampler_name: Euler a}
prompts: ["a lighthouse at dusk"]
loras: {names: [detail, grain], weights: [0, 0.5, 1.0]}
seeds: [1, 2]
grid: {x: lora, y: seed}
"""


# --- helpers -------------------------------------------------------------------------------------

class FakeMeasure:
    """A fixed-width font: every character is 0.6 em wide."""

    def __init__(self, font_px: int) -> None:
        self.font_px = font_px
        self.line_h_px = round(font_px * 1.3)

    def width_px(self, text: str) -> float:
        return len(text) * self.font_px * 0.6


def colour(n: int) -> tuple[int, int, int]:
    rng = random.Random(n)
    return (rng.randrange(0, 80), rng.randrange(0, 80), rng.randrange(150, 256))


def make_run(out: Path, job_text: str, *, skip: Iterable[int] = (), fail: Iterable[int] = (),
             prompt: str | None = None, infotext: str | None = None) -> list[Variant]:
    """An output directory as the writer leaves it: every variant done except ``skip``
    (pending) and ``fail`` (in failures.jsonl). Images are solid colours, by variant number."""
    spec = parse_job(job_text.encode(), path=str(out / "job.yaml"), base_dir=str(out))
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "job.json").write_bytes(orjson.dumps(public_job(spec)))
    (out / "run.json").write_bytes(orjson.dumps({"job_base_dir": str(out), "status": "running"}))
    variants = list(expand.variants(expand.build_plan(spec)))
    skip, fail = set(skip), set(fail)
    with (out / "manifest.jsonl").open("wb") as manifest, \
            (out / "failures.jsonl").open("wb") as failures:
        for n, v in enumerate(variants):
            axes = dict(v.axes)
            if n in fail:
                failures.write(orjson.dumps({
                    "id": v.id, "ordinal": v.ordinal, "prompt": prompt or v.prompt,
                    "seed": v.seed, "axes": axes, "error": "HTTP 500: CUDA out of memory",
                    "status": 500, "attempts": 3, "backend": "http://127.0.0.1:7861"}) + b"\n")
                continue
            if n in skip:
                continue
            manifest.write(orjson.dumps(record(out, v, n, prompt=prompt, infotext=infotext))
                           + b"\n")
    return variants


def record(out: Path, v: Variant, n: int, *, prompt: str | None = None,
           infotext: str | None = None) -> dict[str, Any]:
    rel = f"images/{n:06d}_{v.id}_0.png"
    Image.new("RGB", (48, 60), colour(n)).save(out / rel)
    data = (out / rel).read_bytes()
    return {"id": v.id, "image_index": 0, "kind": "generation", "file": rel, "format": "png",
            "prompt": prompt or v.prompt, "negative_prompt": v.negative_prompt,
            "seed": v.seed if v.seed != -1 else 1000 + n, "subseed": None,
            "requested_seed": v.seed, "backend": "http://127.0.0.1:7861", "model": "sim-v1",
            "sampler": "Euler a", "ordinal": v.ordinal, "axes": dict(v.axes),
            "images_expected": 1, "params": v.payload, "infotext": infotext,
            "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "attempts": 1,
            "elapsed_s": 0.01, "created": "2024-05-01T12:00:00+00:00"}


def spec_of(text: str) -> Any:
    return parse_job(text.encode(), path="job.yaml")


def index_of(out: Path) -> dict[str, Any]:
    return orjson.loads((out / GRIDS_DIR / INDEX_FILE).read_bytes())


def covered(sheets: list[Any], n_rows: int, n_cols: int) -> None:
    """Every (row, col) of the grid is on exactly one sheet."""
    seen: dict[tuple[int, int], int] = {}
    for sheet in sheets:
        for r in sheet.rows:
            for c in sheet.cols:
                seen[(r, c)] = seen.get((r, c), 0) + 1
    assert seen == {(r, c): 1 for r in range(n_rows) for c in range(n_cols)}


# --- layout maths --------------------------------------------------------------------------------

def test_one_sheet_places_headers_over_their_cells() -> None:
    shape = GridShape(col_labels=("a", "b", "c"), row_labels=("seed 1", "seed 2"),
                      title="t\nprompt: x", corner="seed", cell_px=100, cell_aspect=1.25)
    [sheet] = plan_sheets(shape, FakeMeasure)
    assert (sheet.cell_w_px, sheet.cell_h_px, sheet.parts, sheet.downscaled) == (100, 125, 1, False)
    for c in range(3):
        head, cell = sheet.col_header_box(c), sheet.cell_box(0, c)
        assert (head.x0, head.x1) == (cell.x0, cell.x1) and head.y1 <= cell.y0
    for r in range(2):
        head, cell = sheet.row_header_box(r), sheet.cell_box(r, 0)
        assert (head.y0, head.y1) == (cell.y0, cell.y1) and head.x1 <= cell.x0
    boxes = [sheet.cell_box(r, c) for r in range(2) for c in range(3)]
    for i, a in enumerate(boxes):  # no overlaps, all on the sheet, below the title
        assert a.x0 >= 0 and a.y0 >= sheet.title_h_px and a.x1 <= sheet.width_px
        assert a.y1 <= sheet.height_px
        for b in boxes[i + 1:]:
            assert a.x1 <= b.x0 or b.x1 <= a.x0 or a.y1 <= b.y0 or b.y1 <= a.y0
    last = sheet.cell_box(1, 2)
    assert sheet.width_px - last.x1 == sheet.pad_px and sheet.height_px - last.y1 == sheet.pad_px
    assert sheet.heading_lines == ("t",) and sheet.title_lines == ("prompt: x",)


def test_without_y_axis_there_is_no_row_header_column() -> None:
    [sheet] = plan_sheets(GridShape(col_labels=("a", "b"), row_labels=(), title="t",
                                    cell_px=64), FakeMeasure)
    assert sheet.row_header_w_px == 0 and sheet.rows == (0,)
    assert sheet.cell_box(0, 0).x0 == sheet.pad_px


def test_labels_wrap_break_long_words_and_end_in_an_ellipsis() -> None:
    m = FakeMeasure(10)  # 6 px per character
    assert wrap_text("detail tweaker at half weight", 60, m, 4) == ("detail", "tweaker at",
                                                                     "half", "weight")
    assert wrap_text("x" * 25, 60, m, 5) == ("x" * 10, "x" * 10, "x" * 5)
    lines = wrap_text("one two three four five six seven", 60, m, 2)
    assert len(lines) == 2 and lines[-1].endswith("…")
    assert all(m.width_px(line) <= 60 for line in lines)
    assert wrap_text("para one\npara two", 600, m, 5) == ("para one", "para two")


def test_long_column_labels_make_a_taller_header_band() -> None:
    short = plan_sheets(GridShape(("a", "b"), ("r",), "t", cell_px=100), FakeMeasure)[0]
    long = plan_sheets(GridShape(("a very long prompt about a lighthouse at dusk", "b"), ("r",),
                                 "t", cell_px=100), FakeMeasure)[0]
    assert long.col_header_h_px > short.col_header_h_px
    assert all(FakeMeasure(long.font_px).width_px(line) <= 100 for line in long.col_lines[0])


def test_over_budget_first_shrinks_cells() -> None:
    shape = GridShape(tuple("abcdef"), ("1", "2", "3", "4"), "t", cell_px=256)
    [full] = plan_sheets(shape, FakeMeasure)
    budget = int(full.pixels * 0.7)
    [sheet] = plan_sheets(GridShape(tuple("abcdef"), ("1", "2", "3", "4"), "t", cell_px=256,
                                    max_sheet_pixels=budget), FakeMeasure)
    assert sheet.downscaled and 128 <= sheet.cell_w_px < 256
    assert sheet.pixels <= budget and sheet.parts == 1


def test_far_over_budget_splits_rows_and_repeats_headers() -> None:
    rows = tuple(f"seed {i}" for i in range(200))
    shape = GridShape(tuple("abcd"), rows, "sweep\nfixed", cell_px=256,
                      max_sheet_pixels=8_000_000)
    sheets = plan_sheets(shape, FakeMeasure)
    assert len(sheets) > 1 and {s.parts for s in sheets} == {len(sheets)}
    assert [s.part for s in sheets] == list(range(1, len(sheets) + 1))
    covered(sheets, 200, 4)
    for s in sheets:
        assert s.pixels <= 8_000_000 and s.cell_w_px == 128  # shrunk to the floor, then split
        assert s.cols == (0, 1, 2, 3) and len(s.col_lines) == 4
        assert f"(part {s.part} of {s.parts})" in s.heading_lines[0]
    sizes = {len(s.rows) for s in sheets}
    assert max(sizes) - min(sizes) <= 1  # balanced parts


def test_very_wide_grids_split_columns_too() -> None:
    shape = GridShape(tuple(f"c{i}" for i in range(300)), ("r1", "r2"), "t", cell_px=256,
                      max_sheet_pixels=4_000_000)
    sheets = plan_sheets(shape, FakeMeasure)
    covered(sheets, 2, 300)
    assert len({s.cols for s in sheets}) > 1
    assert all(s.pixels <= 4_000_000 for s in sheets)


def test_the_formats_largest_side_is_respected() -> None:
    shape = GridShape(tuple(f"c{i}" for i in range(120)), ("r",), "t", cell_px=256,
                      max_sheet_pixels=400_000_000, max_side_px=MAX_SIDE_PX["webp"])
    sheets = plan_sheets(shape, FakeMeasure)
    assert all(max(s.width_px, s.height_px) <= MAX_SIDE_PX["webp"] for s in sheets)
    covered(sheets, 1, 120)


def test_a_budget_too_small_for_one_cell_shrinks_it_instead_of_failing() -> None:
    shape = GridShape(("a", "b"), ("r",), "t", cell_px=2048, max_sheet_pixels=1_000_000)
    sheets = plan_sheets(shape, FakeMeasure)
    covered(sheets, 1, 2)
    assert all(s.pixels <= 1_000_000 for s in sheets)


def test_random_shapes_always_cover_the_grid_within_budget() -> None:
    rng = random.Random(7)
    for _ in range(40):
        n_cols, n_rows = rng.randrange(1, 80), rng.randrange(0, 80)
        shape = GridShape(tuple("x" * rng.randrange(1, 40) for _ in range(n_cols)),
                          tuple("y" * rng.randrange(1, 30) for _ in range(n_rows)),
                          "title " * rng.randrange(1, 30), cell_px=rng.choice([64, 256, 700]),
                          cell_aspect=rng.choice([0.5, 1.0, 1.5]),
                          max_sheet_pixels=rng.choice([1_000_000, 5_000_000, 40_000_000]))
        sheets = plan_sheets(shape, FakeMeasure)
        covered(sheets, max(1, n_rows), n_cols)
        for s in sheets:
            assert s.pixels <= shape.max_sheet_pixels or s.cell_w_px == ABS_MIN_CELL_PX


# --- the grid: section ---------------------------------------------------------------------------

def test_grid_spec_resolves_aliases_and_stringifies_label_keys() -> None:
    spec = spec_of("""
prompts: [a cat]
matrix: {checkpoint: [m1, m2], cfg_scale: [5, 7]}
zip: [{width: [512, 768], height: [768, 512]}]
grid: {x: cfg, y: model, page: width+height, labels: {cfg_scale: {5: low, 7.0: high}}}
""")
    grid = GridSpec.from_job(spec)
    assert (grid.x, grid.y, grid.page) == ("cfg_scale", "checkpoint", "width+height")
    assert grid.labels == {"cfg_scale": {"5": "low", "7.0": "high"}}
    assert GridSpec.from_job(spec_of("prompts: [a]")) is None


@pytest.mark.parametrize("grid, where, hint", [
    ("{x: lora_weigth}", "grid.x", "did you mean 'lora_weight'"),
    ("{x: lora, y: sed}", "grid.y", "did you mean 'seed'"),
    ("{x: lora, y: lora}", "grid", "different axes"),
    ("{x: lora, colour: red}", "grid.colour", None),
    ("{y: seed}", "grid.x", None),
    ("{x: lora, format: gif}", "grid.format", None),
    ("{x: lora, labels: {sampler: {a: b}}}", "grid.labels.sampler", "this job's axes are"),
])
def test_grid_spec_errors_name_the_field_and_the_fix(grid: str, where: str,
                                                     hint: str | None) -> None:
    # The job loader checks the grid section, so the error names the line as well as the field.
    with pytest.raises(JobError) as info:
        spec_of(f"""
prompts: [a cat]
loras: {{names: [detail], weights: [0, 1]}}
grid: {grid}
""")
    assert info.value.where.endswith(where) and info.value.where.startswith("line ")
    assert info.value.path == "job.yaml"
    if hint:
        assert hint in (info.value.hint or "")


# --- axis placement ------------------------------------------------------------------------------

def entries_of(text: str) -> tuple[Any, list[Any]]:
    spec = spec_of(text)
    return spec, expected_entries(spec)


def test_baseline_column_goes_first_or_last_as_asked() -> None:
    for where, expected in (("first", ["baseline", "d:0.5", "d:1.0"]),
                            ("last", ["d:0.5", "d:1.0", "baseline"])):
        spec, entries = entries_of(f"""
prompts: [a cat]
loras: {{names: [d], weights: [0.5, 1.0, 0]}}
grid: {{x: lora, baseline: {where}}}
""")
        data = assemble(entries, Outcomes({}, {}), GridSpec.from_job(spec))
        assert list(data.x_values) == expected
        assert data.y_values == (None,) and len(data.pages) == 1


def test_lora_name_by_weight_repeats_the_baseline_in_every_lora_column() -> None:
    spec, entries = entries_of("""
prompts: [a cat]
loras: {names: [detail, grain], weights: [0, 0.5, 1.0]}
grid: {x: lora_name, y: weight}
""")
    data = assemble(entries, Outcomes({}, {}), GridSpec.from_job(spec))
    assert data.x_values == ("detail", "grain") and data.y_values == (0, 0.5, 1.0)
    [page] = data.pages
    baseline = next(e.axes for e in entries if e.axes["lora"] == "baseline")
    assert page.cell(0, 0).axes == page.cell(0, 1).axes == baseline
    assert len({page.cell(r, c).axes["lora"] for r in (1, 2) for c in (0, 1)}) == 4
    assert data.collisions == 0


def test_axes_not_on_the_sheet_make_one_sheet_per_value() -> None:
    spec, entries = entries_of("""
prompts: [a cat]
loras: {names: [d], weights: [0, 1]}
matrix: {cfg_scale: [5, 7]}
seeds: [1, 2]
grid: {x: lora, y: seed}
""")
    data = assemble(entries, Outcomes({}, {}), GridSpec.from_job(spec))
    assert data.page_axes == ("cfg_scale",)
    assert [p.values for p in data.pages] == [(("cfg_scale", 5),), (("cfg_scale", 7),)]
    assert all(len(p.cells) == 4 for p in data.pages)
    assert ("prompt", "a cat") in data.fixed


def test_pages_keep_only_their_own_columns_and_the_baseline() -> None:
    spec, entries = entries_of("""
prompts: [a cat]
loras: {names: [detail, grain], weights: [0, 0.5, 1.0]}
grid: {x: lora, page: lora_name}
""")
    data = assemble(entries, Outcomes({}, {}), GridSpec.from_job(spec))
    assert data.x_values == ("baseline", "detail:0.5", "detail:1.0", "grain:0.5", "grain:1.0")
    assert [(p.values, p.cols) for p in data.pages] == [
        ((("lora_name", "detail"),), (0, 1, 2)), ((("lora_name", "grain"),), (0, 3, 4))]


def test_the_page_axis_comes_first_and_keeps_job_order() -> None:
    spec, entries = entries_of("""
prompts: ["a {cat|dog}"]
matrix: {steps: [30, 10, 20]}
grid: {x: prompt, page: steps}
""")
    data = assemble(entries, Outcomes({}, {}), GridSpec.from_job(spec))
    assert [p.values[0][1] for p in data.pages] == [30, 10, 20]
    assert data.x_values == ("a cat", "a dog")


def test_the_job_size_limit_is_a_clear_error() -> None:
    spec = spec_of("prompts: [a]\nseeds: {count: 30}\n")
    with pytest.raises(UsageError, match="cover 30 variants; it covers at most 10") as info:
        expected_entries(spec, limit=10)
    assert "--where" in str(info.value)  # says how to narrow it


# --- drawing -------------------------------------------------------------------------------------

def test_placeholders_look_different_for_failed_pending_and_absent(tmp_path: Path) -> None:
    image = tmp_path / "blue.png"
    Image.new("RGB", (80, 80), (0, 0, 255)).save(image)
    [layout] = plan_sheets(GridShape(("ok", "failed"), ("r1", "r2"), "t", cell_px=120), font_for)
    views = {(0, 0): CellView("ok", image), (0, 1): CellView("failed", headline="FAILED",
                                                             detail="CUDA out of memory"),
             (1, 0): CellView("pending", headline="not generated yet"),
             (1, 1): CellView("absent", headline="—")}
    sheet = draw_sheet(layout, lambda r, c: views[(r, c)])

    def near_corner(r: int, c: int) -> tuple[int, int, int]:
        box = layout.cell_box(r, c)
        return sheet.getpixel((box.x0 + 6, box.y0 + 2 + box.height // 10))

    assert sheet.getpixel(((layout.cell_box(0, 0).x0 + layout.cell_box(0, 0).x1) // 2,
                           (layout.cell_box(0, 0).y0 + layout.cell_box(0, 0).y1) // 2)) \
        == (0, 0, 255)
    assert near_corner(0, 1) == FAILED_FILL
    assert near_corner(1, 1) == ABSENT_FILL
    pending = {sheet.getpixel((x, layout.cell_box(1, 0).y0 + 5))
               for x in range(layout.cell_box(1, 0).x0, layout.cell_box(1, 0).x1)}
    assert len(pending) >= 2  # the hatch


# --- rendering an output directory ---------------------------------------------------------------

def test_render_writes_sheets_with_placeholder_counts(tmp_path: Path) -> None:
    variants = make_run(tmp_path, LORA_JOB, skip={9}, fail={3})
    paths = render_grids(tmp_path)
    assert paths == [tmp_path / "grids" / "lora_by_seed.png"]
    index = index_of(tmp_path)
    [sheet] = index["sheets"]
    assert (sheet["cells"], sheet["done"], sheet["failed"], sheet["pending"]) == (10, 8, 1, 1)
    with Image.open(paths[0]) as image:
        assert image.size == (sheet["width_px"], sheet["height_px"]) and image.format == "PNG"
    assert len(variants) == 10


def test_refresh_redraws_only_changed_sheets_and_removes_stale_ones(tmp_path: Path) -> None:
    variants = make_run(tmp_path, LORA_JOB, skip={9})
    renderer = GridRenderer(tmp_path)
    [path] = renderer.render()
    first = path.stat().st_mtime_ns, path.stat().st_ino
    renderer.render()
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == first  # nothing changed
    with (tmp_path / "manifest.jsonl").open("ab") as manifest:
        manifest.write(orjson.dumps(record(tmp_path, variants[9], 9)) + b"\n")
    renderer.render()
    assert path.stat().st_ino != first[1]  # atomically replaced
    assert index_of(tmp_path)["sheets"][0]["pending"] == 0
    [webp] = render_grids(tmp_path, fmt="webp", cell_px=64)
    assert webp.suffix == ".webp" and not path.exists()
    assert not list((tmp_path / "grids").glob(".tmp-*"))


def test_a_job_without_grid_section_renders_nothing_by_default(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB.replace("grid: {x: lora, y: seed}", ""))
    assert render_grids(tmp_path) == []


def test_renders_from_the_manifest_alone_when_job_json_is_missing(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB, fail={0})
    (tmp_path / "job.json").unlink()
    renderer = GridRenderer(tmp_path, grid=GridSpec(x="weight", y="seed"))
    paths = renderer.render()
    assert [p.name for p in paths] == ["lora_weight_by_seed_01_LoRA_detail.png",
                                       "lora_weight_by_seed_02_LoRA_grain.png"]
    assert [(s.cells, s.done, s.failed) for s in renderer.last_sheets] == [(6, 5, 1), (6, 5, 1)]


def test_an_unreadable_image_becomes_a_placeholder(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB)
    victim = sorted((tmp_path / "images").glob("*.png"))[0]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    [path] = render_grids(tmp_path)
    assert path.is_file()


def test_huge_grids_split_into_parts_on_disk(tmp_path: Path) -> None:
    job = LORA_JOB.replace("seeds: [1, 2]", f"seeds: {list(range(1, 41))}").replace(
        "grid: {x: lora, y: seed}",
        "grid: {x: lora, y: seed, cell_px: 256, max_sheet_pixels: 3000000, format: jpeg}")
    make_run(tmp_path, job)
    paths = render_grids(tmp_path)
    assert len(paths) > 1 and all(p.suffix == ".jpg" for p in paths)
    sheets = index_of(tmp_path)["sheets"]
    assert sum(s["cells"] for s in sheets) == 200
    assert all(s["width_px"] * s["height_px"] <= 3_000_000 for s in sheets)


# --- the command line and the live refresher -----------------------------------------------------

def run_cli(*argv: str) -> int:
    from pipeline.cli.main import main

    return main(list(argv))


def test_cli_grid_renders_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, LORA_JOB.replace("grid: {x: lora, y: seed}", ""), skip={2})
    assert run_cli("grid", str(tmp_path), "--x", "weight", "--y", "lora_name",
                   "--format", "webp", "--cell-px", "64") == 0
    out = capsys.readouterr().out
    assert "lora_weight_by_lora_name_01_seed_1.webp" in out  # seeds vary too: a sheet each
    assert "lora_weight_by_lora_name_02_seed_2.webp" in out and "1 pending" in out
    assert (tmp_path / "index.html").is_file()


def test_cli_grid_errors_are_messages_not_tracebacks(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("grid", str(tmp_path / "nope")) == 2
    assert "not a directory" in capsys.readouterr().err
    assert run_cli("grid", str(tmp_path)) == 2
    assert "holds no sdbatch run" in capsys.readouterr().err
    make_run(tmp_path, LORA_JOB)
    assert run_cli("grid", str(tmp_path), "--x", "colour") == 2
    err = capsys.readouterr().err
    assert "--x 'colour' is not an axis" in err and "Traceback" not in err


def test_live_outputs_refresh_at_most_every_interval(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB, skip={5})
    now = [100.0]
    live = LiveOutputs(tmp_path, every_s=30, clock=lambda: now[0])
    assert live.due() and live.maybe_refresh()
    assert (tmp_path / "index.html").is_file() and (tmp_path / "grids" / INDEX_FILE).is_file()
    now[0] += 10
    assert not live.due() and not live.maybe_refresh()
    now[0] += 25
    assert live.maybe_refresh() and live.refreshes == 2
    assert live.final() == [tmp_path / "grids" / "lora_by_seed.png"] and live.refreshes == 3


def test_live_outputs_never_raise(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_run(tmp_path, LORA_JOB)
    (tmp_path / "job.json").write_text('{"prompts": []}')
    live = LiveOutputs(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert live.final() == []
        live.final()
    warnings = [r for r in caplog.records if "could not update the grid" in r.getMessage()]
    assert len(warnings) == 1  # reported once, not on every refresh
    assert (tmp_path / "index.html").is_file()  # the gallery still works


def test_sheet_count_matches_pages_times_parts(tmp_path: Path) -> None:
    make_run(tmp_path, LORA_JOB.replace("seeds: [1, 2]", "seeds: [1, 2]\nmatrix: {steps: [4, 8]}"))
    paths = render_grids(tmp_path)
    assert len(paths) == 2 and all("steps" in p.name for p in paths)


# --- cells from the plan, views, the default grid, holds, suggestions ----------------------------

SWEEP_JOB = """
name: sweep
defaults: {steps: 25, width: 48, height: 60}
prompts: ["a {lighthouse|windmill} on a cliff, {oil painting|watercolor}"]
replace: [[cliff, frozen lake]]
matrix:
  checkpoint: [v1-5, dreamshaper_8]
  sampler_name: ["DPM++ 2M", "Euler a"]
  cfg_scale: [5, 7]
zip: [{width: [48, 60], height: [60, 48]}]
seeds: [101, 202]
"""

EXPANSION_JOBS = [
    LORA_JOB, SWEEP_JOB,
    "prompts: ['a {cat|dog}', {prompt: 'a bird', seed: 9}]\nseeds: {count: 3}\nseed: 5\n",
    "prompts: ['a {cat|dog}']\nseeds: 3\nmatrix: {steps: [10, 20]}\n",
    "mode: random\nrandom: {count: 4}\nprompts: ['a {cat|dog|cow}']\nseeds: [1]\n",
]


@pytest.mark.parametrize("job", EXPANSION_JOBS)
def test_expected_cells_are_the_variants_axes_without_expanding(job: str) -> None:
    from pipeline.grid.expected import expected_axes

    plan = expand.build_plan(spec_of(job))
    assert list(expected_axes(plan)) == [dict(v.axes) for v in expand.variants(plan)]


def test_the_example_jobs_cells_match_their_expansion() -> None:
    from pipeline.grid.expected import expected_axes

    root = Path(__file__).resolve().parent.parent / "jobs"
    for path in sorted(root.glob("*.yaml")):
        spec = parse_job(path.read_bytes(), path=str(path), base_dir=str(root))
        plan = expand.build_plan(spec)
        assert list(expected_axes(plan)) == [dict(v.axes) for v in expand.variants(plan)], path


def test_a_render_never_expands_the_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_run(tmp_path, LORA_JOB, skip={9})

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the grid expanded the job again")

    import sys

    monkeypatch.setattr(expand, "variants", refuse)
    monkeypatch.setattr(sys.modules["pipeline.expand.variants"], "variants", refuse)
    live = LiveOutputs(tmp_path)
    assert len(live.final()) == 1
    assert index_of(tmp_path)["sheets"][0]["pending"] == 1


def test_holds_are_applied_before_the_product(tmp_path: Path) -> None:
    from pipeline.grid.expected import expected_axes

    plan = expand.build_plan(spec_of(SWEEP_JOB))
    held = list(expected_axes(plan, where={"checkpoint": "dreamshaper_8", "width+height": "60x48",
                                           "prompt": "windmill"}))
    assert len(held) == expand.count(plan) // 8
    assert {(a["checkpoint"], a["width"], a["height"]) for a in held} == {("dreamshaper_8", 60, 48)}
    assert all("windmill" in a["prompt"] for a in held)
    with pytest.raises(UsageError, match="--where"):
        list(expected_axes(plan, limit=10))


def test_the_default_grid_of_a_sweep_is_a_few_sheets_covering_everything(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, SWEEP_JOB)
    assert run_cli("grid", str(tmp_path), "--cell-px", "48", "--no-gallery") == 0
    out = capsys.readouterr().out
    index = index_of(tmp_path)
    sheets = index["sheets"]
    assert index["auto"] and 1 < len(sheets) <= 8
    assert sum(s["done"] for s in sheets) == expand.count(expand.build_plan(spec_of(SWEEP_JOB)))
    assert index["y"] == "prompt+seed"  # prompt and seed together on the rows
    # a zip of width and height is the size, 48x60, never "width 48"
    assert any("48x60" in s["page"] for s in sheets) and any("60x48" in s["page"] for s in sheets)
    assert not any("width" in s["page"] or "width" in s["title"] for s in sheets)
    assert "job sheets" in out and len([ln for ln in out.splitlines() if ".png" in ln]) \
        == len(sheets)


def test_a_page_of_one_size_has_cells_of_that_shape(tmp_path: Path) -> None:
    make_run(tmp_path, SWEEP_JOB.replace("seeds: [101, 202]", "seeds: [101]\ngrid: "
                                         "{x: cfg, y: sampler, page: width+height, where: "
                                         "{checkpoint: v1-5, replace:cliff: cliff, "
                                         "prompt: 'a windmill on a cliff, oil painting'}}"))
    renderer = GridRenderer(tmp_path)
    paths = renderer.render()
    assert [s.page for s in renderer.last_sheets] == ["48x60", "60x48"]
    (tall_w, tall_h), (wide_w, wide_h) = (Image.open(p).size for p in paths)
    assert tall_h > wide_h and tall_w == wide_w  # cells follow the page's own images
    assert all(s.cells == 4 and s.done == 4 for s in renderer.last_sheets)
    assert "checkpoint v1-5 (held)" in renderer.last_sheets[0].subtitle  # says what is held


def test_composite_axes_put_each_combination_on_its_own_row() -> None:
    spec, entries = entries_of("""
prompts: ["a {cat|dog}"]
matrix: {cfg_scale: [5, 7]}
seeds: [1, 2]
grid: {x: cfg, y: prompt+seed}
""")
    grid = GridSpec.from_job(spec)
    assert grid.y == "prompt+seed"
    data = assemble(entries, Outcomes({}, {}), grid)
    assert data.y_values == ({"prompt": "a cat", "seed": 1}, {"prompt": "a cat", "seed": 2},
                             {"prompt": "a dog", "seed": 1}, {"prompt": "a dog", "seed": 2})
    assert len(data.pages) == 1 and len(data.pages[0].cells) == 8 and data.collisions == 0
    from pipeline.grid.labels import header_label

    assert header_label(grid.y, data.y_values[1], {}) == "a cat\nseed 2"


def test_a_named_view_sits_beside_the_jobs_sheets_and_runs_keep_both(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.grid.views import output_files, saved_views

    variants = make_run(tmp_path, LORA_JOB, skip={9})
    [job_sheet] = render_grids(tmp_path)
    assert run_cli("grid", str(tmp_path), "--x", "seed", "--y", "lora", "--cell-px", "48") == 0
    assert "view seed_by_lora" in capsys.readouterr().out
    assert saved_views(tmp_path) == ["seed_by_lora"]
    view_sheet = tmp_path / "grids" / "seed_by_lora" / "seed_by_lora.png"
    assert job_sheet.is_file() and view_sheet.is_file()  # the job's sheet is still there
    # the next run refreshes both, deletes neither, and fills the new cell in both
    with (tmp_path / "manifest.jsonl").open("ab") as manifest:
        manifest.write(orjson.dumps(record(tmp_path, variants[9], 9)) + b"\n")
    LiveOutputs(tmp_path).final(status="complete", counts={"total": 10, "done": 10})
    files = output_files(tmp_path)
    assert files.gallery == tmp_path / "index.html"
    assert files.sheets == (job_sheet, view_sheet)
    assert [v.name for v in files.views] == [None, "seed_by_lora"]
    for folder in (tmp_path / "grids", tmp_path / "grids" / "seed_by_lora"):
        assert orjson.loads((folder / INDEX_FILE).read_bytes())["sheets"][0]["pending"] == 0
    # a view is removed only when asked
    assert run_cli("grid", str(tmp_path), "--remove", "seed_by_lora", "--no-gallery") == 0
    assert not view_sheet.exists() and job_sheet.is_file()


def test_where_holds_an_axis_and_names_what_it_holds(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_run(tmp_path, SWEEP_JOB)
    assert run_cli("grid", str(tmp_path), "--x", "cfg", "--y", "prompt+seed", "--page", "size",
                   "--where", "checkpoint=dreamshaper_8", "--where", "sampler=Euler a",
                   "--where", "replace:cliff=frozen lake", "--cell-px", "48",
                   "--no-gallery") == 0
    out = capsys.readouterr().out
    name = out.split("view ", 1)[1].split(" ", 1)[0]
    assert name.startswith("cfg_scale_by_prompt_and_seed_per_width_and_height_where_checkpoint"
                           "_dreamshaper_8")
    index = orjson.loads((tmp_path / "grids" / name / INDEX_FILE).read_bytes())
    assert [s["page"] for s in index["sheets"]] == ["48x60", "60x48"]
    assert all(s["cells"] == s["done"] == 16 for s in index["sheets"])
    assert "checkpoint dreamshaper_8 (held)" in index["sheets"][0]["subtitle"]
    assert "sampler Euler a (held)" in index["sheets"][0]["subtitle"]


@pytest.mark.parametrize("argv, wrong, listed", [
    (("--x", "checkpoint"), "--x 'checkpoint' is not an axis", "this job's axes are"),
    (("--x", "lora_weigth"), "--x 'lora_weigth'", "did you mean 'lora_weight'"),
    (("--x", "seed", "--where", "lora=detail:0.7"), "matches no value", "detail:0.5"),
    (("--x", "seed", "--where", "colour=red"), "--where colour", "this job's axes are"),
])
def test_grid_errors_suggest_only_names_that_exist(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], wrong: str,
        listed: str) -> None:
    make_run(tmp_path, LORA_JOB)
    assert run_cli("grid", str(tmp_path), *argv) == 2
    err = capsys.readouterr().err
    assert wrong in err and listed in err and "Traceback" not in err
    typed = argv[-1].split("=")[-1]
    assert f"did you mean {typed!r}" not in err  # never the name typed


def test_suggestions_come_from_the_listed_names_only() -> None:
    from pipeline.job.grid import suggest

    axes = ["prompt", "template", "cfg_scale", "seed"]
    assert suggest("cfg", axes) == "cfg_scale"  # an alias finds the axis it stands for
    assert suggest("seed", axes) is None  # never the name typed
    assert suggest("checkpoint", axes) is None  # an alias of an axis the job lacks
    assert suggest("sed", axes) == "seed"


def test_the_gallery_shows_the_status_it_is_given(tmp_path: Path) -> None:
    from pipeline.gallery import GalleryWriter

    make_run(tmp_path, LORA_JOB)  # run.json says "running", as a run leaves it mid-way
    counts = {"total": 10, "done": 10, "images": 10, "failed": 0, "skipped": 0}
    live = LiveOutputs(tmp_path)
    live.final(status="complete", counts=counts)
    html = (tmp_path / "index.html").read_text(encoding="utf-8")
    start = html.index('<script id="sdbatch-data" type="application/json">') + 50
    data = orjson.loads(html[start:html.index("</script>", start)])
    assert (data["status"], data["counts"]) == ("complete", counts)
    assert GalleryWriter(tmp_path).data()["status"] == "running"  # without: run.json's


def test_planned_sheets_are_the_sheets_a_run_writes(tmp_path: Path) -> None:
    from pipeline.grid import planned_sheets

    spec = spec_of(LORA_JOB.replace("{x: lora, y: seed}", "{x: weight, y: seed, page: lora_name}"))
    planned = planned_sheets(spec)
    make_run(tmp_path, LORA_JOB.replace("{x: lora, y: seed}",
                                        "{x: weight, y: seed, page: lora_name}"), skip={3})
    assert planned == [str(p.relative_to(tmp_path)) for p in render_grids(tmp_path)]
    assert len(planned) == 2 and not list(Path.cwd().glob("grids/*"))
    assert planned_sheets(spec_of("prompts: [a]\nseeds: [1, 2]\n")) == []
