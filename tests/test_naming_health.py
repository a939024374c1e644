"""Safe file names and the retry/bench decisions."""

from __future__ import annotations

import pytest

from pipeline.errors import (BadResponseError, HTTPStatusError, JobError, SubstitutionError,
                             TransportError)
from pipeline.schedule.health import BackendHealth, is_variant_fault
from pipeline.schedule.retry import Attempts, RetryPolicy
from pipeline.job.schema import RetrySpec
from pipeline.job.naming import Namer, slugify
from pipeline.output.layout import inside


@pytest.mark.parametrize("text", ["../../etc/passwd", "/abs/path", "a\x00b", "CON", "nul.txt",
                                  "..", ".", "", "x" * 5000, "<lora:foo:0.5> cat/dog\\win",
                                  "émoji 🎨 café", "a:b*c?d|e\"f<g>h"])
def test_slugs_are_safe(text: str) -> None:
    slug = slugify(text)
    assert slug and slug not in (".", "..")
    assert "/" not in slug and "\\" not in slug and "\x00" not in slug and ":" not in slug
    assert len(slug) <= 48
    assert slug.split(".")[0].lower() not in {"con", "nul", "prn", "aux"}


def test_paths_stay_inside_and_never_collide() -> None:
    namer = Namer("{prompt}/{seed}")
    paths = set()
    for n, prompt in enumerate(["../../x", "/etc/passwd", "../../x"]):
        rel = namer.relative_path(ordinal=n, variant_id=f"id{n}", index=0, seed=1, prompt=prompt,
                                  axes={"prompt": prompt}, extension="png")
        assert rel.startswith("images/") and inside(rel) and ".." not in rel
        paths.add(rel)
    assert len(paths) == 3  # {id} and {index} were appended, so equal prompts do not collide


@pytest.mark.parametrize("template", ["../{id}", "/abs/{id}", "{a.b[0]}", "{"])
def test_bad_templates_rejected(template: str) -> None:
    with pytest.raises(JobError):
        Namer(template)


def test_default_names_are_readable() -> None:
    rel = Namer().relative_path(ordinal=7, variant_id="abcdef0123456789", index=1, seed=42,
                                prompt="a red car, <lora:detail:0.5>", axes={}, extension="png")
    assert rel == "images/000007_a_red_car_s42_abcdef0123456789_1.png"


def test_variant_faults_do_not_bench() -> None:
    health = BackendHealth("b", bench_after_failures=2)
    oom = HTTPStatusError("HTTP 500: OutOfMemoryError: CUDA out of memory", status=500)
    assert is_variant_fault(oom) and is_variant_fault(HTTPStatusError("x", status=422))
    for _ in range(5):
        assert health.on_failure(0.0, oom) is False
    assert health.state == "ok"
    assert health.on_failure(0.0, TransportError("refused")) is False
    assert health.on_failure(0.0, TransportError("refused")) is True
    assert health.state == "benched" and health.benched_until == 5.0


def test_cooldown_grows_and_probe_restores() -> None:
    health = BackendHealth("b", cooldown_s=2, cooldown_max_s=5)
    health.bench(0.0)
    assert health.benched_until == 2.0
    health.on_probe(2.0, ok=False)
    assert health.benched_until == 6.0
    health.on_probe(6.0, ok=False)
    assert health.benched_until == 11.0  # capped at cooldown_max_s
    health.on_probe(11.0, ok=True)
    assert health.state == "ok"


def test_retry_policy_names_what_it_retries() -> None:
    policy = RetryPolicy(RetrySpec(max_attempts=3, backoff_initial_s=1, backoff_max_s=4))
    attempts = Attempts(count=1, first_at=0.0)
    assert policy.next_delay_s(attempts, TransportError("reset"), now=1.0) is not None
    assert policy.next_delay_s(attempts, HTTPStatusError("bad", status=422), now=1.0) is None
    assert policy.next_delay_s(attempts, HTTPStatusError("busy", status=429), now=1.0) is not None
    assert policy.next_delay_s(attempts, BadResponseError("truncated"), now=1.0) is not None
    attempts.count = 3
    assert policy.next_delay_s(attempts, TransportError("reset"), now=1.0) is None


