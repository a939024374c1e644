"""Which images are generations, which seed each has, which responses are not successes, and
what the server really used: pure rules, and the answers a real Forge server gave replayed
through them (``tests/recordings/forge-client/``, copied from ``shared/real-forge``)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from PIL import Image as PILImage

from pipeline import infotext, names
from pipeline.backends.webui.http_errors import error_message, retry_after_s
from pipeline.backends.webui.response import checkpoint_matches, sniff_format, split_images
from pipeline.backends.webui.setup import CheckpointRef, ClientSetup, build_payload
from pipeline.backends.webui.substitution import check_substitution, find_substitutions
from pipeline.errors import BadResponseError, SubstitutionError
from pipeline.model import Variant

RECORDINGS = Path(__file__).parent / "recordings" / "forge-client"


def recorded(name: str) -> dict[str, Any]:
    return json.loads((RECORDINGS / f"{name}.json").read_text())


def _img(color: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    PILImage.new("RGB", (8, 8), color).save(buf, fmt)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _variant(**payload: Any) -> Variant:
    base = {"prompt": "p", "seed": -1, "batch_size": 1, "n_iter": 1}
    base.update(payload)
    return Variant(id="v1", ordinal=0, prompt=str(base["prompt"]), negative_prompt="",
                   seed=int(base["seed"]), payload=base)


# --- which images are generations ----------------------------------------------------------

def test_grid_first_generations_then_extras() -> None:
    grid, a, b, extra = _img((0, 0, 0)), _img((255, 0, 0)), _img((0, 255, 0)), _img((9, 9, 9))
    info = {"all_seeds": [100, 101], "all_subseeds": [7, 8], "index_of_first_image": 1,
            "all_prompts": ["p1", "p2"], "infotexts": ["grid info", "info 1", "info 2"]}
    body = {"images": [_b64(x) for x in (grid, a, b, extra)], "info": orjson.dumps(info).decode()}
    images, parsed = split_images(body, _variant(batch_size=2, save_images=True))
    gens = [i for i in images if i.kind == "generation"]
    extras = [i for i in images if i.kind == "extra"]
    assert [g.data for g in gens] == [a, b]
    assert [g.seed for g in gens] == [100, 101] and [g.subseed for g in gens] == [7, 8]
    assert [g.prompt for g in gens] == ["p1", "p2"]
    assert [g.infotext for g in gens] == ["info 1", "info 2"]  # the grid's infotext comes first
    assert len(extras) == 1 and extras[0].data == extra and extras[0].seed is None
    assert parsed["index_of_first_image"] == 1


def test_info_as_object_and_missing_index_without_save_images() -> None:
    a, b = _img((1, 2, 3)), _img((4, 5, 6))
    body = {"images": [_b64(a), _b64(b)], "info": {"seed": 5, "all_seeds": [5, 6]}}
    images, _ = split_images(body, _variant(batch_size=2))
    assert [(i.data, i.seed) for i in images] == [(a, 5), (b, 6)]


def test_jpeg_and_webp_sniffed() -> None:
    jpg, webp = _img((1, 1, 1), "JPEG"), _img((1, 1, 1), "WEBP")
    assert sniff_format(jpg) == "jpeg" and sniff_format(webp) == "webp"
    body = {"images": [_b64(jpg)], "info": '{"all_seeds": [3]}'}
    images, _ = split_images(body, _variant())
    assert images[0].format == "jpeg" and images[0].data == jpg


@pytest.mark.parametrize("body,message", [
    ({"images": [], "info": ""}, "no images"),
    ({"info": "{}"}, "no 'images' list"),
    ({"images": ["!!notbase64!!"], "info": '{"all_seeds": [1]}'}, "not valid base64"),
    ({"images": [_b64(b"hello world")], "info": '{"all_seeds": [1]}'}, "is not a PNG"),
    ({"images": [_b64(_img((0, 0, 0)))], "info": "{not json"}, "'info' is not valid JSON"),
    ({"images": [_b64(_img((0, 0, 0)))], "info": '{"all_seeds": [1, 2]}'}, "got 1 of 2"),
    ({"images": [_b64(_img((0, 0, 0)))], "info": '{"x": 1}'}, "neither 'all_seeds' nor 'seed'"),
])
def test_unusable_responses(body: dict, message: str) -> None:
    variant = _variant(batch_size=2) if "got 1 of 2" in message else _variant()
    with pytest.raises(BadResponseError, match=message):
        split_images(body, variant)


def test_fewer_seeds_than_requested() -> None:
    body = {"images": [_b64(_img((0, 0, 0)))], "info": '{"all_seeds": [1]}'}
    with pytest.raises(BadResponseError, match="1 seeds for 2"):
        split_images(body, _variant(batch_size=2))


@pytest.mark.parametrize("probe,seeds", [
    ("txt2img-seed-1-batch2", None),  # seed -1: the resolved seeds are only in info
    ("txt2img-n_iter2-batch2", [1000, 1001, 1002, 1003]),
    ("txt2img-save_images-true-batch2", [2000, 2001]),  # a grid first
    ("txt2img-seed42-batch1", [42]),
])
def test_recorded_forge_answers_split_into_seeded_generations(probe: str,
                                                              seeds: list[int] | None) -> None:
    rec = recorded(probe)
    images, info = split_images(rec["response"], _variant(**rec["request"]))
    gens = [i for i in images if i.kind == "generation"]
    expected = seeds or info["all_seeds"]
    assert [g.seed for g in gens] == expected
    assert expected[0] != -1 and rec["response"]["parameters"]["seed"] == rec["request"]["seed"]
    # a leaked samples_format made some of these JPEGs: the bytes say so, not an assumption
    assert all(g.format == sniff_format(g.data) for g in gens)
    for g in gens:  # the infotext of each generation names its own seed
        assert infotext.parse(g.infotext or "").get("Seed") == str(g.seed)
    assert all(i.kind == "generation" for i in images)  # the grid is dropped, not mislabelled


def test_recorded_send_images_false_is_a_failure() -> None:
    rec = recorded("txt2img-send_images-false")
    with pytest.raises(BadResponseError, match="no images"):
        split_images(rec["response"], _variant(**rec["request"]))


# --- the infotext reader and the names ------------------------------------------------------

def test_infotext_parse_follows_the_webui_rules() -> None:
    text = ('a house <lora:tiny-lora:0.8>\nsecond line\nNegative prompt: blurry\nugly\n'
            'Steps: 4, Sampler: DPM++ 2M, Schedule type: Karras, Size: 64x64, '
            'Lora hashes: "tiny-lora: a3f08ca83760, b: 1234", Prompt: "a, \\"quoted\\"", '
            'Module 1: tiny-vae')
    parsed = infotext.parse(text)
    assert parsed.prompt == "a house <lora:tiny-lora:0.8>\nsecond line"
    assert parsed.negative_prompt == "blurry\nugly"
    assert parsed.get("Sampler") == "DPM++ 2M" and parsed.get("Schedule type") == "Karras"
    assert parsed.get("Prompt") == 'a, "quoted"' and parsed.get("Module 1") == "tiny-vae"
    assert infotext.parse_pairs(parsed.get("Lora hashes")) == {"tiny-lora": "a3f08ca83760",
                                                               "b": "1234"}
    # a last line with fewer than 3 pairs is prompt text, not parameters
    assert infotext.parse("a cat\nSteps: 4, Seed: 1").params == {}
    assert infotext.quote("a, b") == '"a, b"' and infotext.quote("plain") == "plain"
    assert infotext.parse(f"x\nA: 1, B: 2, C: {infotext.quote('p: q, r')}").get("C") == "p: q, r"


def test_lora_tags_and_their_weights() -> None:
    tags = names.lora_tags("x <lora:a:0.5> <lyco:b:0:0> <LORA:c> <lora:d:te=0:unet=0.3> "
                           "<hypernet:h:1> <lora:e:0>")
    assert [(t.name, t.active) for t in tags] == [("a", True), ("b", False), ("c", True),
                                                 ("d", True), ("e", False)]
    assert names.strip_network_tags("a <lora:x:1> b <hypernet:y>") == "a  b "
    assert names.has_open_tag("a <lora:") and not names.has_open_tag("a <lora:x:1>")


@pytest.mark.parametrize("a,b,same", [
    ("tiny-b", "tiny-b.safetensors", True),
    ("tiny-b", "tiny-b.safetensors [9e2c431e4d]", True),
    ("tiny-b.safetensors [9e2c431e4d]", "tiny-b.safetensors", True),  # not hashed yet
    ("tiny-a.safetensors [2705e880c1]", "tiny-b.safetensors [9e2c431e4d]", False),
    ("tiny-b.safetensors [9e2c431e4d]", "9e2c431e4d1c6f5616494079043386247d92fb", True),
    ("sub/model.safetensors", "sub_model", True),
    ("tiny-a", "tiny-b", False),
])
def test_same_checkpoint_in_every_spelling(a: str, b: str, same: bool) -> None:
    assert names.same_checkpoint(a, b) is same
    assert names.same_checkpoint(b, a) is same


@pytest.mark.parametrize("asked,info,ok", [
    ("v1-5-pruned-emaonly", {"sd_model_name": "v1-5-pruned-emaonly", "sd_model_hash": "6ce0161689"}, True),
    ("v1-5-pruned-emaonly.safetensors", {"sd_model_name": "v1-5-pruned-emaonly"}, True),
    ("v1-5-pruned-emaonly.safetensors [6ce0161689]", {"sd_model_name": "other", "sd_model_hash": "6ce0161689"}, True),
    ("6ce0161689", {"sd_model_name": "v1-5", "sd_model_hash": "6ce0161689"}, True),
    ("sub/dreamshaper_8.safetensors", {"sd_model_name": "dreamshaper_8"}, True),
    ("SDXL/juggernaut.safetensors", {"sd_model_name": "SDXL_juggernaut"}, True),
    ("dreamshaper_8", {"sd_model_name": "v1-5-pruned-emaonly", "sd_model_hash": "6ce0161689"}, False),
    ("tiny-b.safetensors [9e2c431e4d]", {"sd_model_name": "tiny-b", "sd_model_hash": "2705e880c1"}, False),
    ("anything", {}, True),
])
def test_checkpoint_matching(asked: str, info: dict, ok: bool) -> None:
    assert checkpoint_matches(asked, info) is ok


def test_checkpoint_ref_before_and_after_the_server_hashed_it() -> None:
    fresh = CheckpointRef("tiny-b.safetensors", "tiny-b", "/m/tiny-b.safetensors")
    loaded = CheckpointRef("tiny-b.safetensors [9e2c431e4d]", "tiny-b", "/m/tiny-b.safetensors",
                           "9e2c431e4d", "9e2c431e4d1c6f5616494079043386247d92fb30081fd804f534b67605c7c215")
    assert fresh.matches("tiny-b", "9e2c431e4d") and not fresh.matches("tiny-a", "2705e880c1")
    assert loaded.matches("tiny-b", "9e2c431e4d") and not loaded.matches("tiny-b", "2705e880c1")


# --- what the server used: recorded answers -------------------------------------------------

FORGE = ClientSetup(label="forge", kind="forge")

# probe -> the kinds of substitution the check must report (empty: the server used what was asked)
CASES = {
    "lora-known": [], "lora-none-seed11": [], "lora-unknown": ["LoRA"],
    "sampler-omitted": [], "sampler-index-only": [], "sampler-with-scheduler-suffix": [],
    "sampler-alias": ["sampler"], "sampler-unknown": ["sampler"],
    "scheduler-karras": [], "scheduler-label-lowercase": [], "scheduler-unknown": ["scheduler"],
    "override-ckpt-tiny-b-norestore": [], "override-ckpt-title-with-hash": [],
    "override-ckpt-tiny-a-restore": [], "override-ckpt-unknown": ["checkpoint"],
    "clip-skip-2": [], "vae-override-sd_vae": ["VAE"], "vae-override-unknown": ["VAE"],
    "ui-mode/vae-override-sd_vae": ["VAE"],
    "ui-mode/vae-override-forge_additional_modules": [],
    "ui-mode/vae-forge-modules-bad-path": ["VAE/modules"],
}


@pytest.mark.parametrize("probe", sorted(CASES))
@pytest.mark.parametrize("setup", [None, FORGE], ids=["no-setup", "forge-setup"])
def test_recorded_substitutions_are_caught(probe: str, setup: ClientSetup | None) -> None:
    rec = recorded(probe)
    images, info = split_images(rec["response"], _variant(**rec["request"]))
    found = find_substitutions(rec["request"], info, images, setup)
    assert [m.what for m in found] == CASES[probe], [str(m) for m in found]
    if found:
        with pytest.raises(SubstitutionError, match="asked for") as err:
            check_substitution(rec["request"], info, images, setup, backend="forge")
        assert "forge" in str(err.value)
    else:
        assert check_substitution(rec["request"], info, images, setup) in ("tiny-a", "tiny-b")


@pytest.mark.parametrize("probe,pins,what", [
    # after clip-skip-2 (restore on, fresh install) the next requests still said "Clip skip: 2"
    ("img2img", {"CLIP_stop_at_last_layers": 1.0}, "clip skip"),
    ("skip-during", {"CLIP_stop_at_last_layers": 1.0}, "clip skip"),
    # the module override leaked into the next plain request
    ("ui-mode/vae-after-forge-modules-plain", {"forge_additional_modules": []}, "VAE/modules"),
    # a switch without restore: the next plain request ran on tiny-b, not the start model
    ("plain-after-norestore", {"sd_model_checkpoint": "tiny-a.safetensors"}, "checkpoint"),
])
def test_leaks_are_caught_when_the_setting_is_pinned(probe: str, pins: dict, what: str) -> None:
    rec = recorded(probe)
    variant = _variant(**rec["request"])
    images, info = split_images(rec["response"], variant)
    assert find_substitutions(rec["request"], info, images) == []  # unpinned: invisible
    sent = build_payload(rec["request"], ClientSetup(kind="forge", override_pins=pins))
    assert [m.what for m in find_substitutions(sent, info, images)] == [what]


def test_info_fields_are_the_fallback_without_infotexts() -> None:
    info = {"sd_model_name": "tiny-a", "sampler_name": "DPM++ 2M",
            "extra_generation_params": {"Schedule type": "Karras"}}
    params = {"prompt": "p <lora:x:1>", "sampler_name": "Euler", "scheduler": "Karras",
              "override_settings": {"sd_model_checkpoint": "tiny-b", "CLIP_stop_at_last_layers": 2}}
    # sampler and model are reported; LoRA and clip skip are not, so they cannot be checked
    assert [m.what for m in find_substitutions(params, info)] == ["checkpoint", "sampler"]


# --- what is sent ------------------------------------------------------------------------------

def test_build_payload_canonical_names_vae_forms_pins_and_extras() -> None:
    forge = ClientSetup(
        kind="forge", samplers={"k_euler_a": "Euler a", "DPM++ 2M Karras": "DPM++ 2M"},
        implied_schedulers={"DPM++ 2M Karras": "Karras"}, schedulers={"karras": "Karras"},
        vaes={"tiny-vae": "tiny-vae.safetensors"},
        override_pins={"CLIP_stop_at_last_layers": 1.0, "forge_additional_modules": [],
                       "sd_model_checkpoint": "tiny-a.safetensors"},
        payload_extras={"alwayson_scripts": {"dynamic prompts v2": {"args": [False]}}})
    payload = {"prompt": "p", "sampler_name": "k_euler_a", "scheduler": "karras",
               "override_settings": {"sd_vae": "tiny-vae"},
               "alwayson_scripts": {"controlnet": {"args": []}}}
    sent = build_payload(payload, forge)
    assert sent["sampler_name"] == "Euler a" and sent["scheduler"] == "Karras"
    assert sent["override_settings"] == {"forge_additional_modules": ["tiny-vae.safetensors"],
                                         "CLIP_stop_at_last_layers": 1.0,
                                         "sd_model_checkpoint": "tiny-a.safetensors"}
    assert sent["override_settings_restore_afterwards"] is False
    assert set(sent["alwayson_scripts"]) == {"controlnet", "dynamic prompts v2"}
    assert payload["sampler_name"] == "k_euler_a" and "alwayson_scripts" in payload  # unchanged
    legacy = build_payload({"sampler_name": "DPM++ 2M Karras"}, forge)
    assert (legacy["sampler_name"], legacy["scheduler"]) == ("DPM++ 2M", "Karras")
    automatic = build_payload({"override_settings": {"sd_vae": "Automatic"}}, forge)
    assert automatic["override_settings"]["forge_additional_modules"] == []
    a1111 = ClientSetup(kind="a1111", vaes={"tiny-vae": "tiny-vae.safetensors"})
    assert build_payload({"override_settings": {"sd_vae": "tiny-vae"}}, a1111)[
        "override_settings"] == {"sd_vae": "tiny-vae.safetensors"}
    assert build_payload(payload, None) is payload


# --- error shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize("probe,expected", [
    ("steps-many", "steps: Input should be a valid integer, unable to parse string as an "
                   "integer (got 'many')"),
    ("not-json", "the request body is not valid JSON (Expecting property name"),
    ("batch_size-zero", "IndexError: list index out of range"),
    ("post-options-ckpt-unknown", "RuntimeError: model 'no-such-model' not found"),
    ("cmd-flags", "ResponseValidationError: 1 validation errors"),
    ("img2img-no-init", "Init image not found"),
    ("sd-vae", "Not Found: this server has no /sdapi/v1/sd-vae route"),
])
def test_recorded_error_shapes(probe: str, expected: str) -> None:
    rec = recorded(probe)
    body = orjson.dumps(rec["response"])
    path = rec["request"].get("path") if isinstance(rec["request"], dict) else None
    assert expected in error_message(body, status=rec["http_status"], path=path)


@pytest.mark.parametrize("body,expected", [
    (b'{"error":"OutOfMemoryError","detail":"","body":"","errors":"CUDA out of memory"}',
     "OutOfMemoryError: CUDA out of memory"),
    (b'{"error":"HTTPException","code":404,"detail":"Sampler not found","body":"",'
     b'"errors":"404: Sampler not found"}', "HTTPException: 404: Sampler not found"),
    (b'{"detail":"Not authenticated"}', "Not authenticated"),
    (b'{"detail":[{"loc":["body","steps"],"msg":"value is not a valid integer","type":"x"}]}',
     "invalid request: steps: value is not a valid integer"),
    (b"<html>502 Bad Gateway</html>", "502 Bad Gateway"),
])
def test_error_shapes(body: bytes, expected: str) -> None:
    assert expected in error_message(body)


def test_retry_after_forms() -> None:
    assert retry_after_s("7") == 7.0 and retry_after_s("0.5") == 0.5
    assert retry_after_s(None) is None and retry_after_s("soon") is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT", now_s=1445412470.0) == 10.0