def test_retry_policy_bounded_by_time_and_backends() -> None:
    policy = RetryPolicy(RetrySpec(max_time_s=10, max_backends_per_variant=2), zero_waits=True)
    attempts = Attempts(count=1, first_at=0.0)
    assert policy.next_delay_s(attempts, TransportError("x"), now=5.0) == 0
    assert policy.next_delay_s(attempts, TransportError("x"), now=11.0) is None
    attempts.failed_on = {"a", "b"}
    assert policy.next_delay_s(attempts, SubstitutionError("x"), now=1.0) is None


@pytest.mark.parametrize("template", [
    "{prompt}{slug}{prompt}{id}{index}", "{slug:.3}", "{lora}/{prompt:>40}", "{cfg_scale}_{seed:08d}",
    "{checkpoint}_{override_settings.sd_vae}_{replace:cat}", "{id:>30}{index:03d}",
])
def test_names_are_unique_by_construction(template: str) -> None:
    """Whatever the template, the id and index survive whole: nothing is cut from a name."""
    axes_names = ["prompt", "template", "seed", "lora", "cfg_scale", "checkpoint",
                  "override_settings.sd_vae", "replace:cat"]
    namer = Namer(template, axes=axes_names)
    long = "a very long prompt about a cat " * 20
    seen = set()
    for n in range(200):
        ident = f"{n:016x}"
        axes = {"prompt": long, "lora": "x" * 90, "cfg_scale": 7.5, "checkpoint": "m" * 80,
                "override_settings.sd_vae": "v" * 80, "replace:cat": "dog" * 30}
        for index in (0, 1, 10):
            rel = namer.relative_path(ordinal=n + 1, variant_id=ident, index=index, seed=n,
                                      prompt=long, axes=axes, extension="png")
            assert ident in rel and inside(rel)
            assert all(len(part) <= 255 for part in rel.split("/"))
            seen.add(rel)
    assert len(seen) == 600


@pytest.mark.parametrize("template,message", [
    ("{id:.1}", "cut the id"), ("{ordinal:0999999999d}", "width"), ("{seed.__class__}", "plain"),
    ("{seed!r}", "conversion"), ("{index:c}", "not allowed"), ("{id:{x}}", "nested"),
    ("{cfg_scal}", "did you mean {cfg_scale}"), ("{override_settings.sd_vea}", "sd_vae"),
    ("{prompt}" * 6, "characters"), ("a/" * 9 + "{id}", "folder levels"),
])
def test_naming_fields_and_specs_checked_up_front(template: str, message: str) -> None:
    with pytest.raises(JobError, match=None) as info:
        Namer(template, axes=["prompt", "seed", "cfg_scale", "override_settings.sd_vae"])
    assert message in str(info.value)


def test_aliases_name_the_same_axis() -> None:
    namer = Namer("{checkpoint}_{vae}", axes=["override_settings.sd_model_checkpoint",
                                              "override_settings.sd_vae"])
    rel = namer.relative_path(ordinal=1, variant_id="0" * 16, index=0, seed=1, prompt="p",
                              axes={"override_settings.sd_model_checkpoint": "m1",
                                    "override_settings.sd_vae": "v1"}, extension="png")
    assert rel == f"images/m1_v1_{'0' * 16}_0.png"


def test_int_spec_on_a_seed_the_server_did_not_report() -> None:
    rel = Namer("{seed:08d}").relative_path(ordinal=1, variant_id="0" * 16, index=0,
                                            seed="random#1", prompt="p", axes={},
                                            extension="png")
    assert rel.startswith("images/random_1_")
